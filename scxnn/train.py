"""Training of one finding's multi-task model (thesis section 3.3.4), resumable and deterministic.

Per finding ``F`` (one model each, ``cfg.findings``):

* **Labels** (:func:`finding_labels`): 0 normal, 1 ``F`` present, 2 "others" (``F`` absent, some
  other finding present). Rows whose ``F`` is unknown (NA) are left out.
* **Stage 1** (thesis step 2): hard-label internal training images; encoder, decoder and head
  trained jointly on ``CE + lambda * MSE(decoder output, lesion target)``
  (:class:`scxnn.dataset.RadiographDataset`). Validation: hard-label internal ``val`` images.
* **Stage 2** (thesis step 3): starts from stage 1's best weights; the decoder (and the encoder,
  unless ``train.stage2_unfreeze_encoder``) is frozen and put in eval mode (BatchNorm statistics
  frozen too); only the head is trained, on CE alone, over the weak-label images *plus* the hard
  training images, so the head keeps seeing the lesion-annotated cases it was fitted on (weak labels
  alone would shift it towards the weak sets' label noise and prevalence).
* Adam + ReduceLROnPlateau on the validation loss; a stage stops at its epoch budget, or once the
  learning rate is below ``train.lr_floor`` and ``plateau_patience`` epochs passed without a new best.
  The best epoch by validation loss is kept (``best.pt``). A stage-2 epoch replaces it only if its
  validation CE beats stage 1's best validation CE (stage 1's loss also holds the MSE term, so CE is
  the comparable part): the weak-label stage is kept when it helps on validation, as a model-selection
  step; ``metrics["best_stage"]`` says which stage ``best.pt`` comes from.

Every epoch writes ``last.pt`` (model, optimiser, scheduler, RNG states, history, the resolved
config and the preprocessing fingerprint) atomically, so a killed run resumes where it stopped and
ends with the same weights as an uninterrupted one: batches and augmentations are pure functions of
(seed, stage, epoch, index), never of global RNG state or the worker count.

Under ``torchrun`` (``WORLD_SIZE`` > 1) training is data-parallel (DDP; gloo on CPU, NCCL on CUDA):
each rank takes a disjoint shard of the epoch's sample list, gradients are averaged, every rank
validates on the whole (small) validation set so their decisions agree, and rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from scxnn.config import Config, save_resolved
from scxnn.dataset import RadiographDataset, load_study_manifest, make_loader, sample_seed
from scxnn.pipeline import RunMismatch
from scxnn.checkpoints import BEST_NAME, CHECKPOINT_FORMAT, HISTORY_NAME, LAST_NAME, STEP, load_checkpoint, save_checkpoint
from scxnn.hardware import autocast, resolve_device, to_device
from scxnn.utils import atomic_write_text, remove_stale_temporaries, seed_everything

log = logging.getLogger("scxnn")

HISTORY_COLUMNS = ("stage", "epoch", "lr", "train_loss", "train_ce", "train_mse", "train_auc", "val_loss", "val_ce", "val_mse", "val_auc", "val_acc", "seconds")
# Settings that may change between a run and its resumption (budgets and speed knobs only).
RESUMABLE_CHANGES = {
    "description",
    "device",
    "paths",
    "ensemble",
    "evaluate",
    "variants",
    "train.max_epochs",
    "train.stage2_epochs",
    "train.num_workers",
    "train.compile",
}


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    history: pd.DataFrame
    metrics: dict


# --------------------------------------------------------------------------- labels


def finding_labels(
    df: pd.DataFrame,
    finding: str,
    num_classes: int,
    findings: Sequence[str] | None = None,
    unseen: Sequence[str] | None = None,
) -> pd.Series:
    """Per-row class for ``finding``'s model, as a nullable Int8 Series aligned with ``df``.

    3 classes (thesis): 0 normal (none of the target findings, nor an unseen one), 1 target present,
    2 others (target absent and another finding present; an image with only an unseen finding also
    counts as "others": it is abnormal, never normal). 2 classes: 1 target, 0 everything else
    ("others" fold into 0). NA target -> NA (the row is left out). An NA among the *other* findings is
    read as absent. ``findings`` / ``unseen`` default to the finding columns of the study defaults.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes!r}")
    if findings is None or unseen is None:
        from scxnn.config import load_config

        d = load_config("demo")  # findings come from defaults.yaml; every profile keeps them
        findings = list(d.findings) if findings is None else findings
        unseen = list(d.unseen_findings) if unseen is None else unseen
    if finding not in df:
        raise KeyError(f"finding {finding!r} is not a manifest column")
    target = df[finding].astype("Float64")
    others = [c for c in (*findings, *unseen) if c != finding and c in df]
    other_pos = (df[others].astype("Float64").fillna(0) == 1).any(axis=1) if others else pd.Series(False, index=df.index)
    out = pd.Series(0, index=df.index, dtype="Int8")
    if num_classes == 3:
        out[other_pos.to_numpy(dtype=bool)] = 2
    out[(target == 1).fillna(False).to_numpy(dtype=bool)] = 1
    out[target.isna().to_numpy(dtype=bool)] = pd.NA
    return out


