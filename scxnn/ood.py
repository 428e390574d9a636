"""Out-of-distribution (OOD) score: is a film unlike the films the 13 models were trained on?

``scxnn predict`` must never call a film "definite_normal" when the models have not seen anything
like it (another body part, a lateral view, an inverted or cropped image, a different scanner...):
the SVM's "normal" region was only learnt on in-distribution films. This module gives each film an
OOD score and a threshold set on **validation** films, and ``predict`` overrides "definite_normal"
for flagged films.

What the score is, and why
--------------------------
*Features.* Each of the 13 models' encoder output at stride 32 (DenseNet-121: ``norm5`` + ReLU,
1024 channels), global-average-pooled -- exactly what the classification head sees -- concatenated
in a fixed model order into one vector of ``D = 13 x 1024`` numbers per film
(:func:`pooled_features`, :func:`ensemble_features`). The channels come out of a BatchNorm, so they
are on comparable scales and are only centred, not standardised (standardising would blow up
near-constant channels).

*Distance to the training data* (the Mahalanobis OOD detector of Lee et al., "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018, with a
PCA in front because D is larger than the number of training films):

1. PCA fitted on the **training** films' features: mean ``mu``, ``k`` components ``V`` (k x D),
   ``k = min(n_components, N_train - 1, D)``. Scores ``s = V (x - mu)``.
2. Mahalanobis term ``m(x) = sqrt((s - c)^T P (s - c))`` with ``c, P`` the location and precision of a
   Ledoit-Wolf shrunk covariance of the training scores (shrinkage keeps the trailing, poorly
   estimated components from dominating).
3. Residual term ``r(x) = ||(x - mu) - V^T s||``: the distance to the principal subspace. A film far
   off that subspace is OOD even when its projection looks typical -- the Mahalanobis term alone is
   blind to that by construction.
4. ``score(x) = (m - med_m) / sd_m + (r - med_r) / sd_r``: both terms robustly z-scored on the
   **validation** films (median and 1.4826 x MAD), so they weigh equally and the scale comes from
   films the PCA never saw (on training films the residual is biased low: the PCA was fitted to
   them). This is the shape of the probabilistic-PCA negative log-likelihood (in-subspace
   Mahalanobis + off-subspace residual) with each term put in units of its own spread. Larger =
   more OOD.
5. ``threshold = np.quantile(score(validation films), quantile)``: by design about ``1 - quantile``
   of in-distribution films are flagged (the price of the safeguard: those films cannot be called
   "definite_normal"). Never set on training films (their scores are biased low) nor on test films.

Why not (only) the decoder's reconstruction error: the decoder is trained to reconstruct the
*dilated lesion region* (image x lesion mask), so on normal films its target is all zeros and its
error says little about whether the film looks like the training data; an arbitrary image with no
lesion-like structure may be "reconstructed" perfectly as zeros. Feature distance measures what the
classifier head actually consumes.

Films whose features are not finite get score ``+inf`` and are always flagged. Everything is plain
NumPy; :func:`save` writes an ``.npz`` of numeric arrays only (no pickle) and :func:`load` reads it
with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from scxnn.metrics import clopper_pearson
from scxnn.utils import atomic_open

MIN_TRAIN = 10  # fewer training films than this cannot give a meaningful covariance
MIN_VAL = 2  # the validation spread (MAD) needs at least two films
_MAD_TO_SD = 1.4826  # MAD of a normal distribution x this = its standard deviation
_FORMAT = 1  # bump when the .npz layout changes

_ARRAYS = ("mean", "components", "location", "precision", "center", "scale")
_SCALARS = ("threshold", "quantile", "n_fit", "n_val")


# --------------------------------------------------------------------------- features


def pooled_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The deepest encoder feature map of ``model`` (an :class:`scxnn.models.SCXNN`), globally
    average-pooled: (N, 1, H, W) in [0, 1] -> (N, C) float32, on ``x``'s device.

    Runs under ``torch.inference_mode``; any memory format (``channels_last`` included). The model
    must be in eval mode: in train mode BatchNorm would make a film's features depend on its batch.
    """
    if model.training:
        raise ValueError("pooled_features needs model.eval(): in train mode BatchNorm makes features batch-dependent")
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True).contiguous()


def ensemble_features(models: Iterable[torch.nn.Module], x: torch.Tensor) -> np.ndarray:
    """:func:`pooled_features` of each model, concatenated in the given order: (N, sum C) float64.

    The order must be the same when fitting and when scoring (e.g. the findings' order in the config).
    """
    parts = [pooled_features(m, x).cpu().numpy() for m in models]
    if not parts:
        raise ValueError("ensemble_features needs at least one model")
    return np.concatenate(parts, axis=1).astype(np.float64)


# --------------------------------------------------------------------------- the OOD model


