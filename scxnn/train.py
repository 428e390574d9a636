"""Training of one finding's multi-task model (thesis section 3.3.4), resumable and deterministic.

Per finding ``F`` (one model each, ``cfg.findings``):

* **Labels** (:mod:`scxnn.labels`): 0 normal, 1 ``F`` present, 2 "others" (``F`` absent, some
  other finding present). Rows whose ``F`` is unknown (NA) are left out.
* **Stage 1** (thesis step 2): hard-label internal training images; encoder, decoder and head
  trained jointly on ``CE + lambda * MSE(decoder output, lesion target)``
  (:func:`scxnn.losses.multitask_loss`, :class:`scxnn.dataset.RadiographDataset`). Validation:
  hard-label internal ``val`` images.
* **Stage 2** (thesis step 3): starts from stage 1's best weights; the decoder (and the encoder,
  unless ``train.stage2_unfreeze_encoder``) is frozen and put in eval mode (BatchNorm statistics
  frozen too); only the head is trained, on CE alone, over the weak-label images *plus* the hard
  training images, so the head keeps seeing the lesion-annotated cases it was fitted on (weak labels
  alone would shift it towards the weak sets' label noise and prevalence).
* Adam + ReduceLROnPlateau on the validation loss; a stage stops at its epoch budget, or once the
  learning rate is below ``train.lr_floor`` and ``plateau_patience`` epochs passed without a new best.
  The best epoch by validation loss is kept (``best.pt``: the weights, history, config and
  fingerprint, without last.pt's optimiser, scheduler and RNG states). A stage-2 epoch replaces it only if its
  validation CE beats stage 1's best validation CE (stage 1's loss also holds the MSE term, so CE is
  the comparable part): the weak-label stage is kept when it helps on validation, as a model-selection
  step; ``metrics["best_stage"]`` says which stage ``best.pt`` comes from.

Every epoch writes ``last.pt`` (model, optimiser, scheduler, RNG states, history, the resolved
config and the preprocessing fingerprint) atomically, so a killed run resumes where it stopped and
ends with the same weights as an uninterrupted one: batches and augmentations are pure functions of
(seed, stage, epoch, index), never of global RNG state or the worker count. The steps, the
resumption and the checkpoints are :mod:`scxnn.loop`'s, shared with the trunk's pretraining.

Under ``torchrun`` (``WORLD_SIZE`` > 1) training is data-parallel (:mod:`scxnn.distributed`): each
rank takes a disjoint shard of the epoch's sample list, gradients are averaged, every rank validates
on the whole (small) validation set so their decisions agree, and rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from scxnn.config import Config
from scxnn.dataset import RadiographDataset, load_study_manifest, make_loader
from scxnn.distributed import Dist, all_gather_cat, all_reduce_sum, barrier, close_distributed, init_distributed, shard_indices, sync_buffers, wrap_ddp
from scxnn.labels import class_weights, epoch_indices, finding_seed, training_sets
from scxnn.losses import multitask_loss, per_sample_mse
from scxnn.metrics import roc_auc
from scxnn.pipeline import RunMismatch, step_dir
from scxnn.checkpoints import BEST_NAME, CHECKPOINT_FORMAT, HISTORY_NAME, LAST_NAME, STEP, load_checkpoint
from scxnn.hardware import resolve_device
from scxnn.loop import RUN_FILES, evaluate, history_frame, optimise, prepare_run_dir, resumable, save_epoch, write_history
from scxnn.models import build_model
from scxnn.pixels import fingerprint
from scxnn.pretrain import resolve_pretrained
from scxnn.utils import rng_state, seed_everything, set_rng_state

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
    "launch",  # where a job runs (scxnn.launch), never what it computes
    "train.max_epochs",
    "train.stage2_epochs",
    "train.num_workers",
    "train.compile",
    # Only the finding's own entry acts, through the train keys it sets, and those are compared.
    "train.by_finding",
}
SUPERSEDED = "superseded"


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    history: pd.DataFrame
    metrics: dict


@dataclass
class _Progress:
    """Where a run stands: its stage, the epochs done in it, every epoch's history row, the best
    epoch per stage (``{"stage1": {...}, "stage2": {...}}``) and the best weights so far."""

    stage: int = 1
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict[str, dict] = field(default_factory=dict)
    best_state: dict | None = None


@dataclass(frozen=True)
class _Run:
    """What stays fixed for the whole run of one finding."""

    cfg: Config
    finding: str
    out_dir: Path
    seed: int
    pre_fp: str  # the preprocessing fingerprint, stored in every checkpoint
    base: Path  # the folder the manifest's image paths are relative to
    device: torch.device
    dist_: Dist
    progress: bool


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
    if finding not in cfg.findings:
        raise ValueError(f"finding {finding!r} is not in profile {cfg.profile!r}; findings: {', '.join(cfg.findings)}")
    cfg = cfg.for_finding(finding)  # train.by_finding: this model's own budget; saved with it
    t_start = time.perf_counter()
    device = resolve_device(cfg)
    dist_ = _init_ranks(finding, device)
    try:
        out_dir = Path(out_dir if out_dir is not None else step_dir(cfg, STEP, finding))
        seed = finding_seed(cfg.seed, finding)
        seed_everything(seed)

        # Data: the finding's labelled sets, and the validation batches (the same every epoch).
        df, base = load_study_manifest(cfg, manifest)
        sets = training_sets(df, cfg, finding)
        pre_fp = fingerprint(cfg.preprocess)
        _check_sets(sets, finding)
        run = _Run(cfg, finding, out_dir, seed, pre_fp, base, device, dist_, progress)

        model = _new_model(cfg, device)
        ckpt, prog = _start_or_resume(run, model, resume)
        val_df, val_y = sets["val"]
        val_ds = RadiographDataset(val_df, base, finding, val_y, cfg, augment=False)
        val_loader = make_loader(val_ds, range(len(val_ds)), cfg, seed, 0, device, batch_size=max(cfg.train.batch_size, 16))

        for st in (1, 2):
            budget = cfg.train.max_epochs if st == 1 else cfg.train.stage2_epochs
            if st < prog.stage or budget == 0:
                continue
            if st == 2 and prog.stage == 1:
                _start_stage2(model, prog)
            _train_stage(run, model, prog, st, budget, sets["stage1" if st == 1 else "stage2"], val_loader, ckpt)
            ckpt = None  # later stages start fresh

        return _finish(run, prog, sets, t_start)
    finally:
        close_distributed(dist_)


def _init_ranks(finding: str, device: torch.device) -> Dist:
    """This process's place under ``torchrun`` (a single process without it)."""
    dist_ = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist_.enabled and dist_.main:
        log.info("%s: data-parallel training over %d processes (%s)", finding, dist_.world, "nccl" if device.type == "cuda" else "gloo")
    return dist_


