"""The plausibility gate: could these decoded pixels be a chest radiograph the models may judge?

One rule, applied wherever a film enters the study: by ``scxnn preprocess`` (so training and
``scxnn evaluate``, which only ever see the preprocessed cache, are covered too) and by
``scxnn predict``. A film that fails gets its reason: a skipped row in ``skipped.csv``, a
``rejected`` row in ``predictions.csv``.

The checks, in order (the first that fails is the reason):

1. **scope** (from the header, :func:`scxnn.dicom.scope_flags`): a CR or DX chest film, not a
   lateral view. Plain PNG/JPEG files carry no header and pass;
2. **size**: the shorter side is at least ``preprocess.min_side`` px (capped at the models' input
   side ``preprocess.size``, so small study profiles can use small films): thumbnails, icons and
   the 45 x 10 or 1 x 1760 strips corrupt headers produce are not films;
3. **shape**: the aspect ratio is at most ``preprocess.max_aspect`` (chest films are 14 x 17 in or
   17 x 17 in);
4. **dynamic range**: at least :data:`MIN_GREY_LEVELS` distinct grey levels between the 1st and
   99th percentiles (a 1-bit image, or data whose header threw the bits away, is not a radiograph);
5. **looks like a radiograph**, two cheap statistics on at most 512 x 512 samples of the image
   (:func:`pixel_statistics`), both in units that do not depend on the bit depth:

   * the *neighbour correlation* of adjacent samples: a radiograph is smooth at the pixel scale;
   * the *jump share*: the share of adjacent pairs that differ by more than half the image's
     (0.5-99.5 percentile) range.

   Measured 2026-11-30 with these functions (neighbour correlation, jump share):

   ==========================================  =============  ===========
   films                                       correlation    jump share
   ==========================================  =============  ===========
   460 Kermany films (shared/realdata)         >= 0.972       <= 0.0024
   18 decodable real CR DICOMs                 >= 0.996       <= 0.0002
   2197 demo films, synthetic generator v3     >= 0.910       <= 0.0045
   1000 NIH 64-px thumbnails                   >= 0.863       <= 0.0156
   a CR film with 10% of its bytes overwritten 0.73-0.86      0.046-0.070
   a CR film with half its bytes overwritten   0.25-0.45      0.15-0.21
   random bytes                                0.00           0.25
   ==========================================  =============  ===========

   Limits: :data:`MIN_NEIGHBOUR_CORRELATION` and :data:`MAX_JUMP_SHARE`.

What the gate cannot see: a valid-looking film of the wrong patient, a crop, an inverted
MONOCHROME1 header (polarity is a header fact, see :mod:`scxnn.dicom`). Films that pass the gate
but are unlike the training films are the job of the OOD gate (:mod:`scxnn.ood`) in ``predict``.
Header-level corruption the pixels betray (a flipped Pixel Representation, a too-small Bits
Stored, damaged JPEG data) is refused earlier, by the reader.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GATE_VERSION", "MIN_GREY_LEVELS", "MIN_NEIGHBOUR_CORRELATION", "MAX_JUMP_SHARE", "check", "jump_share",
           "pixel_statistics"]

# Bump when the rule changes: preprocessing records made under another rule are re-checked.
GATE_VERSION = 1
MIN_GREY_LEVELS = 32
MIN_NEIGHBOUR_CORRELATION = 0.80
MAX_JUMP_SHARE = 0.03
_SAMPLE = 512  # at most this many rows and columns are sampled (by stride) for the statistics


def _sample(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape
    return np.asarray(pixels[:: max(1, h // _SAMPLE), :: max(1, w // _SAMPLE)], dtype=np.float64)


def jump_share(pixels: np.ndarray) -> float:
    """Share of adjacent sample pairs (both directions) that differ by more than half of the
    0.5-99.5 percentile range; 0 for an image without range."""
    return pixel_statistics(pixels)["jump_share"]


def pixel_statistics(pixels: np.ndarray) -> dict:
    """``grey_levels`` (distinct values between the 1st and 99th percentiles, of the sample),
    ``neighbour_correlation`` and ``jump_share`` (see the module docstring)."""
    x = _sample(pixels)
    p1, p99 = np.percentile(x, [1, 99])
    inner = x[(x >= p1) & (x <= p99)]
    levels = int(np.unique(inner).size) if p99 > p1 else 1
    lo, hi = np.percentile(x, [0.5, 99.5])
    if not hi > lo or x.shape[0] < 2 or x.shape[1] < 2:
        return {"grey_levels": levels, "neighbour_correlation": float("nan"), "jump_share": 0.0}
    x = np.clip(x, lo, hi)
    a = np.concatenate([x[:, :-1].ravel(), x[:-1, :].ravel()])
    b = np.concatenate([x[:, 1:].ravel(), x[1:, :].ravel()])
    jumps = float(np.mean(np.abs(a - b) > 0.5 * (hi - lo)))
    sa, sb = a.std(), b.std()
    corr = float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb)) if sa > 0 and sb > 0 else float("nan")
    return {"grey_levels": levels, "neighbour_correlation": corr, "jump_share": jumps}


def check(pixels: np.ndarray, pre, scope_flags=()) -> str | None:
    """Why ``pixels`` (2-D, MONOCHROME2 sense, as :mod:`scxnn.dicom` reads them) cannot be screened
    under the preprocessing settings ``pre`` (a :class:`scxnn.config.Preprocess`); None when they can.
    ``scope_flags``: the reader's header flags. Each reason starts with ``out of scope:`` or
    ``implausible:`` and says what was expected."""
    if scope_flags:
        return ("out of scope: the models screen chest PA/AP CR/DX films; this file is " + ", ".join(scope_flags))
    h, w = pixels.shape
    min_side = min(pre.min_side, pre.size)
    if min(h, w) < min_side:
        return f"implausible: image {w}x{h} px is smaller than a radiograph (preprocess.min_side {min_side} px)"
    if max(h, w) / min(h, w) > pre.max_aspect:
        return f"implausible: aspect ratio {max(h, w) / min(h, w):.1f}:1 is not a chest film's (preprocess.max_aspect {pre.max_aspect:g})"
    s = pixel_statistics(pixels)
    if s["grey_levels"] < MIN_GREY_LEVELS:
        return (f"implausible: only {s['grey_levels']} grey level(s) between the 1st and 99th percentiles "
                f"(a radiograph has at least {MIN_GREY_LEVELS})")
    if not s["neighbour_correlation"] >= MIN_NEIGHBOUR_CORRELATION:
        return (f"implausible: does not look like a radiograph: neighbouring pixels correlate {s['neighbour_correlation']:.2f} "
                f"(radiographs >= {MIN_NEIGHBOUR_CORRELATION:.2f}; noise or damaged pixel data?)")
    if s["jump_share"] > MAX_JUMP_SHARE:
        return (f"implausible: does not look like a radiograph: {s['jump_share']:.1%} of neighbouring pixels jump by over half "
                f"the range (radiographs <= {MAX_JUMP_SHARE:.0%}; damaged pixel data?)")
    return None
