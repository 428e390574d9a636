"""The thesis' evaluation tables (Tables 2, 3, 7, 8, 9) and the extra analyses around them, computed
from a scored logits table (:func:`scxnn.ensemble.logits_table` plus a ``score`` column).

Every function here is pure: a DataFrame in, a DataFrame of plain numeric (or short string) columns
out, ready for ``scxnn.reports.write_table``. When the thesis' numbers are passed (the dict from
:func:`scxnn.thesis.load_tables`), ``thesis_*`` columns sit beside ours; with ``thesis=None``, or when
the section is missing, those columns are simply absent.

Conventions, shared with :mod:`scxnn.metrics`: abnormal is the positive class; a film is reported
*definitely normal* when its SVM score is below the threshold, so "predicted abnormal" is
``score >= threshold``; intervals resample *patients*, never single films. Thresholds (and the
Platt calibration) come from validation data only; the evaluation sets here are only scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from scxnn import ood
from scxnn.config import RISK_GROUPS
from scxnn.data import MAIN_SITE, main_site
from scxnn.ensemble import Thresholds, certified_threshold, point_threshold
from scxnn.metrics import (auc_with_ci, fmt_ci, fmt_num, paired_auc_delta, patient_bootstrap, proportion_ci, roc_auc,
                           screening_metrics, screening_with_ci)

SITE_ORDER = ("internal", "temporal", "external1", "external2")
DECISIONS = ("normal", "target", "others")  # index = the value of ``<finding>__pred``
RATES = ("sensitivity", "specificity", "npv", "ppv", "auto_normal")
COUNTS = ("tn", "fn", "fp", "tp")
UNSEEN = "unseen"  # risk label of an abnormal film that has only unseen findings
UNKNOWN = "unknown"  # abnormal, yet no column marks a finding (one its source gives that no column maps, or labels missing)
RISK_RANK = (*RISK_GROUPS, UNSEEN, UNKNOWN)  # most to least urgent


# --------------------------------------------------------------------------- small helpers


def _positive(col: pd.Series) -> np.ndarray:
    """1 -> True; 0 and unknown (NA) -> False: whether a finding column marks the finding present."""
    return col.fillna(0).astype(int).to_numpy() == 1


def _class_names(table: pd.DataFrame, finding: str) -> tuple[str, ...]:
    """The logit columns a finding's model has: 3-class (normal/target/others) or 2-class."""
    return tuple(n for n in DECISIONS if f"{finding}__{n}" in table)


def _num_classes(table: pd.DataFrame, findings: Iterable[str]) -> int:
    return max(len(_class_names(table, f)) for f in findings)


def _decisions(table: pd.DataFrame, finding: str) -> np.ndarray:
    """The model's decision (0 normal, 1 target, 2 others): the stored argmax, or recomputed."""
    if f"{finding}__pred" in table:
        return table[f"{finding}__pred"].to_numpy(int)
    cols = [f"{finding}__{n}" for n in _class_names(table, finding)]
    return table[cols].to_numpy(float).argmax(axis=1)


def _score(table: pd.DataFrame) -> np.ndarray:
    if "score" not in table:
        raise KeyError("the table has no 'score' column; add it with scxnn.ensemble.table_scores first")
    return table["score"].to_numpy(float)


def _section(thesis: Mapping | None, key: str) -> Mapping | None:
    """A thesis section, or None when there is no thesis or the section is missing or malformed."""
    sec = (thesis or {}).get(key)
    return sec if isinstance(sec, Mapping) else None


# --------------------------------------------------------------------------- scores and sets


def known(table: pd.DataFrame) -> np.ndarray:
    """Rows whose reference label is known (``abnormal`` 1 or 0; :func:`scxnn.data.abnormal_labels`)."""
    return table["abnormal"].notna().to_numpy(dtype=bool)


def evaluation_sets(table: pd.DataFrame, known_only: bool = True) -> dict[str, np.ndarray]:
    """Boolean row masks of the scored sets: the *test* split, one set per site, ordered internal,
    temporal, external1, external2, then any other site names sorted. Train and validation rows are
    never included: the SVM and its thresholds were fitted on them. Empty sites are left out.
    ``known_only``: only the films whose source says normal or abnormal (every figure that needs the
    reference label); films of unknown status are scored too, and :func:`table2` counts them."""
    test = (table["split"] == "test").to_numpy()
    if known_only:
        test = test & known(table)
    sites = set(table.loc[test, "site"].astype(str))
    order = [s for s in SITE_ORDER if s in sites] + sorted(sites - set(SITE_ORDER))
    site = table["site"].astype(str).to_numpy()
    return {s: test & (site == s) for s in order}


# --------------------------------------------------------------------------- Table 2 / Table 7


def _screening_row(sub: pd.DataFrame, threshold: float, n_boot: int, seed: int, ci: float) -> dict:
    """Images, patients, confusion counts and rates with patient-bootstrap bounds for one set."""
    m = screening_with_ci(sub["abnormal"].to_numpy(int), _score(sub) >= threshold, sub["patient_id"].to_numpy(),
                          n_boot, seed, ci)
    row = {"images": len(sub), "patients": int(sub["patient_id"].nunique())}
    row.update({k: m[k] for k in COUNTS})
    for r in RATES:
        row.update({r: m[r], f"{r}_lo": m[f"{r}_lo"], f"{r}_hi": m[f"{r}_hi"]})
    return row