def _train_stage(run: _Run, model: nn.Module, prog: _Progress, st: int, budget: int, train_set: tuple, val_loader, ckpt: dict | None) -> None:
    """Stage ``st``'s epochs, from where ``prog`` stands until its budget or its plateau stop; each
    recorded in ``prog`` and checkpointed."""
    cfg, finding, seed, device, dist_ = run.cfg, run.finding, run.seed, run.device, run.dist_
    opt, sched = _stage_optimiser(model, st, cfg, ckpt)
    fwd = wrap_ddp(model, dist_, device)
    if cfg.train.compile and device.type == "cuda":
        fwd = torch.compile(fwd)
    tr_df, tr_y = train_set
    tr_ds = RadiographDataset(tr_df, run.base, finding, tr_y, cfg, augment=cfg.train.augment, seed=seed)
    ce_w = class_weights(tr_y, cfg.model.num_classes).to(device) if cfg.train.imbalance == "class_weights" else None
    rows = [r for r in prog.history if r["stage"] == st]
    while prog.epoch < budget and not _should_stop(rows, opt.param_groups[0]["lr"], cfg):
        t0 = time.perf_counter()
        epoch = prog.epoch + 1
        loader = _epoch_loader(tr_ds, tr_y, seed, st * 100_000 + epoch, cfg, device, dist_)
        lr = opt.param_groups[0]["lr"]
        train_m = _train_epoch(fwd, model, loader, opt, st, cfg, ce_w, device, dist_, run.progress, f"{finding} s{st} e{epoch}")
        sync_buffers(model, dist_)
        val_m = _evaluate(model, val_loader, st, cfg, device)
        if not math.isfinite(val_m["val_loss"]):
            val_m["val_loss"] = train_m["train_loss"]
        sched.step(val_m["val_loss"])
        row = {"stage": st, "epoch": epoch, "lr": lr, **train_m, **val_m, "seconds": time.perf_counter() - t0}
        prog.history.append(row)
        rows.append(row)
        prog.epoch = epoch
        improved = _keep_if_best(prog, row, model)
        if dist_.main:
            save_epoch(run.out_dir, _checkpoint(model, opt, sched, prog, row, cfg, finding, seed, run.pre_fp), prog.history, improved, HISTORY_COLUMNS)
        _log_epoch(finding, row, budget, improved)
        barrier(dist_)
        _epoch_end_hook(st, epoch)


