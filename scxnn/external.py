"""``scxnn evaluate``: score a trained study run on another labelled dataset, without retraining.

The other dataset comes as a manifest (:mod:`scxnn.data`; ``scxnn manifest`` builds one from a local
copy of a public dataset with its adapter). Every film goes through the run's own preprocessing
(the fingerprint stored in its checkpoints must match, as in ``scxnn predict``), the run's finding
models and its SVM with the thresholds frozen on the run's validation films. Nothing is refitted.

All films of the manifest are evaluation films: the split the adapter assigned is ignored. A
patient the run trained or validated on, or a copy of one of those films under another patient id
(same ``source_sha256``), would inflate the result, so such an overlap is an error (``drop_seen``
leaves those films out instead, and the report says how many). Films out of the study's scope
(:func:`scxnn.data.in_scope`) are left out and logged.

Written under ``out_dir``: ``png/`` (the PNG cache, with ``skipped.csv``), ``logits.parquet``, and
``tables/<profile>/``: Table 2 at both thresholds, ROC AUC, AUC per finding, the missed films (by
risk group and film by film) and, when the profile names published results (``evaluate.published``),
the comparison with them, each as CSV + Markdown with 95% patient-bootstrap CIs, written by the same
functions as notebook 04's (:mod:`scxnn.study_tables`); ``figures/<profile>/``: the ROC curve, the
AUC per finding and ``figure_gradcam`` (each finding model's Grad-CAM on a film of the manifest with
that finding); ``summary.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from scxnn.config import RESOLVED_NAME, load_resolved
from scxnn.utils import atomic_write_text, log

SUMMARY_NAME = "summary.json"


class PatientOverlap(ValueError):
    """The manifest holds patients, or identical films, the run trained or validated on."""


def load_run_config(run_dir: str | os.PathLike):
    from scxnn.checkpoints import RunIncomplete

    step3 = Path(run_dir) / "03_svm_ensemble"
    if not (step3 / RESOLVED_NAME).is_file():
        raise RunIncomplete(f"{run_dir} is not a trained study run: no {step3 / RESOLVED_NAME} (pass runs/<profile> after `make ensemble PROFILE=<profile>`)")
    return load_resolved(step3 / RESOLVED_NAME)


def seen_films(run_dir: str | os.PathLike) -> tuple[set[str], set[str]]:
    """(hashed patient ids, source hashes) of the run's training and validation films: step 03's
    record of them all (``seen_films.parquet``), or, for a run from before it, its logits table
    (every film was scored then). A run from before the table kept ``source_sha256`` gives no
    hashes (logged)."""
    import pyarrow.parquet as pq

    from scxnn.ensemble import LOGITS_NAME, SEEN_NAME

    step3 = Path(run_dir) / "03_svm_ensemble"
    path = step3 / SEEN_NAME if (step3 / SEEN_NAME).is_file() else step3 / LOGITS_NAME
    cols = ["patient_id", "split", "source_sha256"]
    has_sha = "source_sha256" in pq.read_schema(path).names
    if not has_sha:
        log.warning("%s predates source_sha256: films the run has seen are found by patient only; a copy under another "
                    "patient id cannot be checked (rerun `make ensemble` with this scxnn version)", path)
    t = pd.read_parquet(path, columns=cols if has_sha else cols[:2])
    t = t[t["split"].isin(["train", "val"])]
    hashes = set(t["source_sha256"].astype(str)) - {"", "nan"} if has_sha else set()
    return set(t["patient_id"].astype(str)), hashes


def leave_out_seen(df: pd.DataFrame, seen: tuple[set[str], set[str]], drop_seen: bool, source: str) -> tuple[pd.DataFrame, dict]:
    """``df`` less the films of patients in ``seen`` and the films identical to its films (same
    non-empty ``source_sha256``), with ``{"patients": n, "images": n}`` counted; without
    ``drop_seen`` any such film is a :class:`PatientOverlap`."""
    patients, hashes = seen
    by_patient = df["patient_id"].astype(str).isin(patients)
    sha = df["source_sha256"].astype(str)
    by_image = ~by_patient & sha.ne("") & sha.isin(hashes)
    n = {"patients": int(df.loc[by_patient, "patient_id"].nunique()), "images": int(by_image.sum())}
    if (by_patient | by_image).any() and not drop_seen:
        what = []
        if n["patients"]:
            what.append(f"{n['patients']} patient(s) ({int(by_patient.sum())} films) were in the run's training or validation split")
        if n["images"]:
            ids = ", ".join(df.loc[by_image, "image_id"].astype(str)[:3])
            what.append(f"{n['images']} film(s) are identical to training or validation films of the run under another patient id "
                        f"(same source_sha256; e.g. image_id {ids})")
        raise PatientOverlap(f"{source}: {' and '.join(what)}: scoring them would overstate the result. Pass --drop-seen to leave them out.")
    return df[~(by_patient | by_image)].reset_index(drop=True), n


def score_manifest(run_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike,
                   drop_seen: bool = False, progress: bool = True, ood_scores: bool = False):
    """The labelled films of ``manifest`` through the run ``run_dir`` as it is: its preprocessing
    (into ``out_dir/png``), models, SVM and, with ``ood_scores``, its out-of-distribution gate
    (column ``ood_score``). Nothing is refitted. Returns ``(cfg, table with a score column,
    skipped, {"patients": n, "images": n} left out as seen (:func:`leave_out_seen`), thresholds)``;
    ``out_dir/logits.parquet`` holds the table. Shared by ``scxnn evaluate`` and ``scxnn certify``."""
    from scxnn import ensemble, ood
    from scxnn.data import read_manifest
    from scxnn.checkpoints import RunIncomplete, run_model_dirs
    from scxnn.batch import preprocess_manifest

    run, out, mpath = Path(run_dir), Path(out_dir), Path(manifest)
    cfg = load_run_config(run)
    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    if not mpath.is_file():
        raise FileNotFoundError(f"no manifest at {mpath} (build one with `scxnn manifest DATASET ROOT --out DIR`)")
    df = read_manifest(mpath, findings, unseen)
    missing = [f for f in findings if df[f].isna().all()]
    if missing:
        log.warning("the manifest grades none of %s: those findings count only through the abnormal label", ", ".join(missing))
    seen = seen_films(run)
    # The manifest's own hashes (adapters fill them) spare preprocessing the seen films...
    n_films = len(df)
    df, dropped = leave_out_seen(df, seen, drop_seen, str(mpath))
    if df.empty:
        raise ValueError(f"no film of {mpath} is left to evaluate (all {n_films} were seen by the run)")
    # Every film is an evaluation film here, whatever split the adapter gave it.
    df["split"] = "test"
    # Tables and figures go under out_dir, not the study's reports/.
    cfg = cfg.replace({"paths.reports": str(out.resolve())})
    cache = out / "png"
    pre, skipped = preprocess_manifest(cfg, df, mpath.parent, cache, progress=progress)
    if pre.empty:
        raise ValueError(f"none of the {len(df)} films could be read; see {cache / 'skipped.csv'}")
    # ... and the hashes preprocessing took of every file's bytes catch the rest, before any scoring.
    kept, more = leave_out_seen(pre, seen, drop_seen, str(mpath))
    dropped = {k: dropped[k] + more[k] for k in dropped}
    if kept.empty:
        raise ValueError(f"no film of {mpath} is left to evaluate (all {n_films} were seen by the run or unreadable)")
    dirs = run_model_dirs(run, cfg)
    gate_path = run / "03_svm_ensemble" / ensemble.OOD_NAME
    if ood_scores and not gate_path.is_file():
        raise RunIncomplete(f"{run}: no out-of-distribution model ({gate_path}); rerun `make ensemble` with this scxnn version")
    # logits_table checks each model's preprocessing fingerprint
    scored = ensemble.logits_table(cfg, dirs, progress=progress, cache=cache, features=ood_scores,
                                   exclude=sorted(set(pre["image_id"]) - set(kept["image_id"])))
    table, feats = scored if ood_scores else (scored, None)
    svm, th = ensemble.load(run / "03_svm_ensemble")
    table["score"] = ensemble.table_scores(svm, table, findings, cfg.model.num_classes)
    if ood_scores:
        table["ood_score"] = ood.load(gate_path).score(feats)
    ensemble.save_logits(table, out)
    return cfg, table, skipped, dropped, th


def evaluate_manifest(run_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike,
                      drop_seen: bool = False, progress: bool = True) -> dict:
    """Score ``manifest`` with the trained run ``run_dir`` (``runs/<profile>``) and write the tables.
    Returns the summary (also ``out_dir/summary.json``)."""
    from scxnn import study_tables

    run, out, mpath = Path(run_dir), Path(out_dir), Path(manifest)
    cfg, table, skipped, dropped, th = score_manifest(run, mpath, out, drop_seen, progress)
    where = f"{mpath} scored by the run {run} without retraining."
    t2, t2s = study_tables.screening(cfg, table, th, where=where)
    sets = ", ".join(t2["set"].astype(str))
    auc = study_tables.svm_auc(cfg, table, t2, where=where)
    study_tables.auc_per_finding(cfg, table, where=where)
    _, missed = study_tables.missed(cfg, table, th, where=where)
    pub = study_tables.published(cfg, table, th, where=where)
    positive = [f for f in cfg.findings if (table[f] == 1).any()]
    if positive:  # where the models look on these films: one film per finding the manifest marks
        from scxnn.checkpoints import run_model_dirs

        dirs = run_model_dirs(run, cfg)
        study_tables.gradcam_figure(cfg, {f: dirs[f] for f in positive}, cache=out / "png", name="figure_gradcam",
                                    films=f"a film of {mpath.name} with its finding")

    first = t2.iloc[0]
    summary = {
        "run": str(run), "manifest": str(mpath), "profile": cfg.profile, "sets": sets,
        "films": int(len(table)), "patients": int(table["patient_id"].nunique()), "skipped": int(len(skipped)),
        "dropped_seen_patients": dropped["patients"], "dropped_seen_images": dropped["images"], "threshold": float(th.point), "threshold_strict": float(th.strict),
        "auc": float(auc["auc"].iloc[0]), "auc_lo": float(auc["auc_lo"].iloc[0]), "auc_hi": float(auc["auc_hi"].iloc[0]),
        **{k: float(first[k]) for k in ("sensitivity", "sensitivity_lo", "sensitivity_hi", "specificity", "specificity_lo",
                                        "specificity_hi", "auto_normal", "auto_normal_lo", "auto_normal_hi")},
        "missed_abnormal": int(len(missed)),
        # Scored, yet outside every rate: the source says neither normal nor abnormal (CheXpert's -1 alone, say).
        "unknown_films": int(t2["unknown_films"].sum()), "unknown_called_normal": int(t2["unknown_called_normal"].sum()),
        "target": float(th.target), "meets_target": str(first["meets_target"]),
        "validation": th.describe(), "strict_certified": bool(th.certified),
        **{f"strict_{k}": float(t2s.iloc[0][k]) for k in ("sensitivity", "sensitivity_lo", "sensitivity_hi", "auto_normal",
                                                          "auto_normal_lo", "auto_normal_hi")},
    }
    if pub is not None:
        b = pub[(pub.source == "ours") & (pub.operating_point == "svm_boundary")].iloc[0]
        summary.update({"boundary_accuracy": float(b.accuracy), "boundary_sensitivity": float(b.sensitivity), "boundary_specificity": float(b.specificity)})
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=1))
    return summary


def format_summary(s: dict) -> str:
    from scxnn.metrics import fmt_ci

    def ci(k: str, prefix: str = "", percent: bool = False) -> str:
        k = prefix + k
        return fmt_ci(s[k], s[k + "_lo"], s[k + "_hi"], digits=3, percent=percent)

    lines = [f"{s['films']} films, {s['patients']} patients ({s['sets']}); {s['skipped']} skipped"
             + (f"; left out as seen by the run: {s['dropped_seen_patients']} patient(s), {s['dropped_seen_images']} identical film(s) "
                "under other patient ids" if s["dropped_seen_patients"] or s["dropped_seen_images"] else ""),
             f"ROC AUC {ci('auc')}",
             f"at the point threshold: sensitivity {ci('sensitivity')} (target {s['target']:.0%}: {s['meets_target']}), "
             f"specificity {ci('specificity')}, auto-normal {ci('auto_normal', percent=True)}; "
             f"{s['missed_abnormal']} abnormal film(s) auto-reported normal"
             + (f"; {s['unknown_films']} film(s) of unknown status (no normal/abnormal verdict from their source) outside the "
                f"rates, {s['unknown_called_normal']} of them below the threshold" if s.get("unknown_films") else ""),
             f"at the strict threshold ({'certified' if s['strict_certified'] else 'not certified: calls nothing normal'}): "
             f"sensitivity {ci('sensitivity', 'strict_')}, auto-normal {ci('auto_normal', 'strict_', percent=True)}",
             f"validation: {s['validation']}"]
    if "boundary_accuracy" in s:
        lines.append(f"at the SVM boundary: accuracy {s['boundary_accuracy']:.3f}, sensitivity {s['boundary_sensitivity']:.3f}, "
                     f"specificity {s['boundary_specificity']:.3f}")
    return "\n".join(lines)
