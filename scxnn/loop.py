"""The training loop that the finding models (:mod:`scxnn.train`) and the trunk (:mod:`scxnn.pretrain`) share.

A training run is a folder and a sequence of epochs. Each caller says what an epoch is (a finding's
two stages and plateau stop; the trunk's fixed budget of balanced draws) and what its loss is; this
module holds the rest, once:

* :func:`prepare_run_dir` readies the folder: a killed write's temporary removed, a fresh run's old
  files removed, the resolved config written beside them.
* :func:`resumable` reads ``last.pt`` (weights only) when the caller's check finds it was made with
  the same settings; else it says why not.
* :func:`optimise` runs one epoch's optimisation steps: each batch moved to the device, the forward
  pass under autocast (``train.bf16``), the loss, backward, the optimiser's step, and a per-step
  scheduler's. It returns what the loss recorded for each batch, in order.
* :func:`evaluate` runs the same forward passes without gradients (validation).
* :func:`save_epoch` writes an epoch's end atomically: ``best.pt`` first when the epoch improved
  (without the states only a resumption reads), then ``last.pt``, then ``history.csv``. A kill
  between two writes redoes that epoch, and identically: every caller draws its batches and
  augmentations as pure functions of (seed, epoch, index), never of global RNG state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pandas as pd
import torch
from tqdm import tqdm

from scxnn.checkpoints import BEST_NAME, HISTORY_NAME, LAST_NAME, load_checkpoint, save_checkpoint
from scxnn.config import Config, save_resolved
from scxnn.hardware import autocast, to_device
from scxnn.utils import atomic_write_text, remove_stale_temporaries

RUN_FILES = (LAST_NAME, BEST_NAME, HISTORY_NAME)
# What only a resumption reads. best.pt is what inference loads, and resuming takes its weights alone,
# so it goes without them: Adam's two moments are twice the model (a smoke model's best.pt was 164 MB
# with them, 55 MB without).
RESUME_ONLY = ("optimizer", "scheduler", "rng")

Batch = dict[str, Any]


def prepare_run_dir(out_dir: Path, cfg: Config, fresh: bool, extra: dict) -> None:
    """``out_dir`` created; a killed write's temporary removed; with ``fresh`` the files of an earlier
    run removed; the resolved config written with ``extra`` (what step made the folder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A kill -9 mid-write leaves atomic_open's temporary (a whole checkpoint); nothing else writes
    # here while this run trains.
    remove_stale_temporaries(out_dir)
    if fresh:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    save_resolved(cfg, out_dir, extra=extra)


def resumable(out_dir: Path, device: torch.device, why_not: Callable[[dict], str | None]) -> tuple[dict | None, str | None]:
    """(``out_dir/last.pt``, None) when it exists and ``why_not`` finds nothing against it; (None,
    the reason) when it was made otherwise; (None, None) when there is none."""
    last = out_dir / LAST_NAME
    if not last.is_file():
        return None, None
    ckpt = load_checkpoint(last, map_location=device)
    why = why_not(ckpt)
    return (None, why) if why else (ckpt, None)


def optimise(loader: Iterable[Batch], forward: Callable[[Batch], Any], loss: Callable[[Any, Batch], tuple[torch.Tensor, Any]],
             opt: torch.optim.Optimizer, cfg: Config, device: torch.device, *, sched=None, desc: str = "",
             progress: bool = True) -> list:
    """One epoch's optimisation steps over ``loader``; returns the records ``loss`` gave, batch by batch.

    ``forward(batch)`` runs under autocast; ``loss(output, batch)`` outside it, returning (the loss to
    minimise, a record of the batch for the caller's epoch figures). ``sched``, when given, steps
    after every batch (an epoch-level schedule is the caller's)."""
    records = []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        b = to_device(batch, device, cfg.train.channels_last)
        with autocast(cfg, device):
            out = forward(b)
        value, record = loss(out, b)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if sched is not None:
            sched.step()
        records.append(record)
    return records


def evaluate(loader: Iterable[Batch], forward: Callable[[Batch], Any], cfg: Config, device: torch.device) -> Iterator[tuple[Batch, Any]]:
    """(batch on the device, ``forward(batch)`` under autocast) for each batch, without gradients.
    The caller puts its model in eval mode."""
    for batch in loader:
        with torch.inference_mode():
            b = to_device(batch, device, cfg.train.channels_last)
            with autocast(cfg, device):
                out = forward(b)
        yield b, out


def save_epoch(out_dir: Path, ckpt: dict, history: list[dict], improved: bool = False, columns: Sequence[str] | None = None) -> None:
    """An epoch's end: ``best.pt`` when it ``improved`` (``ckpt`` less :data:`RESUME_ONLY`), ``last.pt``
    (all of ``ckpt``) and ``history.csv``, each written atomically, in that order."""
    if improved:  # best first: a kill between the two writes redoes this epoch identically
        save_checkpoint(out_dir / BEST_NAME, {k: v for k, v in ckpt.items() if k not in RESUME_ONLY})
    save_checkpoint(out_dir / LAST_NAME, ckpt)
    write_history(out_dir / HISTORY_NAME, history, columns)


def history_frame(history: list[dict], columns: Sequence[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(history, columns=list(columns) if columns is not None else None)


def write_history(path: Path, history: list[dict], columns: Sequence[str] | None = None) -> None:
    atomic_write_text(path, history_frame(history, columns).to_csv(index=False))