def _finish(run: _Run, prog: _Progress, sets: dict, t_start: float) -> TrainResult:
    """The run's result; rank 0 writes its whole history."""
    if run.dist_.main:
        write_history(run.out_dir / HISTORY_NAME, prog.history, HISTORY_COLUMNS)
    hist = history_frame(prog.history, HISTORY_COLUMNS)
    metrics = _final_metrics(run.finding, prog.best, hist, sets, run.dist_, t_start)
    return TrainResult(out_dir=run.out_dir, best_checkpoint=run.out_dir / BEST_NAME, history=hist, metrics=metrics)


# --------------------------------------------------------------------------- start or resume


def _check_sets(sets: dict, finding: str) -> None:
    if len(sets["stage1"][0]) == 0:
        raise ValueError(f"{finding}: no hard-label training images in the manifest (a weak-label-only dataset "
                         "trains with train.stage1_labels: any and model.decoder: none)")
    if len(sets["val"][0]) == 0:
        log.warning("%s: no validation images; the training loss drives the schedule and checkpoint choice", finding)


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


def _checkpoint_to_resume(out_dir: Path, cfg: Config, finding: str, pre_fp: str, resume: bool | str, dist_: Dist, device: torch.device) -> dict | None:
    """``out_dir``'s ``last.pt`` when ``resume`` asks for it and it was made with these settings;
    else None (start over). One made with other settings is refused, or with ``resume="auto"`` moved
    to ``superseded/``."""
    if not resume:
        return None

    def why_not(ckpt: dict) -> str | None:
        diff = _config_diff(cfg.to_dict(), ckpt.get("config", {}))
        if diff or ckpt.get("finding") != finding:
            return f"was trained with different settings ({', '.join(diff) or 'finding'})"
        if ckpt.get("preprocess_fingerprint") != pre_fp:
            return f"was trained on another preprocessing ({ckpt.get('preprocess_fingerprint')} != {pre_fp})"
        return None

    ckpt, why = resumable(out_dir, device, why_not)
    if why and resume != "auto":
        raise RunMismatch(f"{out_dir / LAST_NAME}: {why}; start over (CLI: --fresh) or use another output folder")
    if why:
        # The Make pipeline reruns a step because its settings changed: keep the old run
        # aside (one generation) instead of deleting hours of training.
        log.warning("%s: %s; moved to %s/, training starts over", out_dir / LAST_NAME, why, SUPERSEDED)
        if dist_.main:
            _supersede(out_dir)
    return ckpt


def _supersede(out_dir: Path) -> None:
    """Move a run's files into ``out_dir/superseded/`` (replacing an older superseded run)."""
    dst = out_dir / SUPERSEDED
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        if (out_dir / name).exists():
            os.replace(out_dir / name, dst / name)


def _prepare_out_dir(out_dir: Path, cfg: Config, finding: str, pre_fp: str, fresh: bool, dist_: Dist) -> None:
    """Rank 0 readies ``out_dir`` (a fresh run's old files removed, the resolved config written); all
    ranks wait for it."""
    if dist_.main:
        prepare_run_dir(out_dir, cfg, fresh, extra={"step": STEP, "finding": finding, "preprocess_fingerprint": pre_fp})
    barrier(dist_)


def _new_model(cfg: Config, device: torch.device) -> nn.Module:
    """The model, randomly initialised: its start (ImageNet, the study trunk, a file) is loaded by
    :func:`_start_or_resume`, and only for a fresh run."""
    model = build_model(dataclasses.replace(cfg.model, pretrained="none")).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _start_or_resume(run: _Run, model: nn.Module, resume: bool | str) -> tuple[dict | None, _Progress]:
    """(``last.pt`` to resume from or None, the run's progress): a resumed run's weights go into
    ``model``, a fresh one's start (``model.pretrained``), and ``out_dir`` is readied for either."""
    ckpt = _checkpoint_to_resume(run.out_dir, run.cfg, run.finding, run.pre_fp, resume, run.dist_, run.device)
    _prepare_out_dir(run.out_dir, run.cfg, run.finding, run.pre_fp, ckpt is None, run.dist_)
    if ckpt is None:
        _load_start(model, run.cfg, run.seed, run.progress)
        return None, _Progress()
    prog = _resumed_progress(ckpt, model, run.out_dir / BEST_NAME)
    log.info("%s: resuming stage %d after epoch %d (%s)", run.finding, prog.stage, prog.epoch, run.out_dir / LAST_NAME)
    return ckpt, prog


