"""The thesis' preprocessing (§3.2): pure functions from a radiograph's pixels to the cached PNG's.

Per image, in the thesis' order:

1. clip intensities at the 0.5 / 99.5 percentiles (``preprocess.clip_percentiles``);
2. min-max normalise to 0-255;
3. zero-pad to a square, centred, keeping the aspect ratio;
4. CLAHE (``preprocess.contrast``: ``clahe``, or ``histeq`` / ``none`` for the Table 6 ablation);
5. resize to ``preprocess.size`` (1024 in the thesis profile) with area interpolation;
6. write PNG.

Lesion masks take the same pad and resize (:meth:`Geometry.apply_to_mask`) and are stored
undilated. The thesis' morphological dilation (:func:`dilate_mask`, kernel in mm or as a fraction of
the image side) is applied when training targets are built, so the "no dilation" ablation reuses the
same cache.

Everything runs on OpenCV: a histogram gives the percentiles in one pass instead of a sort, and
CLAHE and INTER_AREA resizing are native. ``scxnn bench preprocess``
(:func:`scxnn.bench.bench_preprocess`) measures this against a straightforward scikit-image version
of the same steps (:func:`reference_pipeline`). The batch that applies these steps to files is
:mod:`scxnn.batch`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from scxnn.config import Config, Preprocess
from scxnn.utils import sha256_text

# Bump when the pixels this module produces change for the same settings: it invalidates caches.
PREPROCESS_VERSION = 1
_HIST_BINS = 65536


# --------------------------------------------------------------------------- single image


def fingerprint(p: Preprocess) -> str:
    """Hash of everything that changes the cached PNGs (dilation is applied later, so it is not in)."""
    key = {
        "version": PREPROCESS_VERSION,
        "clip_percentiles": list(p.clip_percentiles),
        "contrast": p.contrast,
        "clahe_clip_limit": p.clahe_clip_limit if p.contrast == "clahe" else None,
        "clahe_tiles": p.clahe_tiles if p.contrast == "clahe" else None,
        "size": p.size,
        "voi_lut": p.voi_lut,
    }
    return sha256_text(json.dumps(key, sort_keys=True), 12)


@dataclass(frozen=True)
class Geometry:
    """How a source image maps onto the square output: padding offsets, then a uniform scale."""

    height: int
    width: int
    size: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def offset(self) -> tuple[int, int]:  # (top, left) of the source inside the padded square
        return (self.side - self.height) // 2, (self.side - self.width) // 2

    def pad(self, img: np.ndarray) -> np.ndarray:
        top, left = self.offset
        bottom, right = self.side - self.height - top, self.side - self.width - left
        return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)

    def resize(self, img: np.ndarray) -> np.ndarray:
        if img.shape[0] == self.size:
            return img
        interp = cv2.INTER_AREA if img.shape[0] > self.size else cv2.INTER_LINEAR
        return cv2.resize(img, (self.size, self.size), interpolation=interp)

    def apply_to_mask(self, mask: np.ndarray) -> np.ndarray:
        """Pad and resize a source-geometry mask; returns uint8 0/255.

        Area averaging then a 0.5 threshold keeps small lesions from vanishing or growing, which
        nearest-neighbour sampling of a heavily downscaled mask would do.
        """
        if mask.shape[:2] != (self.height, self.width):
            raise ValueError(f"mask shape {mask.shape[:2]} differs from the image's {(self.height, self.width)}")
        m = self.resize(self.pad((mask > 0).astype(np.float32)))
        return np.where(m >= 0.5, 255, 0).astype(np.uint8)

    def output_spacing_mm(self, source_spacing_mm: float | None) -> float | None:
        return None if source_spacing_mm is None else source_spacing_mm * self.side / self.size


def cache_dir(cfg: Config) -> Path:
    """The PNG cache for the profile's settings, named by their :func:`fingerprint`; other settings
    (e.g. the histeq ablation) get their own."""
    p = cfg.preprocess
    return cfg.path("data") / f"png{p.size}-{p.contrast}-{fingerprint(p)}"


def percentiles(img: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The lo / hi percentiles of ``img`` from one 16-bit histogram pass (no sort).

    Exact for integer-valued data spanning fewer than 65536 values, which covers every DICOM up to
    16 bits stored; otherwise within 1/65535 of the intensity range. The image is offset to a uint16
    view first because OpenCV's histogram is ten times faster on uint16 than on float32.
    """
    mn, mx = (float(v) for v in cv2.minMaxLoc(img if img.dtype != np.int32 else img.astype(np.float32))[:2])
    if mx <= mn:
        return mn, mx
    span = mx - mn
    sample = img.ravel()[:: max(1, img.size // 4096)]
    integral = np.issubdtype(img.dtype, np.integer) or bool(np.all(np.modf(sample)[0] == 0))
    scale = 1.0 if integral and span < _HIST_BINS else (_HIST_BINS - 1) / span
    f32 = img.astype(np.float32, copy=False)
    if scale < 1e30:
        u16 = ((f32 - mn) * scale).astype(np.uint16)
    else:  # a tiny span (a header rescaling by 1e-38): scale itself overflows float32, so divide first
        u16 = ((f32 - np.float32(mn)) / np.float32(span) * np.float32(_HIST_BINS - 1)).astype(np.uint16)
    nbins = int(span * scale) + 1
    cdf = np.cumsum(cv2.calcHist([u16], [0], None, [nbins], [0, nbins]).ravel())

    def at(q: float) -> float:
        return mn + int(np.searchsorted(cdf, q / 100.0 * cdf[-1], side="left")) / scale

    return at(lo), at(hi)


def clip_and_normalise(img: np.ndarray, p: Preprocess) -> np.ndarray:
    """Steps 1-2: percentile clip, then min-max to uint8 0-255."""
    lo, hi = percentiles(img, *p.clip_percentiles)
    f32 = img.astype(np.float32, copy=False)
    clipped = np.clip(f32, lo, hi)
    mn, mx = float(clipped.min()), float(clipped.max())
    if mx <= mn:
        raise ValueError(f"no contrast left after the {p.clip_percentiles[0]:g}-{p.clip_percentiles[1]:g} percentile clip "
                         "(almost every pixel has the same value)")
    alpha = 255.0 / (mx - mn)
    return cv2.convertScaleAbs(clipped, alpha=alpha, beta=-mn * alpha)


def enhance(img8: np.ndarray, p: Preprocess) -> np.ndarray:
    """Step 4: CLAHE (thesis), histogram equalisation or nothing (Table 6 ablation)."""
    if p.contrast == "clahe":
        return cv2.createCLAHE(clipLimit=p.clahe_clip_limit, tileGridSize=(p.clahe_tiles, p.clahe_tiles)).apply(img8)
    if p.contrast == "histeq":
        return cv2.equalizeHist(img8)
    return img8


def preprocess_pixels(img: np.ndarray, p: Preprocess) -> tuple[np.ndarray, Geometry]:
    """Steps 1-5 on a 2-D image (any dtype, MONOCHROME2 sense); returns the uint8 square and its geometry."""
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale image, got shape {img.shape}")
    geo = Geometry(img.shape[0], img.shape[1], p.size)
    out = clip_and_normalise(img, p)
    out = geo.pad(out)
    out = enhance(out, p)
    return geo.resize(out), geo


def dilate_mask(mask: np.ndarray, p: Preprocess, spacing_mm: float | None = None) -> np.ndarray:
    """The thesis' morphological dilation of a (preprocessed) lesion mask, with an elliptical kernel.

    ``preprocess.dilation`` is a fraction of the image side, or millimetres when ``dilation_unit`` is
    ``mm`` (which needs the output pixel spacing, ``pixel_spacing_mm`` in the manifest).
    """
    if p.dilation <= 0:
        return mask
    if p.dilation_unit == "mm":
        if not spacing_mm:
            raise ValueError("dilation in mm needs the pixel spacing; this image has none (use dilation_unit: fraction)")
        radius = p.dilation / spacing_mm
    else:
        radius = p.dilation * mask.shape[0]
    k = 2 * max(1, int(round(radius))) + 1
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))


