"""Screening metrics for the definite-normal decision, with patient-level bootstrap intervals.

Conventions: ``abnormal`` is the positive class (1), so *sensitivity* is the share of abnormal films
that are not auto-reported normal; ``auto_normal`` is the share of all films the AI reports as
normal, the workload it takes off radiologists.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np


def screening_metrics(abnormal: Sequence[int], pred_abnormal: Sequence[int]) -> dict[str, float]:
    """Confusion counts and rates; a rate whose denominator is empty is NaN, never 0 or 1."""
    y = np.asarray(abnormal, dtype=bool)
    p = np.asarray(pred_abnormal, dtype=bool)
    tp, fn = int((y & p).sum()), int((y & ~p).sum())
    fp, tn = int((~y & p).sum()), int((~y & ~p).sum())

    def rate(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "tp": tp, "fn": fn, "fp": fp, "tn": tn,
        "sensitivity": rate(tp, tp + fn),
        "specificity": rate(tn, tn + fp),
        "ppv": rate(tp, tp + fp),
        "npv": rate(tn, tn + fn),
        "auto_normal": rate(tn + fn, len(y)),
    }


def patient_bootstrap(
    groups: Sequence,
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    seed: int,
    ci: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``statistic(row_indices)`` over ``n`` resamples of *patients* (all
    images of a drawn patient come along), so correlated films of one patient do not narrow the
    interval. Resamples where a statistic is undefined (NaN) are left out of its interval."""
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[g] for g in pick])
        for k, v in statistic(idx).items():
            draws.setdefault(k, []).append(v)
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    out = {}
    for k, vals in draws.items():
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        out[k] = (float(np.quantile(v, lo_q)), float(np.quantile(v, hi_q))) if len(v) else (float("nan"), float("nan"))
    return out


def screening_with_ci(
    abnormal: Sequence[int],
    pred_abnormal: Sequence[int],
    patients: Sequence,
    n_boot: int,
    seed: int,
    ci: float = 0.95,
) -> dict[str, float]:
    """:func:`screening_metrics` plus ``<rate>_lo`` / ``<rate>_hi`` patient-bootstrap bounds."""
    y = np.asarray(abnormal, dtype=int)
    p = np.asarray(pred_abnormal, dtype=int)
    point = screening_metrics(y, p)
    rates = ("sensitivity", "specificity", "ppv", "npv", "auto_normal")

    def stat(idx: np.ndarray) -> dict[str, float]:
        m = screening_metrics(y[idx], p[idx])
        return {k: m[k] for k in rates}

    bounds = patient_bootstrap(patients, stat, n_boot, seed, ci)
    for k in rates:
        point[f"{k}_lo"], point[f"{k}_hi"] = bounds[k]
    return point
