"""Checkpoints of the finding models: their file names, saving and loading (weights only, never
pickled code), and loading a run's trained models with the preprocessing contract checked.

Every checkpoint embeds its resolved config and the fingerprint of the preprocessing its films went
through. A model is only fed pixels made by the same preprocessing (:func:`check_fingerprint`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from scxnn.config import Config, config_from_dict
from scxnn.models import build_model
from scxnn.pixels import fingerprint
from scxnn.utils import atomic_open

STEP = "02_train_disease_model"  # the run folder that holds <finding>/best.pt
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
HISTORY_NAME = "history.csv"
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded safely (e.g. it holds pickled objects) or does not fit."""


class PreprocessMismatch(ValueError):
    """A model was trained on images preprocessed differently from the ones it would be given."""


class RunIncomplete(FileNotFoundError):
    """The run folder lacks a trained model, the SVM or the OOD model."""


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """``torch.save`` through a temporary file beside ``path`` (fsync + os.replace)."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.save(ckpt, fh)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` only: tensors and plain containers, never code.

    Raises :class:`CheckpointError` when the file holds pickled custom objects (it may run code) or
    is not a checkpoint, and FileNotFoundError when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for custom objects, RuntimeError for a corrupt file
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(e).__name__)
        raise CheckpointError(
            f"{path}: refused to load: not a weights-only checkpoint (it holds pickled objects that could run code, "
            f"or it is corrupt). Only files written by scxnn.train are accepted. ({type(e).__name__}: {first[:200]})"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not an SCXNN checkpoint (expected a dict with 'model')")
    return ckpt


@dataclass
class LoadedModel:
    """A finding model with what is needed to feed it: its config and preprocessing fingerprint."""

    finding: str
    model: nn.Module
    cfg: Config
    preprocess_fingerprint: str | None
    path: Path


def _rebuild(ckpt: dict, path: Path) -> tuple[nn.Module, Config]:
    if "config" not in ckpt:
        raise CheckpointError(f"{path}: has no embedded config")
    cfg = config_from_dict(ckpt["config"], source=f"{path} (embedded config)")
    # The weights come from the checkpoint: never look for ImageNet files here.
    model = build_model(dataclasses.replace(cfg.model, pretrained="none"))
    model.load_state_dict(ckpt["model"])
    return model, cfg


def load_model(path: str | os.PathLike, map_location: Any = "cpu"):
    """(model in eval mode, its Config) rebuilt from a checkpoint's embedded config."""
    ckpt = load_checkpoint(path, map_location=map_location)
    model, cfg = _rebuild(ckpt, Path(path))
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, cfg


def checkpoint_path(p: str | os.PathLike) -> Path:
    """A model's run folder (``<finding>/``) or checkpoint file -> its ``best.pt``."""
    p = Path(p)
    return p / BEST_NAME if p.is_dir() else p


def find_model_dirs(root: str | os.PathLike) -> dict[str, Path]:
    """``{finding: folder}`` for every ``<root>/<finding>/best.pt`` (a ``02_train_disease_model`` folder)."""
    root = Path(root)
    return {d.name: d for d in sorted(root.iterdir()) if (d / BEST_NAME).is_file()} if root.is_dir() else {}


def load_finding_model(finding: str, path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load one finding model (eval mode) from its run folder or checkpoint file, reading the
    checkpoint once for the weights, the embedded config and the preprocessing fingerprint."""
    ckpt_path = checkpoint_path(path)
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    model, cfg = _rebuild(ckpt, ckpt_path)
    model.to(device).eval()
    return LoadedModel(finding, model, cfg, ckpt.get("preprocess_fingerprint"), ckpt_path)


def load_models(model_dirs: Mapping[str, str | os.PathLike | LoadedModel] | str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, LoadedModel]:
    """``{finding: LoadedModel}`` from ``{finding: folder | best.pt | LoadedModel}`` or a folder of run folders."""
    if not isinstance(model_dirs, Mapping):
        found = find_model_dirs(model_dirs)
        if not found:
            raise FileNotFoundError(f"no <finding>/best.pt under {model_dirs}")
        model_dirs = found
    return {f: v if isinstance(v, LoadedModel) else load_finding_model(f, v, device) for f, v in model_dirs.items()}


def check_fingerprint(lm: LoadedModel, expected: str | None = None) -> None:
    """Raise :class:`PreprocessMismatch` unless the checkpoint's preprocessing fingerprint equals
    ``expected`` (default: what today's code computes from the checkpoint's own settings).

    A difference means the pixels this code would produce are not those the model learnt from (the
    preprocessing code changed, or the images come from another cache), so its CAMs and
    probabilities would silently be off.
    """
    expected = expected or fingerprint(lm.cfg.preprocess)
    if lm.preprocess_fingerprint is None:
        raise PreprocessMismatch(f"{lm.path}: the checkpoint records no preprocessing fingerprint; retrain it with this version of scxnn")
    if lm.preprocess_fingerprint != expected:
        raise PreprocessMismatch(
            f"{lm.path} ({lm.finding}): trained on preprocessing {lm.preprocess_fingerprint}, but the images here are "
            f"preprocessed as {expected} (preprocess settings or code version differ); retrain the model or use "
            f"the matching profile / scxnn version"
        )


def run_model_dirs(run: str | os.PathLike, cfg: Config) -> dict[str, Path]:
    """``{finding: runs/<profile>/02_train_disease_model/<finding>}`` of a trained run, in the study's
    finding order; :class:`RunIncomplete` names the first finding without a ``best.pt``."""
    run = Path(run)
    dirs = {f: run / STEP / f for f in cfg.findings}
    for f, d in dirs.items():
        if not (d / BEST_NAME).is_file():
            raise RunIncomplete(f"{run}: no trained model for {f} ({d / BEST_NAME})")
    return dirs


def load_run_models(run: str | os.PathLike, cfg: Config, device: str | torch.device = "cpu") -> dict[str, LoadedModel]:
    """A trained run's 13 models for inference: eval mode, channels_last, each checked against the
    run's preprocessing (:func:`check_fingerprint`)."""
    expected = fingerprint(cfg.preprocess)
    models = {}
    for f, d in run_model_dirs(run, cfg).items():
        lm = load_finding_model(f, d, device)
        # The contract: the pixels we produce here are those the model learnt from.
        check_fingerprint(lm, expected)
        lm.model.to(memory_format=torch.channels_last)
        models[f] = lm
    return models