def thesis_confusion(entry: Mapping | None) -> dict[str, float]:
    """``thesis_tn/fn/fp/tp`` and ``thesis_<rate>`` from a thesis confusion matrix (rows = AI
    decision, columns = reference); the rates use the same definitions as ours
    (:func:`scxnn.metrics.screening_metrics`), so the columns are comparable. NaN when absent."""
    keys = [f"thesis_{k}" for k in (*COUNTS, *RATES)]
    try:
        tn, fn = entry["ai_normal"]["ref_normal"], entry["ai_normal"]["ref_abnormal"]
        fp, tp = entry["ai_abnormal"]["ref_normal"], entry["ai_abnormal"]["ref_abnormal"]
    except (KeyError, TypeError):
        return dict.fromkeys(keys, float("nan"))
    counts = [int(tn), int(fn), int(fp), int(tp)]
    m = screening_metrics(np.repeat([0, 1, 0, 1], counts), np.repeat([0, 0, 1, 1], counts))
    return {f"thesis_{k}": m[k] for k in (*COUNTS, *RATES)}


def table2(table: pd.DataFrame, threshold: float, n_boot: int, seed: int, ci: float = 0.95,
           thesis: Mapping | None = None) -> pd.DataFrame:
    """Thesis Table 2: normal vs abnormal per evaluation set at the frozen threshold.

    Columns: set, images, patients, tn, fn, fp, tp, then sensitivity, specificity, npv, ppv,
    auto_normal each with ``_lo``/``_hi``; unknown_films and unknown_called_normal: the set's films
    whose source says neither normal nor abnormal (scored, outside every rate) and how many of them
    fall below the threshold; with ``thesis``, thesis_tn ... thesis_auto_normal (NaN for sets the
    thesis does not report)."""
    ref = _section(thesis, "table2_normal_vs_abnormal")
    rows = []
    labelled = evaluation_sets(table)
    for name, every in evaluation_sets(table, known_only=False).items():
        mask = labelled.get(name, np.zeros(len(table), bool))
        row = {"set": name, **(_screening_row(table[mask], threshold, n_boot, seed, ci) if mask.any() else {"images": 0, "patients": 0})}
        unknown = every & ~mask
        row.update(unknown_films=int(unknown.sum()), unknown_called_normal=int((_score(table[unknown]) < threshold).sum()))
        if ref is not None:
            row.update(thesis_confusion(ref.get(name)))
        rows.append(row)
    return pd.DataFrame(rows)


def with_target(df: pd.DataFrame, target: float) -> pd.DataFrame:
    """``df`` (a :func:`table2`-shaped frame) with the sensitivity ``target`` beside the achieved
    sensitivity and a verdict: ``certified`` (the exact lower bound reaches it), ``point estimate
    only`` (the estimate does, its lower bound does not), ``below target`` or ``n/a``."""
    out = df.copy()
    sens, lo = out["sensitivity"].to_numpy(float), out["sensitivity_lo"].to_numpy(float)
    out["target"] = float(target)
    out["meets_target"] = np.where(~np.isfinite(sens), "n/a", np.where(lo >= target, "certified",
                                   np.where(sens >= target, "point estimate only", "below target")))
    return out


def threshold_table(th: Thresholds) -> pd.DataFrame:
    """Both frozen thresholds and what the validation set certifies at each: rule, threshold,
    validation sensitivity and its exact lower bound, validation share called normal, certified."""
    rows = []
    for rule, t, lo, an in (("point", th.point, th.point_sensitivity_lo, th.val_auto_normal),
                            ("strict", th.strict, th.strict_sensitivity_lo, th.strict_auto_normal)):
        rows.append({"rule": rule, "threshold": float(t), "target": th.target, "val_abnormal_films": th.n_val_abnormal,
                     "val_abnormal_patients": th.n_val_abnormal_patients, "val_sensitivity_lo": float(lo),
                     "val_auto_normal": float(an), "certified": bool(lo >= th.target and (rule == "point" or th.certified))})
    return pd.DataFrame(rows)


def _pipeline_table(v) -> pd.DataFrame:
    return v[0] if isinstance(v, tuple) else v


def table7(pipelines: Mapping[str, tuple[pd.DataFrame, float]], n_boot: int, seed: int, ci: float = 0.95,
           thesis: Mapping | None = None, set_name: str = "internal", reference: str | None = None) -> pd.DataFrame:
    """Thesis Table 7: the same normal/abnormal screening on the internal test set for each pipeline
    (``{"two_class": (scored_table, threshold), "three_class": ...}``), so the value of the
    "others" class shows as a sensitivity gap. Columns as :func:`table2`, with ``pipeline`` first
    (``fn`` of ``tp + fn``: the abnormal films each pipeline calls normal at its own threshold).
    With ``reference`` (a pipeline's name, e.g. ``"three_class"``), also each pipeline's ROC AUC
    (``auc``, ``auc_lo``, ``auc_hi``) and :func:`auc_deltas` against that pipeline: ``is_reference``,
    ``delta_auc`` (e.g. 2-class minus 3-class), ``delta_auc_lo``, ``delta_auc_hi``."""
    ref = _section(thesis, "table7_two_vs_three_class")
    deltas = {} if reference is None else auc_deltas({n: v[0] for n, v in pipelines.items()}, reference, n_boot, seed, ci, set_name)
    rows = []
    for name, (scored, threshold) in pipelines.items():
        mask = evaluation_sets(scored).get(set_name)
        if mask is None:
            continue
        row = {"pipeline": name, "set": set_name, **_screening_row(scored[mask], threshold, n_boot, seed, ci)}
        if reference is not None:
            sub = scored[mask]
            auc = auc_with_ci(sub["abnormal"].to_numpy(int), _score(sub), sub["patient_id"].to_numpy(), n_boot, seed, ci)
            row.update({k: auc[k] for k in ("auc", "auc_lo", "auc_hi")}, **deltas[name])
        if ref is not None:
            row.update(thesis_confusion(ref.get(name)))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- paired comparisons


