"""The study's result tables, each computed, captioned and written in one place.

Every function here takes the scored logits table of a run (:func:`scxnn.ensemble.load_run`, or
:func:`scxnn.trained_run.score_manifest` for another dataset), computes one of the thesis' tables with
:mod:`scxnn.evaluation`, writes it with its caption and one-line headline through
:func:`scxnn.reports.write_table` (and its figure, where it has one) and returns the frame for
display. Notebook 04 and ``scxnn evaluate`` call the same functions, so a caption, a headline or the
choice of the main set is written once; ``where`` ends a caption with what was scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scxnn import cam, evaluation, figures, localisation, ood, reports, variants
from scxnn.config import Config
from scxnn.metrics import fmt_ci, interval_note


def _tail(where: str) -> str:
    return f" {where}" if where else ""


def _thesis_line(rows, fmt) -> str | None:
    """``; ``-joined thesis values of the rows that have them, or None (no thesis column)."""
    return "; ".join(fmt(r) for r in rows) or None


def screening(cfg: Config, table: pd.DataFrame, th, where: str = "", thesis: dict | None = None
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 at the point and at the strict threshold (achieved sensitivity beside the target,
    with its verdict) and the ``thresholds`` table of what the validation set certifies. ``th``: the
    run's :class:`scxnn.ensemble.Thresholds`. Returns (table 2 at point, table 2 at strict)."""
    n_boot, seed, ci = cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci
    note, tail = interval_note(ci, n_boot), _tail(where)
    t2 = evaluation.with_target(evaluation.table2(table, th.point, n_boot, seed, ci, thesis=thesis), th.target)
    main = evaluation.main_set(t2)
    ours, theirs = evaluation.screening_headline(t2, main, f"{main} test")
    reports.write_table(cfg, t2, "table2_normal_vs_abnormal",
                        f"Normal vs abnormal per set at the point threshold (validation sensitivity >= {th.target:.0%}, {th.scores} "
                        f"validation scores), achieved sensitivity beside the target; {note}. Validation: {th.describe()}.{tail}",
                        headline=ours, thesis=theirs, display=evaluation.format_ci(t2))
    t2s = evaluation.with_target(evaluation.table2(table, th.strict, n_boot, seed, ci), th.target)
    why = "" if th.certified else (f" The validation set cannot certify {th.target:.0%} ({th.n_val_abnormal_patients} abnormal "
                                   f"patients; it takes at least {th.abnormal_needed} without a miss), so strict calls nothing normal.")
    ours_s, _ = evaluation.screening_headline(t2s, main, f"{main} test, strict threshold")
    reports.write_table(cfg, t2s, "table2_strict_threshold",
                        f"Table 2 at the strict threshold: the highest at which the exact lower {ci:.0%} bound of validation "
                        f"sensitivity reaches {th.target:.0%}.{why} {note}.{tail}", headline=ours_s, display=evaluation.format_ci(t2s))
    reports.write_table(cfg, evaluation.threshold_table(th), "thresholds",
                        f"The frozen definite-normal thresholds and what the validation set certifies at each (exact lower {ci:.0%} "
                        f"bound of validation sensitivity; `certified`: it reaches the target).{tail}", headline=th.describe())
    return t2, t2s


def threshold_stability(cfg: Config, table: pd.DataFrame, val_scores: pd.DataFrame) -> pd.DataFrame:
    """How much the validation-chosen point threshold moves over patient resamples of validation."""
    n_boot, seed, ci = cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci
    stab = evaluation.threshold_stability(table, val_scores, cfg.ensemble.sensitivity_target, n_boot, seed, ci)
    main = evaluation.main_set(stab)
    row = stab[stab.set == main].iloc[0]
    reports.write_table(cfg, stab, "threshold_stability",
                        f"The validation-chosen point threshold re-chosen on {n_boot} patient resamples of the validation films "
                        f"({int(stab.abnormal.iloc[0])} abnormal): sensitivity and share auto-reported normal at the run's threshold, "
                        f"and the central {ci:.0%} range over the re-chosen thresholds (a spread from the threshold's choice, not a "
                        "confidence interval).",
                        headline=f"{main}: auto-normal {row.auto_normal:.1%} (range {row.auto_normal_range_low:.1%}-"
                                 f"{row.auto_normal_range_high:.1%}), sensitivity {row.sensitivity:.3f} ({row.sensitivity_range_low:.3f}-"
                                 f"{row.sensitivity_range_high:.3f})")
    return stab