@dataclass(frozen=True, eq=False)
class OODModel:
    """A fitted OOD scorer (see the module docstring for the formula). Arrays are float64, read-only.

    mean (D,), components (k, D): the PCA on training features. location (k,), precision (k, k): the
    Ledoit-Wolf fit on the training PCA scores. center (2,), scale (2,): validation median and robust
    SD of the [Mahalanobis, residual] terms. threshold: the ``quantile`` of validation scores.
    n_fit / n_val: how many training / validation films were used.
    """

    mean: np.ndarray
    components: np.ndarray
    location: np.ndarray
    precision: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    threshold: float
    quantile: float
    n_fit: int
    n_val: int

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            a = np.array(getattr(self, name), dtype=np.float64)  # a copy, so freezing it is safe
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        for name, kind in zip(_SCALARS, (float, float, int, int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        d, k = self.mean.shape[0] if self.mean.ndim == 1 else -1, self.components.shape[0]
        expected = {"mean": (d,), "components": (k, d), "location": (k,), "precision": (k, k), "center": (2,), "scale": (2,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape or d < 1 or k < 1:
                raise ValueError(f"OODModel.{name}: shape {getattr(self, name).shape}, expected {shape} (D={d}, k={k})")
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"OODModel.{name} is not finite")
        if not np.all(self.scale > 0) or not np.isfinite(self.threshold) or not 0 < self.quantile < 1:
            raise ValueError(f"OODModel: bad scale {self.scale}, threshold {self.threshold} or quantile {self.quantile}")

    @property
    def n_features(self) -> int:
        return self.mean.shape[0]

    def terms(self, features: np.ndarray) -> np.ndarray:
        """(N, 2): the z-scored [Mahalanobis, off-subspace residual] terms; ``score`` is their sum.
        Rows with non-finite features get +inf in both."""
        x = _as_matrix(features, "features", self.n_features, finite=False)
        bad = ~np.all(np.isfinite(x), axis=1)
        x = np.where(bad[:, None], 0.0, x) - self.mean
        s = x @ self.components.T
        diff = s - self.location
        maha = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, self.precision, diff), 0.0))
        resid = np.linalg.norm(x - s @ self.components, axis=1)
        z = (np.stack([maha, resid], axis=1) - self.center) / self.scale
        z[bad] = np.inf
        return z

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N,) OOD score, larger = more out of distribution; +inf for non-finite features."""
        return self.terms(features).sum(axis=1)


def flags(model: OODModel, features: np.ndarray) -> np.ndarray:
    """(N,) bool: True where the film is OOD (score above the threshold, or not finite)."""
    return ~(model.score(features) <= model.threshold)


# --------------------------------------------------------------------------- whole batches


@dataclass(frozen=True)
class BatchShift:
    """The batch-level verdict of :func:`batch_shift`."""

    films: int  # films the gate scored in the batch
    flagged: int  # of them, flagged out of distribution
    tolerance: float  # the flagged share an in-distribution batch may show
    p_value: float  # P(flagged or more | tolerance), one-sided exact binomial
    alpha: float
    shifted: bool

    @property
    def share(self) -> float:
        return self.flagged / self.films if self.films else float("nan")

    def describe(self) -> str:
        verdict = "batch out of distribution" if self.shifted else "batch in distribution"
        return (f"{verdict}: {self.share:.0%} of {self.films} films flagged by the OOD gate "
                f"(tolerance {self.tolerance:.0%}, binomial p = {self.p_value:.2g}, level {self.alpha:g})")


def tolerance(reference_share: float, n_reference: int, max_share: float, alpha: float) -> float:
    """The flagged share an in-distribution population may show: ``max_share`` or, if larger, the
    exact one-sided upper ``1 - alpha`` bound of the reference films' own flagged share
    (``reference_share`` of ``n_reference``). The batch rule (:func:`batch_shift`) and the site
    monitor's stream rule (:mod:`scxnn.monitor`) both test against it."""
    n_ref = int(n_reference)
    ref_k = int(round(float(reference_share) * n_ref))
    ref_hi = clopper_pearson(min(max(ref_k, 0), n_ref), n_ref, 1 - 2 * alpha)[1] if n_ref > 0 else 0.0
    return float(max(max_share, ref_hi))


def batch_shift(flagged: np.ndarray, reference_share: float, n_reference: int, max_share: float,
                alpha: float) -> BatchShift:
    """Does a batch look like the population the gate was set on? Each film's flag says little
    alone (by design about ``1 - quantile`` of in-distribution films are flagged), but a shifted
    population -- adult films through a pediatric model, another scanner -- raises the flagged
    share of the whole batch, and with it the risk that its *unflagged* films are misread too.

    The rule: the batch is shifted when its flagged share is significantly above a tolerance, by a
    one-sided exact binomial test at level ``alpha``. The tolerance is ``max_share`` or, if larger,
    the exact one-sided upper ``1 - alpha`` bound of the reference films' own flagged share
    (``reference_share`` of ``n_reference``: the validation films, or a site certificate's sample),
    so a small reference set cannot make the rule trigger-happy. Small batches need a large share to
    reach significance (2 of 2 films, 7 of 20); a single film is judged by its own flag alone."""
    from scipy.stats import binom

    f = np.asarray(flagged, dtype=bool).ravel()
    n, k = int(f.size), int(f.sum())
    tol = tolerance(reference_share, n_reference, max_share, alpha)
    p = float(binom.sf(k - 1, n, tol)) if n else 1.0
    return BatchShift(films=n, flagged=k, tolerance=tol, p_value=p, alpha=float(alpha), shifted=bool(n and p <= alpha * (1 + 1e-9)))


