"""``scxnn certify``: freeze a site's own definite-normal threshold from a labelled sample of its films.

A threshold chosen on one population does not carry its sensitivity to another: a pediatric model's
99% point auto-reported 12% of a folder of adult tuberculosis films as normal. Products that clear
normal films alone (Oxipit ChestLink) are switched on per site, after a retrospective audit of that
site's own films. This module is that audit, in three steps:

1. validate: step 03 chooses the run's thresholds on its validation films and says what they
   certify (:class:`scxnn.ensemble.Thresholds`);
2. certify a site: :func:`certify` scores a labelled sample of the site's films with the run as it
   is (its preprocessing, models, SVM and out-of-distribution gate; nothing is refitted) and
   freezes the highest threshold at which the exact lower bound of the sample's sensitivity reaches
   the target (:func:`scxnn.ensemble.certified_threshold`), or refuses and says how many more
   abnormal films it would take; :func:`plan` says beforehand how many abnormal patients a target
   takes, and what share of films the threshold would then clear (``scxnn certify --plan``);
3. screen: ``scxnn predict --certificate CERT`` reports ``definite_normal`` with that threshold.
   Without a certificate, films that would be normal are ``likely_normal`` (uncertified site),
   unless the run's own validation set certifies the target and the batch looks like its population.

**Confidence.** The bound is the exact one-sided lower confidence bound of a binomial proportion
(Clopper and Pearson, Biometrika 26:404-413, 1934), with the abnormal *patients* as the trials
(:func:`scxnn.metrics.proportion_ci`). ``confidence`` C is the level of that one-sided bound: at a
given threshold, a site whose sensitivity there is below the target gives a sample that reaches it
with probability at most 1 - C. The default is the lower end of the run's two-sided ``evaluate.ci``
intervals, (1 + 0.95) / 2 = 0.975: the bound every table reports and the run's own ``strict``
threshold uses. It is conservative: 99% takes 368 abnormal patients with none missed (555 with one),
while C = 0.95 takes 299. C is passed on as the two-sided ``ci = 2 C - 1``, so the certificate's
interval (``ci``) has the one-sided C bound as its lower end.

The sample is scored as ``predict`` scores: a film the out-of-distribution gate flags is always
reviewed, so it can never be a miss. The certificate (``certificate.json``) names the run it belongs
to by a hash of the run's SVM, thresholds and gate files; ``predict`` refuses it for any other run.
It also keeps the sample's flagged share, the reference of the batch-level shift check for that site.
Beside it: ``site_scores.csv`` (hashed image and patient ids, label, scores: the audit trail) and
the run's resolved config. No file name or other identifier of a film is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from scxnn import ood
from scxnn.config import save_resolved
from scxnn.ensemble import OOD_NAME, VAL_SCORES_NAME, certified_threshold
from scxnn.metrics import certifiable_with, screening_with_ci
from scxnn.trained_run import CERTIFICATE_NAME, SITE_SCORES_NAME, Certificate, RunIncomplete, pct, run_id, score_manifest
from scxnn.utils import atomic_write_text, log

def confidence_ci(confidence: float) -> float:
    """The two-sided ``ci`` whose lower end is the one-sided exact bound at ``confidence``: 2 C - 1."""
    c = float(confidence)
    if not 0.5 < c < 1:
        raise ValueError(f"confidence must be in (0.5, 1): the level of the one-sided lower bound of sensitivity, e.g. 0.95 or "
                         f"0.975; got {confidence!r}")
    return round(2 * c - 1, 12)  # 0.9, not 0.8999999999999999, in the certificate


def site_threshold(scores: np.ndarray, ood_flags: np.ndarray, abnormal: np.ndarray, patients: np.ndarray,
                   target: float, n_boot: int, seed: int, ci: float) -> tuple[float, bool]:
    """(threshold, certified) for a site sample scored as ``predict`` scores it: a flagged film is
    reviewed whatever its score, so it counts as caught."""
    s = np.where(np.asarray(ood_flags, dtype=bool), np.inf, np.asarray(scores, dtype=float))
    t, _, certified = certified_threshold(s, abnormal, patients, target, n_boot, seed, ci)
    return t, certified


def certify(run_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike, site: str | None = None,
            target: float | None = None, drop_seen: bool = False, progress: bool = True,
            confidence: float | None = None) -> Certificate:
    """Score the labelled site sample ``manifest`` with the run and write ``out_dir/certificate.json``
    (certified or refused, with the reason), ``site_scores.csv`` and the run's resolved config.
    ``target`` defaults to the run's ``ensemble.sensitivity_target``; ``site`` to the manifest's
    site name(s); ``confidence``, the level of the one-sided exact lower bound (module docstring),
    to ``(1 + evaluate.ci) / 2`` of the run (0.975)."""
    # Checked before the sample is scored, which takes minutes.
    if target is not None and not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    if confidence is not None:
        confidence_ci(confidence)
    run, out = Path(run_dir), Path(out_dir)
    cfg, table, skipped, dropped, th = score_manifest(run, manifest, out, drop_seen, progress, ood_scores=True)
    gate = ood.load(run / "03_svm_ensemble" / OOD_NAME)
    target = float(th.target if target is None else target)
    if not 0 < target < 1:  # the run's own target may be 1: nothing finite certifies it
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    if confidence is None:  # the run's own intervals, exactly as before --confidence
        ci, confidence = float(cfg.evaluate.ci), (1 + float(cfg.evaluate.ci)) / 2
    else:
        ci, confidence = confidence_ci(confidence), float(confidence)
    n_boot, seed = cfg.evaluate.bootstrap, cfg.seed
    unknown = table["abnormal"].isna().to_numpy(dtype=bool)
    if unknown.any():  # no label to count a miss or a correct normal on
        log.warning("%d of %d sample films have no normal/abnormal verdict from their source: left out of the certificate",
                    int(unknown.sum()), len(table))
        table = table[~unknown].reset_index(drop=True)
    y = table["abnormal"].to_numpy(int)
    g = table["patient_id"].astype(str).to_numpy()
    s = table["score"].to_numpy(float)
    flags = ~(table["ood_score"].to_numpy(float) <= gate.threshold)
    needed = certifiable_with(target, ci)
    n_abn_pat = int(len(np.unique(g[y == 1])))
    if y.sum() == 0 or (1 - y).sum() == 0:
        raise ValueError(f"the site sample needs normal and abnormal films to certify a threshold; it has {int(y.sum())} abnormal "
                         f"and {int((1 - y).sum())} normal (at least {needed} abnormal patients for {pct(target)} at one-sided {pct(confidence)} confidence)")
    t, certified = site_threshold(s, flags, y, g, target, n_boot, seed, ci)
    pred = (s >= t) | flags
    m = screening_with_ci(y, pred, g, n_boot, seed, ci)
    if certified:
        reason = (f"the exact one-sided {pct(confidence)} lower bound of the sample's sensitivity reaches {pct(target)} "
                  "at this threshold")
    else:
        more = max(needed - n_abn_pat, 0)
        reason = (f"no threshold certifies sensitivity >= {pct(target)} on this sample ({n_abn_pat} abnormal patients): certifying it "
                  f"at one-sided {pct(confidence)} confidence takes at least {needed} abnormal patients with none missed"
                  + (f", {more} more than the sample has" if more else ", and fewer misses than this sample shows"))
    sites = sorted(set(table["site"].astype(str)))
    cert = Certificate(
        site=site or "+".join(sites), run_id=run_id(run), target=target, ci=ci, certified=certified, threshold=float(t),
        films=int(len(table)), patients=int(len(np.unique(g))), abnormal_films=int(y.sum()), abnormal_patients=n_abn_pat,
        missed=int(m["fn"]), **{k: float(m[k]) for k in ("sensitivity", "sensitivity_lo", "sensitivity_hi", "specificity",
                                                          "specificity_lo", "specificity_hi", "auto_normal", "auto_normal_lo",
                                                          "auto_normal_hi")},
        ood_flagged_share=float(flags.mean()), abnormal_needed=needed, reason=reason,
        created=_dt.date.today().isoformat(), unknown_films=int(unknown.sum()), confidence=confidence)
    out.mkdir(parents=True, exist_ok=True)
    cols = ["image_id", "patient_id", "site", "abnormal", "score", "ood_score"]
    atomic_write_text(out / SITE_SCORES_NAME, table[cols].assign(ood_flag=flags).to_csv(index=False))
    save_resolved(cfg, out)
    atomic_write_text(out / CERTIFICATE_NAME, json.dumps(asdict(cert), indent=1))
    log.info("%s (%d films skipped; left out as seen by the run: %d patient(s), %d identical film(s) under other patient ids)",
             cert.describe(), len(skipped), dropped["patients"], dropped["images"])
    return cert


PLAN_TARGETS = (0.90, 0.95, 0.97, 0.98, 0.99)
PLAN_CONFIDENCES = (0.90, 0.95, 0.975, 0.99)


def plan(run_dir: str | os.PathLike, targets=PLAN_TARGETS, confidences=PLAN_CONFIDENCES):
    """What certifying a site would take, before any film is collected (``scxnn certify --plan``):
    one row per (target, confidence), lowest first, with

    * ``abnormal_patients``: abnormal patients the sample needs, none missed
      (:func:`scxnn.metrics.certifiable_with`), and ``abnormal_patients_1_miss`` with one missed;
    * ``expected_threshold``: the threshold such a sample would certify. With none missed it is at
      best just below the sample's lowest abnormal score, estimated as the ``1 / (n + 1)`` quantile
      of the run's out-of-fold validation scores of abnormal films (``val_scores.csv``; the expected
      lowest of n draws, one film per patient: more films per patient would certify lower). Where n
      exceeds the validation abnormal films, the quantile clamps to their minimum and
      ``extrapolated`` is true: the estimate is then optimistic;
    * ``expected_auto_normal`` and ``expected_normals_cleared``: the share of all validation films,
      and of the normal ones, scoring below that threshold (the first at the validation set's
      abnormal share, the second independent of it).

    The expected figures assume the site's films score like the run's validation films (they
    don't if the site differs; certifying is what finds out), and count no film as flagged by the
    out-of-distribution gate: flagged films are always reviewed, which would lower them further.
    The frame's ``attrs`` hold the run and its validation counts."""
    targets = sorted({float(t) for t in targets})
    confidences = sorted({float(c) for c in confidences})
    for t in targets:
        if not 0 < t < 1:
            raise ValueError(f"target must be in (0, 1), got {t!r}")
    cis = {c: confidence_ci(c) for c in confidences}
    if not targets or not cis:
        raise ValueError("plan needs at least one target and one confidence")
    path = Path(run_dir) / "03_svm_ensemble" / VAL_SCORES_NAME
    if not path.is_file():
        raise RunIncomplete(f"{run_dir} has no validation scores to plan from ({path}); pass runs/<profile> after "
                            "`make ensemble PROFILE=<profile>`")
    val = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
    s, y = val["score"].to_numpy(float), val["abnormal"].to_numpy(int)
    pos = np.sort(s[y == 1])
    if len(pos) == 0 or (y == 0).sum() == 0:
        raise ValueError(f"{path}: the validation scores need normal and abnormal films to plan from "
                         f"({int((y == 1).sum())} abnormal, {int((y == 0).sum())} normal)")
    rows = []
    for t in targets:
        for c, ci in cis.items():
            n = certifiable_with(t, ci)
            # weibull: the k-th lowest of m films sits at k / (m + 1), so q = 1/(n+1) is the expected
            # lowest of n draws, and below 1/(m+1) it is the lowest of the m (no extrapolation).
            thr = float(np.quantile(pos, 1 / (n + 1), method="weibull"))
            rows.append({"target": t, "confidence": c, "abnormal_patients": n,
                         "abnormal_patients_1_miss": certifiable_with(t, ci, misses=1), "expected_threshold": thr,
                         "expected_auto_normal": float((s < thr).mean()), "expected_normals_cleared": float((s[y == 0] < thr).mean()),
                         "extrapolated": bool(n > len(pos))})
    df = pd.DataFrame(rows)
    df.attrs.update(run=str(run_dir), validation_films=int(len(y)), validation_abnormal_films=int(len(pos)),
                    validation_abnormal_patients=int(val.loc[y == 1, "patient_id"].nunique()), scores=str(path))
    return df


def format_plan(df) -> str:
    """:func:`plan`'s table as fixed-width text, with where its figures come from."""
    a = df.attrs
    head = (f"{'target':>6}  {'confidence':>10}  {'abnormal patients':>17}  {'with 1 miss':>11}  "
            f"{'expected threshold':>18}  {'auto-normal':>11}  {'normals cleared':>15}")
    lines = [head]
    for r in df.itertuples():
        lines.append(f"{pct(r.target):>6}  {pct(r.confidence):>10}  {r.abnormal_patients:>17}  {r.abnormal_patients_1_miss:>11}  "
                     f"{r.expected_threshold:>17.3f}{'*' if r.extrapolated else ' '}  {r.expected_auto_normal:>11.1%}  "
                     f"{r.expected_normals_cleared:>15.1%}")
    lines.append(f"abnormal patients: none / one missed, exact one-sided bound at the confidence. Expected: from the {a['validation_films']} "
                 f"out-of-fold validation scores of {a['run']} ({a['validation_abnormal_films']} abnormal films of "
                 f"{a['validation_abnormal_patients']} patients; auto-normal at their {a['validation_abnormal_films'] / a['validation_films']:.0%} "
                 "abnormal share), as if the site's films scored like them; films the gate flags (always reviewed) lower them further")
    if df["extrapolated"].any():
        lines.append(f"* more patients than the {a['validation_abnormal_films']} validation abnormal films: the threshold is their "
                     "lowest score, an optimistic estimate")
    return "\n".join(lines)
