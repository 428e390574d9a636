"""scxnn.pixels: the thesis' preprocessing steps, mask geometry and dilation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scxnn.config import load_config
from scxnn.pixels import (
    Geometry,
    clip_and_normalise,
    dilate_mask,
    fingerprint,
    percentiles,
    preprocess_pixels,
    reference_pipeline,
)

from conftest import PARAMS


@pytest.fixture
def pre():
    return load_config("smoke", params=PARAMS).preprocess


def _radiograph(h=300, w=240, seed=0, bits=12):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 0.5 + 0.3 * np.sin(x / 17.0) * np.cos(y / 23.0) + rng.normal(0, 0.02, (h, w))
    img[:5, :5] = 5.0  # hot pixels the percentile clip must ignore
    return np.clip(img / 5.0 * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.uint8])
def test_percentiles_match_numpy(dtype):
    rng = np.random.default_rng(3)
    img = (rng.random((257, 199)) * 200 - (50 if dtype == np.int16 else 0)).astype(dtype)
    got = percentiles(img, 0.5, 99.5)
    want = np.percentile(img, [0.5, 99.5], method="inverted_cdf")
    span = float(img.max()) - float(img.min())
    assert np.allclose(got, want, atol=span / 65535 * 2 + 1e-6)


def test_clip_then_minmax_spans_0_255_and_ignores_outliers(pre):
    img = _radiograph()
    out = clip_and_normalise(img, pre)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    # The hot corner is clipped at the 99.5th percentile instead of compressing everything else.
    assert np.median(out) > 60


def test_pipeline_pads_to_square_keeping_aspect(pre):
    p = dataclasses.replace(pre, size=128, contrast="none")
    img = np.zeros((300, 150), np.uint16)
    img[:, :] = 1000
    img[100:200, 50:100] = 3000  # a bright block in the middle of a tall image
    img[0, 0] = 0
    out, geo = preprocess_pixels(img, p)
    assert out.shape == (128, 128) and (geo.side, geo.offset) == (300, (0, 75))
    assert out[:, :20].max() == 0 and out[:, -20:].max() == 0  # zero padding left and right
    ys, xs = np.nonzero(out > 200)
    h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
    assert abs(h / w - 2.0) < 0.15  # the 100x50 block keeps its 2:1 aspect


def test_constant_image_is_an_error(pre):
    with pytest.raises(ValueError, match="no contrast left"):
        preprocess_pixels(np.full((64, 64), 7, np.uint16), pre)


@pytest.mark.parametrize("contrast", ["clahe", "histeq", "none"])
def test_contrast_variants_differ(pre, contrast):
    img = _radiograph()
    outs = {c: preprocess_pixels(img, dataclasses.replace(pre, contrast=c))[0] for c in ("clahe", "histeq", "none")}
    others = [c for c in outs if c != contrast]
    assert all(not np.array_equal(outs[contrast], outs[o]) for o in others)


def test_fingerprint_tracks_pixel_settings_only(pre):
    assert fingerprint(pre) == fingerprint(dataclasses.replace(pre, dilation=0.5))
    assert fingerprint(pre) != fingerprint(dataclasses.replace(pre, clahe_clip_limit=3.0))
    assert fingerprint(pre) != fingerprint(dataclasses.replace(pre, size=pre.size * 2))


def test_mask_follows_pad_and_resize():
    geo = Geometry(300, 150, 100)
    mask = np.zeros((300, 150), np.uint8)
    mask[120:180, 60:90] = 1
    img = np.zeros((300, 150), np.float32)
    img[120:180, 60:90] = 1
    m = geo.apply_to_mask(mask)
    warped = geo.resize(geo.pad(img))
    assert set(np.unique(m)) <= {0, 255}
    assert np.array_equal(m > 0, warped >= 0.5)
    assert abs((m > 0).sum() - 60 * 30 / 9) < 30  # area scales with (100/300)^2
    with pytest.raises(ValueError, match="differs"):
        geo.apply_to_mask(np.zeros((10, 10), np.uint8))
    assert geo.output_spacing_mm(0.15) == pytest.approx(0.45)


def test_tiny_lesion_survives_downscaling():
    geo = Geometry(1000, 1000, 250)
    mask = np.zeros((1000, 1000), np.uint8)
    mask[500:506, 500:506] = 255  # 6 px lesion -> 1.5 px
    assert geo.apply_to_mask(mask).sum() > 0


def test_dilation_fraction_and_mm(pre):
    m = np.zeros((100, 100), np.uint8)
    m[50, 50] = 255
    frac = dilate_mask(m, dataclasses.replace(pre, dilation_unit="fraction", dilation=0.05))
    assert (frac > 0).sum() > 50 and frac[50, 55] > 0 and frac[50, 58] == 0
    mm = dilate_mask(m, dataclasses.replace(pre, dilation_unit="mm", dilation=10.0), spacing_mm=2.0)
    assert mm[50, 55] > 0 and mm[50, 57] == 0
    assert np.array_equal(dilate_mask(m, dataclasses.replace(pre, dilation=0.0)), m)
    with pytest.raises(ValueError, match="pixel spacing"):
        dilate_mask(m, dataclasses.replace(pre, dilation_unit="mm", dilation=5.0), spacing_mm=None)


def test_reference_pipeline_agrees_roughly(pre):
    """The benchmark's baseline must compute the same thing, or the ratio means nothing."""
    p = dataclasses.replace(pre, size=128, contrast="none")
    img = _radiograph(256, 256)
    ours = preprocess_pixels(img, p)[0].astype(float)
    ref = reference_pipeline(img, p).astype(float)
    assert np.abs(ours - ref).mean() < 3.0