# --------------------------------------------------------------------------- fitting


def fit(train_features: np.ndarray, val_features: np.ndarray, n_components: int = 32, quantile: float = 0.99, seed: int = 0) -> OODModel:
    """Fit the PCA and Ledoit-Wolf covariance on ``train_features`` (N_train, D), then the term
    scales and the threshold (the ``quantile`` of scores) on ``val_features`` (N_val, D).

    ``seed`` only drives scikit-learn's randomized SVD, which it picks for large feature matrices.
    Test films are deliberately not an argument: nothing here may be tuned on them.
    """
    train = _as_matrix(train_features, "train_features")
    val = _as_matrix(val_features, "val_features", train.shape[1])
    n, d = train.shape
    if n < MIN_TRAIN:
        raise ValueError(f"too few training films for the OOD model: {n} (need at least {MIN_TRAIN})")
    if val.shape[0] < MIN_VAL:
        raise ValueError(f"too few validation films to set the OOD threshold: {val.shape[0]} (need at least {MIN_VAL})")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    if n_components < 1:
        raise ValueError(f"n_components must be at least 1, got {n_components!r}")
    k = min(n_components, n - 1, d)
    pca = PCA(n_components=k, random_state=seed).fit(train)
    lw = LedoitWolf().fit(pca.transform(train))
    partial = OODModel(
        mean=pca.mean_,
        components=pca.components_,
        location=lw.location_,
        precision=lw.precision_,
        center=np.zeros(2),
        scale=np.ones(2),
        threshold=0.0,
        quantile=quantile,
        n_fit=n,
        n_val=val.shape[0],
    )
    raw = partial.terms(val)  # unscaled [Mahalanobis, residual] on the validation films
    center = np.median(raw, axis=0)
    spread = _MAD_TO_SD * np.median(np.abs(raw - center), axis=0)
    # Floor: a term with no spread (e.g. the residual when k == D is ~0) must not divide by zero;
    # with the floor its z-score stays ~0 and it simply does not contribute.
    scale = np.maximum(spread, 1e-6 * (1.0 + np.abs(center)))
    scores = ((raw - center) / scale).sum(axis=1)
    return OODModel(
        mean=partial.mean,
        components=partial.components,
        location=partial.location,
        precision=partial.precision,
        center=center,
        scale=scale,
        threshold=float(np.quantile(scores, quantile)),
        quantile=quantile,
        n_fit=n,
        n_val=val.shape[0],
    )


def _as_matrix(a: np.ndarray, name: str, d: int | None = None, finite: bool = True) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (films, features) array, got shape {a.shape}")
    if d is not None and a.shape[1] != d:
        raise ValueError(f"{name}: {a.shape[1]} features per film, expected {d}")
    if finite and not np.all(np.isfinite(a)):
        rows = np.flatnonzero(~np.all(np.isfinite(a), axis=1))
        raise ValueError(f"{name}: {rows.size} film(s) have NaN/inf features (first rows: {rows[:5].tolist()})")
    return a


# --------------------------------------------------------------------------- files


def save(model: OODModel, path: str | os.PathLike) -> None:
    """Write ``model`` as an ``.npz`` of numeric arrays (scalars as 0-d arrays), atomically."""
    arrays = {name: getattr(model, name) for name in _ARRAYS}
    arrays.update(threshold=np.float64(model.threshold), quantile=np.float64(model.quantile))
    arrays.update(n_fit=np.int64(model.n_fit), n_val=np.int64(model.n_val), format=np.int64(_FORMAT))
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})


def load(path: str | os.PathLike) -> OODModel:
    """Read a file written by :func:`save`; never unpickles (``allow_pickle=False``).

    Raises ValueError for a file with other keys, object arrays, wrong shapes or a newer format.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {key: z[key] for key in z.files}
    except ValueError as e:  # e.g. "Object arrays cannot be loaded when allow_pickle=False"
        raise ValueError(f"{path}: refused as an OOD model file: {e}") from None
    expected = {*_ARRAYS, *_SCALARS, "format"}
    if set(data) != expected:
        raise ValueError(f"{path}: not an OOD model file: keys {sorted(data)}, expected {sorted(expected)}")
    if data["format"].shape != () or int(data["format"]) != _FORMAT:
        raise ValueError(f"{path}: OOD model format {data['format']!r}, this code reads format {_FORMAT}")
    for name in _SCALARS:
        if data[name].shape != ():
            raise ValueError(f"{path}: {name} must be a scalar, got shape {data[name].shape}")
    for name, a in data.items():
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{path}: {name} has dtype {a.dtype}, expected a numeric array")
    return OODModel(**{name: data[name] for name in (*_ARRAYS, *_SCALARS)})
