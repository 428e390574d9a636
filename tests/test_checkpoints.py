"""scxnn.checkpoints: a run's models load only whole, only onto the pixels they learnt from, never from a pickle."""

from __future__ import annotations

import os

import pytest
import torch

from scxnn import checkpoints as C
from scxnn.checkpoints import (
    BEST_NAME,
    CHECKPOINT_FORMAT,
    STEP,
    PreprocessMismatch,
    RunIncomplete,
    load_run_models,
    run_model_dirs,
    save_checkpoint,
)
from scxnn.config import load_config
from scxnn.pixels import fingerprint


@pytest.fixture(scope="module")
def weights():
    cfg = load_config("smoke")
    from scxnn.models import build_model

    torch.manual_seed(0)
    return cfg, build_model(cfg.model).state_dict()


def _run(tmp_path, cfg, state, skip=(), stale=()):
    for f in cfg.findings:
        if f in skip:
            continue
        fp = "000000000000" if f in stale else fingerprint(cfg.preprocess)
        save_checkpoint(tmp_path / STEP / f / BEST_NAME, {"format": CHECKPOINT_FORMAT, "model": state, "config": cfg.to_dict(),
                                                          "finding": f, "preprocess_fingerprint": fp})
    return tmp_path


@pytest.mark.parametrize("missing", ["pneumothorax", "cardiomegaly"])
def test_a_run_without_one_finding_model_names_it(tmp_path, weights, missing):
    cfg, state = weights
    run = _run(tmp_path, cfg, state, skip={missing})
    with pytest.raises(RunIncomplete, match=f"no trained model for {missing}"):
        run_model_dirs(run, cfg)


@pytest.mark.parametrize("stale", ["nodule", "atelectasis"])
def test_a_model_from_other_preprocessing_is_refused_by_name(tmp_path, weights, stale):
    cfg, state = weights
    run = _run(tmp_path, cfg, state, stale={stale})
    with pytest.raises(PreprocessMismatch, match=rf"\({stale}\)"):
        load_run_models(run, cfg)


def test_a_whole_run_loads_in_the_studys_order_ready_for_inference(tmp_path, weights):
    cfg, state = weights
    models = load_run_models(_run(tmp_path, cfg, state), cfg)
    assert list(models) == list(cfg.findings)
    m = models["nodule"].model
    assert not m.training
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in m.parameters() if p.ndim == 4)


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
