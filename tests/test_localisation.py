"""scxnn.localisation: the pointing game, the top-region IoU and their random baselines on
hand-made arrays, and the localisation table of a random-init model on the smoke cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from scxnn.checkpoints import CHECKPOINT_FORMAT, PreprocessMismatch, load_models, save_checkpoint
from scxnn.config import load_config
from scxnn.localisation import localization_table, peak, pointing_game, random_baseline, top_region, top_region_iou
from scxnn.models import build_model
from scxnn.pixels import fingerprint


# --------------------------------------------------------------------------- metrics


def test_pointing_game_exact():
    cam = np.zeros((5, 5))
    cam[1, 2] = 1.0
    mask = np.zeros((5, 5), bool)
    mask[1, 2] = True
    assert pointing_game(cam, mask) is True
    other = np.zeros((5, 5), bool)
    other[1, 4] = True  # 2 px to the right of the peak
    assert pointing_game(cam, other) is False
    assert pointing_game(cam, other, tolerance=1) is False
    assert pointing_game(cam, other, tolerance=2) is True
    assert pointing_game(np.full((5, 5), 0.3), mask | other) is False  # a flat map points nowhere
    # A plateau (a coarse map upsampled) points at its middle, not at its first pixel.
    plateau = np.zeros((6, 6))
    plateau[:3, :3] = 1.0
    assert peak(plateau) == (1, 1)
    corner = np.zeros((6, 6), bool)
    corner[0, 0] = True
    centre = np.zeros((6, 6), bool)
    centre[1, 1] = True
    assert pointing_game(plateau, corner) is False and pointing_game(plateau, centre) is True
    with pytest.raises(ValueError, match="empty"):
        pointing_game(cam, np.zeros((5, 5)))
    with pytest.raises(ValueError, match="shape"):
        pointing_game(cam, np.ones((4, 5)))


def test_top_region_iou_exact():
    cam = np.arange(16, dtype=float).reshape(4, 4)  # the top 4 pixels are the last row
    last_row = np.zeros((4, 4), bool)
    last_row[3] = True
    assert top_region_iou(cam, last_row) == 1.0
    half = np.zeros((4, 4), bool)
    half[3, :2] = half[2, :2] = True  # 2 of 4 inside the top region: IoU 2 / 6
    assert top_region_iou(cam, half) == pytest.approx(1 / 3)
    assert top_region_iou(cam, last_row, top_fraction=0.5) == pytest.approx(0.5)  # top 8 = last 2 rows
    assert top_region_iou(-cam, last_row) == 0.0
    # Ties at the threshold are all kept: a flat map's "top region" is the whole film.
    assert top_region_iou(np.zeros((4, 4)), last_row) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        top_region_iou(cam, last_row, top_fraction=0)


def test_random_baseline():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:7] = True  # 10 % of the film
    pointing, iou = random_baseline(mask, rng=np.random.default_rng(0), draws=64)
    assert pointing == pytest.approx(0.1)
    assert 0 <= iou < 0.5
    assert random_baseline(np.ones((4, 4), bool)) == (1.0, 1.0)
    # top_fraction: a random blob of that area; the mask's own area gives about the same reference
    _, iou_area = random_baseline(mask, top_fraction=0.1, rng=np.random.default_rng(0), draws=64)
    assert 0 <= iou_area < 0.5 and abs(iou_area - iou) < 0.15


@pytest.mark.parametrize("area, expected", [(1, 1), (2, 2), (3, 5), (5, 5), (6, 6), (0, 1), (99, 9)],
                         ids=["one", "two", "ties-kept", "through-the-ties", "below-the-ties", "at-least-one", "at-most-all"])
def test_top_region_has_about_the_asked_area_and_keeps_ties(area, expected):
    cam = np.array([[9, 8, 7], [7, 7, 3], [2, 1, 0]], float)  # three pixels tie at 7
    region = top_region(cam, area)
    assert region.dtype == bool and region.shape == cam.shape and region.sum() == expected
    assert cam[region].min() >= cam[~region].max(initial=-np.inf)  # the hottest pixels, nothing cooler


@pytest.mark.parametrize("tolerance, area", [(0, 1), (1, 5), (1.5, 9), (2, 13)])
def test_pointing_tolerance_grows_the_mask_by_euclidean_distance(tolerance, area):
    mask = np.zeros((7, 7), bool)
    mask[3, 3] = True
    # the random map's hit rate is exactly the grown mask's share of the film
    assert random_baseline(mask, tolerance=tolerance)[0] == pytest.approx(area / 49)
    cam = np.zeros((7, 7))
    cam[3, 3 + int(tolerance)] = 1.0  # the peak at the edge of the tolerance: a hit
    assert pointing_game(cam, mask, tolerance=tolerance) is True
    cam = np.zeros((7, 7))
    cam[3, 4 + int(tolerance)] = 1.0  # one pixel further: a miss
    assert pointing_game(cam, mask, tolerance=tolerance) is False
    assert peak(cam) == (3, 4 + int(tolerance))


@pytest.mark.parametrize("call", [lambda m: random_baseline(m), lambda m: top_region_iou(np.ones((4, 4)), m)],
                         ids=["random_baseline", "top_region_iou"])
def test_an_empty_lesion_mask_has_no_localisation(call):
    with pytest.raises(ValueError, match="empty"):
        call(np.zeros((4, 4), bool))


# --------------------------------------------------------------------------- the table


COLUMNS = ["finding", "split", "n", "pointing_hit_rate", "mean_iou", "random_pointing_rate", "random_mean_iou", "mean_p_target", "note"]


@pytest.fixture(scope="module")
def random_models(smoke_cache, tmp_path_factory):
    """Random-init smoke-profile models for two findings, saved as step 02 saves them and loaded
    once, beside one whose checkpoint says it was trained on other preprocessing."""
    cfg = load_config("smoke", {"paths.data": str(smoke_cache / "data")})
    root = tmp_path_factory.mktemp("loc_models")
    torch.manual_seed(0)
    base = {"format": CHECKPOINT_FORMAT, "model": build_model(cfg.model).state_dict(), "config": cfg.to_dict()}
    for finding, fp in (("nodule", fingerprint(cfg.preprocess)), ("cardiomegaly", fingerprint(cfg.preprocess)), ("stale", "0" * 12)):
        save_checkpoint(root / finding / "best.pt", {**base, "finding": "nodule" if finding == "stale" else finding,
                                                     "preprocess_fingerprint": fp})
    return cfg, load_models({f: root / f for f in ("cardiomegaly", "nodule", "stale")})


def test_localization_table_one_row_per_model_in_study_order(random_models):
    cfg, models = random_models
    table = localization_table(cfg, {"cardiomegaly": models["cardiomegaly"], "nodule": models["nodule"]}, max_per_finding=1)
    assert isinstance(table, pd.DataFrame) and list(table.columns) == COLUMNS
    assert list(table["finding"]) == ["nodule", "cardiomegaly"]  # Table 1's order, not the mapping's
    for row in table.itertuples():
        assert row.n == 1, row  # the smoke cache has masked positives of both
        assert row.split in ("test", "val", "train") and (row.split == "test") == (row.note == ""), row
        for col in ("pointing_hit_rate", "mean_iou", "random_pointing_rate", "random_mean_iou", "mean_p_target"):
            assert 0 <= getattr(row, col) <= 1, (row.finding, col)
        assert row.pointing_hit_rate in (0.0, 1.0)  # one film: a hit or a miss
        assert row.random_pointing_rate < 0.5  # a lesion is a small part of the film
    again = localization_table(cfg, {"nodule": models["nodule"]}, max_per_finding=1)
    pd.testing.assert_frame_equal(again, table.iloc[:1])  # seeded: the same numbers every time


def test_localization_table_refuses_a_model_of_other_preprocessing(random_models):
    cfg, models = random_models
    with pytest.raises(PreprocessMismatch, match="0" * 12):
        localization_table(cfg, {"nodule": models["stale"]}, max_per_finding=1)
