"""Screening metrics for the definite-normal decision, with intervals that stay valid at 0 and 1.

Conventions: ``abnormal`` is the positive class (1), so *sensitivity* is the share of abnormal films
that are not auto-reported normal; ``auto_normal`` is the share of all films the AI reports as
normal, the workload it takes off radiologists.

Intervals (:func:`proportion_ci`, used by every table): a rate is a proportion of films, films of
one patient are correlated, and a percentile bootstrap alone collapses to "[1.000, 1.000]" when a
rate is 0 or 1 (every resample has no miss), claiming certainty from a finite sample. So each
interval is the wider of

* the percentile interval of a patient-cluster bootstrap (the correlation of a patient's films);
* the exact Clopper-Pearson interval with the *patients* as the trials: the film-level share
  applied to the number of patients in the rate's denominator (the largest possible design
  effect, so correlated films cannot narrow it, and a handful of events is covered exactly).

With no miss at all this is the exact binomial bound on patients: 0 misses in 47 abnormal patients
gives a 95% lower bound of 0.925, not 1.000; and a miss never raises the lower bound.

:data:`INTERVAL_NOTE` says this in one sentence for table captions.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

INTERVAL_NOTE = ("the wider of a patient-cluster bootstrap and the exact Clopper-Pearson interval with patients as "
                 "the trials, so a rate of 0 or 1 gets the exact patient-level bound")


def interval_note(ci: float, n_boot: int) -> str:
    """Caption fragment naming the intervals of a table, e.g. for :func:`scxnn.reports.write_table`."""
    return f"{ci:.0%} CIs: {INTERVAL_NOTE} ({n_boot} resamples)"


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


# --------------------------------------------------------------------------- exact intervals


def clopper_pearson(k: float, n: float, ci: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided ``ci`` interval of a binomial proportion ``k / n``, via the
    beta quantiles (so a fractional ``k`` and ``n``, an effective count, interpolate); NaN for
    ``n == 0``. At ``k == n`` the lower bound is ``((1 - ci) / 2) ** (1 / n)``."""
    from scipy.stats import beta

    k, n = float(k), float(n)
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n, got k={k}, n={n}")
    a = (1.0 - ci) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def certifiable_with(target: float, ci: float = 0.95, misses: int = 0) -> int:
    """How many abnormal patients, ``misses`` of them missed, it takes for the exact lower bound of
    the two-sided ``ci`` interval of sensitivity (the one-sided ``(1 + ci) / 2`` exact bound) to reach
    ``target``. For 99%: 368 with none missed and 555 with one at ``ci`` 0.95 (one-sided 97.5%), 299
    with none missed at 0.90 (one-sided 95%); for 95% at 0.95: 72."""
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if isinstance(misses, bool) or int(misses) != misses or misses < 0:
        raise ValueError(f"misses must be a whole number >= 0, got {misses!r}")
    misses = int(misses)
    n = math.ceil(math.log((1.0 - ci) / 2) / math.log(target))
    while clopper_pearson(n, n, ci)[0] < target:  # guard the float edge of the closed form
        n += 1
    if misses == 0:
        return n

    def reaches(n: int) -> bool:
        return clopper_pearson(n - misses, n, ci)[0] >= target

    # The bound rises with n at a fixed number of misses, and a miss only lowers it, so the answer
    # lies above the no-miss one: bracket it by doubling, then bisect.
    lo, hi = max(n - 1, misses), 2 * n + misses
    while not reaches(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return hi


def proportion_ci(success: Sequence[bool], patients: Sequence, ci: float = 0.95,
                  bootstrap: tuple[float, float] | None = None) -> tuple[float, float]:
    """The interval of the share of ``success`` among these films (the rate's denominator), by the
    rule in the module docstring: the wider of ``bootstrap`` (the patient-cluster percentile
    interval, when given) and the exact interval with the patients as the trials."""
    s = np.asarray(success, dtype=bool)
    n = len(s)
    if n == 0:
        return float("nan"), float("nan")
    n_pat = len(np.unique(np.asarray(patients)))
    lo, hi = clopper_pearson(s.mean() * n_pat, n_pat, ci)
    if bootstrap is not None and np.isfinite(bootstrap[0]) and np.isfinite(bootstrap[1]):
        lo, hi = min(lo, bootstrap[0]), max(hi, bootstrap[1])
    return float(lo), float(hi)


def separation_auc_ci(n_pos_patients: int, n_neg_patients: int, auc: float, ci: float = 0.95) -> tuple[float, float]:
    """An interval for a ROC AUC of exactly 1 (or 0), where the bootstrap collapses: for any
    threshold t, AUC >= Se(t) * Sp(t), and at a separating t both are 1 on every patient, so the
    product of their exact lower bounds (each at a quarter of 1 - ci, so the two together hold at
    one-sided ``(1 - ci) / 2``) bounds the AUC from below."""
    lo_pos = clopper_pearson(n_pos_patients, n_pos_patients, 1 - (1 - ci) / 2)[0]
    lo_neg = clopper_pearson(n_neg_patients, n_neg_patients, 1 - (1 - ci) / 2)[0]
    bound = lo_pos * lo_neg
    return (bound, 1.0) if auc >= 0.5 else (0.0, 1.0 - bound)


def auc_variance_ci(auc: float, n_pos_patients: int, n_neg_patients: int, ci: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for a ROC AUC from the bound Var(AUC) <= AUC (1 - AUC) /
    min(n_pos, n_neg) (Birnbaum and Klose 1957), patients as the units: the fallback where a
    bootstrap collapses to one value (tied scores, a single positive patient) without the AUC being
    0 or 1. At AUC 0 or 1 it has no width: use :func:`separation_auc_ci` there."""
    from scipy.stats import norm

    n = min(n_pos_patients, n_neg_patients)
    if n <= 0 or not np.isfinite(auc):
        return float("nan"), float("nan")
    half = float(norm.ppf(1 - (1 - ci) / 2)) * math.sqrt(auc * (1 - auc) / n)
    return max(0.0, auc - half), min(1.0, auc + half)


def outward(v: float, digits: int, rounding: str | None) -> float:
    """``v`` rounded to ``digits`` decimals; a lower bound ("down") is floored and an upper bound
    ("up") ceiled, so a printed interval is never narrower than the computed one (a lower bound of
    0.9996 prints as 0.999, never as 1.000)."""
    if rounding is None or not np.isfinite(v):
        return v
    scale = 10.0 ** digits
    # + 0.0: an upper bound of exactly 0 ceils to -0.0, which would print as "-0.000".
    return (np.floor if rounding == "down" else np.ceil)(v * scale + (1e-9 if rounding == "down" else -1e-9)) / scale + 0.0


def _missing(v) -> bool:
    try:
        return v is None or not np.isfinite(float(v))
    except (TypeError, ValueError):
        return True


def fmt_num(v, digits: int = 3, rounding: str | None = None, percent: bool = False) -> str:
    """One number as the reports print it: ``digits`` decimals (``percent``: a share as ``97%``, with
    ``digits`` - 2 decimals, i.e. the same precision), rounded outward for a bound (``rounding``
    "down" for a lower bound, "up" for an upper one, see :func:`outward`); missing or NaN -> ``n/a``."""
    if _missing(v):
        return "n/a"
    if percent:
        return f"{100 * outward(float(v), digits, rounding):.{max(digits - 2, 0)}f}%"
    return f"{outward(float(v), digits, rounding):.{digits}f}"


def fmt_ci(value, lo=None, hi=None, digits: int = 3, percent: bool = False) -> str:
    """``0.970 [0.930, 1.000]``: the one way every table, headline, log line and command prints a rate
    with its interval, bounds rounded outward so that the printed interval is never narrower than the
    computed one. Without either bound it is the value alone; NaN -> ``n/a``."""
    if _missing(lo) and _missing(hi):
        return fmt_num(value, digits, percent=percent)
    if _missing(value):
        return "n/a"
    return (f"{fmt_num(value, digits, percent=percent)} [{fmt_num(lo, digits, 'down', percent)}, "
            f"{fmt_num(hi, digits, 'up', percent)}]")


# --------------------------------------------------------------------------- bootstrap


def patient_bootstrap(
    groups: Sequence,
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    seed: int,
    ci: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``statistic(row_indices)`` over ``n`` resamples of *patients* (all
    images of a drawn patient come along), so correlated films of one patient do not narrow the
    interval. Resamples where a statistic is undefined (NaN) are left out of its interval. A rate
    that is 0 or 1 collapses here; :func:`proportion_ci` is what tables report."""
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


def roc_auc(y: Sequence[int], p: Sequence[float]) -> float:
    """ROC AUC of scores ``p`` for labels ``y`` (1 positive), NaN (never 0.5) when only one class is
    present. The Mann-Whitney form (mid-ranks for ties), equal to scikit-learn's ``roc_auc_score``
    to rounding and some 40 times faster on a few hundred films: bootstraps call it thousands of times."""
    from scipy.stats import rankdata

    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    if not np.isfinite(p).all():
        raise ValueError("roc_auc: scores contain NaN or infinity")
    n_pos = int(y.sum())
    if not 0 < n_pos < len(y):
        return float("nan")
    return float((rankdata(p)[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))


def auc_with_ci(y: np.ndarray, p: np.ndarray, patients: np.ndarray, n_boot: int, seed: int, ci: float) -> dict:
    """``{n_pos, n_neg, auc, auc_lo, auc_hi}``: the ROC AUC of scores ``p`` for labels ``y`` with a
    patient-bootstrap interval (``patients``: one id per row). At perfect separation (AUC 0 or 1),
    where every resample agrees and the bootstrap collapses, the exact bound of
    :func:`separation_auc_ci` instead; where it collapses at another value (tied scores), the
    distribution-free bound of :func:`auc_variance_ci`. The one AUC-with-interval of every table."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    lo, hi = (np.nan, np.nan)
    auc = roc_auc(y, p)
    if auc in (0.0, 1.0):
        pid = np.asarray(patients)
        lo, hi = separation_auc_ci(len(np.unique(pid[y == 1])), len(np.unique(pid[y == 0])), auc, ci)
    elif np.isfinite(auc):
        lo, hi = patient_bootstrap(patients, lambda idx: {"auc": roc_auc(y[idx], p[idx])}, n_boot, seed, ci)["auc"]
        if not lo < hi:  # every resample agreed (tied scores, one positive patient): the exact-variance bound
            pid = np.asarray(patients)
            vlo, vhi = auc_variance_ci(auc, len(np.unique(pid[y == 1])), len(np.unique(pid[y == 0])), ci)
            lo, hi = min(lo, vlo), max(hi, vhi)
    return {"n_pos": int(y.sum()), "n_neg": int(len(y) - y.sum()), "auc": auc, "auc_lo": lo, "auc_hi": hi}


def paired_auc_delta(
    abnormal: Sequence[int],
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    patients: Sequence,
    n_boot: int,
    seed: int,
    ci: float = 0.95,
) -> tuple[float, float, float]:
    """(delta, lo, hi): ``delta = AUC(b) - AUC(a)`` on all films, and its percentile ``ci`` interval
    over ``n_boot`` resamples of *patients* (:func:`patient_bootstrap`), the same resample for both
    pipelines. Resamples with one class only are left out.

    Why paired: the two pipelines score the same films, and most of each AUC's sampling error is
    which films happened to be drawn (easy or hard ones). Both AUCs move together with that draw, so
    in the difference it cancels; two separate intervals each carry it in full, and their overlap
    cannot rank the pipelines. NaN for all three when the films hold one class only."""
    y = np.asarray(abnormal, dtype=int)
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    g = np.asarray(patients)
    if not len(y) == len(a) == len(b) == len(g):
        raise ValueError(f"paired_auc_delta needs one label, two scores and a patient per film, got {len(y)}, {len(a)}, {len(b)}, {len(g)}")
    delta = roc_auc(y, b) - roc_auc(y, a)
    if not np.isfinite(delta):
        return float("nan"), float("nan"), float("nan")
    lo, hi = patient_bootstrap(g, lambda idx: {"delta": roc_auc(y[idx], b[idx]) - roc_auc(y[idx], a[idx])}, n_boot, seed, ci)["delta"]
    return float(delta), lo, hi


_RATES = ("sensitivity", "specificity", "ppv", "npv", "auto_normal")


def _rate_trials(rate: str, y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(films in the rate's denominator, success among all films) for abnormal ``y`` and predicted
    abnormal ``p``."""
    return {
        "sensitivity": (y, p),
        "specificity": (~y, ~p),
        "ppv": (p, y),
        "npv": (~p, ~y),
        "auto_normal": (np.ones_like(y), ~p),
    }[rate]


def screening_with_ci(
    abnormal: Sequence[int],
    pred_abnormal: Sequence[int],
    patients: Sequence,
    n_boot: int,
    seed: int,
    ci: float = 0.95,
) -> dict[str, float]:
    """:func:`screening_metrics` plus ``<rate>_lo`` / ``<rate>_hi`` bounds (:func:`proportion_ci`)."""
    y = np.asarray(abnormal, dtype=bool)
    p = np.asarray(pred_abnormal, dtype=bool)
    g = np.asarray(patients)
    point = screening_metrics(y, p)
    trials = {r: _rate_trials(r, y, p) for r in _RATES}
    # Only rates with both outcomes need the (slow) bootstrap; 0 and 1 are exact.
    mixed = [r for r, (den, ok) in trials.items() if 0 < int((den & ok).sum()) < int(den.sum())]
    bounds: dict[str, tuple[float, float]] = {}
    if mixed:
        def stat(idx: np.ndarray) -> dict[str, float]:
            m = screening_metrics(y[idx], p[idx])
            return {k: m[k] for k in mixed}

        bounds = patient_bootstrap(g, stat, n_boot, seed, ci)
    for r, (den, ok) in trials.items():
        point[f"{r}_lo"], point[f"{r}_hi"] = proportion_ci(ok[den], g[den], ci, bounds.get(r))
    return point
