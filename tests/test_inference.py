"""scxnn.inference: step 02 scores the films step 03 needs, and step 03 reads them back. A saved score
may stand in for the network only while everything that made it is unchanged."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from scxnn import inference
from scxnn.config import load_config

FINDINGS = ("nodule", "pneumothorax")


def _save_model(path, cfg, seed: int):
    from scxnn.models import build_model
    from scxnn.pixels import fingerprint
    from scxnn.checkpoints import CHECKPOINT_FORMAT, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(cfg.model)
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
                           "finding": path.parent.name, "preprocess_fingerprint": fingerprint(cfg.preprocess)})


@pytest.fixture
def run(smoke_cache, tmp_path):
    """A smoke config on the shared smoke cache and random-init models of two findings."""
    cfg = load_config("smoke", {"paths.data": str(smoke_cache / "data"), "paths.runs": str(tmp_path / "runs")})
    dirs = {f: tmp_path / "models" / f for f in FINDINGS}
    for i, d in enumerate(dirs.values()):
        _save_model(d / "best.pt", cfg, seed=i)
    return cfg, dirs


def _count_scoring(monkeypatch) -> list[int]:
    """Films per call of the network, so a test can see what was scored and what was read."""
    calls: list[int] = []
    real = inference.score_films

    def counted(lm, df, *a, **k):
        calls.append(len(df))
        return real(lm, df, *a, **k)

    monkeypatch.setattr(inference, "score_films", counted)
    return calls


@pytest.mark.parametrize("finding", FINDINGS)
def test_step03_reads_what_step02_scored_without_running_the_model(run, finding, monkeypatch):
    cfg, dirs = run
    path = inference.prescore_finding(cfg, finding, dirs[finding])
    df, cache = inference.films_to_score(cfg, max_train=cfg.evaluate.ood_fit_images)
    device = torch.device("cpu")
    fresh = inference.finding_scores(cfg, finding, dirs[finding], df, cache, device)
    calls = _count_scoring(monkeypatch)
    # Another order and a subset: rows are matched by film, not by position.
    sub = df.iloc[::-2]
    logits, pooled = inference.finding_scores(cfg, finding, dirs[finding], sub, cache, device)
    assert calls == [] and path.is_file()
    idx = np.arange(len(df))[::-2]
    np.testing.assert_array_equal(logits, fresh[0][idx])
    np.testing.assert_array_equal(pooled, fresh[1][idx])


@pytest.mark.parametrize("change", ["retrained", "bf16", "batch_size", "source_hash", "new_film"])
def test_a_saved_score_is_not_used_once_what_made_it_changed(run, change, monkeypatch):
    cfg, dirs = run
    cfg = cfg.replace({"evaluate.ood_fit_images": 2})  # so that some training films are not scored
    d = dirs["nodule"]
    inference.prescore_finding(cfg, "nodule", d)
    df, cache = inference.films_to_score(cfg, max_train=cfg.evaluate.ood_fit_images)
    want = len(df)  # films the network must see again
    if change == "retrained":
        _save_model(d / "best.pt", cfg, seed=7)
    elif change == "bf16":
        cfg = cfg.replace({"evaluate.bf16": "off" if inference.use_bf16(cfg, torch.device("cpu")) else "on"})
    elif change == "batch_size":
        cfg = cfg.replace({"evaluate.batch_size": cfg.evaluate.batch_size + 1})
    elif change == "source_hash":  # the same image id now names other pixels
        df = df.copy()
        df.loc[df.index[0], "source_sha256"] = "0" * 64
        want = 1
    else:  # a film step 02 did not score: only it goes through the network
        full, _ = inference.films_to_score(cfg)
        df = pd.concat([df, full[~full["image_id"].isin(df["image_id"])].head(1)], ignore_index=True)
        assert len(df) == len(full[full["image_id"].isin(df["image_id"])])
        want = 1
    calls = _count_scoring(monkeypatch)
    logits, _ = inference.finding_scores(cfg, "nodule", d, df, cache, torch.device("cpu"))
    assert sum(calls) == want and len(logits) == len(df)


def test_a_damaged_scores_file_is_scored_again_not_trusted(run, caplog, monkeypatch):
    cfg, dirs = run
    d = dirs["nodule"]
    (d / inference.SCORES_NAME).write_bytes(b"not an npz file")
    df, cache = inference.films_to_score(cfg)
    calls = _count_scoring(monkeypatch)
    inference.finding_scores(cfg, "nodule", d, df, cache, torch.device("cpu"))
    assert sum(calls) == len(df) and "ignored" in caplog.text


def test_the_logits_table_is_the_same_from_saved_scores(run):
    from scxnn.ensemble import logits_table

    cfg, dirs = run
    cfg = cfg.replace({"evaluate.ood_fit_images": 8})  # fewer films: 13 models score them twice
    root = next(iter(dirs.values())).parent
    for f in cfg.findings:  # the other findings share one model's weights: the table is what is tested
        if f not in dirs:
            dirs[f] = root / f
            dirs[f].mkdir()
            shutil.copy(dirs[FINDINGS[0]] / "best.pt", dirs[f] / "best.pt")
    before, feats_before = logits_table(cfg, dirs, progress=False, features=True, max_train=cfg.evaluate.ood_fit_images)
    for f in cfg.findings:
        inference.prescore_finding(cfg, f, dirs[f])
    after, feats_after = logits_table(cfg, dirs, progress=False, features=True, max_train=cfg.evaluate.ood_fit_images)
    pd.testing.assert_frame_equal(before, after)
    np.testing.assert_array_equal(feats_before, feats_after)


@pytest.mark.parametrize("n", [0, 1, 3, 50])
def test_a_film_sample_depends_on_the_films_not_on_their_order(n):
    df = pd.DataFrame({"image_id": [f"f{i}" for i in range(12)],
                       "split": ["train"] * 4 + ["val"] * 4 + ["test"] * 4})
    a = inference.sample_films(df, n, seed=5, splits=("val", "test"))
    b = inference.sample_films(df.iloc[::-1].reset_index(drop=True), n, seed=5, splits=("val", "test"))
    assert set(a["image_id"]) == set(b["image_id"])
    for split, k in a["split"].value_counts().items():
        assert k == (4 if split == "train" or not n else min(n, 4)), split
    assert list(a["image_id"]) == [i for i in df["image_id"] if i in set(a["image_id"])]  # order kept


def test_scored_features_are_the_ood_gates_features(run):
    # Step 03 fits the gate on score_films' features; predict scores films with ood.pooled_features.
    from scxnn.checkpoints import load_finding_model
    from scxnn.dataset import RadiographDataset
    from scxnn.ood import pooled_features

    cfg, dirs = run
    df, cache = inference.films_to_score(cfg, only=[("internal", "val")])
    lm = load_finding_model("nodule", dirs["nodule"] / "best.pt")
    _, pooled = inference.score_films(lm, df, cache, batch_size=4, bf16=False, device=torch.device("cpu"))
    ds = RadiographDataset(df, cache, "nodule", np.zeros(len(df), dtype=int), lm.cfg)
    x = torch.stack([ds[i]["image"] for i in range(len(df))])
    np.testing.assert_allclose(pooled, pooled_features(lm.model, x).numpy(), rtol=1e-5, atol=1e-6)