def _load_start(model: nn.Module, cfg: Config, seed: int, progress: bool) -> None:
    """A fresh run's starting weights (``model.pretrained``)."""
    model.load_pretrained(resolve_pretrained(cfg, progress=progress))
    if cfg.model.pretrained == "study":
        seed_everything(seed)  # building the trunk here drew from the global RNGs; a reused one did not


def _resumed_progress(ckpt: dict, model: nn.Module, best_path: Path) -> _Progress:
    """The progress ``last.pt`` recorded; its weights go into ``model``, ``best.pt``'s are kept aside."""
    prog = _Progress(stage=int(ckpt["stage"]), epoch=int(ckpt["epoch"]), history=[dict(r) for r in ckpt["history"]],
                     best={k: dict(v) for k, v in ckpt.get("best", {}).items()})
    model.load_state_dict(ckpt["model"])
    if best_path.is_file():
        prog.best_state = load_checkpoint(best_path, map_location="cpu")["model"]
    return prog


# --------------------------------------------------------------------------- stages


def _start_stage2(model: nn.Module, prog: _Progress) -> None:
    """Stage 2 starts from stage 1's best weights (the current weights are stage 1's last)."""
    if prog.best_state is not None:
        model.load_state_dict(prog.best_state)
    prog.stage, prog.epoch = 2, 0


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


def _stage_optimiser(model: nn.Module, stage: int, cfg: Config, ckpt: dict | None):
    """(Adam over the stage's trainable parameters, its ReduceLROnPlateau schedule). When ``ckpt``
    was written in this stage, their states and the RNG states are restored from it."""
    params = _configure_stage(model, stage, cfg)
    opt = torch.optim.Adam(params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.train.plateau_factor, patience=cfg.train.plateau_patience)
    if ckpt is not None and int(ckpt["stage"]) == stage:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
    return opt, sched


def _should_stop(rows: list[dict], lr: float, cfg: Config) -> bool:
    """lr below the floor and ``plateau_patience`` epochs since the stage's best validation loss."""
    if not rows or lr >= cfg.train.lr_floor:
        return False
    losses = [r["val_loss"] for r in rows]
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    best_i = min(finite, key=lambda i: losses[i]) if finite else 0
    return len(rows) - 1 - best_i >= cfg.train.plateau_patience


# --------------------------------------------------------------------------- epochs


def _uses_mse(stage: int, cfg: Config) -> bool:
    """Whether the stage's loss has the decoder's MSE term (stage 1 with a decoder)."""
    return stage == 1 and cfg.model.decoder != "none"


def _epoch_loader(ds: RadiographDataset, labels, seed: int, key: int, cfg: Config, device: torch.device, dist_: Dist):
    """The epoch's training batches for this rank: the sample list and the augmentations are pure
    functions of (seed, key)."""
    ds.set_epoch(key)
    idx = epoch_indices(labels, seed, key, cfg.train.imbalance, cfg.train.max_images_per_epoch, cfg.model.num_classes)
    idx = shard_indices(idx, dist_.rank, dist_.world)
    if len(idx) % cfg.train.batch_size == 1 and len(idx) > 1:
        idx = idx[:-1]  # a batch of one breaks BatchNorm in training mode
    return make_loader(ds, idx, cfg, seed, key, device)


