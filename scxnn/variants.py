"""Whole-pipeline variants: the 13 finding models and the SVM, retrained under changed settings, for the
thesis' comparisons (Tables 7-8: 2-class vs 3-class models; Tables 4-6: backbones, lambda,
preprocessing).

A variant is a name in ``params: variants.runs`` with dotted overrides, applied over the profile and
``variants.protocol`` (the protocol all variants share; small profiles reduce it, and the tables say
so). Its results are cached under the hash of the settings that decide them
(``runs/<profile>/variants/<hash>/``): two variants with equal settings share one folder, a rerun
recomputes only what changed, and a variant equal to the profile itself reuses the profile's trained
models instead of training them twice. Each variant is one Make target and is resumable: its models
resume from their checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scxnn.config import Config, result_sections, save_resolved, variant_config
from scxnn.utils import atomic_write_text, file_lock, log, seed_everything, sha256_text
from scxnn.weights import recorded_sha256

if TYPE_CHECKING:
    import pandas as pd

RESULT_NAME = "result.json"


def variant_films(manifest) -> tuple[tuple[str, str], ...]:
    """(site, split) pairs a variant scores: the validation films (the SVM's) and the test films of
    the same site(s), where Tables 4-8 are read. Temporal and external sets are not needed."""
    sites = sorted(set(manifest.loc[manifest["split"] == "val", "site"].astype(str)))
    return tuple((s, sp) for s in sites for sp in ("val", "test"))


def protocol_text(cfg: Config) -> str:
    """The shared protocol as the tables' captions print it: its overrides, and the film sample."""
    parts = [f"{k}={v}" for k, v in cfg.variants.protocol.items()]
    if cfg.variants.max_films:
        parts.append(f"a seeded sample of {cfg.variants.max_films} validation and {cfg.variants.max_films} internal test films (variants.max_films)")
    return ", ".join(parts) or "the profile's full protocol"


def variant_hash(cfg: Config, name: str) -> str:
    """The cache key of a variant's results: its models' settings, and the films it scores."""
    h = models_hash(cfg, name)
    if cfg.variants.max_films:
        h = sha256_text(f"{h}:max_films={cfg.variants.max_films}", 12)
    return h


def models_hash(cfg: Config, name: str) -> str:
    return _models_fingerprint(variant_config(cfg, name))


def _models_fingerprint(cfg: Config) -> str:
    """The hash of what a pipeline's models are made from: its settings, and the shipped trunk's
    bytes when they start from it (a rebuilt trunk retrains the variants that use it)."""
    h = cfg.fingerprint(*result_sections(cfg))
    if cfg.model.pretrained == "trunk":
        h = sha256_text(f"{h}:trunk={recorded_sha256()}", 12)
    return h


def is_profile_itself(cfg: Config, name: str) -> bool:
    """True when the variant's settings are the profile's: its models are the profile's own."""
    return models_hash(cfg, name) == _models_fingerprint(cfg)


def variant_dir(cfg: Config, name: str) -> Path:
    return cfg.path("runs") / "variants" / variant_hash(cfg, name)


def result_path(cfg: Config, name: str) -> Path:
    return variant_dir(cfg, name) / RESULT_NAME


def model_dirs(cfg: Config, name: str) -> dict[str, Path]:
    from scxnn.pipeline import step_dir

    if is_profile_itself(cfg, name):
        return {f: step_dir(cfg, "02_train_disease_model", f) for f in cfg.findings}
    return {f: variant_dir(cfg, name) / f for f in cfg.findings}


def names_for_hash(cfg: Config, h: str) -> list[str]:
    names = [n for n in cfg.variants.runs if variant_hash(cfg, n) == h]
    if not names:
        known = ", ".join(f"{n}={variant_hash(cfg, n)}" for n in cfg.variants.runs) or "none"
        raise KeyError(f"no variant of profile {cfg.profile!r} has hash {h!r} (variants: {known}); regenerate .make/{cfg.profile}.mk")
    return names


def make_vars(cfg: Config, root: Path) -> list[str]:
    """Makefile lines: one result file per distinct variant, and which of them reuse the profile's models."""

    def rel(p: Path) -> str:
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return p.as_posix()

    lines, seen, main = [], {}, []
    for name in cfg.variants.runs:
        path = rel(result_path(cfg, name))
        lines.append(f"VARIANT_{name} := {path}")
        seen.setdefault(path, name)
        if is_profile_itself(cfg, name) and path not in main:
            main.append(path)
    lines.append(f"VARIANT_RESULTS := {' '.join(seen)}")
    ablations = dict.fromkeys(rel(result_path(cfg, n)) for rows in cfg.variants.tables.values() for n in rows.values())
    lines.append(f"VARIANT_ABLATIONS := {' '.join(ablations)}")
    lines.append(f"VARIANT_REUSES_MODELS := {' '.join(main)}")
    lines.append(f"VARIANTS_DIR := {rel(cfg.path('runs') / 'variants')}")
    return lines


SUMMARY_RATES = ("sensitivity", "sensitivity_lo", "sensitivity_hi", "specificity", "specificity_lo", "specificity_hi", "auto_normal")


def summarize(scored, threshold: float, n_boot: int, seed: int, ci: float) -> dict:
    """The thesis' ablation columns on the internal test set (Tables 4-6): accuracy, AUC,
    specificity and sensitivity with 95% CIs (:func:`scxnn.metrics.proportion_ci`; AUC: patient bootstrap).

    Two operating points: the SVM's own decision boundary (score >= 0 is abnormal), which is where
    the thesis' ablation tables sit (their sensitivity and specificity are balanced, unlike its
    99%-sensitivity Table 2), and ``point_*``, the validation-chosen definite-normal threshold."""
    from scxnn import evaluation
    from scxnn.metrics import screening_with_ci

    test = scored[evaluation.evaluation_sets(scored).get("internal", np.zeros(len(scored), bool))]
    if test.empty:
        raise ValueError("no internal test films to summarise the variant on")
    y, s, patients = test["abnormal"].to_numpy(int), test["score"].to_numpy(float), test["patient_id"].to_numpy()
    auc = evaluation.svm_auc(test, n_boot, seed, ci)
    row = auc.iloc[0] if len(auc) else {}
    out: dict = {"images": int(len(test)), "auc": float(row.get("auc", np.nan)),
                 "auc_lo": float(row.get("auc_lo", np.nan)), "auc_hi": float(row.get("auc_hi", np.nan))}
    for prefix, t in (("", 0.0), ("point_", threshold)):
        pred = (s >= t).astype(int)
        m = screening_with_ci(y, pred, patients, n_boot, seed, ci)
        out[f"{prefix}accuracy"] = float((y == pred).mean())
        out.update({f"{prefix}{k}": float(m[k]) for k in SUMMARY_RATES})
        out.update({f"{prefix}{k}": int(m[k]) for k in ("tp", "fn", "fp", "tn")})
    return out


REFERENCE = "three_class"  # the method as specified (params: variants.runs): the row every ablation row is compared with


def ablation_table(cfg: Config, table: str, thesis: dict | None = None, reference: str = REFERENCE) -> pd.DataFrame:
    """One thesis ablation table (``variants.tables[table]``, e.g. ``table4_backbones``) from the
    finished variants: per row, accuracy, AUC, specificity and sensitivity on the internal test set
    with 95% CIs (``result.json``), the thesis' values beside ours.

    So that rows can be ranked, each row also has ``delta_auc``: its AUC minus the reference row's,
    with the paired patient-bootstrap interval ``delta_auc_lo``/``delta_auc_hi``
    (:func:`scxnn.evaluation.auc_deltas` on each variant's scored internal test films, the SVM
    scores of :func:`load_variant`; ``cfg.evaluate.bootstrap`` resamples, ``cfg.seed``,
    ``cfg.evaluate.ci``). The reference row is the one whose variant is ``reference`` (the method
    as specified, a row of each of Tables 4-6): ``is_reference`` True, delta 0, no interval. A table
    without it gets NaN deltas. Variants that scored different films are a ValueError.
    ``called_normal_abnormal`` of ``abnormal_films``: the abnormal internal test films the pipeline
    calls normal at its own validation-chosen definite-normal threshold (``result.json``:
    ``point_fn`` of ``point_fn + point_tp``), the same rule for every row."""
    import pandas as pd

    from scxnn import evaluation

    rows = cfg.variants.tables[table]
    ref = (thesis or {}).get(table) or {}
    results = {}
    for name in dict.fromkeys(rows.values()):
        path = result_path(cfg, name)
        if not path.is_file():
            raise FileNotFoundError(f"{table}: variant {name!r} has not run (no {path}); run `make variants PROFILE={cfg.profile}`")
        results[name] = json.loads(path.read_text())
    deltas = {}
    if reference in results:
        scored = {name: load_variant(cfg, name)[1] for name in results}
        deltas = evaluation.auc_deltas(scored, reference, cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci)
    else:
        log.warning("%s: no row is the reference variant %r, so no row has a delta AUC", table, reference)
    out = []
    for row, name in rows.items():
        r = results[name]
        d = deltas.get(name, evaluation.NO_DELTA)
        rec = {"row": row, "variant": name, "is_reference": d["is_reference"], "images": r["images"], "accuracy": r["accuracy"],
               **{k: r[k] for k in ("auc", "auc_lo", "auc_hi")}, **{k: d[k] for k in evaluation.DELTA_COLUMNS[1:]},
               **{k: r[k] for k in ("specificity", "specificity_lo", "specificity_hi", "sensitivity", "sensitivity_lo", "sensitivity_hi")},
               "called_normal_abnormal": r["point_fn"], "abnormal_films": r["point_fn"] + r["point_tp"]}
        t = ref.get(row) if isinstance(ref, dict) else None
        if ref:
            rec.update({f"thesis_{k}": (t or {}).get(k, np.nan) for k in ("accuracy", "auc", "specificity", "sensitivity")})
        out.append(rec)
    return pd.DataFrame(out)


def run_variant(cfg: Config, name: str, progress: bool = True) -> dict:
    """Train (or resume) the variant's 13 models, build its logits table and SVM, and summarise it on
    the internal test set. Returns the summary, also written to ``<variant dir>/result.json``."""
    from scxnn import ensemble
    from scxnn.checkpoints import BEST_NAME
    from scxnn.data import MANIFEST_NAME, read_manifest
    from scxnn.pixels import cache_dir
    from scxnn.sources import build_study_cache
    from scxnn.train import train_finding

    vcfg = variant_config(cfg, name)
    out = variant_dir(cfg, name)
    h = variant_hash(cfg, name)
    result = out / RESULT_NAME
    if result.is_file():
        done = json.loads(result.read_text())
        if done.get("hash") == h:
            # Still the result of these settings: mark it current, or make would find the target
            # older than the step-01 run it depends on and ask for it again on every run.
            os.utime(result)
            return done
    t0 = time.perf_counter()
    names = names_for_hash(cfg, h)
    save_resolved(vcfg, out, extra={"step": "variant", "variants": names, "hash": h})
    seed_everything(vcfg.seed)
    cache = cache_dir(vcfg)
    # Another resolution or contrast (the protocol, the histeq ablation): its own PNG cache, made from
    # the profile's raw images (variants never change the data). Variants running in parallel under
    # `make -j` may share it: one builds, the others wait.
    with file_lock(cache.parent / f".{cache.name}.lock"):
        if not (cache / MANIFEST_NAME).is_file():
            build_study_cache(vcfg, progress=progress)
    dirs = model_dirs(cfg, name)
    if is_profile_itself(cfg, name):
        missing = [f for f, d in dirs.items() if not (d / BEST_NAME).is_file()]
        if missing:
            raise FileNotFoundError(f"variant {name!r} reuses the profile's models, but {', '.join(missing)} are not trained; run `make train PROFILE={cfg.profile}` first")
    else:
        for i, f in enumerate(vcfg.findings, 1):
            log.info("variant %s: model %d/%d (%s)", name, i, len(vcfg.findings), f)
            train_finding(vcfg, f, out_dir=dirs[f], resume="auto", progress=progress)
    # A variant is judged on the internal test films with an SVM fitted on validation films: scoring
    # only those (a fifth of the films in the demo), or a sample of each (variants.max_films), saves
    # most of its inference time.
    table, svm, th = ensemble.build(vcfg, dirs, out, progress=progress, max_eval=cfg.variants.max_films,
                                    only=variant_films(read_manifest(cache / MANIFEST_NAME, list(vcfg.findings), list(vcfg.unseen_findings))))
    table["score"] = ensemble.table_scores(svm, table, vcfg.findings, vcfg.model.num_classes)
    summary = {
        "hash": h,
        "variants": names,
        "overrides": {**cfg.variants.protocol, **cfg.variants.runs[name]},
        "threshold": th.point,
        "thresholds_from": th.scores,
        **summarize(table, th.point, vcfg.evaluate.bootstrap, vcfg.seed, vcfg.evaluate.ci),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(result, json.dumps(summary, indent=1))
    if not cfg.variants.keep_models and not is_profile_itself(cfg, name):
        # result.json marks the variant done; its tables need only the logits, SVM and histories.
        freed = 0
        for d in dirs.values():
            for ckpt in d.glob("*.pt"):
                freed += ckpt.stat().st_size
                ckpt.unlink()
        log.info("variant %s: deleted its checkpoints (%.1f GB; variants.keep_models: false)", name, freed / 1e9)
    return summary


def load_variant(cfg: Config, name: str):
    """(config, scored logits table, svm, thresholds, validation scores) of a finished variant."""
    from scxnn import ensemble

    path = result_path(cfg, name)
    if not path.is_file():
        raise FileNotFoundError(f"variant {name!r} has not run for profile {cfg.profile!r} (no {path}); run `make {path.relative_to(cfg.root) if path.is_relative_to(cfg.root) else path} PROFILE={cfg.profile}`")
    vcfg = variant_config(cfg, name)
    return (vcfg, *ensemble.load_run(path.parent, vcfg))
