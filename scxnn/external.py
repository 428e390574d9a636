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

from scxnn import study_tables
from scxnn.checkpoints import run_model_dirs
from scxnn.metrics import fmt_ci
from scxnn.trained_run import score_manifest
from scxnn.utils import atomic_write_text

SUMMARY_NAME = "summary.json"


def evaluate_manifest(run_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike,
                      drop_seen: bool = False, progress: bool = True) -> dict:
    """Score ``manifest`` with the trained run ``run_dir`` (``runs/<profile>``) and write the tables.
    Returns the summary (also ``out_dir/summary.json``)."""
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
    if positive:  # where the models look on these films: a few films per finding the manifest marks
        dirs = run_model_dirs(run, cfg)
        n = study_tables.OUTSIDE_CAM_FILMS
        study_tables.gradcam_figure(cfg, {f: dirs[f] for f in positive}, cache=out / "png", name="figure_gradcam",
                                    films=f"the first {n} films of {mpath.name} with its finding (by image id), each",
                                    films_per_finding=n, films_label=f"films of {mpath.name}")

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