def risk_levels(cfg: Config, table: pd.DataFrame, thesis: dict | None = None) -> pd.DataFrame:
    """Table 3: each finding model's call (normal / target / others) by the risk group of the film's finding."""
    t3 = evaluation.table3(table, cfg.findings, thesis=thesis)
    share = evaluation.missed_share(t3)
    reports.write_table(cfg, t3, "table3_risk_levels",
                        "Per-finding model decision (Normal / Target / Others) by the risk group of the reference finding, internal "
                        "test and temporal sets.",
                        headline="; ".join(f"{r.set}: {r.total:.1%} of positive pairs called Normal" for r in share.itertuples()),
                        thesis=_thesis_line([r for r in share.itertuples() if np.isfinite(getattr(r, "thesis_total", np.nan))],
                                            lambda r: f"{r.set}: {r.thesis_total:.1%}"))
    reports.save_figure(cfg, figures.risk_figure(t3), "table3_risk_levels",
                        caption="Table 3 as bars: per-finding model decisions by risk group (red: the finding's own model said Normal).")
    return t3


def two_vs_three_class(cfg: Config, thesis: dict | None = None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Tables 7 and 8 (2-class vs 3-class finding models), or (None, None) for a profile that does
    not declare both variants (e.g. a real dataset's)."""
    names = [n for n in ("two_class", "three_class") if n in cfg.variants.runs]
    if len(names) < 2:
        return None, None
    n_boot, seed, ci = cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci
    protocol = variants.protocol_text(cfg)
    pipelines = {}
    for name in names:
        _, scored, _, th, _ = variants.load_variant(cfg, name)
        pipelines[name] = (scored, th.point)
    t7 = evaluation.table7(pipelines, n_boot, seed, ci, thesis=thesis, reference=variants.REFERENCE)
    has_thesis = "thesis_sensitivity" in t7
    reports.write_table(cfg, t7, "table7_two_vs_three_class",
                        f"2-class vs 3-class finding models, internal test, normal vs abnormal at each pipeline's validation-chosen "
                        f"threshold; {interval_note(ci, n_boot)}; AUC: patient bootstrap. Δ AUC (delta_auc): each pipeline's AUC minus "
                        f"the reference row's ({variants.REFERENCE}, is_reference) on the same films, with a paired patient-bootstrap "
                        f"{ci:.0%} CI (the same resamples of patients for both pipelines); fn of tp + fn: abnormal films called normal "
                        f"at each pipeline's own threshold. Protocol: {protocol}.",
                        headline="; ".join(evaluation.screening_headline(t7[t7.pipeline == n], "internal", n)[0] for n in pipelines),
                        thesis=_thesis_line([r for r in t7.itertuples() if has_thesis and np.isfinite(r.thesis_sensitivity)],
                                            lambda r: f"{r.pipeline}: sensitivity {r.thesis_sensitivity:.3f}, specificity "
                                                      f"{r.thesis_specificity:.3f}"),
                        display=evaluation.format_ci(t7, rates=(*evaluation.RATES, "auc", "delta_auc")))
    t8 = evaluation.table8(pipelines, cfg.findings, thesis=thesis)
    share = evaluation.missed_share(t8)
    reports.write_table(cfg, t8, "table8_two_vs_three_class_risk",
                        f"2-class vs 3-class models by risk group, internal test: the finding's own model's decision. Protocol: {protocol}.",
                        headline="; ".join(f"{r.pipeline}: {r.total:.1%} called Normal" for r in share.itertuples()),
                        thesis=_thesis_line([r for r in share.itertuples() if np.isfinite(getattr(r, "thesis_total", np.nan))],
                                            lambda r: f"{r.pipeline}: {r.thesis_total:.1%}"))
    return t7, t8


def svm_auc(cfg: Config, table: pd.DataFrame, t2: pd.DataFrame, where: str = "") -> pd.DataFrame:
    """ROC AUC of the SVM score per set, and the ROC figure with table 2's operating points (and
    the thesis' where ``t2`` carries them)."""
    n_boot, seed, ci = cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci
    auc = evaluation.svm_auc(table, n_boot, seed, ci)
    reports.write_table(cfg, auc, "svm_auc",
                        f"ROC AUC of the SVM score (abnormal vs normal) per set; {ci:.0%} patient-bootstrap CI (exact bound at AUC 0 "
                        f"or 1).{_tail(where)}",
                        headline="; ".join(f"{r.set} {r.auc:.3f}" for r in auc.itertuples()),
                        display=evaluation.format_ci(auc, evaluation.RATES + ("auc",)))
    curves = {name: (table.loc[m, "abnormal"].to_numpy(), table.loc[m, "score"].to_numpy())
              for name, m in evaluation.evaluation_sets(table).items()}
    operating = {r.set: (1 - r.specificity, r.sensitivity) for r in t2.itertuples()}
    operating_ci = ({r.set: ((1 - r.specificity_hi, 1 - r.specificity_lo), (r.sensitivity_lo, r.sensitivity_hi))
                     for r in t2.itertuples()} if {"specificity_lo", "sensitivity_lo"} <= set(t2) else {})
    thesis_points = ({r.set: (1 - r.thesis_specificity, r.thesis_sensitivity) for r in t2.itertuples()
                      if np.isfinite(r.thesis_sensitivity)} if "thesis_sensitivity" in t2 else {})
    auc_ci = {r.set: (r.auc, r.auc_lo, r.auc_hi) for r in auc.itertuples()}
    reports.save_figure(cfg, figures.roc_figure(curves, operating, thesis_points, auc_ci=auc_ci, operating_ci=operating_ci), "roc",
                        caption=f"ROC of the SVM score per set, AUC with its {ci:.0%} patient-bootstrap CI; circles: our operating "
                                f"point (the frozen definite-normal threshold) with the {ci:.0%} CIs of its sensitivity and "
                                f"1 - specificity{'; stars: the thesis' if thesis_points else ''}.{_tail(where)}")
    return auc


def published(cfg: Config, table: pd.DataFrame, th, where: str = "") -> pd.DataFrame | None:
    """Ours at the definite-normal threshold and at the SVM boundary beside the published results
    the profile names (``evaluate.published``); None when it names none."""
    if not cfg.evaluate.published:
        return None
    n_boot, seed, ci = cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci
    pub = evaluation.published_comparison(table, th.point, cfg.evaluate.published, n_boot, seed, ci)
    mine = pub[(pub.source == "ours") & (pub.operating_point == "definite_normal")].iloc[0]
    at0 = pub[(pub.source == "ours") & (pub.operating_point == "svm_boundary")].iloc[0]
    theirs = "; ".join(f"{r.source}: AUC {r.auc:.3f}, accuracy {r.accuracy:.3f}, sensitivity {r.sensitivity:.3f}, "
                       f"specificity {r.specificity:.3f}" for r in pub[pub.source != "ours"].itertuples())
    reports.write_table(cfg, pub, "published_comparison",
                        f"Normal vs abnormal on the held-out test patients ({mine.set}, {int(mine.images)} films, {int(mine.patients)} "
                        f"patients) at the validation-chosen {th.target:.0%}-sensitivity threshold and at the SVM boundary; "
                        f"{interval_note(ci, n_boot)}; beside published results on the same source data (their own split).{_tail(where)}",
                        headline=f"AUC {fmt_ci(mine.auc, mine.auc_lo, mine.auc_hi)}; at the definite-normal threshold sensitivity "
                                 f"{fmt_ci(mine.sensitivity, mine.sensitivity_lo, mine.sensitivity_hi)}, specificity "
                                 f"{fmt_ci(mine.specificity, mine.specificity_lo, mine.specificity_hi)}, auto-normal "
                                 f"{fmt_ci(mine.auto_normal, mine.auto_normal_lo, mine.auto_normal_hi, percent=True)}; at the SVM "
                                 f"boundary accuracy {at0.accuracy:.3f}, sensitivity {at0.sensitivity:.3f}, specificity {at0.specificity:.3f}",
                        thesis=theirs, reference="published", display=published_display(pub))
    return pub


def published_display(pub: pd.DataFrame) -> pd.DataFrame:
    return evaluation.format_ci(pub, ("auc", "accuracy", "sensitivity", "specificity", "auto_normal"))


def screening_yield(cfg: Config, table: pd.DataFrame, val_scores: pd.DataFrame) -> pd.DataFrame:
    """Share auto-reported normal and achieved sensitivity against the sensitivity target (0.90-1.00)."""
    ci = cfg.evaluate.ci
    yc = evaluation.yield_curve(table, val_scores, np.round(np.linspace(0.90, 1.0, 21), 3), n_boot=min(cfg.evaluate.bootstrap, 500),
                                seed=cfg.seed, ci=ci)
    reports.write_table(cfg, yc, "screening_yield",
                        "Sensitivity target vs the share of films auto-reported normal and the sensitivity achieved, per set, at two "
                        "thresholds chosen on validation scores for each target: `point` (validation sensitivity reaches it) and "
                        f"`certified` (its exact lower {ci:.0%} bound does; calls nothing normal where the validation set cannot "
                        "certify the target).")
    reports.save_figure(cfg, figures.yield_figure(yc), "screening_yield",
                        caption="Sensitivity target vs share auto-reported normal (left) and achieved sensitivity (right), per set; "
                                "solid: point threshold, dashed: certified threshold (exact lower bound of validation sensitivity); "
                                "thresholds from validation scores only.")
    return yc


BATCH_SIZES = (10, 25, 50, 100, 200)


def batch_shift(cfg: Config, table: pd.DataFrame, gate_path: str | Path) -> pd.DataFrame | None:
    """How often random batches of each size are called shifted by the batch-level rule; None for a
    run without per-film out-of-distribution scores or gate."""
    if "ood_score" not in table or not Path(gate_path).is_file():
        return None
    bs = evaluation.batch_shift_rates(table, ood.load(gate_path), BATCH_SIZES, cfg.evaluate.batch_ood_share,
                                      cfg.evaluate.batch_alpha, seed=cfg.seed)
    whole = bs.groupby("set").tail(1)
    reports.write_table(cfg, bs, "batch_shift",
                        f"Share of random batches of each size that the batch-level shift rule calls out of distribution (tolerance "
                        f"{cfg.evaluate.batch_ood_share:.0%} flagged, level {cfg.evaluate.batch_alpha:g}), per set; the last row of a "
                        "set is the whole set as one batch. `flagged_share`: films the per-film gate flags.",
                        headline="; ".join(f"{r.set}: {r.flagged_share:.0%} flagged, whole set "
                                           f"{'shifted' if r.shifted else 'in distribution'}" for r in whole.itertuples()))
    return bs


def missed(cfg: Config, table: pd.DataFrame, th, where: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Abnormal films auto-reported normal at the point threshold: by set and risk group, and film
    by film (hashed ids, no patient id). Returns (by risk, cases)."""
    mbr = evaluation.missed_by_risk(table, th.point, cfg.findings, cfg.unseen_findings)
    cases = evaluation.missed_cases(table, th.point, cfg.findings, cfg.unseen_findings)
    crit = cases[cases.worst_risk == "critical"]
    reports.write_table(cfg, mbr, "missed_by_risk",
                        f"Abnormal films auto-reported normal, by set and most urgent finding, at the point threshold.{_tail(where)}",
                        headline=f"{len(cases)} missed abnormal films, {len(crit)} critical")
    reports.write_table(cfg, cases.drop(columns=["patient_id"], errors="ignore"), "missed_cases",
                        f"Every abnormal film auto-reported normal (hashed image id, set, SVM score, findings, most urgent risk "
                        f"group).{_tail(where)}")
    return mbr, cases


def missed_critical_figure(cfg: Config, cases: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The critical films among ``cases`` (:func:`missed`), as thumbnails of their preprocessed images."""
    crit = cases[cases.worst_risk == "critical"]
    paths, titles = figures.thumbnail_inputs(cfg, crit, table)
    reports.save_figure(cfg, figures.thumbnails_figure(paths, titles), "missed_critical",
                        caption="Critical findings auto-reported normal, film by film (preprocessed images).")
    return crit


def auc_per_finding(cfg: Config, table: pd.DataFrame, where: str = "") -> pd.DataFrame:
    """ROC AUC of each finding model (target vs rest) on the internal test set, with its figure."""
    n_boot, seed, ci = cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci
    afd = evaluation.auc_per_finding(table, list(cfg.findings), n_boot, seed, ci)
    # `scxnn evaluate` scores every film of its manifest as a test film of its own site, so there each
    # row's scope is all_test: a caption saying "internal test" would misname the films.
    scopes = set(afd["scope"])
    films = ("internal test" if scopes == {"internal"} else "every scored test film (scope all_test)" if scopes == {"all_test"}
             else "internal test; scope all_test: every test film, for a finding the internal test set has no positive of")
    reports.write_table(cfg, afd, "auc_per_finding",
                        f"ROC AUC of each finding model (target vs rest, softmax of its target logit), {films}; {ci:.0%} "
                        f"patient-bootstrap CI (exact bound at AUC 0 or 1).{_tail(where)}",
                        headline=f"median AUC {afd.auc.median():.3f} over {afd.auc.notna().sum()} findings",
                        display=evaluation.format_ci(afd, evaluation.RATES + ("auc",)))
    reports.save_figure(cfg, figures.auc_figure(afd, risk=cfg.findings), "auc_per_finding",
                        caption=f"ROC AUC per finding model with {ci:.0%} CI, coloured by risk group.{_tail(where)}")
    return afd


def calibration(cfg: Config, table: pd.DataFrame, val_scores: pd.DataFrame) -> pd.DataFrame:
    """Brier score of the Platt-scaled SVM probability per set, and the reliability figure."""
    bins, brier = evaluation.calibration(val_scores, table)
    reports.write_table(cfg, brier, "calibration_brier",
                        "Brier score of the Platt-scaled SVM probability of abnormal per set (scaling fitted on validation scores).",
                        headline="; ".join(f"{r.set} {r.brier:.3f}" for r in brier.itertuples()))
    reports.save_figure(cfg, figures.calibration_figure(bins), "calibration",
                        caption="Reliability of the Platt-scaled SVM score per set, with the count per bin.")
    return brier


def unseen_findings(cfg: Config, table: pd.DataFrame) -> list[str]:
    """The profile's unseen findings (no model was trained on them) that the scored films carry."""
    return [u for u in cfg.unseen_findings if u in table]


def table9(cfg: Config, table: pd.DataFrame, thesis: dict | None = None) -> pd.DataFrame | None:
    """Table 9: the share of unseen-finding test films each finding model calls Normal / Target /
    Others, and its heatmap figure; None when the films carry no unseen finding."""
    unseen = unseen_findings(cfg, table)
    if not unseen:
        return None
    t9 = evaluation.table9(table, list(cfg.findings), unseen, thesis=thesis)

    def normal_share(prefix: str) -> str | None:
        shares = {u: t9[f"{prefix}{u}_normal"].mean() for u in unseen if f"{prefix}{u}_normal" in t9}
        return "mean share called Normal: " + ", ".join(f"{u} {v:.2f}" for u, v in shares.items()) if shares else None

    reports.write_table(cfg, t9, "table9_unseen_findings",
                        "Share of unseen-finding test films (never trained on) each finding model calls Normal / Target / "
                        "Others; n per unseen finding in the *_n columns.", headline=normal_share(""), thesis=normal_share("thesis_"))
    reports.save_figure(cfg, figures.unseen_figure(t9, unseen), "table9_unseen_findings",
                        caption="Table 9 as heatmaps: share of unseen-finding films each model calls Normal, ours beside the thesis'.")
    return t9


def unseen_screening(cfg: Config, table: pd.DataFrame, th) -> pd.DataFrame | None:
    """Unseen-finding films through the whole pipeline at the point threshold: how many are
    auto-reported normal, and the sensitivity with its interval; None without unseen findings."""
    unseen = unseen_findings(cfg, table)
    if not unseen:
        return None
    us = evaluation.unseen_screening(table, th.point, unseen, cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci)
    reports.write_table(cfg, us, "unseen_screening",
                        "Unseen findings through the whole pipeline at the point threshold: films auto-reported normal and "
                        "sensitivity (95% CI: exact on patients when no film is missed, see scxnn.metrics).",
                        headline="; ".join(f"{r.finding}: {r.auto_normal}/{r.images} auto-normal" for r in us.itertuples()),
                        display=evaluation.format_ci(us, ("sensitivity",)))
    return us


# Films per finding in the Grad-CAM figures of films from outside the study (step 08, `scxnn
# evaluate`): one film, picked by its id, can be a lucky or an unlucky one; a few show a pattern.
OUTSIDE_CAM_FILMS = 3


def gradcam_figure(cfg: Config, models, split: str = "test", cache=None, name: str = "figure5_gradcam",
                   films: str = "a positive test film", films_per_finding: int = 1, films_label: str | None = None):
    """Figure 5 (:func:`scxnn.cam.figure5`) written with its caption; returns the figure. ``cache``:
    another PNG cache than the profile's, e.g. the films ``scxnn evaluate`` or step 08 scored, saved
    as ``name`` (``films`` says which films the caption is about, ``films_label`` the title;
    ``films_per_finding`` films each, the first by image id)."""
    fig = cam.figure5(cfg, models, split=split, cache=cache, films_per_finding=films_per_finding, films_label=films_label)
    what = (", and the decoder's reconstruction." if cfg.model.decoder != "none"
            else " (classification-only models: no decoder output).")
    reports.save_figure(cfg, fig, name, caption=f"{'Figure 5: ' if cache is None else ''}per finding model, {films} with the "
                                                f"Grad-CAM of its target class and the lesion outline where it has a mask" + what)
    return fig


def gradcam_localisation(cfg: Config, models, split: str = "test") -> pd.DataFrame | None:
    """Grad-CAM localisation per finding model (:func:`scxnn.localisation.localization_table`),
    written with its headline; None when no positive film has a lesion mask to measure against
    (a weak-label-only dataset)."""
    loc = localisation.localization_table(cfg, models, split=split)
    if loc.n.sum() == 0:
        return None
    reports.write_table(cfg, loc, "gradcam_localization",
                        "Grad-CAM localisation per finding model on hard-labelled positive test films: pointing-game hit rate "
                        "and IoU of the top-CAM region (lesion-sized) with the lesion mask, beside random baselines. The thesis "
                        "reports pictures only.",
                        headline=f"mean pointing hit rate {loc.pointing_hit_rate.mean():.2f} (random "
                                 f"{loc.random_pointing_rate.mean():.2f}); mean IoU {loc.mean_iou.mean():.2f} (random "
                                 f"{loc.random_mean_iou.mean():.2f})")
    return loc


# Display titles of the thesis' ablation tables; a table a profile adds is titled by its name.
ABLATION_TITLES = {"table4_backbones": "Table 4: encoder backbone", "table5_lambda": "Table 5: λ in CE + λ·MSE",
                   "table6_preprocessing": "Table 6: contrast, decoder task and mask dilation",
                   "table6_start": "Start of the finding models: from scratch vs the shipped trunk (not a thesis table)"}
_ROW_PREFIX = {"table5_lambda": "λ="}
ABLATION_RATES = ("accuracy", "auc", "delta_auc", "specificity", "sensitivity")


def ablation(cfg: Config, name: str, thesis: dict | None = None) -> pd.DataFrame:
    """One ablation table of ``variants.tables`` (whole pipeline per row, internal test) and its
    figure; the headline names our best row, the thesis line the thesis' best (from its table)."""
    ci, n_boot = cfg.evaluate.ci, cfg.evaluate.bootstrap
    protocol = variants.protocol_text(cfg)
    t = variants.ablation_table(cfg, name, thesis)
    title, prefix = ABLATION_TITLES.get(name, name), _ROW_PREFIX.get(name, "")
    best = t.loc[t.auc.idxmax()]
    theirs = None
    if "thesis_auc" in t and t.thesis_auc.notna().any():
        tb = t.loc[t.thesis_auc.idxmax()]
        theirs = f"best AUC: {prefix}{tb.row} {tb.thesis_auc:.3f}"
    paired = (f"Δ AUC (delta_auc): each row's AUC minus the reference row's ({variants.REFERENCE}, is_reference), on the same "
              f"films, with a paired patient-bootstrap {ci:.0%} CI (the same {n_boot} resamples of patients for both pipelines); "
              "called_normal_abnormal of abnormal_films: abnormal films called normal at each pipeline's own validation-chosen "
              "definite-normal threshold")
    reports.write_table(cfg, t, name, f"{title}. Whole pipeline per row, internal test, at the SVM boundary; "
                                      f"{interval_note(ci, n_boot)}; AUC: patient bootstrap. {paired}. Protocol: {protocol}.",
                        headline=f"best AUC: {prefix}{best.row} {best.auc:.3f}", thesis=theirs,
                        display=evaluation.format_ci(t, rates=ABLATION_RATES))
    reports.save_figure(cfg, figures.ablation_figure(t, title), name,
                        caption=f"{title}: Δ AUC vs the reference row with paired {ci:.0%} CIs (the thesis' Δ: diamonds), and "
                                f"sensitivity, specificity, accuracy (bars, {ci:.0%} CI). Protocol: {protocol}.")
    return t