def _train_epoch(fwd, model, loader, opt, stage, cfg, ce_weight, device, dist_, progress, desc) -> dict:
    _set_train_mode(model, stage, cfg)
    use_mse = _uses_mse(stage, cfg)
    lam = cfg.model.recon_weight

    def loss(out, b):
        logits, recon = out
        value, ce, mse = multitask_loss(logits, recon, b, ce_weight, lam, use_mse)
        n_has = float(b["has_recon"].sum()) if use_mse else 0.0
        # (ce*n, mse*n_has, n, n_has, P(target), label). The target-vs-rest AUC of the epoch's own
        # draws, as the weights move (augmented; all ranks' draws under DDP, so every rank logs the
        # same): beside val_auc it tells under- from over-fitting at no extra forward pass.
        n = len(b["label"])
        return value, (float(ce.detach()) * n, float(mse.detach()) * n_has, n, n_has,
                       torch.softmax(logits.detach().float(), 1)[:, 1].cpu(), b["label"].cpu())

    recs = optimise(loader, lambda b: fwd(b["image"], decode=use_mse), loss, opt, cfg, device, desc=desc, progress=progress and dist_.main)
    ce_n = mse_n = n = n_has = 0.0
    for r in recs:  # in batch order, one addition at a time: the sums do not depend on how they are taken
        ce_n, mse_n, n, n_has = ce_n + r[0], mse_n + r[1], n + r[2], n_has + r[3]
    ce_n, mse_n, n, n_has = all_reduce_sum([ce_n, mse_n, n, n_has], dist_, device)
    n = max(n, 1.0)
    mse = mse_n / n_has if n_has else float("nan")
    # Same definition as the validation loss: mean CE + lambda * mean MSE over samples with a target.
    p = all_gather_cat(torch.cat([r[4] for r in recs]) if recs else torch.zeros(0), dist_, device)
    y = all_gather_cat(torch.cat([r[5] for r in recs]) if recs else torch.zeros(0, dtype=torch.int64), dist_, device)
    auc = roc_auc(y.numpy() == 1, p.numpy())  # target vs rest; NaN with one side only
    return {"train_loss": ce_n / n + (lam * mse if n_has else 0.0), "train_ce": ce_n / n, "train_mse": mse, "train_auc": auc}


def _evaluate(model, loader, stage, cfg, device) -> dict:
    model.eval()
    use_mse = _uses_mse(stage, cfg)
    lam = cfg.model.recon_weight
    ce_sum = mse_sum = 0.0
    n = n_has = 0
    logits_all, labels_all = [], []
    for b, (logits, recon) in evaluate(loader, lambda b: model(b["image"], decode=use_mse), cfg, device):
        logits = logits.float()
        ce_sum += float(F.cross_entropy(logits, b["label"], reduction="sum"))
        if use_mse and recon is not None:
            has = b["has_recon"]
            mse_sum += float(per_sample_mse(recon, b["target"])[has].sum())
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
        "val_auc": roc_auc(y == 1, prob),  # target vs rest; NaN with one side only
        "val_acc": float((logits.argmax(1).numpy() == y).mean()),
    }


def _keep_if_best(prog: _Progress, row: dict, model: nn.Module) -> bool:
    """Whether the epoch of ``row`` is its stage's best so far; if so it is recorded and the weights
    are kept (a copy on the CPU)."""
    st = row["stage"]
    stage_key = f"stage{st}"
    # Stage 2 must also beat stage 1's best validation CE (its loss without the MSE term),
    # else best.pt stays stage 1's model: weak-label training is kept only if it helps.
    best = prog.best
    bar = best[stage_key]["val_loss"] if stage_key in best else (best["stage1"]["val_ce"] if st == 2 and "stage1" in best else math.inf)
    improved = row["val_loss"] < bar
    if improved:
        best[stage_key] = {k: row[k] for k in ("epoch", "val_loss", "val_ce", "val_mse", "val_auc", "val_acc")}
        prog.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return improved


def _log_epoch(finding: str, row: dict, budget: int, improved: bool) -> None:
    log.info(
        "%s stage %d epoch %d/%d lr %.2e train %.4f val %.4f (ce %.4f mse %.4f) auc train %.3f val %.3f acc %.3f %.1fs%s",
        finding, row["stage"], row["epoch"], budget, row["lr"], row["train_loss"], row["val_loss"], row["val_ce"], row["val_mse"], row["train_auc"], row["val_auc"], row["val_acc"], row["seconds"], " *" if improved else "",
    )


def _epoch_end_hook(stage: int, epoch: int) -> None:
    """Called after each epoch's checkpoint is written (tests use it to simulate a kill)."""


# --------------------------------------------------------------------------- checkpoints and history


def _checkpoint(model: nn.Module, opt, sched, prog: _Progress, row: dict, cfg: Config, finding: str, seed: int, pre_fp: str) -> dict:
    """Everything a resumption needs, after the epoch of ``row``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "finding": finding,
        "stage": row["stage"],
        "epoch": row["epoch"],
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        "history": prog.history,
        "best": prog.best,
        "seed": seed,
        "config": cfg.to_dict(),
        "preprocess_fingerprint": pre_fp,
        "torch_version": str(torch.__version__),
    }


def _final_metrics(finding: str, best: dict[str, dict], hist: pd.DataFrame, sets: dict, dist_: Dist, t_start: float) -> dict:
    final = best.get("stage2") or best.get("stage1") or {}  # stage 2 is recorded only when it beat stage 1
    return {
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
        "n_val": len(sets["val"][0]),
        "world_size": dist_.world,
    }