NO_DELTA = {"is_reference": False, "delta_auc": float("nan"), "delta_auc_lo": float("nan"), "delta_auc_hi": float("nan")}
DELTA_COLUMNS = tuple(NO_DELTA)


def _set_rows(table: pd.DataFrame, set_name: str) -> pd.DataFrame:
    return table[evaluation_sets(table).get(set_name, np.zeros(len(table), bool))]


def matched_films(reference: pd.DataFrame, other: pd.DataFrame, names: tuple[str, str] = ("reference", "other"),
                  set_name: str = "internal") -> pd.DataFrame:
    """``other``'s rows in the order of ``reference``'s films, matched on ``image_id``: the pairing of
    a paired comparison. A ValueError naming both pipelines (``names``) when they scored different
    films, a film twice, or disagree on a film's label or patient."""
    a, b = reference["image_id"].astype(str), other["image_id"].astype(str)
    for name, ids in zip(names, (a, b)):
        if ids.duplicated().any():
            raise ValueError(f"pipeline {name!r} scored {set_name} test films more than once: {sorted(set(ids[ids.duplicated()]))[:3]}")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ValueError(f"pipelines {names[0]!r} and {names[1]!r} scored different {set_name} test films "
                         f"({len(only_a)} only in {names[0]!r}, e.g. {only_a[:3]}; {len(only_b)} only in {names[1]!r}, "
                         f"e.g. {only_b[:3]}): a paired comparison needs the same films; rerun the older pipeline")
    out = other.set_index(b.to_numpy()).loc[a.to_numpy()].reset_index(drop=True)
    for col in ("abnormal", "patient_id"):
        if not np.array_equal(out[col].astype(str).to_numpy(), reference[col].astype(str).to_numpy()):
            raise ValueError(f"pipelines {names[0]!r} and {names[1]!r} disagree on the {col} of the same {set_name} test films")
    return out


def auc_deltas(pipelines: Mapping[str, pd.DataFrame], reference: str | None, n_boot: int, seed: int, ci: float = 0.95,
               set_name: str = "internal") -> dict[str, dict]:
    """Per pipeline (scored tables keyed by name), the :data:`DELTA_COLUMNS`: ``delta_auc`` is its ROC
    AUC minus the ``reference`` pipeline's on evaluation set ``set_name``, with the paired
    patient-bootstrap interval of :func:`scxnn.metrics.paired_auc_delta` over the films both scored
    (:func:`matched_films`). The reference itself gets ``is_reference`` True, delta 0 and no interval.
    When ``reference`` is not among ``pipelines`` every pipeline gets :data:`NO_DELTA`.

    Where the paired bootstrap collapses to one value for two pipelines that score differently (both
    separate every resample perfectly), that would claim certainty from a finite sample: the
    interval is widened to the difference of the two AUCs' own intervals (:func:`_auc_row`, exact
    at 0 and 1), as a single AUC's is."""
    if reference not in pipelines:
        return {n: dict(NO_DELTA) for n in pipelines}
    ref = _set_rows(pipelines[reference], set_name)
    y, g, a = ref["abnormal"].to_numpy(int), ref["patient_id"].to_numpy(), _score(ref)
    out = {}
    for name, scored in pipelines.items():
        if name == reference:
            out[name] = {**NO_DELTA, "is_reference": True, "delta_auc": 0.0}
            continue
        b = _score(matched_films(ref, _set_rows(scored, set_name), (reference, name), set_name))
        d, lo, hi = paired_auc_delta(y, a, b, g, n_boot, seed, ci)
        if lo == hi and not np.array_equal(a, b):
            ra, rb = auc_with_ci(y, a, g, n_boot, seed, ci), auc_with_ci(y, b, g, n_boot, seed, ci)
            lo, hi = min(lo, rb["auc_lo"] - ra["auc_hi"]), max(hi, rb["auc_hi"] - ra["auc_lo"])
        out[name] = {"is_reference": False, "delta_auc": d, "delta_auc_lo": lo, "delta_auc_hi": hi}
    return out


# --------------------------------------------------------------------------- Table 3 / Table 8


