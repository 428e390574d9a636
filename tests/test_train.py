"""Training: labels, lesion targets, resume == uninterrupted, determinism, safe checkpoints, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from scxnn import checkpoints as C
from scxnn import distributed as D
from scxnn import labels as L
from scxnn import train as T
from scxnn.config import load_config
from scxnn.data import new_manifest
from scxnn.dataset import RadiographDataset, load_study_manifest
from scxnn.inference import score_films
from scxnn.pipeline import require_step
from scxnn.pixels import dilate_mask, fingerprint

ROOT = Path(__file__).resolve().parents[1]
FINDING = "nodule"
# Tiny but real: the smoke cache (64 px), densenet121, a few images per epoch, augmentation on.
TRAIN_OVERRIDES = {
    "train.max_epochs": 2,
    "train.stage2_epochs": 1,
    "train.batch_size": 4,
    "train.max_images_per_epoch": 12,
    "train.augment": True,
    "train.augment_p": 0.5,
    "train.num_workers": 0,
}


# --------------------------------------------------------------------------- fixtures


def _cfg(smoke_cache: Path, **extra):
    ov = {"paths.data": str(smoke_cache / "data"), "paths.runs": str(smoke_cache / "runs"), **TRAIN_OVERRIDES}
    ov.update({k.replace("__", "."): v for k, v in extra.items()})
    return load_config("smoke", ov)


def _metrics(h: pd.DataFrame) -> pd.DataFrame:
    return h.drop(columns=["seconds"]).reset_index(drop=True)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- labels


def _manifest(rows):
    cfg = load_config("smoke")
    base = dict(patient_id="p", study_date="", site="internal", split="train", label_type="hard", masks="", view="PA", path="x.png", source_sha256="")
    full = []
    for i, r in enumerate(rows):
        d = {**base, "image_id": f"i{i}", "patient_id": f"p{i}", **{f: 0 for f in cfg.findings}, **{f: 0 for f in cfg.unseen_findings}}
        d.update(r)
        full.append(d)
    return new_manifest(full, list(cfg.findings), list(cfg.unseen_findings)), cfg


def test_finding_labels_normal_target_other_na_and_two_class_folding():
    df, cfg = _manifest(
        [
            {},  # normal
            {"nodule": 1},  # target
            {"nodule": 1, "cardiomegaly": 1},  # target wins over others
            {"cardiomegaly": 1},  # other
            {"nodule": pd.NA, "cardiomegaly": 1},  # unknown target: excluded
            {"pneumonia": 1},  # unseen finding only: abnormal, never "normal"
            # NA among the others with nothing marked: the source said neither normal nor abnormal,
            # so normal and "others" cannot be told apart (3 classes); with 2 classes it is "not nodule".
            {"atelectasis": pd.NA},
            {"atelectasis": pd.NA, "abnormal": 0},  # the source calls the film normal (NIH's No Finding)
            {"abnormal": 1},  # a finding of its source that no column maps (NIH's Emphysema): others
        ]
    )
    lab3 = L.finding_labels(df, "nodule", 3, list(cfg.findings), list(cfg.unseen_findings))
    assert lab3.tolist()[:4] == [0, 1, 1, 2] and pd.isna(lab3[4]) and lab3[5] == 2
    assert pd.isna(lab3[6]) and lab3[7] == 0 and lab3[8] == 2
    lab2 = L.finding_labels(df, "nodule", 2, list(cfg.findings), list(cfg.unseen_findings))
    assert lab2.tolist()[:4] == [0, 1, 1, 0] and pd.isna(lab2[4]) and lab2[5] == 0 and lab2[6:].tolist() == [0, 0, 0]
    assert L.finding_labels(df, "nodule", 3).equals(lab3)  # defaults: the study's finding columns
    with pytest.raises(ValueError):
        L.finding_labels(df, "nodule", 4)


@pytest.mark.parametrize("finding", list(load_config("smoke").findings))
def test_a_film_abnormal_only_by_an_unmapped_finding_is_others_for_every_model_never_normal(finding):
    # NIH gives a film "Emphysema" alone: no column maps it, every column is 0, and its source's
    # verdict is the only trace. Before, every model learned it as normal.
    df, cfg = _manifest([{"abnormal": 1}, {"abnormal": 0}])
    lab3 = L.finding_labels(df, finding, 3, list(cfg.findings), list(cfg.unseen_findings))
    assert lab3.tolist() == [2, 0]


@pytest.mark.parametrize("as_file", [False, True])
def test_out_of_scope_films_neither_train_nor_validate(as_file, tmp_path, caplog):
    from scxnn.data import write_manifest

    df, cfg = _manifest([{"split": "train", "scope_flags": ""}, {"split": "train", "scope_flags": "modality:CT"},
                         {"split": "val", "scope_flags": "lateral"}, {"split": "val", "scope_flags": ""}])
    got, _ = load_study_manifest(cfg, write_manifest(df, tmp_path / "manifest.csv") if as_file else df)
    assert list(got["image_id"]) == ["i0", "i3"]
    assert "2 of 4 films left out as out of scope (lateral: 1, modality:CT: 1)" in caplog.text


def test_finding_seed_is_stable_and_differs_per_finding():
    assert L.finding_seed(1, "nodule") == L.finding_seed(1, "nodule") != L.finding_seed(1, "cardiomegaly")


# --------------------------------------------------------------------------- dataset


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


def test_epoch_indices_balanced_capped_and_sharded():
    y = np.array([0] * 90 + [1] * 10)
    idx = L.epoch_indices(y, 1, 5, "sampler", 60, 2)
    assert len(idx) == 60 and idx == L.epoch_indices(y, 1, 5, "sampler", 60, 2)
    assert idx != L.epoch_indices(y, 1, 6, "sampler", 60, 2)
    assert 0.25 < np.mean(y[idx]) < 0.75  # class-balanced draws
    perm = L.epoch_indices(y, 1, 5, "none", 0, 2)
    assert sorted(perm) == list(range(100))
    shards = [D.shard_indices(range(7), r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4 and set(shards[0]) | set(shards[1]) == set(range(7))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def reference_run(smoke_cache):
    cfg = _cfg(smoke_cache)
    return T.train_finding(cfg, FINDING, out_dir=smoke_cache / "runs" / "ref", resume=False, progress=False)


def test_train_writes_history_checkpoints_and_metrics(reference_run, smoke_cache):
    r = reference_run
    h = r.history
    assert list(h.columns) == list(T.HISTORY_COLUMNS)
    assert h["stage"].tolist() == [1, 1, 2] and h["epoch"].tolist() == [1, 2, 1]
    assert np.isfinite(h[["train_loss", "train_ce", "val_loss", "val_ce", "val_acc"]].to_numpy()).all()
    assert np.isfinite(h.loc[h.stage == 1, "train_mse"]).all() and h.loc[h.stage == 2, "train_mse"].isna().all()
    on_disk = pd.read_csv(r.out_dir / C.HISTORY_NAME)
    pd.testing.assert_frame_equal(_metrics(on_disk), _metrics(h), check_dtype=False)
    assert r.best_checkpoint.is_file() and (r.out_dir / C.LAST_NAME).is_file() and (r.out_dir / "config.resolved.yaml").is_file()
    assert r.metrics["epochs_stage1"] == 2 and r.metrics["epochs_stage2"] == 1
    assert C.load_checkpoint(r.best_checkpoint)["stage"] == r.metrics["best_stage"]
    if r.metrics["best_stage"] == 2:  # stage 2 is kept only when it beat stage 1 on validation CE
        assert r.metrics["val_ce"] < r.metrics["stage1_best"]["val_ce"]
    assert {"val_loss", "val_auc", "val_acc", "seconds"} <= set(r.metrics)
    assert not list(r.out_dir.glob("*.tmp")) and not list(r.out_dir.glob(".*.tmp"))


def test_checkpoint_embeds_config_and_fingerprint_and_loads_back(reference_run, smoke_cache):
    cfg = _cfg(smoke_cache)
    ck = C.load_checkpoint(reference_run.best_checkpoint)
    assert ck["config"] == cfg.to_dict() and ck["preprocess_fingerprint"] == fingerprint(cfg.preprocess)
    assert ck["finding"] == FINDING and isinstance(ck["history"], list)
    model, mcfg = C.load_model(reference_run.best_checkpoint)
    assert mcfg.to_dict() == cfg.to_dict() and not model.training
    # Stage 2 trained the head only: encoder and decoder equal stage 1's best weights.
    last_ck = C.load_checkpoint(reference_run.out_dir / C.LAST_NAME)
    last = last_ck["model"]
    assert all(torch.equal(last[k], ck["model"][k]) for k in last if not k.startswith("head."))
    # The optimiser's state is last.pt's (to resume); best.pt, which inference loads, is the weights.
    assert set(T.RESUME_ONLY) <= set(last_ck) and not set(T.RESUME_ONLY) & set(ck)
    # Scoring (scxnn.inference): decoder skipped, logits and pooled features per image.
    df, base = load_study_manifest(cfg, None)
    val_df, _ = L.training_sets(df, cfg, FINDING)["val"]
    lm = C.load_finding_model(FINDING, reference_run.best_checkpoint)
    logits, pooled = score_films(lm, val_df, base, 4, False, torch.device("cpu"))
    assert logits.shape == (len(val_df), 3) and len(pooled) == len(val_df) and np.isfinite(logits).all()
    ds = RadiographDataset(val_df, base, FINDING, np.zeros(len(val_df), int), cfg)
    with torch.inference_mode():  # the films' own order, the model's plain forward pass
        ref = model(torch.stack([ds[i]["image"] for i in range(len(ds))]), decode=False)[0]
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil()}, p)
    with pytest.raises(C.CheckpointError, match="refused"):
        C.load_checkpoint(p)
    with pytest.raises(C.CheckpointError):
        C.load_model(p)
    with pytest.raises(FileNotFoundError):
        C.load_checkpoint(tmp_path / "missing.pt")


def test_two_runs_are_identical(reference_run, smoke_cache):
    again = T.train_finding(_cfg(smoke_cache), FINDING, out_dir=smoke_cache / "runs" / "again", resume=False, progress=False)
    pd.testing.assert_frame_equal(_metrics(again.history), _metrics(reference_run.history))
    assert _same_state(C.load_checkpoint(again.best_checkpoint)["model"], C.load_checkpoint(reference_run.best_checkpoint)["model"])


class _Kill(BaseException):
    pass


def test_killed_then_resumed_equals_uninterrupted(reference_run, smoke_cache, monkeypatch):
    out = smoke_cache / "runs" / "killed"

    def kill_after_first_epoch(stage, epoch):
        if (stage, epoch) == (1, 1):
            raise _Kill

    monkeypatch.setattr(T, "_epoch_end_hook", kill_after_first_epoch)
    with pytest.raises(_Kill):
        T.train_finding(_cfg(smoke_cache), FINDING, out_dir=out, resume=False, progress=False)
    assert C.load_checkpoint(out / C.LAST_NAME)["epoch"] == 1
    monkeypatch.undo()
    # More workers on the resumed part: batches and augmentations must not depend on them.
    r = T.train_finding(_cfg(smoke_cache, train__num_workers=2), FINDING, out_dir=out, resume=True, progress=False)
    pd.testing.assert_frame_equal(_metrics(r.history), _metrics(reference_run.history))
    for name in (C.BEST_NAME, C.LAST_NAME):
        assert _same_state(C.load_checkpoint(out / name)["model"], C.load_checkpoint(reference_run.out_dir / name)["model"])
    # A finished run resumes to the same result without training again.
    r2 = T.train_finding(_cfg(smoke_cache), FINDING, out_dir=out, resume=True, progress=False)
    pd.testing.assert_frame_equal(r2.history, r.history)


def test_resume_removes_the_temporary_of_a_checkpoint_write_killed_midway(reference_run, smoke_cache):
    import shutil

    from scxnn.utils import sha256_file

    out = smoke_cache / "runs" / "torn_write"
    shutil.copytree(reference_run.out_dir, out)
    # What kill -9 during save_checkpoint leaves: atomic_open's temporary, never renamed.
    torn = out / f".{C.BEST_NAME}.abc123.tmp"
    torn.write_bytes(b"\x00" * 4096)
    kept = {n: sha256_file(out / n) for n in (C.BEST_NAME, C.LAST_NAME)}
    r = T.train_finding(_cfg(smoke_cache), FINDING, out_dir=out, resume=True, progress=False)
    assert not torn.exists() and not list(out.glob(".*.tmp"))
    assert {n: sha256_file(out / n) for n in kept} == kept
    pd.testing.assert_frame_equal(_metrics(r.history), _metrics(reference_run.history))


def test_shorter_budget_then_longer_budget_equals_uninterrupted(reference_run, smoke_cache):
    out = smoke_cache / "runs" / "extended"
    T.train_finding(_cfg(smoke_cache, train__max_epochs=1, train__stage2_epochs=0), FINDING, out_dir=out, resume=False, progress=False)
    r = T.train_finding(_cfg(smoke_cache), FINDING, out_dir=out, resume=True, progress=False)
    pd.testing.assert_frame_equal(_metrics(r.history), _metrics(reference_run.history))
    assert _same_state(C.load_checkpoint(r.best_checkpoint)["model"], C.load_checkpoint(reference_run.best_checkpoint)["model"])


def test_resume_with_other_settings_is_refused(reference_run, smoke_cache):
    with pytest.raises(RuntimeError, match="train.lr"):
        T.train_finding(_cfg(smoke_cache, train__lr=0.01), FINDING, out_dir=reference_run.out_dir, resume=True, progress=False)


def test_stopping_rule():
    cfg = load_config("smoke", {"train.plateau_patience": 2, "train.lr": 1e-3, "train.lr_floor": 1e-4})
    rows = [{"val_loss": v} for v in (1.0, 0.5, 0.6, 0.7)]
    assert T._should_stop(rows, 5e-5, cfg)  # below the floor, 2 epochs since the best
    assert not T._should_stop(rows, 2e-4, cfg)  # lr still above the floor
    assert not T._should_stop(rows[:3], 5e-5, cfg)  # only 1 epoch since the best


# --------------------------------------------------------------------------- DDP

_DDP_SCRIPT = textwrap.dedent(
    """
    import copy, json, os, sys
    import torch, torch.nn.functional as F
    from torch import nn
    from scxnn import distributed as D
    from scxnn import train as T

    torch.manual_seed(0)
    d = D.init_distributed(torch.device("cpu"))
    assert d.world == 2, d
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    idx = D.shard_indices(range(8), d.rank, d.world)
    ddp = D.wrap_ddp(model, d, torch.device("cpu"))
    F.cross_entropy(ddp(x[idx]), y[idx]).backward()  # DDP averages the two shards' gradients
    F.cross_entropy(ref(x), y).backward()  # the full batch in one process
    err = max(float((a.grad - b.grad).abs().max()) for a, b in zip(model.parameters(), ref.parameters()))
    out = {"rank": d.rank, "grad_err": err, "shard": idx}
    if len(sys.argv) > 2:  # the real trainer, 2 ranks
        import torch.distributed as dist
        from scxnn.config import load_config
        cfg = load_config("smoke", json.loads(sys.argv[2]))
        r = T.train_finding(cfg, "nodule", out_dir=sys.argv[3], resume=False, progress=False)
        out["world_size"] = r.metrics["world_size"]
        out["history"] = r.history.drop(columns=["seconds"]).to_dict("list")
    with open(os.path.join(sys.argv[1], f"rank{d.rank}.json"), "w") as fh:
        json.dump(out, fh)
    """
)


def test_ddp_two_processes_gloo(smoke_cache, tmp_path):
    script = tmp_path / "ddp_check.py"
    script.write_text(_DDP_SCRIPT)
    ov = {"paths.data": str(smoke_cache / "data"), **TRAIN_OVERRIDES, "train.max_epochs": 1, "train.stage2_epochs": 1, "train.augment": False}
    out = tmp_path / "ddp_run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path), json.dumps(ov), str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["grad_err"] < 1e-6 for r in res), res
    assert sorted(res[0]["shard"] + res[1]["shard"]) == list(range(8))
    # Both ranks reach the same decisions (same history); rank 0 wrote the artifacts.
    assert res[0]["world_size"] == 2 and res[0]["history"] == res[1]["history"]
    assert res[0]["history"]["stage"] == [1, 2]
    assert (out / C.BEST_NAME).is_file() and (out / C.HISTORY_NAME).is_file()
    assert not list(out.glob(".*.tmp"))
    ck = C.load_checkpoint(out / C.LAST_NAME)
    assert not any(k.startswith("module.") for k in ck["model"])  # the bare model's state, not DDP's


def test_changed_settings_supersede_the_old_run_in_auto_mode(smoke_cache, tmp_path):
    """The notebook's mode: Make reruns a finding because its params changed; the old run is kept
    aside rather than deleted, while strict resume refuses."""
    out = tmp_path / "run"
    T.train_finding(_cfg(smoke_cache), FINDING, out_dir=out, progress=False)
    changed = _cfg(smoke_cache, train__lr=0.0005)
    with pytest.raises(RuntimeError, match="different settings"):
        T.train_finding(changed, FINDING, out_dir=out, resume=True, progress=False)
    r = T.train_finding(changed, FINDING, out_dir=out, resume="auto", progress=False)
    assert (out / T.SUPERSEDED / "last.pt").is_file() and r.best_checkpoint.is_file()
    assert C.load_checkpoint(out / "last.pt")["config"]["train"]["lr"] == 0.0005


def test_validation_cap_keeps_every_target_film_and_is_fixed():
    import numpy as np
    import pandas as pd

    from scxnn.labels import _val_subset

    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(50)]})
    labels = np.r_[np.ones(6, int), np.zeros(30, int), np.full(14, 2)]
    sub, y = _val_subset(rows, labels, 20, seed=3)
    assert len(sub) == 20 and (y == 1).sum() == 6  # all the rare target films stay
    sub2, y2 = _val_subset(rows, labels, 20, seed=3)
    assert sub["image_id"].tolist() == sub2["image_id"].tolist() and np.array_equal(y, y2)


def test_validation_cap_keeps_both_classes_when_the_target_is_common():
    import numpy as np
    import pandas as pd

    from scxnn.labels import _val_subset

    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(60)]})
    labels = np.r_[np.ones(40, int), np.zeros(12, int), np.full(8, 2)]
    sub, y = _val_subset(rows, labels, 24, seed=1)
    assert len(sub) == 24 and (y == 1).sum() == 12 and (y != 1).sum() == 12
    few_rest = np.r_[np.ones(40, int), np.zeros(4, int)]
    _, y = _val_subset(rows.iloc[:44], few_rest, 24, seed=1)
    assert (y != 1).sum() == 4 and (y == 1).sum() == 20  # the cap is filled with targets when the rest runs out


def test_a_findings_own_budget_is_trained_saved_and_accepted_downstream(smoke_cache, tmp_path):
    """train.by_finding: the model trains and is saved with its own budget, the run's later steps
    accept it, and another finding's entry changing later does not retrain it."""
    own = {FINDING: {"max_epochs": 1, "stage2_epochs": 0}}
    cfg = _cfg(smoke_cache, paths__runs=str(tmp_path), train__by_finding=own, variants__protocol={"train.by_finding": {}})
    r = T.train_finding(cfg, FINDING, progress=False)
    assert r.history["stage"].tolist() == [1] and cfg.train.max_epochs == 2
    saved = C.load_checkpoint(r.best_checkpoint)["config"]["train"]
    assert (saved["max_epochs"], saved["stage2_epochs"]) == (1, 0)
    assert require_step(cfg, C.STEP, FINDING) == r.out_dir
    other = next(f for f in cfg.findings if f != FINDING)
    later = cfg.replace({"train.by_finding": {**own, other: {"max_epochs": 3}}})
    assert require_step(later, C.STEP, FINDING) == r.out_dir
    again = T.train_finding(later, FINDING, resume=True, progress=False)
    assert not (r.out_dir / T.SUPERSEDED).exists()
    pd.testing.assert_frame_equal(_metrics(again.history), _metrics(r.history))
