"""How well Grad-CAM localises lesions, which the thesis shows only qualitatively: scores against the
hard labels' lesion masks, beside what a random map scores on the same masks.

* :func:`peak` and :func:`pointing_game`: does the CAM's maximum lie in the lesion mask?
* :func:`top_region` and :func:`top_region_iou`: IoU of the CAM's hot region, the lesion's size, with
  the mask.
* :func:`random_baseline`: both scores of a map that knows nothing of the image.
* :func:`localization_table`: per finding model, both scores over the positive films of a split
  (:func:`scxnn.cam.positive_films`) beside their random baselines (notebook 06's table).
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from scxnn.cam import gradcam_and_probs, positive_films, study_cache, study_order
from scxnn.checkpoints import LoadedModel, check_fingerprint, load_models
from scxnn.config import Config
from scxnn.pixels import fingerprint


# --------------------------------------------------------------------------- metrics


def _check_pair(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam, mask = np.asarray(cam, dtype=np.float64), np.asarray(mask) > 0
    if cam.shape != mask.shape or cam.ndim != 2:
        raise ValueError(f"cam {cam.shape} and mask {mask.shape} must be 2-D arrays of one shape")
    if not mask.any():
        raise ValueError("the lesion mask is empty: localisation is undefined")
    return cam, mask


def _grow(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """The mask plus every pixel within ``tolerance`` pixels (Euclidean) of it."""
    return mask if tolerance <= 0 else _distance_to(mask) <= tolerance


def peak(cam: np.ndarray) -> tuple[int, int]:
    """The (row, col) the CAM points at: its maximum.

    When several pixels share the maximum, the one nearest their centroid is taken (then the first
    in raster order). A coarse map upsampled bilinearly has a flat top that reaches the image border
    (a 2 x 2 map at 64 px: a whole 16 x 16 corner), and ``np.argmax`` would always name the plateau's
    top-left pixel, i.e. the image corner, rather than the place the map marks.
    """
    cam = np.asarray(cam)
    ys, xs = np.nonzero(cam == cam.max())
    if len(ys) == 1:
        return int(ys[0]), int(xs[0])
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[i]), int(xs[i])


def pointing_game(cam: np.ndarray, mask: np.ndarray, tolerance: float = 0) -> bool:
    """Whether the CAM's maximum (:func:`peak`) lies in the lesion mask, or within ``tolerance``
    pixels of it. A constant map points nowhere and counts as a miss: it carries no location."""
    cam, mask = _check_pair(cam, mask)
    if cam.max() == cam.min():
        return False
    y, x = peak(cam)
    return bool(_grow(mask, tolerance)[y, x])


def top_region(cam: np.ndarray, area: int) -> np.ndarray:
    """Pixels at or above the ``area``-th largest CAM value: the "hot" region of about that area
    (ties at the threshold are all kept, so a flat map gives the whole image, not an arbitrary part)."""
    cam = np.asarray(cam, dtype=np.float64)
    area = int(min(max(area, 1), cam.size))
    threshold = np.partition(cam.ravel(), cam.size - area)[cam.size - area]
    return cam >= threshold


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def top_region_iou(cam: np.ndarray, mask: np.ndarray, top_fraction: float | None = None) -> float:
    """IoU of the CAM's top region and the lesion mask.

    The top region has the mask's area (the CAM is asked "where is a lesion of this size?"), or
    ``top_fraction`` of the image when given.
    """
    cam, mask = _check_pair(cam, mask)
    if top_fraction is None:
        area = int(mask.sum())
    else:
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
        area = max(1, round(top_fraction * cam.size))
    return _iou(top_region(cam, area), mask)


def random_baseline(mask: np.ndarray, tolerance: float = 0, top_fraction: float | None = None, draws: int = 16, rng: np.random.Generator | None = None) -> tuple[float, float]:
    """(pointing hit rate, mean IoU) a map with no knowledge of the image would score on ``mask``.

    Pointing: a uniformly random point hits with probability = the (tolerance-grown) mask's area
    fraction, exactly. IoU: the mask itself moved to ``draws`` uniformly random positions (wrapping
    around the borders keeps its area), i.e. a blob of the right size and shape in the wrong place,
    which is a fairer reference for a blob-shaped CAM than scattered random pixels.
    """
    mask = np.asarray(mask) > 0
    if not mask.any():
        raise ValueError("the lesion mask is empty: localisation is undefined")
    rng = rng if rng is not None else np.random.default_rng(0)
    pointing = float(_grow(mask, tolerance).mean())
    h, w = mask.shape
    ious = []
    for _ in range(draws):
        moved = np.roll(mask, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
        if top_fraction is None:
            region = moved
        else:  # a random blob of the requested area: the moved mask's top region of a distance map
            region = top_region(-_distance_to(moved), max(1, round(top_fraction * mask.size)))
        ious.append(_iou(region, mask))
    return pointing, float(np.mean(ious))


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest pixel of ``mask`` (0 inside)."""
    import cv2

    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


# --------------------------------------------------------------------------- the table


def localization_table(
    cfg: Config,
    model_dirs: Mapping[str, str | os.PathLike | LoadedModel] | str | os.PathLike,
    split: str = "test",
    max_per_finding: int = 50,
    target_class: int = 1,
    method: str = "gradcam",
    tolerance: float = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Per finding, how well the target-class CAM points at the lesion, with a random-map reference.

    Films: hard-labelled positives of ``split`` with a non-empty lesion mask (at most
    ``max_per_finding``, by image id), from another split when ``split`` has none (``note`` column).
    Columns: ``finding, split, n, pointing_hit_rate, mean_iou, random_pointing_rate, random_mean_iou,
    mean_p_target, note``; rates are NaN where n is 0. ``random_*``: what a map that knows nothing of
    the image scores on the same masks (:func:`random_baseline`).
    """
    models = load_models(model_dirs, device)
    df, base = study_cache(cfg)
    expected = fingerprint(cfg.preprocess)
    rng = np.random.default_rng(seed)
    rows = []
    for finding in study_order(cfg, list(models)):
        lm = models[finding]
        check_fingerprint(lm, expected)
        films = positive_films(df, base, finding, cfg, split, max_per_finding)
        row = {"finding": finding, "split": films.split, "n": len(films.image_ids)}
        if films.image_ids:
            cams, probs = gradcam_and_probs(lm.model, films.images, target_class, method)
            hits = [pointing_game(c, m, tolerance) for c, m in zip(cams, films.masks)]
            ious = [top_region_iou(c, m) for c, m in zip(cams, films.masks)]
            base_rates = [random_baseline(m, tolerance, rng=rng) for m in films.masks]
            row.update(
                pointing_hit_rate=float(np.mean(hits)),
                mean_iou=float(np.mean(ious)),
                random_pointing_rate=float(np.mean([b[0] for b in base_rates])),
                random_mean_iou=float(np.mean([b[1] for b in base_rates])),
                mean_p_target=float(probs[:, 1].mean()),
            )
        else:
            row.update(pointing_hit_rate=math.nan, mean_iou=math.nan, random_pointing_rate=math.nan, random_mean_iou=math.nan, mean_p_target=math.nan)
        row["note"] = films.note
        rows.append(row)
    cols = ["finding", "split", "n", "pointing_hit_rate", "mean_iou", "random_pointing_rate", "random_mean_iou", "mean_p_target", "note"]
    return pd.DataFrame(rows, columns=cols)