def finding_seed(seed: int, finding: str) -> int:
    """The run's seed: the study seed plus a stable offset derived from the finding's name."""
    off = int(hashlib.sha256(finding.encode()).hexdigest()[:8], 16)
    return (int(seed) + off) % 2**31


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module called init_process_group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


def shard_indices(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s share of an epoch's sample list, like DistributedSampler: the list is padded
    by wrapping to a multiple of ``world`` and dealt out round-robin, so shards have equal length."""
    idx = list(indices)
    if world <= 1 or not idx:
        return idx
    pad = (-len(idx)) % world
    idx = idx + (idx * (pad // len(idx) + 1))[:pad]
    return idx[rank::world]


def wrap_ddp(model: nn.Module, dist_: Dist, device: torch.device) -> nn.Module:
    if not dist_.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def _all_reduce_sum(values: list[float], dist_: Dist, device: torch.device) -> list[float]:
    if not dist_.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_gather_cat(t: torch.Tensor, dist_: Dist, device: torch.device) -> torch.Tensor:
    """Every rank's ``t`` concatenated in rank order (shards have equal length: see shard_indices)."""
    if not dist_.enabled:
        return t
    import torch.distributed as dist

    t = t.to(device)
    parts = [torch.empty_like(t) for _ in range(dist_.world)]
    dist.all_gather(parts, t)
    return torch.cat(parts).cpu()


def _sync_buffers(model: nn.Module, dist_: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart per shard), so all
    ranks validate the very model rank 0 saves and take the same schedule / stopping decisions."""
    if not dist_.enabled:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def _barrier(dist_: Dist) -> None:
    if dist_.enabled:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain ints / lists / tensors (weights_only-loadable)."""
    py = random.getstate()
    np_state = np.random.get_state()
    st: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        if key in RESUMABLE_CHANGES:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k not in ("findings",):
            out += _config_diff(va, vb, key + ".")
        elif va != vb:
            out.append(key)
    return out


# --------------------------------------------------------------------------- data selection


def training_sets(df: pd.DataFrame, cfg: Config, finding: str) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """{"stage1", "stage2", "val"} -> (rows, labels), from the train and val splits; NA targets dropped."""
    labels = finding_labels(df, finding, cfg.model.num_classes, list(cfg.findings), list(cfg.unseen_findings))
    # Splits, not sites, decide: evaluation sites (temporal, external) are all `test`, and a real
    # dataset read by an adapter has a site name of its own.
    ok = labels.notna()
    # train.stage1_labels "any": a weak-label-only dataset (no masks) trains and validates on all films.
    hard = df["label_type"] == "hard" if cfg.train.stage1_labels == "hard" else pd.Series(True, index=df.index)
    sel = {
        "stage1": ok & (df["split"] == "train") & hard,
        # Weak labels all go to training (see data.split); the hard training images stay in too.
        "stage2": ok & (df["split"] == "train"),
        "val": ok & (df["split"] == "val") & hard,
    }
    out = {k: (df[m].reset_index(drop=True), labels[m].astype(int).to_numpy()) for k, m in sel.items()}
    cap = cfg.train.max_val_images
    if cap and len(out["val"][0]) > cap:
        out["val"] = _val_subset(*out["val"], cap, finding_seed(cfg.seed, finding))
    return out


def _val_subset(rows: pd.DataFrame, labels: np.ndarray, cap: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A fixed subset of ``cap`` validation films for per-epoch model selection: every target film
    (the rare class decides the AUC) as long as they fill at most half the cap, then a seeded draw of
    the rest; a common target (e.g. Kermany's pneumonia) gets half, so the AUC keeps both classes.
    The SVM and the thresholds still use the whole validation split (step 03)."""
    rng = np.random.default_rng(seed)
    pos = rng.permutation(np.flatnonzero(labels == 1))
    rest = rng.permutation(np.flatnonzero(labels != 1))
    n_pos = min(len(pos), max(cap // 2, cap - len(rest)))
    keep = np.sort(np.r_[pos[:n_pos], rest[: cap - n_pos]])
    return rows.iloc[keep].reset_index(drop=True), labels[keep]


def epoch_indices(labels: np.ndarray, seed: int, key: int, imbalance: str, cap: int, num_classes: int) -> list[int]:
    """The epoch's sample list, a pure function of (seed, key): class-balanced draws with
    replacement (WeightedRandomSampler) for ``imbalance: sampler``, else a permutation; at most
    ``cap`` samples when ``cap`` > 0."""
    n = len(labels)
    if n == 0:
        return []
    k = min(cap, n) if cap > 0 else n
    g = torch.Generator().manual_seed(sample_seed(seed, key, 0x5A3))
    if imbalance == "sampler":
        counts = np.bincount(labels, minlength=num_classes).astype(float)
        w = 1.0 / counts[labels]
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), k, replacement=True, generator=g)
        return [int(i) for i in sampler]
    return torch.randperm(n, generator=g)[:k].tolist()


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """n / (C * count) per class (0 for a class with no samples)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


# --------------------------------------------------------------------------- loss, epochs


def multitask_loss(logits, recon, batch, ce_weight, lam: float, use_mse: bool):
    """(total, ce, mse). MSE is the mean over samples with ``has_recon`` of their per-pixel MSE; it is
    always part of the graph (times 0 when no sample has a target), so DDP sees every parameter used."""
    y = batch["label"]
    ce = F.cross_entropy(logits.float(), y, weight=ce_weight)
    if use_mse and recon is not None:
        has = batch["has_recon"].float()
        per = ((recon.float() - batch["target"]) ** 2).flatten(1).mean(1)
        mse = (per * has).sum() / has.sum().clamp(min=1.0)
    else:
        mse = logits.new_zeros(()).float()
    return ce + lam * mse, ce, mse


def _set_train_mode(model, stage: int, cfg: Config) -> None:
    model.train()
    if stage == 2:
        if model.decoder is not None:
            model.decoder.eval()
        if not cfg.train.stage2_unfreeze_encoder:
            model.encoder.eval()


def _configure_stage(model, stage: int, cfg: Config) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(True)
    if stage == 2:
        if model.decoder is not None:
            for p in model.decoder.parameters():
                p.requires_grad_(False)
        if not cfg.train.stage2_unfreeze_encoder:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def _train_epoch(fwd, model, loader, opt, stage, cfg, ce_weight, device, dist_, progress, desc) -> dict:
    from tqdm.auto import tqdm

    _set_train_mode(model, stage, cfg)
    use_mse = stage == 1 and cfg.model.decoder != "none"
    lam = cfg.model.recon_weight
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # (unused), ce*n, mse*n_has, n, n_has
    # Target-vs-rest AUC of the epoch's own draws, as the weights move (augmented; all ranks' draws
    # under DDP, so every rank logs the same): beside val_auc it tells under- from over-fitting at no
    # extra forward pass.
    probs, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not (progress and dist_.main)):
        b = to_device(batch, device, cfg.train.channels_last)
        with autocast(cfg, device):
            logits, recon = fwd(b["image"], decode=use_mse)
        loss, ce, mse = multitask_loss(logits, recon, b, ce_weight, lam, use_mse)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = len(b["label"])
        n_has = float(b["has_recon"].sum()) if use_mse else 0.0
        ce, mse = ce.detach(), mse.detach()
        probs.append(torch.softmax(logits.detach().float(), 1)[:, 1].cpu())
        labels.append(b["label"].cpu())
        sums[1] += float(ce) * n
        sums[2] += float(mse) * n_has
        sums[3] += n
        sums[4] += n_has
    s = _all_reduce_sum(sums, dist_, device)
    n = max(s[3], 1.0)
    mse = s[2] / s[4] if s[4] else float("nan")
    # Same definition as the validation loss: mean CE + lambda * mean MSE over samples with a target.
    p = _all_gather_cat(torch.cat(probs) if probs else torch.zeros(0), dist_, device)
    y = _all_gather_cat(torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64), dist_, device)
    auc = target_auc(y.numpy(), p.numpy()) if len(y) else float("nan")
    return {"train_loss": s[1] / n + (lam * mse if s[4] else 0.0), "train_ce": s[1] / n, "train_mse": mse, "train_auc": auc}


@torch.inference_mode()
def _evaluate(model, loader, stage, cfg, device) -> dict:
    model.eval()
    use_mse = stage == 1 and cfg.model.decoder != "none"
    lam = cfg.model.recon_weight
    ce_sum = mse_sum = 0.0
    n = n_has = 0
    logits_all, labels_all = [], []
    for batch in loader:
        b = to_device(batch, device, cfg.train.channels_last)
        with autocast(cfg, device):
            logits, recon = model(b["image"], decode=use_mse)
        logits = logits.float()
        ce_sum += float(F.cross_entropy(logits, b["label"], reduction="sum"))
        if use_mse and recon is not None:
            has = b["has_recon"]
            per = ((recon.float() - b["target"]) ** 2).flatten(1).mean(1)
            mse_sum += float(per[has].sum())
            n_has += int(has.sum())
        n += len(b["label"])
        logits_all.append(logits.cpu())
        labels_all.append(b["label"].cpu())
    if n == 0:
        return {"val_loss": float("nan"), "val_ce": float("nan"), "val_mse": float("nan"), "val_auc": float("nan"), "val_acc": float("nan")}
    logits = torch.cat(logits_all)
    y = torch.cat(labels_all).numpy()
    ce = ce_sum / n
    mse = mse_sum / n_has if n_has else (0.0 if use_mse else float("nan"))
    prob = torch.softmax(logits, 1)[:, 1].numpy()
    return {
        "val_loss": ce + (lam * mse if use_mse else 0.0),
        "val_ce": ce,
        "val_mse": mse,
        "val_auc": target_auc(y, prob),
        "val_acc": float((logits.argmax(1).numpy() == y).mean()),
    }


def target_auc(labels: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of target (label 1) vs rest; NaN when only one side is present."""
    pos = labels == 1
    if pos.all() or not pos.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(pos.astype(int), score))


@torch.inference_mode()
def predict(model, loader_or_dataset, device="cpu", batch_size: int = 32, channels_last: bool = False, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C), labels (N,)) over a DataLoader or a dataset of dict items; the decoder is skipped.

    ``channels_last`` and ``bf16`` are the inference fast path (see ``scxnn bench predict``); bf16
    logits differ from fp32 in the third decimal, so a step uses one setting throughout."""
    device = torch.device(device)
    loader = loader_or_dataset
    if isinstance(loader_or_dataset, torch.utils.data.Dataset):
        loader = torch.utils.data.DataLoader(loader_or_dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    model.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=fmt)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    out, labels = [], []
    for batch in loader:
        x = batch["image"] if isinstance(batch, dict) else batch[0]
        y = batch["label"] if isinstance(batch, dict) else batch[1]
        with amp:
            logits, _ = model(x.to(device).contiguous(memory_format=fmt), decode=False)
        out.append(logits.float().cpu())
        labels.append(torch.as_tensor(y).cpu())
    if not out:
        return np.zeros((0, getattr(model, "num_classes", 3)), np.float32), np.zeros((0,), np.int64)
    return torch.cat(out).numpy(), torch.cat(labels).numpy()


# --------------------------------------------------------------------------- stopping rule


def _should_stop(rows: list[dict], lr: float, cfg: Config) -> bool:
    """lr below the floor and ``plateau_patience`` epochs since the stage's best validation loss."""
    if not rows or lr >= cfg.train.lr_floor:
        return False
    losses = [r["val_loss"] for r in rows]
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    best_i = min(finite, key=lambda i: losses[i]) if finite else 0
    return len(rows) - 1 - best_i >= cfg.train.plateau_patience


def _epoch_end_hook(stage: int, epoch: int) -> None:
    """Called after each epoch's checkpoint is written (tests use it to simulate a kill)."""


# --------------------------------------------------------------------------- driver


def train_finding(cfg: Config, finding: str, out_dir=None, manifest=None, resume: bool | str = True, progress: bool = True) -> TrainResult:
    """Train (or resume) ``finding``'s model; returns the best checkpoint, history and metrics.

    ``out_dir`` defaults to ``runs/<profile>/02_train_disease_model/<finding>``; ``manifest`` to the
    profile's preprocessed cache (a path, or a DataFrame whose paths are relative to the cache).
    With ``resume`` an existing ``last.pt`` is continued (its settings must match, except for
    :data:`RESUMABLE_CHANGES`); without it any previous run in ``out_dir`` is started over. With
    ``resume="auto"`` (the notebook's mode) a run made with other settings is moved to
    ``out_dir/superseded/`` and training starts over, instead of failing.
    """
    from scxnn.models import build_model
    from scxnn.preprocess import fingerprint

    if finding not in cfg.findings:
        raise ValueError(f"finding {finding!r} is not in profile {cfg.profile!r}; findings: {', '.join(cfg.findings)}")
    t_start = time.perf_counter()
    device = resolve_device(cfg)
    dist_ = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        if out_dir is None:
            from scxnn.pipeline import step_dir

            out_dir = step_dir(cfg, STEP, finding)
        out_dir = Path(out_dir)
        seed = finding_seed(cfg.seed, finding)
        seed_everything(seed)
        df, base = load_study_manifest(cfg, manifest)
        sets = training_sets(df, cfg, finding)
        pre_fp = fingerprint(cfg.preprocess)
        nc = cfg.model.num_classes
        if len(sets["stage1"][0]) == 0:
            raise ValueError(f"{finding}: no hard-label training images in the manifest (a weak-label-only dataset "
                             "trains with train.stage1_labels: any and model.decoder: none)")
        if len(sets["val"][0]) == 0:
            log.warning("%s: no validation images; the training loss drives the schedule and checkpoint choice", finding)

        # The start (ImageNet, the study trunk, a file) is loaded below, and only for a fresh run.
        model = build_model(dataclasses.replace(cfg.model, pretrained="none")).to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)

        last_path, best_path = out_dir / LAST_NAME, out_dir / BEST_NAME
        ckpt = None
        if resume and last_path.is_file():
            ckpt = load_checkpoint(last_path, map_location=device)
            diff = _config_diff(cfg.to_dict(), ckpt.get("config", {}))
            why = None
            if diff or ckpt.get("finding") != finding:
                why = f"was trained with different settings ({', '.join(diff) or 'finding'})"
            elif ckpt.get("preprocess_fingerprint") != pre_fp:
                why = f"was trained on another preprocessing ({ckpt.get('preprocess_fingerprint')} != {pre_fp})"
            if why and resume != "auto":
                raise RunMismatch(f"{last_path}: {why}; start over (CLI: --fresh) or use another output folder")
            if why:
                # The Make pipeline reruns a step because its settings changed: keep the old run
                # aside (one generation) instead of deleting hours of training.
                log.warning("%s: %s; moved to %s/, training starts over", last_path, why, SUPERSEDED)
                if dist_.main:
                    _supersede(out_dir)
                ckpt = None
        if dist_.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            # A kill -9 mid-write leaves atomic_open's temporary (a whole checkpoint); nothing else
            # writes here while this finding trains.
            remove_stale_temporaries(out_dir)
            if ckpt is None:
                for name in (LAST_NAME, BEST_NAME, HISTORY_NAME):
                    (out_dir / name).unlink(missing_ok=True)
            save_resolved(cfg, out_dir, extra={"step": STEP, "finding": finding, "preprocess_fingerprint": pre_fp})
        _barrier(dist_)
        if ckpt is None:
            from scxnn.pretrain import resolve_pretrained

            model.load_pretrained(resolve_pretrained(cfg, progress=progress))
            if cfg.model.pretrained == "study":
                seed_everything(seed)  # building the trunk here drew from the global RNGs; a reused one did not

        history: list[dict] = []
        stage, done_epochs = 1, 0
        best: dict[str, dict] = {}
        best_state = None
        if ckpt is not None:
            stage, done_epochs = int(ckpt["stage"]), int(ckpt["epoch"])
            history = [dict(r) for r in ckpt["history"]]
            best = {k: dict(v) for k, v in ckpt.get("best", {}).items()}
            model.load_state_dict(ckpt["model"])
            if best_path.is_file():
                best_state = load_checkpoint(best_path, map_location="cpu")["model"]
            log.info("%s: resuming stage %d after epoch %d (%s)", finding, stage, done_epochs, last_path)

        val_df, val_y = sets["val"]
        val_ds = RadiographDataset(val_df, base, finding, val_y, cfg, augment=False)
        val_loader = make_loader(val_ds, range(len(val_ds)), cfg, seed, 0, device, batch_size=max(cfg.train.batch_size, 16))

        def make_ckpt(stage_: int, epoch_: int, opt, sched) -> dict:
            return {
                "format": CHECKPOINT_FORMAT,
                "finding": finding,
                "stage": stage_,
                "epoch": epoch_,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_state(),
                "history": history,
                "best": best,
                "seed": seed,
                "config": cfg.to_dict(),
                "preprocess_fingerprint": pre_fp,
                "torch_version": str(torch.__version__),
            }

        for st in (1, 2):
            budget = cfg.train.max_epochs if st == 1 else cfg.train.stage2_epochs
            if st < stage or budget == 0:
                continue
            if st == 2 and stage == 1:
                # Stage 2 starts from stage 1's best weights (the current weights are stage 1's last).
                if best_state is not None:
                    model.load_state_dict(best_state)
                stage, done_epochs = 2, 0
            params = _configure_stage(model, st, cfg)
            opt = torch.optim.Adam(params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.train.plateau_factor, patience=cfg.train.plateau_patience)
            if ckpt is not None and int(ckpt["stage"]) == st:
                opt.load_state_dict(ckpt["optimizer"])
                sched.load_state_dict(ckpt["scheduler"])
                _set_rng_state(ckpt["rng"])
            fwd = wrap_ddp(model, dist_, device)
            if cfg.train.compile and device.type == "cuda":
                fwd = torch.compile(fwd)
            tr_df, tr_y = sets["stage1" if st == 1 else "stage2"]
            tr_ds = RadiographDataset(tr_df, base, finding, tr_y, cfg, augment=cfg.train.augment, seed=seed)
            ce_w = class_weights(tr_y, nc).to(device) if cfg.train.imbalance == "class_weights" else None
            rows = [r for r in history if r["stage"] == st]
            while done_epochs < budget and not _should_stop(rows, opt.param_groups[0]["lr"], cfg):
                t0 = time.perf_counter()
                epoch = done_epochs + 1
                key = st * 100_000 + epoch
                tr_ds.set_epoch(key)
                idx = epoch_indices(tr_y, seed, key, cfg.train.imbalance, cfg.train.max_images_per_epoch, nc)
                idx = shard_indices(idx, dist_.rank, dist_.world)
                if len(idx) % cfg.train.batch_size == 1 and len(idx) > 1:
                    idx = idx[:-1]  # a batch of one breaks BatchNorm in training mode
                lr = opt.param_groups[0]["lr"]
                train_m = _train_epoch(fwd, model, make_loader(tr_ds, idx, cfg, seed, key, device), opt, st, cfg, ce_w, device, dist_, progress, f"{finding} s{st} e{epoch}")
                _sync_buffers(model, dist_)
                val_m = _evaluate(model, val_loader, st, cfg, device)
                if not math.isfinite(val_m["val_loss"]):
                    val_m["val_loss"] = train_m["train_loss"]
                sched.step(val_m["val_loss"])
                row = {"stage": st, "epoch": epoch, "lr": lr, **train_m, **val_m, "seconds": time.perf_counter() - t0}
                history.append(row)
                rows.append(row)
                done_epochs = epoch
                stage_key = f"stage{st}"
                # Stage 2 must also beat stage 1's best validation CE (its loss without the MSE term),
                # else best.pt stays stage 1's model: weak-label training is kept only if it helps.
                bar = best[stage_key]["val_loss"] if stage_key in best else (best["stage1"]["val_ce"] if st == 2 and "stage1" in best else math.inf)
                improved = row["val_loss"] < bar
                if improved:
                    best[stage_key] = {k: row[k] for k in ("epoch", "val_loss", "val_ce", "val_mse", "val_auc", "val_acc")}
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if dist_.main:
                    c = make_ckpt(st, epoch, opt, sched)
                    if improved:  # best first: a kill between the two writes redoes this epoch identically
                        save_checkpoint(best_path, c)
                    save_checkpoint(last_path, c)
                    _write_history(out_dir / HISTORY_NAME, history)
                log.info(
                    "%s stage %d epoch %d/%d lr %.2e train %.4f val %.4f (ce %.4f mse %.4f) auc train %.3f val %.3f acc %.3f %.1fs%s",
                    finding, st, epoch, budget, lr, row["train_loss"], row["val_loss"], row["val_ce"], row["val_mse"], row["train_auc"], row["val_auc"], row["val_acc"], row["seconds"], " *" if improved else "",
                )
                _barrier(dist_)
                _epoch_end_hook(st, epoch)
            ckpt = None  # later stages start fresh
        if dist_.main:
            _write_history(out_dir / HISTORY_NAME, history)
        hist = _history_frame(history)
        final = best.get("stage2") or best.get("stage1") or {}  # stage 2 is recorded only when it beat stage 1
        metrics = {
            "finding": finding,
            "val_loss": final.get("val_loss", float("nan")),
            "val_auc": final.get("val_auc", float("nan")),
            "val_acc": final.get("val_acc", float("nan")),
            "val_ce": final.get("val_ce", float("nan")),
            "best_stage": 2 if "stage2" in best else 1,
            "best_epoch": final.get("epoch"),
            "stage1_best": best.get("stage1", {}),
            "epochs_stage1": int((hist["stage"] == 1).sum()) if len(hist) else 0,
            "epochs_stage2": int((hist["stage"] == 2).sum()) if len(hist) else 0,
            "train_seconds": float(hist["seconds"].sum()) if len(hist) else 0.0,
            "seconds": time.perf_counter() - t_start,
            "n_train_stage1": len(sets["stage1"][0]),
            "n_train_stage2": len(sets["stage2"][0]),
            "n_val": len(val_df),
            "world_size": dist_.world,
        }
        return TrainResult(out_dir=out_dir, best_checkpoint=best_path, history=hist, metrics=metrics)
    finally:
        if dist_.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


SUPERSEDED = "superseded"


def _supersede(out_dir: Path) -> None:
    """Move a run's files into ``out_dir/superseded/`` (replacing an older superseded run)."""
    import shutil

    dst = out_dir / SUPERSEDED
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in (LAST_NAME, BEST_NAME, HISTORY_NAME):
        if (out_dir / name).exists():
            os.replace(out_dir / name, dst / name)


def _history_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history, columns=list(HISTORY_COLUMNS))


def _write_history(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, _history_frame(history).to_csv(index=False))