def risk_table(table: pd.DataFrame, findings: Mapping[str, str], sets: Sequence[str] = ("internal", "temporal"),
               num_classes: int | None = None, thesis_section: Mapping | None = None) -> pd.DataFrame:
    """Thesis Table 3 / 8 layout: for every positive (image, finding) pair of an evaluation set, that
    finding's own model decides Normal / Target / Others; counts per risk group of the finding. A film
    with two findings counts twice, as in the thesis. "normal" is the dangerous cell: the model that
    should have caught the finding called the film normal.

    Rows: (set, decision) with decision in normal, target[, others] (2-class models: no others).
    Columns: critical, urgent, non_urgent, cardiomegaly, total, and with ``thesis_section`` (keyed by
    set name, e.g. ``thesis["table3_risk_levels"]``) thesis_<group> and thesis_total (NaN where the
    thesis lacks that set). ``num_classes`` defaults to what the logit columns show."""
    k = num_classes or _num_classes(table, findings)
    available = evaluation_sets(table)
    rows = []
    for name in sets:
        if name not in available:
            continue
        sub = table[available[name]]
        counts = np.zeros((k, len(RISK_GROUPS)), dtype=int)
        for finding, risk in findings.items():
            dec = _decisions(sub, finding)[_positive(sub[finding])]
            counts[:, RISK_GROUPS.index(risk)] += np.bincount(dec, minlength=k)[:k]
        ref = thesis_section.get(name) if isinstance(thesis_section, Mapping) else None
        for i, decision in enumerate(DECISIONS[:k]):
            row = {"set": name, "decision": decision, **dict(zip(RISK_GROUPS, counts[i].tolist())),
                   "total": int(counts[i].sum())}
            if thesis_section is not None:
                t = ref.get(decision) if isinstance(ref, Mapping) else None
                vals = [t.get(g, np.nan) if isinstance(t, Mapping) else np.nan for g in RISK_GROUPS]
                row.update({f"thesis_{g}": v for g, v in zip(RISK_GROUPS, vals)})
                row["thesis_total"] = float(np.sum(vals)) if isinstance(t, Mapping) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def missed_share(risk: pd.DataFrame) -> pd.DataFrame:
    """From a :func:`risk_table` result: per set (and pipeline, if present) the share of positive
    (image, finding) pairs whose own model said "normal", per risk group (NaN when a group has no
    positives); the thesis' share beside ours when the risk table has thesis columns."""
    keys = [c for c in ("pipeline", "set") if c in risk]
    groups = [*RISK_GROUPS, "total"]
    rows = []
    for key, part in risk.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        normal = part[part["decision"] == "normal"]
        for prefix in ("", "thesis_"):
            if f"{prefix}total" not in part:
                continue
            for g in groups:
                col = part[f"{prefix}{g}"]
                den = col.sum() if col.notna().all() else np.nan  # a missing thesis cell: no share
                num = normal[f"{prefix}{g}"].sum()
                row[f"{prefix}{g}"] = float(num / den) if den > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def table3(table: pd.DataFrame, findings: Mapping[str, str], thesis: Mapping | None = None,
           sets: Sequence[str] = ("internal", "temporal")) -> pd.DataFrame:
    """Thesis Table 3: :func:`risk_table` on the internal and temporal test sets (a dataset with
    neither, e.g. Kermany, gets its own test sets)."""
    if not set(sets) & set(evaluation_sets(table)):
        sets = tuple(evaluation_sets(table))
    return risk_table(table, findings, sets, thesis_section=_section(thesis, "table3_risk_levels"))


def table8(pipelines: Mapping[str, pd.DataFrame | tuple[pd.DataFrame, float]], findings: Mapping[str, str],
           thesis: Mapping | None = None, set_name: str = "internal") -> pd.DataFrame:
    """Thesis Table 8: :func:`risk_table` on the internal test set per pipeline (values: a scored
    table or the ``(table, threshold)`` pairs of :func:`table7`); column ``pipeline`` first."""
    ref = _section(thesis, "table8_two_vs_three_class_risk")
    parts = []
    for name, v in pipelines.items():
        section = None if ref is None else {set_name: ref.get(name)}
        part = risk_table(_pipeline_table(v), findings, (set_name,), thesis_section=section)
        parts.append(part.assign(pipeline=name)[["pipeline", *part.columns]])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# --------------------------------------------------------------------------- Table 9


def table9(table: pd.DataFrame, findings: Sequence[str], unseen: Sequence[str],
           thesis: Mapping | None = None) -> pd.DataFrame:
    """Thesis Table 9: how each of the 13 models sees findings it was never trained on. For every
    model (rows, in ``findings`` order) and unseen finding u, among test-split films with u == 1:
    ``u_n`` and the shares the model calls ``u_normal`` / ``u_target`` / ``u_others`` (no others
    for 2-class models; shares NaN when u_n == 0). With ``thesis``: ``thesis_u_normal`` ... from the
    thesis' [normal, target, others] lists (printed values; some thesis rows do not sum to 1)."""
    ref = _section(thesis, "table9_unseen_findings")
    test = table[(table["split"] == "test").to_numpy()]
    rows = []
    for finding in findings:
        names = _class_names(table, finding)
        dec = _decisions(test, finding)
        row: dict = {"finding": finding}
        for u in unseen:
            pos = _positive(test[u]) if u in test else np.zeros(len(test), dtype=bool)
            n = int(pos.sum())
            row[f"{u}_n"] = n
            shares = np.bincount(dec[pos], minlength=len(names))[:len(names)] / n if n else [np.nan] * len(names)
            row.update({f"{u}_{c}": float(s) for c, s in zip(names, shares)})
            if ref is not None:
                t = (ref.get(finding) or {}).get(u) if isinstance(ref.get(finding), Mapping) else None
                t = list(t) if isinstance(t, (list, tuple)) and len(t) == 3 else [np.nan] * 3
                row.update({f"thesis_{u}_{c}": float(v) for c, v in zip(DECISIONS, t)})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- ROC AUC


