"""Glue shared by the numbered notebooks and the Makefile: step folders and papermill execution."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from scxnn.config import RESOLVED_NAME, Config, ConfigError, load_resolved, save_resolved
from scxnn.utils import log, seed_everything

# The study's steps, in order: notebook stem -> what it produces. The Makefile and docs/development.md use
# the same names.
STEPS: dict[str, str] = {
    "01_preprocessing": "synthetic data or adapters, preprocessing, Table 1",
    "02_train_disease_model": "one multi-task model per finding (papermill parameter `finding`)",
    "03_svm_ensemble": "logits table, SVM, definite-normal operating point",
    "04_evaluation": "Tables 2, 3, 7, 8 with 95% CIs; ROC and screening-yield figures",
    "05_novel_diseases": "unseen findings: Table 9",
    "06_gradcam": "Grad-CAM (Figure 5) and localization",
    "07_ablations": "backbone, lambda and preprocessing ablations: Tables 4, 5, 6",
    "08_transfer": "the run scored on real films it never saw (NIH ChestX-ray14 sample) beside its synthetic figures",
}
KERNEL_NAME = "scxnn"


def step_dir(cfg: Config, step: str, finding: str | None = None) -> Path:
    """Where a step's artifacts live: ``runs/<profile>/<step>[/<finding>]``."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    d = cfg.path("runs") / step
    return d / finding if finding else d


def start_step(cfg: Config, step: str, finding: str | None = None) -> Path:
    """Seed, create the step's folder and record the resolved config in it. Returns the folder.

    Every notebook calls this first, so each artifact folder carries the exact config that made it.
    """
    if finding is not None and finding not in cfg.findings:
        raise ValueError(f"finding {finding!r} is not in profile {cfg.profile!r}; findings: {', '.join(cfg.findings)}")
    seed_everything(cfg.seed)
    d = step_dir(cfg, step, finding)
    save_resolved(cfg, d, extra={"step": step, **({"finding": finding} if finding else {})})
    return d


class RunMismatch(RuntimeError):
    """A step's folder holds work made with other settings or another scxnn version: rerun that
    step, or start over (the CLI reports it as bad input, exit 2)."""


# Sections whose change invalidates a downstream step's inputs. Evaluation-only settings (bootstrap
# count, SVM kernel, ...) may differ between steps without retraining the models.
UPSTREAM_SECTIONS = ("seed", "findings", "data", "preprocess", "model", "train")


def require_step(cfg: Config, step: str, finding: str | None = None) -> Path:
    """The folder of an upstream step, after checking that it ran with compatible settings.

    Fails loudly when the step has not run for this profile, or ran with different data, model or
    training settings (for example other ``--set`` overrides), instead of silently mixing results.
    """
    d = step_dir(cfg, step, finding)
    resolved = d / RESOLVED_NAME
    what = f"{step}{f' ({finding})' if finding else ''}"
    if not resolved.is_file():
        raise FileNotFoundError(f"step {what} has not run for profile {cfg.profile!r} (no {resolved}); run `make {_make_target(step)} PROFILE={cfg.profile}` first")
    try:
        upstream = load_resolved(resolved)
    except ConfigError as e:
        raise RunMismatch(f"{resolved} is from an incompatible scxnn version; rerun step {what}: {e}") from None
    # A finding's model ran with its own train.by_finding entry applied (Config.for_finding); the
    # train keys it set are compared, other findings' entries are not this model's business.
    mine = _without_by_finding((cfg.for_finding(finding) if finding in cfg.findings else cfg).to_dict())
    theirs = _without_by_finding(upstream.to_dict())
    changed = [k for k in UPSTREAM_SECTIONS if mine[k] != theirs[k]]
    if changed:
        raise RunMismatch(
            f"step {what} ran with different settings ({', '.join(changed)} differ from this run's); "
            f"rerun it with the same profile and overrides (see {resolved})"
        )
    return d


def _without_by_finding(d: dict) -> dict:
    return {**d, "train": {k: v for k, v in d["train"].items() if k != "by_finding"}}


def _make_target(step: str) -> str:
    return {"01": "preprocess", "02": "train", "03": "ensemble", "04": "evaluate", "05": "novel", "06": "gradcam", "07": "ablations"}[step[:2]]


def run_notebook(src: str | os.PathLike, dst: str | os.PathLike, parameters: Mapping[str, Any]) -> float:
    """Execute ``src`` with papermill into ``dst``; returns the seconds it took.

    The output is written under a temporary name and moved into place only on success, so a Make
    target never exists for a failed run. A failed run is kept as ``<dst>.failed.ipynb`` to read.
    """
    import papermill as pm

    src, dst = Path(src).resolve(), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"notebook not found: {src}")
    if src.parent == dst.resolve().parent:
        raise ValueError(f"refusing to write the executed notebook over the notebooks folder: {dst}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.partial.ipynb")
    failed = dst.with_name(f"{dst.stem}.failed.ipynb")
    verbose = bool(os.environ.get("SCXNN_NB_LOG"))
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(src),
            str(tmp),
            parameters=dict(parameters),
            kernel_name=KERNEL_NAME,
            cwd=str(src.parent),  # as in JupyterLab: notebooks run from notebooks/
            progress_bar=False,
            log_output=verbose,
            # The kernel's own log is noise here (a TCP-transport notice, a KeyboardInterrupt at
            # shutdown); cell errors still fail the run and land in the .failed notebook.
            extra_arguments=[] if verbose else ["--IPKernelApp.log_level=CRITICAL"],
        )
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
            print(f"notebook failed; executed copy kept at {failed}", file=sys.stderr)
        raise
    os.replace(tmp, dst)
    failed.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    log.info("executed %s -> %s in %.1f s", src.name, dst, seconds)
    return seconds
