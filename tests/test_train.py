"""scxnn.train: the training loop, its history and checkpoints, resume == uninterrupted, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scxnn import checkpoints as C
from scxnn import labels as L
from scxnn import train as T
from scxnn.config import load_config
from scxnn.dataset import RadiographDataset, load_study_manifest
from scxnn.inference import score_films
from scxnn.loop import RESUME_ONLY
from scxnn.pipeline import require_step
from scxnn.pixels import fingerprint

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


# --------------------------------------------------------------------------- training


_REFERENCE_THREADS: list[int] = []


@pytest.fixture(autouse=True)
def _threads_of_the_reference():
    # Float sums depend on the thread count, and conftest gives this process its second thread back
    # once the background builds finish, which can fall between the reference run and a test that
    # must reproduce it bit for bit: every test here runs with the threads the reference ran with.
    n = torch.get_num_threads()
    if _REFERENCE_THREADS:
        torch.set_num_threads(_REFERENCE_THREADS[0])
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference_run(smoke_cache):
    _REFERENCE_THREADS[:] = [torch.get_num_threads()]
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
    assert set(RESUME_ONLY) <= set(last_ck) and not set(RESUME_ONLY) & set(ck)
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
