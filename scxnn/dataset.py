"""The torch side of the data: :class:`RadiographDataset` over the preprocessed PNG cache, with the
decoder's targets and the training augmentations. Kept apart from :mod:`scxnn.data` so the manifest
layer (used by every preprocessing worker) never imports torch."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch as _torch

from scxnn.data import MANIFEST_NAME, in_scope, parse_masks, read_manifest
from scxnn.pixels import cache_dir, dilate_mask, read_png

_DatasetBase = _torch.utils.data.Dataset
# RadiographDataset's ``finding`` for a decoder target made of every lesion of the film (union of
# its masks): the shipped trunk's reconstruction task (scxnn.pretrain, pretrain.masks).
ANY_FINDING = "*"

# Field of view assumed when ``dilation_unit: mm`` but an image has no pixel spacing: a typical
# 43 cm chest detector across the padded square.
ASSUMED_FIELD_MM = 430.0


def sample_seed(*parts: int) -> int:
    """A 32-bit seed that is a pure function of integers (e.g. seed, epoch, index)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


def build_augment(train_cfg):
    """The training augmentations (albumentations) from ``cfg.train.augment_*``, or None when off.

    Spatial transforms (shift, rotation) move image and mask together; the intensity ones (gamma,
    sharpen, blur, noise) touch the image only.
    """
    if not train_cfg.augment or train_cfg.augment_p <= 0:
        return None
    import albumentations as A

    p = train_cfg.augment_p
    t = []
    if train_cfg.augment_shift > 0 or train_cfg.augment_rotate > 0:
        s, r = train_cfg.augment_shift, train_cfg.augment_rotate
        t.append(A.Affine(translate_percent=(-s, s), rotate=(-r, r), border_mode=0, fill=0, fill_mask=0, p=p))
    lo, hi = train_cfg.augment_gamma
    if (lo, hi) != (1.0, 1.0):
        t.append(A.RandomGamma(gamma_limit=(lo * 100, hi * 100), p=p))
    if train_cfg.augment_sharpen > 0:
        t.append(A.Sharpen(alpha=(min(0.05, train_cfg.augment_sharpen), train_cfg.augment_sharpen), lightness=(1.0, 1.0), p=p))
    if train_cfg.augment_blur >= 3:
        k = train_cfg.augment_blur if train_cfg.augment_blur % 2 else train_cfg.augment_blur - 1
        t.append(A.GaussianBlur(blur_limit=(3, k), p=p))
    if train_cfg.augment_noise > 0:
        t.append(A.GaussNoise(std_range=(0.0, train_cfg.augment_noise), p=p))
    return A.Compose(t) if t else None


