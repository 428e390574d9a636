"""Grad-CAM (scxnn.cam): map shape and range, the model left untouched, localisation of a known
lesion, overlays for loose files, and Figure 5 and the localisation table on the smoke runs. The
localisation scores on hand-made arrays are in test_localisation.py."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from scxnn.cam import LogitsOnly, cam_for_files, figure5, gradcam, overlay
from scxnn.checkpoints import LoadedModel, PreprocessMismatch, find_model_dirs, load_models
from scxnn.config import load_config
from scxnn.localisation import localization_table, pointing_game, random_baseline, top_region_iou
from scxnn.models import SCXNN, build_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU box torch's thread pool fighting other processes
    made these tiny convolutions 10-30x slower; one thread keeps the file at a few seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model() -> SCXNN:
    torch.manual_seed(0)
    return SCXNN("densenet121", num_classes=3, decoder="reconstruction").eval()


def _hooks(module: torch.nn.Module) -> dict[str, int]:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {n: sum(len(getattr(m, n, {})) for m in module.modules()) for n in names}


# --------------------------------------------------------------------------- the maps


def test_cam_shape_range_and_not_constant(tiny_model):
    torch.manual_seed(1)
    x = torch.rand(3, 1, 64, 64)
    for target in (0, 1, 2):
        cams = gradcam(tiny_model, x, target_class=target)
        assert cams.shape == (3, 64, 64) and cams.dtype == np.float32
        assert (cams >= 0).all() and (cams <= 1).all()
    cams = gradcam(tiny_model, x, target_class=1)
    assert all(c.std() > 1e-3 for c in cams)  # a real map, not a flat one
    # Non-square input keeps its shape; Grad-CAM++ works too; a single (1, H, W) item is accepted.
    assert gradcam(tiny_model, torch.rand(2, 1, 64, 96)).shape == (2, 64, 96)
    assert gradcam(tiny_model, x, method="gradcam++").shape == (3, 64, 64)
    assert gradcam(tiny_model, x[0]).shape == (1, 64, 64)
    with pytest.raises(ValueError, match="target_class"):
        gradcam(tiny_model, x, target_class=3)
    with pytest.raises(ValueError, match="method"):
        gradcam(tiny_model, x, method="scorecam")


def test_logits_only_matches_the_model(tiny_model):
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(LogitsOnly(tiny_model)(x), tiny_model(x, decode=False)[0])


def test_model_left_as_found():
    torch.manual_seed(2)
    model = SCXNN("densenet121")
    model.train()
    model.decoder.eval()  # a mixed state, as stage 2 of training leaves it
    for p in model.encoder.features.denseblock1.parameters():
        p.requires_grad_(False)
    kept_grad = torch.ones_like(model.head.fc.weight)
    model.head.fc.weight.grad = kept_grad
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    layer = model.gradcam_target_layer()
    before = _hooks(model)

    gradcam(model, torch.rand(2, 1, 64, 64))

    assert not layer._forward_hooks and not layer._backward_hooks and not layer._forward_pre_hooks
    assert not getattr(layer, "_backward_pre_hooks", {})
    assert _hooks(model) == before  # nothing left on any module
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert model.head.fc.weight.grad is kept_grad
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.fc.weight")
    # eval-mode CAM: BatchNorm statistics untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_channels_last_and_inference_mode(tiny_model):
    x = torch.rand(2, 1, 64, 64)
    ref = gradcam(tiny_model, x)
    with torch.inference_mode():  # a notebook that loaded and predicted under inference_mode
        torch.manual_seed(0)
        inf_model = SCXNN("densenet121").eval()
        x_inf = x.clone()
    assert next(inf_model.parameters()).is_inference()
    np.testing.assert_allclose(gradcam(inf_model, x_inf), ref, atol=1e-4)
    assert next(inf_model.parameters()).is_inference()  # worked on a copy, the caller's model unchanged
    cl = SCXNN("densenet121").eval()
    cl.load_state_dict(tiny_model.state_dict())
    cl.to(memory_format=torch.channels_last)
    with torch.no_grad():
        np.testing.assert_allclose(gradcam(cl, x), ref, atol=1e-4)


def _squares(n: int, size: int, side: int, g: torch.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Noisy grey films with a bright square whose top-left corner is uniform in [size/8, size/2]:
    off the borders, where a 4 x 4 map's upsampled peak can fall inside it."""
    x = 0.3 + 0.05 * torch.randn(n, 1, size, size, generator=g)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        r, c = torch.randint(size // 8, size // 2 + 1, (2,), generator=g).tolist()
        x[i, 0, r : r + side, c : c + side] = 0.9
        masks[i, r : r + side, c : c + side] = True
    return x.clamp(0, 1), masks


def test_cam_peaks_inside_a_known_lesion():
    """A bright-square detector: a random-init DenseNet whose head alone is fitted (200 Adam steps on
    its frozen features) to tell squares from blank films. The square is then the only evidence for
    class 1, so the real gradcam() must point at it: 128 px gives norm5 a 4 x 4 grid, enough to place
    a 32 px square (6% of the film; a random point hits 6% of the time)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = SCXNN("densenet121", decoder="none").eval()
    pos, _ = _squares(24, 128, 32, g)
    neg = (0.3 + 0.05 * torch.randn(24, 1, 128, 128, generator=g)).clamp(0, 1)
    with torch.no_grad():
        feats = F.relu(model.forward_features(torch.cat([pos, neg]))[-1]).mean((2, 3))
    y = torch.cat([torch.ones(24), torch.zeros(24)]).long()
    fc = model.head.fc
    torch.nn.init.zeros_(fc.weight)
    opt = torch.optim.Adam(fc.parameters(), lr=1e-2)
    for _ in range(200):
        loss = F.cross_entropy(fc(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1

    x, masks = _squares(16, 128, 32, g)
    cams = gradcam(model, x, target_class=1)
    hits = [pointing_game(c, m) for c, m in zip(cams, masks)]
    ious = [top_region_iou(c, m) for c, m in zip(cams, masks)]
    chance = [random_baseline(m) for m in masks]
    assert np.mean(hits) >= 0.75, hits
    assert np.mean(ious) > 0.3 > 3 * np.mean([c[1] for c in chance])
    assert np.mean([c[0] for c in chance]) == pytest.approx(32 * 32 / 128**2)


# --------------------------------------------------------------------------- overlays


def test_overlay():
    img = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    cam = np.zeros((8, 8), np.float32)
    cam[2, 5] = 1
    out = overlay(img, cam)  # cam resized to the image
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert overlay((img * 255).astype(np.uint8), cv2.resize(cam, (32, 32))).shape == (32, 32, 3)


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    """A checkpoint in the project's own format (what load_model and load_checkpoint read): a
    random-init smoke-profile model, its embedded config and its preprocessing fingerprint."""
    from scxnn.pixels import fingerprint
    from scxnn.checkpoints import CHECKPOINT_FORMAT, save_checkpoint

    cfg = load_config("smoke")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    root = tmp_path_factory.mktemp("models")
    base = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict()}
    save_checkpoint(root / "nodule" / "best.pt", {**base, "finding": "nodule", "preprocess_fingerprint": fingerprint(cfg.preprocess)})
    save_checkpoint(root / "stale" / "best.pt", {**base, "finding": "nodule", "preprocess_fingerprint": "000000000000"})
    return root, cfg


def test_cam_for_files(smoke_ckpt, tmp_path):
    root, cfg = smoke_ckpt
    rng = np.random.default_rng(0)
    good = tmp_path / "in" / "film.png"
    good.parent.mkdir()
    img = (np.tile(np.linspace(20, 230, 120), (90, 1)) + rng.normal(0, 8, (90, 120))).clip(0, 255).astype(np.uint8)
    cv2.imwrite(str(good), img)  # not square, not the model's size
    bad = tmp_path / "in" / "broken.dcm"
    bad.write_bytes(b"this is not an image at all" * 10)
    out = tmp_path / "out"

    table = cam_for_files({"nodule": root / "nodule"}, [good, bad], out)

    assert list(table.columns) == ["file", "finding", "p_normal", "p_target", "p_others", "overlay", "scope_flags", "error"]
    assert len(table) == 2
    ok = table[table["error"] == ""]
    err = table[table["error"] != ""]
    assert len(ok) == 1 and len(err) == 1
    row = ok.iloc[0]
    assert row["file"] == str(good) and row["finding"] == "nodule"
    assert row[["p_normal", "p_target", "p_others"]].sum() == pytest.approx(1.0, abs=1e-5)
    assert row["overlay"] == str(out / "film__nodule.png")
    written = cv2.imread(row["overlay"])
    assert written is not None and written.shape == (cfg.preprocess.size, cfg.preprocess.size, 3)
    assert err.iloc[0]["file"] == str(bad) and "unrecognised" in err.iloc[0]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["film__nodule.png"]  # no temporary files left

    # finding= picks one model; LoadedModel values skip reloading.
    models = load_models({"nodule": root / "nodule"})
    assert isinstance(models["nodule"], LoadedModel)
    again = cam_for_files(models, [good], tmp_path / "out2", finding="nodule")
    assert again["p_target"].iloc[0] == pytest.approx(row["p_target"], abs=1e-6)
    with pytest.raises(KeyError):
        cam_for_files(models, [good], tmp_path / "out3", finding="cardiomegaly")


def test_cam_for_files_refuses_other_preprocessing(smoke_ckpt, tmp_path):
    root, _ = smoke_ckpt
    good = tmp_path / "film.png"
    cv2.imwrite(str(good), np.tile(np.arange(64, dtype=np.uint8) * 3, (64, 1)))
    with pytest.raises(PreprocessMismatch, match="000000000000"):
        cam_for_files({"nodule": root / "stale"}, [good], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- figure 5 and the table


SMOKE_FINDINGS = list(load_config("smoke").findings)


@pytest.fixture(scope="module")
def smoke_models(smoke_study):
    cfg = load_config("smoke")
    dirs = find_model_dirs(smoke_study / "02_train_disease_model")
    assert list(dirs) == sorted(cfg.findings)
    return cfg, load_models(dirs)


@pytest.fixture(scope="module")
def smoke_cam(smoke_models):
    cfg, models = smoke_models
    fig = figure5(cfg, models)
    return " ".join(ax.get_title() for ax in fig.axes), localization_table(cfg, models, max_per_finding=5)


@pytest.fixture(scope="module")
def smoke_cam_rows(smoke_models):
    """Figure 5 with two films per finding (as step 08 draws three), beside the one-film figure."""
    cfg, models = smoke_models
    one = figure5(cfg, models)
    two = figure5(cfg, models, films_per_finding=2, films_label="smoke test films")
    return cfg, [ax.get_title() for ax in one.axes], two


@pytest.mark.pipeline
def test_figure5_and_the_localization_table_list_the_smoke_findings_in_order(smoke_cam):
    _, table = smoke_cam
    assert isinstance(table, pd.DataFrame) and list(table["finding"]) == SMOKE_FINDINGS


@pytest.mark.pipeline
@pytest.mark.parametrize("finding", SMOKE_FINDINGS)
def test_figure5_and_localization_on_smoke_runs(smoke_cam, finding):
    titles, table = smoke_cam
    assert finding in titles
    row = table.set_index("finding").loc[finding]
    for col in ("pointing_hit_rate", "mean_iou", "random_pointing_rate", "random_mean_iou"):
        assert np.isnan(row[col]) or 0 <= row[col] <= 1, col
    assert row["n"] <= 5


@pytest.mark.pipeline
@pytest.mark.parametrize("finding", SMOKE_FINDINGS)
def test_figure5_gives_each_finding_a_row_of_its_first_films(smoke_cam_rows, finding):
    cfg, one_titles, fig = smoke_cam_rows
    # Two panels (CAM, reconstruction) per film, two films per finding, every slot kept so rows align.
    assert len(fig.axes) == 2 * 2 * len(cfg.findings)
    assert fig._suptitle.get_text().endswith("smoke test films")
    row = SMOKE_FINDINGS.index(finding)
    titles = [ax.get_title() for ax in fig.axes[4 * row : 4 * row + 4]]
    # The row's first film is the one-film figure's film: the films are picked by id, not by look.
    single = one_titles[2 * row]
    if "no positive film" in single:
        assert "no positive film" in titles[0]
        return
    assert titles[0].startswith(f"{finding} 1/2")
    assert titles[0].split("\n")[1] == single.split("\n")[1]  # the same P(target)
    assert titles[2] == "" or titles[2].startswith(f"{finding} 2/2")


def test_figure5_needs_at_least_one_film_per_finding():
    with pytest.raises(ValueError, match="films_per_finding"):
        figure5(load_config("smoke"), {}, films_per_finding=0)


@pytest.mark.parametrize("size", [64, 512])
def test_an_overlay_carries_its_colour_scale(size):
    from scxnn.cam import with_colour_scale

    img = np.full((size, size), 100, np.uint8)
    rgb = overlay(img, np.zeros((size, size), np.float32))
    out = with_colour_scale(rgb)
    assert out.dtype == np.uint8 and out.shape[0] == size and out.shape[1] > size
    assert np.array_equal(out[:, :size], rgb)  # the film itself is untouched
    bar = out[:, size:][:, (out[size // 2, size:] != 255).any(axis=1)]  # the coloured columns
    top, bottom = bar[1, bar.shape[1] // 2].astype(int), bar[-2, bar.shape[1] // 2].astype(int)
    assert top[0] > top[2] and bottom[2] > bottom[0]  # jet: red at "high" (top), blue at "low"