def target_probability(table: pd.DataFrame, finding: str) -> np.ndarray:
    """P(target) from one model's logits, the ranking score of its target-vs-rest ROC."""
    logits = table[[f"{finding}__{n}" for n in _class_names(table, finding)]].to_numpy(float)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z[:, 1] / z.sum(axis=1)


def auc_per_finding(table: pd.DataFrame, findings: Sequence[str], n_boot: int, seed: int,
                    ci: float = 0.95) -> pd.DataFrame:
    """Each finding model's ROC AUC, target vs not-target (normal films and other findings alike),
    ranked by the softmax probability of its target class, on the internal test set; when that set
    has no positive for the finding, on all test rows (column ``scope``: internal / all_test). Rows
    with an unknown (NA) label are dropped. Columns: finding, scope, n_pos, n_neg, auc, auc_lo,
    auc_hi (patient bootstrap; NaN when a class is missing)."""
    test = (table["split"] == "test").to_numpy()
    internal = test & (table["site"] == "internal").to_numpy()
    rows = []
    for finding in findings:
        known = table[finding].notna().to_numpy()
        scope, mask = "internal", internal & known
        if not _positive(table.loc[mask, finding]).any():
            scope, mask = "all_test", test & known
        sub = table[mask]
        y = _positive(sub[finding]).astype(int)
        rows.append({"finding": finding, "scope": scope,
                     **auc_with_ci(y, target_probability(sub, finding), sub["patient_id"].to_numpy(), n_boot, seed, ci)})
    return pd.DataFrame(rows)