class RadiographDataset(_DatasetBase):
    """Images of the PNG cache for one finding's model.

    Item ``i`` is a dict: ``image`` (1, H, W) float32 in [0, 1]; ``label`` int64 (see
    :func:`scxnn.labels.finding_labels`); ``target`` (1, H, W) float32, the decoder's target;
    ``has_recon`` bool; ``index`` int.

    * decoder ``reconstruction``: target = image x (dilated) mask of the *target* finding's lesions
      (zeros for an image without one), the thesis' lesion reconstruction; with ``finding`` =
      :data:`ANY_FINDING`, of every lesion the film has;
    * decoder ``segmentation``: target = the (dilated) binary mask;
    * ``has_recon`` is True only for hard-label rows (weak labels have no masks: no MSE for them), and
      False for a target-positive hard row whose mask file is missing.

    With ``augment`` set, every random draw of item ``i`` is a pure function of (seed, epoch, i):
    call :meth:`set_epoch` each epoch. Results then depend neither on the worker count nor on
    resuming.
    """

    def __init__(self, df: pd.DataFrame, base: str | os.PathLike, finding: str, labels: Sequence[int], cfg, augment: bool = False, seed: int = 0):
        if len(df) != len(labels):
            raise ValueError(f"{len(df)} rows but {len(labels)} labels")
        self.base = Path(base)
        self.finding = finding
        self.paths = [self._resolve(p) for p in df["path"]]
        if finding == ANY_FINDING:  # every lesion of the film (the trunk's decoder target)
            self.mask_paths = [[self._resolve(m) for m in parse_masks(v).values()] or None for v in df["masks"]]
            self.positive = np.array([bool(parse_masks(v)) for v in df["masks"]], bool)
        else:
            masks = [parse_masks(m).get(finding) for m in df["masks"]]
            self.mask_paths = [[self._resolve(m)] if m else None for m in masks]
            self.positive = (df[finding].fillna(0).astype(int).to_numpy() == 1) if finding in df else np.zeros(len(df), bool)
        self.hard = [lt == "hard" for lt in df["label_type"]]
        self.labels = np.asarray(labels, dtype=np.int64)
        sp = pd.to_numeric(df["pixel_spacing_mm"], errors="coerce") if "pixel_spacing_mm" in df else pd.Series(np.nan, index=df.index)
        self.spacing = sp.to_numpy(dtype=float)
        self.pre = cfg.preprocess
        self.decoder = cfg.model.decoder
        self.dilate = cfg.model.dilate_mask
        self.augment = build_augment(cfg.train) if augment else None
        self.seed = int(seed)
        self.epoch = 0

    def _resolve(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.base / q

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def _mask(self, i: int, shape: tuple[int, int]) -> np.ndarray | None:
        paths = self.mask_paths[i]
        if paths is None or not all(p.is_file() for p in paths):
            return None

        m = np.zeros(shape, np.uint8)
        for mp_ in paths:
            one = read_png(mp_) > 0
            if one.shape != shape:
                raise ValueError(f"{mp_}: mask {one.shape} does not match its image {shape}")
            m |= one.astype(np.uint8)
        if self.dilate:
            spacing = self.spacing[i]
            if not np.isfinite(spacing) or spacing <= 0:
                spacing = ASSUMED_FIELD_MM / shape[0]
            m = dilate_mask(m, self.pre, spacing)
        return m

    def __getitem__(self, i: int) -> dict:
        img = read_png(self.paths[i])
        if img.ndim == 3:
            img = img[..., 0]
        if img.dtype != np.uint8:  # 16-bit caches: scale to 8 bits
            img = (img.astype(np.float32) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
        hard = self.hard[i]
        mask = self._mask(i, img.shape) if hard and self.positive[i] else None
        has_recon = bool(hard and self.decoder != "none" and (mask is not None or not self.positive[i]))
        if mask is None:
            mask = np.zeros(img.shape, np.uint8)
        if self.augment is not None:
            self.augment.set_random_seed(sample_seed(self.seed, self.epoch, i))
            out = self.augment(image=img, mask=mask)
            img, mask = out["image"], out["mask"]
        x = _torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32) / 255.0)[None]
        m = _torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        target = m if self.decoder == "segmentation" else x * m
        return {"image": x, "label": _torch.tensor(self.labels[i], dtype=_torch.int64), "target": target, "has_recon": _torch.tensor(has_recon), "index": i}


# --------------------------------------------------------------------------- loading


def load_study_manifest(cfg, manifest) -> tuple[pd.DataFrame, Path]:
    """(in-scope films, PNG cache folder) of a study: the profile's cache (``manifest`` None), a
    manifest file, or a DataFrame of the profile's cache."""
    if manifest is None:
        path = cache_dir(cfg) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no preprocessed cache for profile {cfg.profile!r} at {path}; run the preprocessing step first (make preprocess PROFILE={cfg.profile})")
        manifest = path
    if isinstance(manifest, pd.DataFrame):
        return in_scope(manifest, "training manifest")[0], cache_dir(cfg)
    path = Path(manifest)
    return in_scope(read_manifest(path, list(cfg.findings), list(cfg.unseen_findings)), str(path))[0], path.parent


class _ListSampler(_torch.utils.data.Sampler):
    """The given indices, in the given order (each epoch's seeded class-balanced draws)."""

    def __init__(self, indices: Sequence[int]):
        self.indices = list(indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_init(worker_id: int) -> None:
    s = _torch.initial_seed() % 2**32  # derived from the loader's own seeded generator
    random.seed(s)
    np.random.seed(s)


def make_loader(ds, indices: Sequence[int], cfg, seed: int, key: int, device: _torch.device, batch_size: int | None = None):
    return _torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size or cfg.train.batch_size,
        sampler=_ListSampler(indices),
        num_workers=cfg.train.num_workers,
        worker_init_fn=_worker_init,
        generator=_torch.Generator().manual_seed(sample_seed(seed, key, 0xD1)),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
