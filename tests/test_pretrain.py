"""The study trunk (model.pretrained: study): labels, balanced draws, reuse, resume and the hand-over
to the per-finding models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from scxnn import pretrain as P
from scxnn.config import load_config
from scxnn.models import SCXNN

TRUNK_OVERRIDES = {
    "pretrain.epochs": 2,
    "pretrain.images_per_epoch": 8,
    "train.batch_size": 4,
    "train.num_workers": 0,
}


def _cfg(root, **extra):
    ov = {"paths.data": str(root / "data"), "paths.runs": str(root / "runs"), "model.pretrained": "study", **TRUNK_OVERRIDES}
    ov.update({k.replace("__", "."): v for k, v in extra.items()})
    return load_config("smoke", ov)


def test_multilabel_targets_keep_unknown_as_nan():
    df = pd.DataFrame({"a": [1, 0, None], "b": [0, pd.NA, 1]})
    y = P.multilabel_targets(df, ["a", "b"])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(y), [[False, False], [False, True], [True, False]])
    assert y[0, 0] == 1 and y[2, 1] == 1
    with pytest.raises(KeyError, match="'c'"):
        P.multilabel_targets(df, ["c"])


def test_masked_bce_ignores_unknown_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 9.0]])
    y = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    want = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.0]))
    assert torch.isclose(P.masked_bce(logits, y), want)
    # No known label at all: zero loss, still part of the graph (backward works).
    z = P.masked_bce(logits.requires_grad_(), torch.full((2, 2), float("nan")))
    z.backward()
    assert float(z.detach()) == 0.0


def test_balanced_draws_see_a_rare_finding_as_often_as_a_common_one():
    # 900 normals, 90 with finding 0, 10 with finding 1 (one of them also has finding 0).
    y = np.zeros((1000, 2), np.float32)
    y[900:990, 0] = 1
    y[990:, 1] = 1
    y[990, 0] = 1
    d = np.array(P.balanced_draws(y, seed=3, epoch=0, k=6000))
    share = [np.mean(d < 900), np.mean((d >= 900) & (d < 990)), np.mean(d >= 990)]
    assert all(abs(s - 1 / 3) < 0.04 for s in share), share
    # A pure function of (seed, epoch): resuming draws the same films.
    assert P.balanced_draws(y, 3, 0, 50) == P.balanced_draws(y, 3, 0, 50)
    assert P.balanced_draws(y, 3, 1, 50) != P.balanced_draws(y, 3, 0, 50)


def test_mean_auc_skips_findings_without_both_classes():
    y = np.array([[1, 0], [0, 0], [np.nan, 0], [0, 0]], np.float32)
    p = np.array([[0.9, 0.1], [0.2, 0.5], [0.0, 0.3], [0.1, 0.2]], np.float32)
    assert P.mean_auc(y, p) == 1.0
    assert np.isnan(P.mean_auc(np.zeros((3, 1), np.float32), np.zeros((3, 1), np.float32)))


def test_trunk_is_built_reused_and_rebuilt_when_its_settings_change(smoke_cache):
    cfg = _cfg(smoke_cache)
    path = P.ensure_trunk(cfg, progress=False)
    assert path == P.trunk_path(cfg) and path.is_file()
    hist = pd.read_csv(path.parent / P.HISTORY_NAME)
    assert list(hist["epoch"]) == [1, 2] and hist["val_mean_auc"].between(0, 1).all()
    assert not (path.parent / P.LAST_NAME).exists()  # a finished trunk keeps only trunk.pt
    stamp = path.stat().st_mtime_ns
    # Settings that only the per-finding models use do not touch the trunk.
    assert P.ensure_trunk(_cfg(smoke_cache, model__recon_weight=0.4, train__max_epochs=7), progress=False) == path
    assert path.stat().st_mtime_ns == stamp
    # Its own settings do: pretrained again.
    P.ensure_trunk(_cfg(smoke_cache, pretrain__images_per_epoch=4), progress=False)
    assert path.stat().st_mtime_ns != stamp


def test_per_finding_model_starts_from_the_trunk(smoke_cache):
    cfg = _cfg(smoke_cache)
    path = P.resolve_pretrained(cfg, progress=False)
    assert path == str(P.trunk_path(cfg))
    trunk = torch.load(path, map_location="cpu", weights_only=True)["model"]
    m = SCXNN(backbone=cfg.model.backbone, pretrained=path)
    for k, v in m.encoder.state_dict().items():
        assert torch.equal(v, trunk[f"encoder.{k}"]), k
    # Other values pass through untouched.
    assert P.resolve_pretrained(load_config("smoke"), progress=False) == "trunk"
    assert P.resolve_pretrained(load_config("smoke", {"model.pretrained": "none"}), progress=False) == "none"


def test_killed_pretraining_resumes_to_the_same_trunk(smoke_cache, tmp_path, monkeypatch):
    cfg = _cfg(smoke_cache, pretrain__epochs=2)
    whole = P.pretrain_trunk(cfg, tmp_path / "whole", progress=False)

    calls = {"n": 0}
    real = P.balanced_draws

    def dies_in_epoch_two(y, seed, epoch, k):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real(y, seed, epoch, k)

    monkeypatch.setattr(P, "balanced_draws", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        P.pretrain_trunk(cfg, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / P.LAST_NAME).is_file()
    monkeypatch.setattr(P, "balanced_draws", real)
    resumed = P.pretrain_trunk(cfg, tmp_path / "resumed", progress=False)
    a = torch.load(whole, weights_only=True)["model"]
    b = torch.load(resumed, weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