def svm_auc(table: pd.DataFrame, n_boot: int, seed: int, ci: float = 0.95) -> pd.DataFrame:
    """ROC AUC of the SVM score, abnormal vs normal, per evaluation set: threshold-free, so it tells
    a weak ranking apart from a badly placed threshold. Columns: set, n_pos, n_neg, auc, auc_lo, auc_hi."""
    rows = []
    for name, mask in evaluation_sets(table).items():
        sub = table[mask]
        rows.append({"set": name, **auc_with_ci(sub["abnormal"].to_numpy(int), _score(sub),
                                             sub["patient_id"].to_numpy(), n_boot, seed, ci)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- missed abnormal films


def worst_risk(table: pd.DataFrame, findings: Mapping[str, str], unseen: Sequence[str]) -> np.ndarray:
    """Per film, its most urgent risk group (critical > urgent > non_urgent > cardiomegaly), "unseen"
    when it has only unseen findings, "unknown" when none is marked present, "" for normal films."""
    out = np.full(len(table), "", dtype=object)
    unseen_cols = [u for u in unseen if u in table]
    any_unseen = np.column_stack([_positive(table[u]) for u in unseen_cols]).any(axis=1) if unseen_cols \
        else np.zeros(len(table), dtype=bool)
    out[(table["abnormal"] == 1).fillna(False).to_numpy(dtype=bool)] = UNKNOWN
    out[any_unseen] = UNSEEN
    for group in reversed(RISK_GROUPS):  # most urgent last, so it wins
        cols = [f for f, r in findings.items() if r == group and f in table]
        if cols:
            out[np.column_stack([_positive(table[f]) for f in cols]).any(axis=1)] = group
    return out


def _present(table: pd.DataFrame, names: Sequence[str]) -> list[str]:
    cols = [n for n in names if n in table]
    flags = np.column_stack([_positive(table[c]) for c in cols]) if cols else np.zeros((len(table), 0), bool)
    named = [[c for c, f in zip(cols, row) if f] for row in flags]
    # The source's findings that no column maps (e.g. NIH's Emphysema) name what a reviewer looks for.
    other = table["other_findings"].fillna("").astype(str) if "other_findings" in table else [""] * len(table)
    return [", ".join([*n, *[o for o in extra.split("|") if o]]) for n, extra in zip(named, other)]


def _labelled_sets(table: pd.DataFrame) -> pd.DataFrame:
    """The evaluation-set rows with a ``set`` column (each test film belongs to exactly one set)."""
    parts = [table[m].assign(set=name) for name, m in evaluation_sets(table).items()]
    return pd.concat(parts) if parts else table.iloc[:0].assign(set=pd.Series(dtype=str))


def missed_cases(table: pd.DataFrame, threshold: float, findings: Mapping[str, str],
                 unseen: Sequence[str]) -> pd.DataFrame:
    """Abnormal films of the evaluation sets that the pipeline would auto-report as normal
    (score < threshold): the errors a radiologist would never see, for case review. Columns:
    image_id, patient_id, set, score, findings (comma list, unseen included), worst_risk; sorted
    most urgent first, then by set and score."""
    ev = _labelled_sets(table)
    missed = ev[(ev["abnormal"].to_numpy(int) == 1) & (_score(ev) < threshold)]
    out = pd.DataFrame({
        "image_id": missed["image_id"].to_numpy(), "patient_id": missed["patient_id"].to_numpy(),
        "set": missed["set"].to_numpy(), "score": _score(missed),
        "findings": _present(missed, [*findings, *unseen]), "worst_risk": worst_risk(missed, findings, unseen),
    })
    set_rank = {s: i for i, s in enumerate(evaluation_sets(table))}
    order = np.lexsort((out["score"].to_numpy(), out["set"].map(set_rank).to_numpy(),
                        out["worst_risk"].map(RISK_RANK.index).to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def missed_by_risk(table: pd.DataFrame, threshold: float, findings: Mapping[str, str],
                   unseen: Sequence[str]) -> pd.DataFrame:
    """Per evaluation set and worst risk group (each abnormal film counted once, under its most
    urgent finding, as in :func:`missed_cases`), plus "all": abnormal films, missed (score <
    threshold) and miss_rate (NaN when the group has no films)."""
    ev = _labelled_sets(table)
    ab = ev[ev["abnormal"].to_numpy(int) == 1]
    risk, miss = worst_risk(ab, findings, unseen), _score(ab) < threshold
    groups = [*RISK_GROUPS, UNSEEN] + ([UNKNOWN] if (risk == UNKNOWN).any() else [])
    rows = []
    for name in evaluation_sets(table):
        in_set = (ab["set"] == name).to_numpy()
        for g in (*groups, "all"):
            sel = in_set & (risk == g if g != "all" else True)
            n, k = int(sel.sum()), int((sel & miss).sum())
            rows.append({"set": name, "risk": g, "abnormal": n, "missed": k, "miss_rate": k / n if n else np.nan})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- operating curve


def yield_curve(table: pd.DataFrame, val_scores: pd.DataFrame, targets: Iterable[float], n_boot: int = 200,
                seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """The operating curve "sensitivity target -> share of films auto-reported normal". For each
    target, two thresholds are chosen on the validation scores only: ``point`` (validation
    sensitivity reaches the target, :func:`point_threshold`) and, when ``val_scores`` has
    ``patient_id``, ``certified`` (its exact lower ``ci`` bound does,
    :func:`scxnn.ensemble.certified_threshold`; below every score when the validation set cannot
    certify the target). Each is applied to the validation films (set "validation") and to each
    evaluation set. Columns: target, rule, threshold, set, images, sensitivity, specificity,
    auto_normal. ``val_scores`` needs columns score and abnormal (out-of-fold scores from step 03,
    so the curve is not tuned to the SVM's own fit)."""
    vs, vy = val_scores["score"].to_numpy(float), val_scores["abnormal"].to_numpy(int)
    vp = val_scores["patient_id"].to_numpy() if "patient_id" in val_scores else None
    sets = {"validation": (vs, vy)}
    sets.update({name: (_score(table[m]), table.loc[m, "abnormal"].to_numpy(int))
                 for name, m in evaluation_sets(table).items()})
    rows = []
    for target in targets:
        rules = {"point": point_threshold(vs, vy, float(target))}
        if vp is not None and float(target) < 1.0:
            rules["certified"] = certified_threshold(vs, vy, vp, float(target), n_boot, seed, ci)[0]
        for rule, t in rules.items():
            for name, (s, y) in sets.items():
                m = screening_metrics(y, s >= t)
                rows.append({"target": float(target), "rule": rule, "threshold": t, "set": name, "images": len(y),
                             **{k: m[k] for k in ("sensitivity", "specificity", "auto_normal")}})
    return pd.DataFrame(rows)


def threshold_stability(table: pd.DataFrame, val_scores: pd.DataFrame, target: float, n_boot: int, seed: int,
                        ci: float = 0.95) -> pd.DataFrame:
    """How much the definite-normal point depends on which validation films happened to be drawn.

    The ``point`` threshold (validation sensitivity >= ``target``, :func:`point_threshold`) is chosen
    again on ``n_boot`` patient resamples of the validation films (``val_scores``: score, abnormal,
    patient_id) and applied to every evaluation set. Per set (and "validation" itself): the
    sensitivity and the share auto-reported normal at the run's own threshold, and ``_range_low`` /
    ``_range_high``, the central ``ci`` range of the same over the re-chosen thresholds (the
    threshold's own range too). This is a spread due to the threshold's choice, not a confidence
    interval of the rates, so it is not named like one (``_lo``/``_hi``) and may have no width. With about 100 abnormal validation films a 99% point sits on
    the single hardest one, and the range shows how far that moves sensitivity on unseen films."""
    vs, vy = val_scores["score"].to_numpy(float), val_scores["abnormal"].to_numpy(int)
    vp = val_scores["patient_id"].to_numpy()
    sets = {"validation": (vs, vy)}
    sets.update({name: (_score(table[m]), table.loc[m, "abnormal"].to_numpy(int)) for name, m in evaluation_sets(table).items()})
    t0 = point_threshold(vs, vy, target)

    def rates(t: float) -> dict:
        out = {"threshold": t}
        for name, (sc, y) in sets.items():
            m = screening_metrics(y, sc >= t)
            out[f"{name}|sensitivity"], out[f"{name}|auto_normal"] = m["sensitivity"], m["auto_normal"]
        return out

    def resample(idx: np.ndarray) -> dict:
        # A resample with one class only cannot choose a threshold; it is left out (small validation sets).
        return rates(point_threshold(vs[idx], vy[idx], target)) if 0 < vy[idx].sum() < len(idx) else {}

    spread = patient_bootstrap(vp, resample, n_boot, seed, ci)
    at = rates(t0)
    rows = []
    for name, (_, y) in sets.items():
        row = {"set": name, "images": len(y), "abnormal": int(y.sum()), "target": target, "threshold": t0,
               "threshold_range_low": spread["threshold"][0], "threshold_range_high": spread["threshold"][1]}
        for k in ("sensitivity", "auto_normal"):
            row[k] = at[f"{name}|{k}"]
            row[f"{k}_range_low"], row[f"{k}_range_high"] = spread[f"{name}|{k}"]
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- batch-level shift


def batch_shift_rates(table: pd.DataFrame, gate, batch_sizes: Sequence[int], max_share: float, alpha: float,
                      draws: int = 200, seed: int = 0) -> pd.DataFrame:
    """How often the batch-level shift rule of ``scxnn predict`` (:func:`scxnn.ood.batch_shift`,
    reference: the gate's validation films) calls a batch out of distribution, per evaluation set:
    ``draws`` random batches of each size drawn from the set's films (without replacement), and
    the whole set as one batch (``batch_size`` = its size, one draw). On an in-distribution set
    (the internal test split) this is the rule's false-alarm rate; on a shifted site, its
    detection rate. Needs the per-film ``ood_score`` of step 03. Columns: set, batch_size,
    batches, shifted (share of batches called out of distribution), flagged_share (films flagged
    by the per-film gate, over the whole set)."""
    if "ood_score" not in table:
        raise KeyError("the table has no 'ood_score' column (step 03 of this scxnn version writes it)")
    rng = np.random.default_rng(seed)
    ref_share, n_ref = 1.0 - gate.quantile, gate.n_val
    rows = []
    for name, mask in evaluation_sets(table, known_only=False).items():
        flags = ~(table.loc[mask, "ood_score"].to_numpy(float) <= gate.threshold)
        n = len(flags)
        for size in [b for b in batch_sizes if b < n] + [n]:
            k = 1 if size == n else draws
            hits = sum(ood.batch_shift(flags[rng.choice(n, size, replace=False)] if size < n else flags,
                                       ref_share, n_ref, max_share, alpha).shifted for _ in range(k))
            rows.append({"set": name, "batch_size": int(size), "batches": k, "shifted": hits / k,
                         "flagged_share": float(flags.mean())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- calibration


def platt(val_scores: pd.DataFrame) -> LogisticRegression:
    """Platt scaling of the SVM score, fitted on validation only. Platt's smoothed targets
    ((N+ + 1)/(N+ + 2) and 1/(N- + 2)), encoded as two weighted copies of each film, keep the fit
    finite when the validation films are perfectly separated (small sets)."""
    s = val_scores["score"].to_numpy(float)
    y = val_scores["abnormal"].to_numpy(int)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if not n_pos or not n_neg:
        raise ValueError("Platt scaling needs normal and abnormal validation films")
    soft = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    X = np.r_[s, s][:, None]
    labels = np.r_[np.ones(len(s), int), np.zeros(len(s), int)]
    return LogisticRegression(C=np.inf).fit(X, labels, sample_weight=np.r_[soft, 1 - soft])


def calibration(val_scores: pd.DataFrame, table: pd.DataFrame, n_bins: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How far the SVM score, turned into P(abnormal) by :func:`platt` on validation, can be read as
    a probability on each evaluation set. Returns ``(bins, brier)``:

    - bins: set, bin, bin_lo, bin_hi, count, mean_predicted, observed (abnormal fraction); equal-width
      bins of the predicted probability, empty bins left out (a reliability diagram's points);
    - brier: set, images, abnormal_rate, brier (mean squared error of the probability)."""
    model = platt(val_scores)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins, brier = [], []
    for name, mask in evaluation_sets(table).items():
        sub = table[mask]
        p = model.predict_proba(_score(sub)[:, None])[:, 1]
        y = sub["abnormal"].to_numpy(int)
        brier.append({"set": name, "images": len(y), "abnormal_rate": float(y.mean()),
                      "brier": float(np.mean((p - y) ** 2))})
        which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
        for b in np.unique(which):
            sel = which == b
            bins.append({"set": name, "bin": int(b), "bin_lo": edges[b], "bin_hi": edges[b + 1], "count": int(sel.sum()),
                         "mean_predicted": float(p[sel].mean()), "observed": float(y[sel].mean())})
    return pd.DataFrame(bins), pd.DataFrame(brier)


# --------------------------------------------------------------------------- display


def format_ci(df: pd.DataFrame, rates: Sequence[str] = RATES, digits: int = 3) -> pd.DataFrame:
    """A display copy where each ``x, x_lo, x_hi`` becomes one string column ``"0.970 [0.930, 1.000]"``
    (for Markdown), bounds rounded outward (:func:`outward`); NaN shows as "n/a". Rates without
    ``_lo``/``_hi`` columns (the thesis') are formatted alone; rates absent from ``df`` are ignored.
    Keep the numeric frame for CSV. Each cell is :func:`scxnn.metrics.fmt_ci`."""
    out = df.copy()
    for r in rates:
        if r not in out:
            continue
        if f"{r}_lo" in out and f"{r}_hi" in out:
            out[r] = [fmt_ci(v, lo, hi, digits) for v, lo, hi in zip(df[r], df[f"{r}_lo"], df[f"{r}_hi"])]
            out = out.drop(columns=[f"{r}_lo", f"{r}_hi"])
        else:
            out[r] = [fmt_num(v, digits) for v in df[r]]
    return out


# --------------------------------------------------------------------------- published results


PUBLISHED_METRICS = ("accuracy", "sensitivity", "specificity", "auc")


def published_comparison(table: pd.DataFrame, threshold: float, published: Mapping[str, Mapping[str, float]],
                         n_boot: int, seed: int, ci: float = 0.95) -> pd.DataFrame:
    """Our normal-vs-abnormal results per test set beside published ones on the same data (e.g.
    Kermany et al. 2018): ROC AUC, and accuracy, sensitivity, specificity and the share auto-reported
    normal at two operating points, each with a 95% patient-bootstrap CI. ``definite_normal`` is
    the validation-chosen threshold of the method (sensitivity target, e.g. 0.99); ``svm_boundary``
    is the SVM's own boundary (score 0), a balanced point like most published ones. Published
    papers used their own splits, so compare with care. One row per (set, operating point), then
    one row per publication with its reported numbers."""
    rows = []
    for name, mask in evaluation_sets(table).items():
        sub = table[mask]
        y, s, pid = sub["abnormal"].to_numpy(int), _score(sub), sub["patient_id"].to_numpy()
        auc = auc_with_ci(y, s, pid, n_boot, seed, ci)
        for point, t in (("definite_normal", threshold), ("svm_boundary", 0.0)):
            pred = (s >= t).astype(int)
            m = screening_with_ci(y, pred, pid, n_boot, seed, ci)
            right = y == pred
            boot = None
            if 0 < right.sum() < len(right):
                boot = patient_bootstrap(pid, lambda idx: {"accuracy": float(right[idx].mean())}, n_boot, seed, ci)["accuracy"]
            acc_lo, acc_hi = proportion_ci(right, pid, ci, boot)
            row = {"source": "ours", "set": name, "operating_point": point, "threshold": float(t), "images": len(sub),
                   "patients": int(pd.Series(pid).nunique()), "auc": auc["auc"], "auc_lo": auc["auc_lo"], "auc_hi": auc["auc_hi"],
                   "accuracy": float((y == pred).mean()), "accuracy_lo": acc_lo, "accuracy_hi": acc_hi}
            for r in ("sensitivity", "specificity", "auto_normal"):
                row.update({r: m[r], f"{r}_lo": m[f"{r}_lo"], f"{r}_hi": m[f"{r}_hi"]})
            rows.append(row)
    for source, metrics in published.items():
        rows.append({"source": source, **{k: float(metrics[k]) for k in PUBLISHED_METRICS if k in metrics}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- unseen findings, headlines


def unseen_screening(table: pd.DataFrame, threshold: float, unseen: Sequence[str], n_boot: int, seed: int,
                     ci: float = 0.95) -> pd.DataFrame:
    """How the whole pipeline treats findings it never trained on: per unseen finding (test films
    with it), how many the SVM auto-reports normal, and the sensitivity with its patient-bootstrap
    interval. The thesis reports only per-model shares (Table 9); this is the safety question."""
    test = table[table["split"] == "test"]
    rows = []
    for u in (u for u in unseen if u in test):
        sub = test[_positive(test[u])]
        if sub.empty:
            continue
        y = np.ones(len(sub), dtype=int)
        pred = (_score(sub) >= threshold).astype(int)
        m = screening_with_ci(y, pred, sub["patient_id"].to_numpy(), n_boot, seed, ci)
        rows.append({"finding": u, "images": len(sub), "auto_normal": int(m["fn"]), "sensitivity": m["sensitivity"],
                     "sensitivity_lo": m["sensitivity_lo"], "sensitivity_hi": m["sensitivity_hi"]})
    return pd.DataFrame(rows, columns=["finding", "images", "auto_normal", "sensitivity", "sensitivity_lo", "sensitivity_hi"])


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"


def _ci(row: Mapping, k: str) -> str:
    return fmt_ci(row.get(k), row.get(f"{k}_lo"), row.get(f"{k}_hi"))


def main_set(df: pd.DataFrame) -> str:
    """The set a result frame's headline is about (:func:`scxnn.data.main_site` over its ``set`` column)."""
    return main_site(df["set"])


def screening_headline(df: pd.DataFrame, set_name: str | None = None, label: str | None = None) -> tuple[str, str | None]:
    """(ours, thesis) one-liners for the index from a :func:`table2`/:func:`table7`-shaped frame,
    about ``set_name`` (default: :func:`main_set`)."""
    if set_name is None:
        set_name = main_set(df) if "set" in df and len(df) else MAIN_SITE
    rows = df[df["set"] == set_name] if "set" in df else df
    if rows.empty:
        return f"{set_name}: no films", None
    r = rows.iloc[0].to_dict()
    name = label or set_name
    ours = (f"{name}: sensitivity {_ci(r, 'sensitivity')}, specificity {_ci(r, 'specificity')}, "
            f"auto-normal {_pct(r.get('auto_normal', np.nan))}")
    theirs = None
    if np.isfinite(r.get("thesis_sensitivity", np.nan)):
        theirs = (f"sensitivity {r['thesis_sensitivity']:.3f}, specificity {r['thesis_specificity']:.3f}, "
                  f"auto-normal {_pct(r.get('thesis_auto_normal', np.nan))}")
    return ours, theirs
