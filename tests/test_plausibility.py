"""scxnn.plausibility: the gate that refuses pixels that cannot be a chest radiograph, with the reason."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import defects
from scxnn import plausibility as P
from scxnn.config import load_config

PRE = load_config("smoke").preprocess


def _blocks(h: int = 320, w: int = 288) -> np.ndarray:
    """Smooth within 16-px blocks that alternate dark and bright: correlated, but jumping at every block edge."""
    y, x = np.mgrid[0:h, 0:w]
    img = ((y // 16 + x // 16) % 2) * 3000 + 0.3 * y + np.random.default_rng(0).normal(0, 2, (h, w))
    return img.astype(np.uint16)


def _two_levels(h: int = 320, w: int = 288) -> np.ndarray:
    img = np.zeros((h, w), np.uint16)
    img[:, w // 2:] = 4095
    return img


def _noise(h: int = 320, w: int = 288) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 4096, (h, w)).astype(np.uint16)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_a_smooth_chest_film_passes_at_any_bit_depth(bits):
    film = defects.chest(bits=bits)
    assert P.check(film, PRE) is None
    s = P.pixel_statistics(film)
    assert s["grey_levels"] >= P.MIN_GREY_LEVELS and s["neighbour_correlation"] > 0.95 and s["jump_share"] == 0.0


@pytest.mark.parametrize("pixels, flags, reason", [
    pytest.param(defects.chest(), ("lateral",), r"^out of scope: .*this file is lateral$", id="scope-flag"),
    pytest.param(defects.chest(h=48, w=48), (), r"^implausible: image 48x48 px is smaller than a radiograph", id="too-small"),
    pytest.param(defects.chest(h=400, w=100), (), r"^implausible: aspect ratio 4\.0:1", id="strip"),
    pytest.param(_two_levels(), (), r"^implausible: only 2 grey level\(s\)", id="two-grey-levels"),
    pytest.param(_noise(), (), r"^implausible: .*neighbouring pixels correlate", id="noise"),
    pytest.param(_blocks(), (), r"^implausible: .*% of neighbouring pixels jump", id="jumps"),
])
def test_each_check_refuses_with_its_own_reason(pixels, flags, reason):
    why = P.check(pixels, PRE, flags)
    assert why is not None and len(why.splitlines()) == 1
    assert re.search(reason, why), why


def test_the_smallest_side_is_capped_at_the_models_input():
    # A small study profile (64 px models) may use films below preprocess.min_side, but not below its input side.
    film = defects.chest(h=100, w=90)
    assert P.check(film, dataclasses.replace(PRE, size=64, min_side=256)) is None
    assert "preprocess.min_side 96 px" in P.check(film, dataclasses.replace(PRE, size=96, min_side=256))


@pytest.mark.parametrize("pixels", [np.full((64, 64), 7, np.uint16), np.zeros((1, 500), np.uint16)], ids=["constant", "one-row"])
def test_an_image_without_range_has_no_jumps_and_no_correlation(pixels):
    s = P.pixel_statistics(pixels)
    assert s["jump_share"] == 0.0 == P.jump_share(pixels) and np.isnan(s["neighbour_correlation"]) and s["grey_levels"] == 1


def test_large_films_are_sampled_not_read_whole():
    film = defects.chest(h=2048, w=1792)
    s = P.pixel_statistics(film)
    assert s == P.pixel_statistics(film[::4, ::3])  # at most 512 samples per side, by stride
