"""Scoring films with one finding model: its logits and the pooled encoder features (the decoder is
not run).

Step 03 needs every model's scores of the same films (the SVM's inputs, and the features the
out-of-distribution gate is fitted on). Each finding's own step 02 job scores them right after
training (:func:`prescore_finding`) and keeps them beside its checkpoint in ``scores.npz``, so under
``make -j`` the 13 models' scoring runs in parallel with the training, and step 03 only reads the
files. A saved score is used only while everything that made it is unchanged: the checkpoint's
bytes, the PNG cache's preprocessing fingerprint, the precision, and each film's source hash.
Otherwise the film is scored again.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from scxnn.checkpoints import BEST_NAME, check_fingerprint, load_finding_model
from scxnn.data import MANIFEST_NAME, in_scope, read_manifest
from scxnn.dataset import RadiographDataset
from scxnn.hardware import resolve_device
from scxnn.pixels import cache_dir, fingerprint
from scxnn.utils import atomic_open, log, sha256_file, sha256_text

SCORES_NAME = "scores.npz"


def films_to_score(cfg, cache: str | os.PathLike | None = None, only=None, exclude=(), max_train: int = 0,
                   max_eval: int = 0):
    """(films, cache folder): the in-scope films of a PNG cache (:func:`scxnn.data.in_scope`) that
    the logits table holds. ``only``: (site, split) pairs to keep (None: all); ``exclude``: image ids
    to leave out; ``max_train``: keep a seeded sample of this many training films, ``max_eval`` of
    this many validation and this many test films (:func:`sample_films`; 0: all)."""
    cache = Path(cache) if cache is not None else cache_dir(cfg)
    df, _ = in_scope(read_manifest(cache / MANIFEST_NAME, list(cfg.findings), list(cfg.unseen_findings)), str(cache / MANIFEST_NAME))
    if len(exclude):
        df = df[~df["image_id"].isin(set(exclude))].reset_index(drop=True)
    if only is not None:
        pairs = set(map(tuple, only))
        df = df[[(a, b) in pairs for a, b in zip(df["site"].astype(str), df["split"].astype(str))]].reset_index(drop=True)
        if df.empty:
            raise ValueError(f"no film of the manifest is in {sorted(pairs)}")
    df = sample_films(sample_training_films(df, max_train, cfg.seed), max_eval, cfg.seed, ("val", "test"))
    if df.empty:
        raise ValueError(f"no film of {cache / MANIFEST_NAME} is left to score (all out of scope or excluded)")
    return df, cache


def sample_films(df, n: int, seed: int, splits: Sequence[str] = ("train",)):
    """``df`` with at most ``n`` films of each of ``splits`` (0: all), the others untouched, the order
    kept. The sample is seeded and chosen by image id, not by row, so two caches of the same films
    (e.g. CLAHE and histeq) and every variant get the same films."""
    if not n:
        return df
    ids = df["image_id"].astype(str).to_numpy()
    split = df["split"].astype(str).to_numpy()
    keep = np.ones(len(df), dtype=bool)
    for s in splits:
        rows = np.flatnonzero(split == s)
        if len(rows) > n:
            rank = np.array([sha256_text(f"{seed}:{ids[r]}") for r in rows])
            keep[rows[np.argsort(rank, kind="stable")[n:]]] = False
    return df[keep].reset_index(drop=True)


def sample_training_films(df, n: int, seed: int):
    """``df`` with at most ``n`` of its training-split films, a seeded sample (0: all)."""
    return sample_films(df, n, seed, ("train",))


def use_bf16(cfg, device) -> bool:
    """Whether scoring runs in bf16 (``evaluate.bf16``) on ``device``."""
    from scxnn.hardware import use_bf16 as resolve

    return resolve(cfg.evaluate.bf16, device)


def score_films(lm, df, cache: Path, batch_size: int, bf16: bool, device) -> tuple[np.ndarray, np.ndarray]:
    """One loaded model (:class:`scxnn.checkpoints.LoadedModel`) over ``df``'s films: (logits (N, C),
    pooled last-block features (N, F)), float32. The fast path of ``scxnn bench predict``:
    channels_last, no decoder, bf16 autocast when ``bf16``."""
    import torch

    model = lm.model.to(memory_format=torch.channels_last)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    ds = RadiographDataset(df, cache, lm.finding, np.zeros(len(df), dtype=int), lm.cfg)
    logits, pooled = [], []
    with torch.inference_mode():
        for batch in torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            with amp:
                feats = model.forward_features(x)  # one encoder pass gives the logits and the features
                logits.append(model.forward_head(feats).float().cpu())
            pooled.append(model.forward_head(feats, pre_logits=True).cpu())
    return torch.cat(logits).numpy().astype(np.float32), torch.cat(pooled).numpy().astype(np.float32)


def _key(checkpoint: Path, preprocess_fp: str, bf16: bool, batch_size: int) -> str:
    # The batch size is in: oneDNN may pick other kernels for other batch shapes, and a table mixing
    # the two would not be reproducible bit for bit.
    return json.dumps({"checkpoint_sha256": sha256_file(checkpoint), "preprocess": preprocess_fp,
                       "bf16": bool(bf16), "batch_size": int(batch_size)}, sort_keys=True)


def _read_saved(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return {k: z[k] for k in ("image_id", "source_sha256", "logits", "pooled")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # a foreign or damaged file: score again
        log.warning("%s: ignored (%s); the films are scored again", path, e)
        return None


def finding_scores(cfg, finding: str, model_dir: str | os.PathLike, df, cache: Path, device,
                   save: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits, pooled features) of ``df``'s films under ``finding``'s model in ``model_dir``, in
    ``df``'s order. Films already in the model's ``scores.npz`` (same checkpoint, preprocessing,
    precision and source hash) are read from it, the others are scored; ``save`` writes the
    result back (atomically). A model trained on other preprocessing than ``cfg.preprocess`` is
    refused (:class:`scxnn.checkpoints.PreprocessMismatch`)."""
    model_dir = Path(model_dir)
    ckpt = model_dir / BEST_NAME
    pre_fp = fingerprint(cfg.preprocess)
    bf16 = use_bf16(cfg, device)
    key = _key(ckpt, pre_fp, bf16, cfg.evaluate.batch_size)
    ids = df["image_id"].astype(str).to_numpy()
    src = df["source_sha256"].astype(str).to_numpy()
    saved = _read_saved(model_dir / SCORES_NAME, key)
    rows = np.full(len(df), -1)
    if saved is not None:
        where = {(i, s): r for r, (i, s) in enumerate(zip(saved["image_id"].astype(str), saved["source_sha256"].astype(str)))}
        rows = np.array([where.get((i, s), -1) for i, s in zip(ids, src)], dtype=int)
    todo = np.flatnonzero(rows < 0)
    if saved is not None and not len(todo):
        return saved["logits"][rows], saved["pooled"][rows]
    lm = load_finding_model(finding, ckpt, device)
    # The preprocessing contract: these PNGs must be the pixels the model learnt from.
    check_fingerprint(lm, pre_fp)
    new_logits, new_pooled = score_films(lm, df.iloc[todo], cache, cfg.evaluate.batch_size, bf16, device)
    if saved is None:
        logits, pooled = new_logits, new_pooled
    else:
        logits = np.empty((len(df), new_logits.shape[1]), np.float32)
        pooled = np.empty((len(df), new_pooled.shape[1]), np.float32)
        have = rows >= 0
        logits[have], pooled[have] = saved["logits"][rows[have]], saved["pooled"][rows[have]]
        logits[todo], pooled[todo] = new_logits, new_pooled
    if save:
        with atomic_open(model_dir / SCORES_NAME, "wb") as fh:
            np.savez(fh, key=np.array(key), image_id=ids.astype(str), source_sha256=src.astype(str), logits=logits, pooled=pooled)
    return logits, pooled


def prescore_finding(cfg, finding: str, model_dir: str | os.PathLike) -> Path:
    """Score the films step 03 will need with ``finding``'s freshly trained model and keep them in
    ``model_dir/scores.npz`` (step 02's last act; a no-op when they are already there)."""
    df, cache = films_to_score(cfg, max_train=cfg.evaluate.ood_fit_images)
    finding_scores(cfg, finding, model_dir, df, cache, resolve_device(cfg), save=True)
    log.info("%s: scored %d films for step 03 (%s)", finding, len(df), Path(model_dir) / SCORES_NAME)
    return Path(model_dir) / SCORES_NAME
