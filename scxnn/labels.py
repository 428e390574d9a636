"""One finding model's classes, its training and validation films, and the epoch's sample list.

Each of the 13 findings ``F`` (``cfg.findings``) has its own model, whose classes are read off the
manifest's finding columns (1 present, 0 absent, NA unknown) by :func:`finding_labels`:

=====  ===============  =========================================================================
class  ``num_classes``  films
=====  ===============  =========================================================================
0      3 and 2          normal: the film is normal (:func:`scxnn.data.abnormal_labels`: its source
                        calls it normal, and no finding is marked present)
1      3 and 2          ``F`` present (whatever else is present too)
2      3                others: ``F`` absent and the film abnormal: another finding present (an
                        unseen finding alone counts too), or a finding of its source that no column
                        maps (NIH's Infiltration, say): such a film is never normal; class 0 with 2
                        classes
NA     3 and 2          ``F`` unknown, or (3 classes) ``F`` absent on a film whose source says
                        neither normal nor abnormal: the film is left out of this model's sets
=====  ===============  =========================================================================

Sets (:func:`training_sets`, from the manifest's splits, never its sites): ``stage1`` the hard-label
training films (all training films with ``train.stage1_labels: any``), ``stage2`` every training
film, hard and weak, and ``val`` the hard-label validation films, capped at
``train.max_val_images`` (:func:`_val_subset`).

Sampling (:func:`epoch_indices`): an epoch's sample list is a pure function of (seed, epoch key):
class-balanced draws with replacement for ``train.imbalance: sampler``, else a permutation;
:func:`class_weights` are the cross-entropy weights for ``train.imbalance: class_weights``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from scxnn.config import Config
from scxnn.data import abnormal_labels
from scxnn.dataset import sample_seed
from scxnn.utils import sha256_text


def finding_labels(
    df: pd.DataFrame,
    finding: str,
    num_classes: int,
    findings: Sequence[str] | None = None,
    unseen: Sequence[str] | None = None,
) -> pd.Series:
    """Per-row class for ``finding``'s model, as a nullable Int8 Series aligned with ``df``.

    3 classes (thesis): 0 normal (the film is normal, :func:`scxnn.data.abnormal_labels`), 1 target
    present, 2 others (target absent on an abnormal film: another finding, an unseen one, or one its
    source gives that no column maps; never normal). 2 classes: 1 target, 0 everything else
    ("others" fold into 0). NA target -> NA (the row is left out); with 3 classes an absent target on
    a film of unknown status too, since normal and others cannot be told apart. ``findings`` /
    ``unseen`` default to the finding columns of the study defaults.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes!r}")
    if findings is None or unseen is None:
        from scxnn.config import load_config

        d = load_config("demo")  # findings come from defaults.yaml; every profile keeps them
        findings = list(d.findings) if findings is None else findings
        unseen = list(d.unseen_findings) if unseen is None else unseen
    if finding not in df:
        raise KeyError(f"finding {finding!r} is not a manifest column")
    target = df[finding].astype("Float64")
    status = abnormal_labels(df, findings, unseen)
    out = pd.Series(0, index=df.index, dtype="Int8")
    if num_classes == 3:
        out[(status == 1).fillna(False).to_numpy(dtype=bool)] = 2
        out[status.isna().to_numpy(dtype=bool)] = pd.NA
    out[(target == 1).fillna(False).to_numpy(dtype=bool)] = 1
    out[target.isna().to_numpy(dtype=bool)] = pd.NA
    return out


def finding_seed(seed: int, finding: str) -> int:
    """The run's seed: the study seed plus a stable offset derived from the finding's name."""
    off = int(sha256_text(finding, 8), 16)
    return (int(seed) + off) % 2**31


def training_sets(df: pd.DataFrame, cfg: Config, finding: str) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """{"stage1", "stage2", "val"} -> (rows, labels), from the train and val splits; NA targets dropped."""
    labels = finding_labels(df, finding, cfg.model.num_classes, list(cfg.findings), list(cfg.unseen_findings))
    # Splits, not sites, decide: evaluation sites (temporal, external) are all `test`, and a real
    # dataset read by an adapter has a site name of its own.
    ok = labels.notna()
    # train.stage1_labels "any": a weak-label-only dataset (no masks) trains and validates on all films.
    hard = df["label_type"] == "hard" if cfg.train.stage1_labels == "hard" else pd.Series(True, index=df.index)
    sel = {
        "stage1": ok & (df["split"] == "train") & hard,
        # Weak labels all go to training (see data.split); the hard training images stay in too.
        "stage2": ok & (df["split"] == "train"),
        "val": ok & (df["split"] == "val") & hard,
    }
    out = {k: (df[m].reset_index(drop=True), labels[m].astype(int).to_numpy()) for k, m in sel.items()}
    cap = cfg.train.max_val_images
    if cap and len(out["val"][0]) > cap:
        out["val"] = _val_subset(*out["val"], cap, finding_seed(cfg.seed, finding))
    return out


def _val_subset(rows: pd.DataFrame, labels: np.ndarray, cap: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A fixed subset of ``cap`` validation films for per-epoch model selection: every target film
    (the rare class decides the AUC) as long as they fill at most half the cap, then a seeded draw of
    the rest; a common target (e.g. Kermany's pneumonia) gets half, so the AUC keeps both classes.
    The SVM and the thresholds still use the whole validation split (step 03)."""
    rng = np.random.default_rng(seed)
    pos = rng.permutation(np.flatnonzero(labels == 1))
    rest = rng.permutation(np.flatnonzero(labels != 1))
    n_pos = min(len(pos), max(cap // 2, cap - len(rest)))
    keep = np.sort(np.r_[pos[:n_pos], rest[: cap - n_pos]])
    return rows.iloc[keep].reset_index(drop=True), labels[keep]


def epoch_indices(labels: np.ndarray, seed: int, key: int, imbalance: str, cap: int, num_classes: int) -> list[int]:
    """The epoch's sample list, a pure function of (seed, key): class-balanced draws with
    replacement (WeightedRandomSampler) for ``imbalance: sampler``, else a permutation; at most
    ``cap`` samples when ``cap`` > 0."""
    n = len(labels)
    if n == 0:
        return []
    k = min(cap, n) if cap > 0 else n
    g = torch.Generator().manual_seed(sample_seed(seed, key, 0x5A3))
    if imbalance == "sampler":
        counts = np.bincount(labels, minlength=num_classes).astype(float)
        w = 1.0 / counts[labels]
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), k, replacement=True, generator=g)
        return [int(i) for i in sampler]
    return torch.randperm(n, generator=g)[:k].tolist()


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """n / (C * count) per class (0 for a class with no samples)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)
