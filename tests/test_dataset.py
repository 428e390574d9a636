"""scxnn.dataset: a film's input and lesion target, its augmentation, and the study's manifest."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from scxnn import labels as L
from scxnn.config import load_config
from scxnn.dataset import RadiographDataset, load_study_manifest
from scxnn.pixels import dilate_mask

from test_labels import _manifest


@pytest.mark.parametrize("as_file", [False, True])
def test_out_of_scope_films_neither_train_nor_validate(as_file, tmp_path, caplog):
    from scxnn.data import write_manifest

    df, cfg = _manifest([{"split": "train", "scope_flags": ""}, {"split": "train", "scope_flags": "modality:CT"},
                         {"split": "val", "scope_flags": "lateral"}, {"split": "val", "scope_flags": ""}])
    got, _ = load_study_manifest(cfg, write_manifest(df, tmp_path / "manifest.csv") if as_file else df)
    assert list(got["image_id"]) == ["i0", "i3"]
    assert "2 of 4 films left out as out of scope (lateral: 1, modality:CT: 1)" in caplog.text


@pytest.fixture
def tiny_cache(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = [
        {"nodule": 1, "masks": "nodule=masks/a_nodule.png;cardiomegaly=masks/a_cm.png", "cardiomegaly": 1},
        {"nodule": 0, "masks": "cardiomegaly=masks/b_cm.png", "cardiomegaly": 1},
        {"nodule": 1, "label_type": "weak", "masks": ""},
    ]
    for i, name in enumerate("abc"):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), rng.integers(1, 255, (64, 64), dtype=np.uint8))
        rows[i]["path"] = f"images/{name}.png"
    m = np.zeros((64, 64), np.uint8)
    m[20:30, 20:30] = 255
    for f in ("a_nodule", "a_cm", "b_cm"):
        cv2.imwrite(str(tmp_path / "masks" / f"{f}.png"), m)
    df, cfg = _manifest(rows)
    return tmp_path, df, cfg, (m > 0).astype(np.uint8)


def test_recon_target_is_image_times_dilated_target_mask(tiny_cache):
    base, df, cfg, mask = tiny_cache
    labels = L.finding_labels(df, "nodule", 3).astype(int).to_numpy()
    ds = RadiographDataset(df, base, "nodule", labels, cfg)
    a, b, c = ds[0], ds[1], ds[2]
    dil = dilate_mask(mask, cfg.preprocess, None).astype(np.float32)
    assert dil.sum() > mask.sum()  # the dilation did something
    img = cv2.imread(str(base / "images/a.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    assert a["image"].shape == (1, 64, 64) and a["image"].dtype == torch.float32
    np.testing.assert_allclose(a["target"][0].numpy(), img * dil, atol=1e-6)
    assert a["has_recon"] and int(a["label"]) == 1
    # Another finding's lesion is not this model's target: zeros, but still a (hard) MSE sample.
    assert b["has_recon"] and float(b["target"].abs().sum()) == 0 and int(b["label"]) == 2
    # Weak label: no mask, no MSE.
    assert not c["has_recon"] and float(c["target"].abs().sum()) == 0
    # Segmentation decoder: the dilated binary mask; dilate_mask false: the mask as drawn.
    seg = RadiographDataset(df, base, "nodule", labels, cfg.replace({"model.decoder": "segmentation"}))[0]
    np.testing.assert_array_equal(seg["target"][0].numpy(), dil)
    raw = RadiographDataset(df, base, "nodule", labels, cfg.replace({"model.dilate_mask": False}))[0]
    np.testing.assert_allclose(raw["target"][0].numpy(), img * mask, atol=1e-6)
    assert not RadiographDataset(df, base, "nodule", labels, cfg.replace({"model.decoder": "none"}))[0]["has_recon"]


def test_augmentation_is_a_pure_function_of_seed_epoch_index(tiny_cache):
    base, df, cfg, _ = tiny_cache
    cfg = cfg.replace({"train.augment": True, "train.augment_p": 1.0})
    labels = L.finding_labels(df, "nodule", 3).astype(int).to_numpy()
    d1 = RadiographDataset(df, base, "nodule", labels, cfg, augment=True, seed=7)
    d2 = RadiographDataset(df, base, "nodule", labels, cfg, augment=True, seed=7)
    d1.set_epoch(3)
    d2.set_epoch(3)
    _ = d2[1]  # another item first: no shared RNG stream
    x, y = d1[0], d2[0]
    assert torch.equal(x["image"], y["image"]) and torch.equal(x["target"], y["target"])
    d2.set_epoch(4)
    assert not torch.equal(d2[0]["image"], x["image"])
    plain = RadiographDataset(df, base, "nodule", labels, cfg, augment=False)[0]
    assert not torch.equal(plain["image"], x["image"])
    # Lesion target moves with the image: still image x mask (spatial transforms move both).
    assert float(x["target"].sum()) > 0


def test_union_target_covers_every_lesion_of_the_film(smoke_cache):
    from scxnn.dataset import ANY_FINDING, RadiographDataset, load_study_manifest

    cfg = load_config("smoke", {"paths.data": str(smoke_cache / "data"), "model.dilate_mask": False})
    df, base = load_study_manifest(cfg, None)
    multi = df[df["masks"].fillna("").str.count("=") >= 2].reset_index(drop=True)
    assert len(multi), "the smoke data has films with two findings"
    union = RadiographDataset(multi, base, ANY_FINDING, np.zeros(len(multi)), cfg)[0]
    for f in [k for k in cfg.findings if multi.at[0, k] == 1]:
        one = RadiographDataset(multi, base, f, np.zeros(len(multi)), cfg)[0]
        assert torch.all(union["target"] >= one["target"]), f
    assert union["has_recon"]