def preview(img: np.ndarray, side: int = 256) -> np.ndarray:
    """A small uint8 picture of any decoded image (1st-99th percentile window, long side ``side``),
    for showing a film that the gate refused: the reader can see why (a hip, a tibia) without it
    going through the preprocessing meant for chest films."""
    a = np.asarray(img)
    lo, hi = percentiles(a, 1.0, 99.0)
    a = np.clip((a.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    scale = side / max(a.shape[:2])
    if scale < 1:
        a = cv2.resize(a, (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    return (a * 255 + 0.5).astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def read_png(path: str | os.PathLike) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable PNG")
    return img


# --------------------------------------------------------------------------- reference (benchmark)


def reference_pipeline(img: np.ndarray, p: Preprocess) -> np.ndarray:
    """The same steps written the obvious way with NumPy and scikit-image; the benchmark's baseline."""
    from skimage import exposure, transform

    lo, hi = np.percentile(img, p.clip_percentiles)
    x = np.clip(img.astype(np.float64), lo, hi)
    x = (x - x.min()) / (x.max() - x.min())
    h, w = x.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    x = np.pad(x, ((top, side - h - top), (left, side - w - left)))
    if p.contrast == "clahe":
        x = exposure.equalize_adapthist(x, kernel_size=max(1, side // p.clahe_tiles), clip_limit=0.01)
    elif p.contrast == "histeq":
        x = exposure.equalize_hist(x)
    x = transform.resize(x, (p.size, p.size), anti_aliasing=True)
    return (x * 255).round().astype(np.uint8)
