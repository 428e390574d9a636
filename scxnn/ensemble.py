"""The second classifier (thesis §3.3.3-3.3.4): an SVM over the 13 models' 3 logits each that
separates normal from abnormal films, and the definite-normal operating point.

The SVM is a scikit-learn ``Pipeline`` (StandardScaler, SVC). Its ``decision_function`` grows with
abnormality; a film is reported *definitely normal* when the score is below the threshold. The
threshold is chosen on validation data only (:func:`choose_thresholds`) and frozen before any test
set is scored. Fitted ensembles are stored with skops, never pickle, and loading refuses any type
outside a small allow-list (:func:`load`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from scxnn import ood
from scxnn.config import RESOLVED_NAME, load_resolved
from scxnn.data import MANIFEST_NAME, abnormal_labels, read_manifest
from scxnn.hardware import resolve_device
from scxnn.inference import films_to_score, finding_scores
from scxnn.metrics import certifiable_with, fmt_num, patient_bootstrap, proportion_ci, screening_metrics
from scxnn.pixels import cache_dir
from scxnn.utils import atomic_open, atomic_write_bytes, atomic_write_text, log

ENSEMBLE_NAME = "svm.skops"
THRESHOLDS_NAME = "thresholds.json"
# Every type that `save` writes for a DefiniteNormalSVM, and nothing else. skops trusts any
# scikit-learn estimator by default, so its own audit would let a LogisticRegression stand in for
# the SVM: `load` checks each object of a file against this list before building any.
TRUSTED_TYPES = [
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
    "numpy.float64",
    "numpy.ndarray",
    "scxnn.ensemble.DefiniteNormalSVM",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.svm._classes.SVC",
]
# How skops stores those types. Function, method and reduce nodes, which call code while loading,
# never occur in an ensemble file.
TRUSTED_LOADERS = frozenset({"ObjectNode", "DictNode", "ListNode", "TupleNode", "JsonNode", "TypeNode", "NdArrayNode"})
PIPELINE_STEPS = (("scale", StandardScaler), ("svm", SVC))


def logit_columns(findings: Sequence[str], num_classes: int = 3) -> list[str]:
    names = ("normal", "target", "others")[:num_classes]
    return [f"{f}__{n}" for f in findings for n in names]


class DefiniteNormalSVM(ClassifierMixin, BaseEstimator):
    """StandardScaler + SVC over the logits table; ``y`` is 1 for abnormal, 0 for normal."""

    def __init__(self, kernel: str = "rbf", C: float = 1.0, class_weight: str | None = "balanced", random_state: int = 0):
        self.kernel = kernel
        self.C = C
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y):
        y = np.asarray(y, dtype=int)
        if set(np.unique(y)) != {0, 1}:
            raise ValueError(f"the SVM needs both normal (0) and abnormal (1) films to fit, got classes {sorted(set(y))}")
        self.pipeline_ = Pipeline([
            ("scale", StandardScaler()),
            ("svm", SVC(kernel=self.kernel, C=self.C, class_weight=self.class_weight, random_state=self.random_state)),
        ]).fit(np.asarray(X, dtype=float), y)
        self.classes_ = self.pipeline_.classes_
        self.n_features_in_ = self.pipeline_.n_features_in_
        return self

    def decision_function(self, X) -> np.ndarray:
        """Larger = more abnormal."""
        return self.pipeline_.decision_function(np.asarray(X, dtype=float))

    def predict(self, X) -> np.ndarray:
        return self.pipeline_.predict(np.asarray(X, dtype=float))


@dataclass(frozen=True)
class Thresholds:
    """Definite-normal cut-offs on the SVM score, chosen on validation data.

    ``point`` keeps the validation sensitivity at the target; a point estimate, so on new films the
    sensitivity can fall below it (it did on held-out Kermany patients). ``strict`` is the highest
    threshold at which the exact lower ``ci`` bound of the validation sensitivity
    (:func:`scxnn.metrics.proportion_ci`) reaches the target: what the validation set *certifies*.
    When no threshold above "call nothing normal" certifies it, ``certified`` is False, ``strict``
    lies below every score, and ``abnormal_needed`` says how many abnormal validation patients
    (none missed) certifying the target would take. Files from before these fields load with
    ``certified = False``: an uncertified run never reports ``definite_normal`` (see ``scxnn predict``)."""

    point: float  # validation sensitivity >= target
    strict: float  # exact lower ci bound of validation sensitivity >= target (below every score when not certified)
    target: float
    n_val: int
    val_sensitivity: float
    val_auto_normal: float
    scores: str = "validation"  # which validation scores chose them (out-of-fold, in-sample)
    ci: float = 0.95
    n_val_abnormal: int = 0  # abnormal validation films
    n_val_abnormal_patients: int = 0
    point_sensitivity_lo: float = float("nan")  # what the validation set certifies at the point threshold
    strict_sensitivity_lo: float = float("nan")
    strict_auto_normal: float = float("nan")  # validation share called normal at strict
    certified: bool = False  # strict calls some film normal and its lower bound reaches the target
    abnormal_needed: int = 0  # abnormal patients, none missed, that certifying the target takes (-1: no finite number)

    def describe(self) -> str:
        """One or two sentences for logs, captions and reports: what the validation set certifies."""
        pt = (f"point threshold {self.point:.4f}: validation sensitivity {self.val_sensitivity:.3f}, "
              f"certified >= {fmt_num(self.point_sensitivity_lo, rounding='down')} (exact {self.ci:.0%} lower bound, "
              f"{self.n_val_abnormal} abnormal films of {self.n_val_abnormal_patients} patients)")
        if self.certified:
            return (f"{pt}; strict threshold {self.strict:.4f} certifies sensitivity >= {self.target:.0%} "
                    f"(lower bound {fmt_num(self.strict_sensitivity_lo, rounding='down')}), auto-normal {self.strict_auto_normal:.1%} of validation films")
        if self.abnormal_needed < 0:
            return f"{pt}; no finite validation set certifies {self.target:.0%}: strict calls nothing normal"
        return (f"{pt}; no threshold certifies {self.target:.0%}: strict calls nothing normal. Certifying it takes "
                f"at least {self.abnormal_needed} abnormal validation patients without a miss "
                f"({max(self.abnormal_needed - self.n_val_abnormal_patients, 0)} more than here)")


def threshold_candidates(scores: Sequence[float], abnormal: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, labels, candidate thresholds): the midpoints between sorted validation scores, plus
    one below and one above them. Both thresholds and the yield curve choose among these."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(abnormal, dtype=int)
    if y.sum() == 0 or (1 - y).sum() == 0:
        raise ValueError("threshold selection needs normal and abnormal validation films")
    uniq = np.unique(s[np.isfinite(s)])
    return s, y, np.r_[uniq[0] - 1.0, (uniq[:-1] + uniq[1:]) / 2, uniq[-1] + 1.0]


def point_threshold(scores: Sequence[float], abnormal: Sequence[int], target: float) -> float:
    """The highest threshold whose validation sensitivity reaches ``target`` (films scoring below it
    are called normal): the ``point`` threshold of :func:`choose_thresholds`, and of each target of
    the yield curve. ``cands[0]`` always qualifies: nothing is called normal."""
    s, y, cands = threshold_candidates(scores, abnormal)
    pos = np.sort(s[y == 1])
    tp = len(pos) - np.searchsorted(pos, cands, side="left")  # abnormal films with score >= t
    return float(cands[tp / len(pos) >= target].max())


def sensitivity_bound(scores: np.ndarray, patients: np.ndarray, threshold: float, n_boot: int, seed: int,
                      ci: float = 0.95) -> float:
    """Exact-where-it-matters lower ``ci`` bound of the sensitivity at ``threshold`` over these
    *abnormal* films (score >= threshold is a catch): :func:`scxnn.metrics.proportion_ci`."""
    caught = np.asarray(scores, dtype=float) >= threshold
    g = np.asarray(patients)
    boot = None
    if 0 < caught.sum() < len(caught):
        boot = patient_bootstrap(g, lambda idx: {"s": float(caught[idx].mean())}, n_boot, seed, ci)["s"]
    return proportion_ci(caught, g, ci, boot)[0]


def certified_threshold(scores: Sequence[float], abnormal: Sequence[int], patients: Sequence, target: float,
                        n_boot: int, seed: int, ci: float = 0.95) -> tuple[float, float, bool]:
    """(threshold, lower bound there, certified): the highest candidate threshold whose exact lower
    ``ci`` bound of sensitivity (:func:`sensitivity_bound`) reaches ``target``. Not certified when
    only the threshold below every score ("nothing is normal") remains; that one is returned. The
    run's ``strict`` threshold and a site certificate (``scxnn certify``) both come from here."""
    s, y, cands = threshold_candidates(scores, abnormal)
    g = np.asarray(patients)
    pos, gpos = s[y == 1], g[y == 1]
    for t in cands[::-1]:
        # The bound never exceeds its exact part, so most candidates need no bootstrap.
        if proportion_ci(pos >= t, gpos, ci)[0] < target:
            continue
        lo = sensitivity_bound(pos, gpos, t, n_boot, seed, ci)
        if lo >= target:
            return float(t), float(lo), bool(t > cands[0])
    t = float(cands[0])
    return t, float(sensitivity_bound(pos, gpos, t, n_boot, seed, ci)), False


def choose_thresholds(scores: Sequence[float], abnormal: Sequence[int], patients: Sequence, target: float, n_boot: int, seed: int, ci: float = 0.95) -> Thresholds:
    """The ``point`` threshold (highest whose validation sensitivity reaches ``target``; films
    scoring below it are called normal) and the ``strict`` one that the validation set certifies
    (:func:`certified_threshold`), with what each certifies. Candidates are the midpoints between
    sorted validation scores."""
    s, y, _ = threshold_candidates(scores, abnormal)
    g = np.asarray(patients)
    pos = s[y == 1]
    point = point_threshold(s, y, target)
    strict, strict_lo, certified = certified_threshold(s, y, g, target, n_boot, seed, ci)
    m = screening_metrics(y, s >= point)
    return Thresholds(point=point, strict=strict, target=target, n_val=len(y), val_sensitivity=m["sensitivity"],
                      val_auto_normal=m["auto_normal"], ci=ci, n_val_abnormal=int(y.sum()),
                      n_val_abnormal_patients=int(len(np.unique(g[y == 1]))),
                      point_sensitivity_lo=sensitivity_bound(pos, g[y == 1], point, n_boot, seed, ci),
                      strict_sensitivity_lo=strict_lo, strict_auto_normal=float((s < strict).mean()),
                      certified=certified, abnormal_needed=certifiable_with(target, ci) if target < 1 else -1)


def save(model: DefiniteNormalSVM, thresholds: Thresholds, out_dir: str | os.PathLike) -> Path:
    import skops.io as sio

    out = Path(out_dir)
    atomic_write_bytes(out / ENSEMBLE_NAME, sio.dumps(model))
    atomic_write_text(out / THRESHOLDS_NAME, json.dumps(asdict(thresholds), indent=1))
    return out / ENSEMBLE_NAME


def load(out_dir: str | os.PathLike) -> tuple[DefiniteNormalSVM, Thresholds]:
    """Load a saved ensemble. Each object in the file must be of a type in :data:`TRUSTED_TYPES`
    (checked before any is built), and the result must be what :func:`save` writes
    (:func:`check_ensemble`, over the findings x classes of the folder's resolved config when it has
    one); anything else is a ValueError naming the file and what it holds."""
    import skops.io as sio

    out = Path(out_dir)
    path = out / ENSEMBLE_NAME
    blob = path.read_bytes()
    untrusted = _untrusted_objects(blob, path)
    if untrusted:
        raise _not_an_ensemble(path, f"untrusted {', '.join(untrusted)}")
    model = sio.loads(blob, trusted=TRUSTED_TYPES)
    check_ensemble(model, path, _expected_features(out))
    return model, load_thresholds(out)


def _not_an_ensemble(path: Path, found: str) -> ValueError:
    return ValueError(f"{path} is not an SCXNN ensemble: found {found}; re-run `make ensemble`")


def _untrusted_objects(blob: bytes, path: Path) -> list[str]:
    """The objects of a skops file outside :data:`TRUSTED_TYPES`, read from its schema alone."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            schema = json.loads(z.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise _not_an_ensemble(path, f"bytes that are not a skops archive ({type(e).__name__}: {e})") from None
    bad, todo = set(), [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "__class__" in node or "__loader__" in node:
                name, loader = f"{node.get('__module__')}.{node.get('__class__')}", node.get("__loader__")
                if name not in TRUSTED_TYPES:
                    bad.add(name)
                elif loader not in TRUSTED_LOADERS:
                    bad.add(f"{name} stored as {loader}")
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return sorted(bad)


def _expected_features(out: Path) -> int | None:
    if not (out / RESOLVED_NAME).is_file():
        return None
    cfg = load_resolved(out / RESOLVED_NAME)
    return len(cfg.findings) * cfg.model.num_classes


def check_ensemble(model, path: str | os.PathLike, n_features: int | None = None) -> None:
    """Raise a ValueError unless ``model`` is what :func:`save` writes: a DefiniteNormalSVM whose
    pipeline is exactly :data:`PIPELINE_STEPS`, its SVC fitted to normal (0) and abnormal (1) films
    over ``n_features`` logits (any number when None)."""
    path = Path(path)
    if type(model) is not DefiniteNormalSVM:
        raise _not_an_ensemble(path, f"a {type(model).__name__}")
    pipe = getattr(model, "pipeline_", None)
    steps = getattr(pipe, "steps", None) if type(pipe) is Pipeline else None
    kinds = [(s[0], type(s[1])) if isinstance(s, tuple) and len(s) == 2 else ("?", type(s)) for s in steps or ()]
    if kinds != list(PIPELINE_STEPS):
        what = ", ".join(f"{n}={t.__name__}" for n, t in kinds) if steps else f"a {type(pipe).__name__}"
        want = ", ".join(f"{n}={t.__name__}" for n, t in PIPELINE_STEPS)
        raise _not_an_ensemble(path, f"a DefiniteNormalSVM whose pipeline is [{what}], expected [{want}]")
    scaler, svm = pipe.steps[0][1], pipe.steps[1][1]
    fitted = getattr(svm, "n_features_in_", None)
    if fitted is None or not hasattr(svm, "support_vectors_") or getattr(scaler, "n_features_in_", None) != fitted:
        raise _not_an_ensemble(path, "an SVC or StandardScaler that is not fitted")
    classes = np.asarray(getattr(svm, "classes_", [])).tolist()
    if classes != [0, 1]:
        raise _not_an_ensemble(path, f"an SVC fitted to classes {classes}, expected [0, 1]")
    if n_features is not None and fitted != n_features:
        raise _not_an_ensemble(path, f"an SVC over {fitted} logits, expected {n_features} (findings x classes of the run's config)")


def load_thresholds(out_dir: str | os.PathLike) -> Thresholds:
    """``thresholds.json`` of a step-03 folder; unknown keys are an error (a newer file)."""
    path = Path(out_dir) / THRESHOLDS_NAME
    data = json.loads(path.read_text())
    unknown = set(data) - {f.name for f in dataclasses.fields(Thresholds)}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (written by a newer scxnn?)")
    return Thresholds(**data)


# --------------------------------------------------------------------------- the logits table


def logits_table(cfg, model_dirs: dict, progress: bool = True, features: bool = False,
                 only: tuple[tuple[str, str], ...] | None = None, cache: str | os.PathLike | None = None,
                 exclude: Collection[str] = (), max_train: int = 0, max_eval: int = 0):
    """Every in-scope film of the PNG cache (:func:`scxnn.data.in_scope`) through each finding's model
    (decoder off): one row per image with the 13 x 3 logits, its labels, site, split, patient and
    source hash (``scxnn evaluate`` checks new films against it). Later steps read the table, not the
    networks; each model's scores come from :func:`scxnn.inference.finding_scores`, which reads the
    films step 02 already scored from the model's ``scores.npz`` and scores the rest. With ``features``, also returns each film's pooled encoder features of every
    model, concatenated in findings order (N, 13 x C), for the out-of-distribution model.
    ``only``: (site, split) pairs to score, e.g. the validation and internal test films a variant
    needs; None scores every film. ``cache``: another PNG cache (its ``manifest.csv``) than the
    profile's, e.g. a dataset scored by ``scxnn evaluate``; ``exclude``: image ids not to score (the
    films evaluate found the run has seen); ``max_train``: score only a seeded sample of this many
    training-split films (0: all), e.g. for the out-of-distribution fit; ``max_eval``: likewise for
    the validation and the test films (a variant's ``variants.max_films``). A model trained on other
    preprocessing than ``cfg.preprocess`` is refused (:class:`scxnn.checkpoints.PreprocessMismatch`)."""
    from tqdm import tqdm

    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    df, cache = films_to_score(cfg, cache, only=only, exclude=exclude, max_train=max_train, max_eval=max_eval)
    keep = ["image_id", "patient_id", "site", "split", "label_type", "path", "source_sha256", *findings, *unseen]
    out = df[keep + [c for c in ("other_findings",) if c in df]].copy()
    out["abnormal"] = abnormal_labels(df, findings, unseen)
    device = resolve_device(cfg)
    pooled_all = []
    for finding in tqdm(findings, desc="logits", unit="model", disable=not progress):
        # Step 02 has usually scored these films already (scxnn.inference.prescore_finding).
        logits, pooled = finding_scores(cfg, finding, model_dirs[finding], df, cache, device)
        names = logit_columns([finding], logits.shape[1])
        for j, c in enumerate(names):
            out[c] = logits[:, j]
        out[f"{finding}__pred"] = logits.argmax(axis=1)
        if features:
            pooled_all.append(pooled)
    out = out.reset_index(drop=True)
    return (out, np.concatenate(pooled_all, axis=1)) if features else out


def table_scores(svm, table, findings: Sequence[str], num_classes: int) -> np.ndarray:
    """The SVM's score of each row of a logits table (larger = more abnormal): the one place that
    feeds a table's 13 x C logit columns, in findings order, to the SVM."""
    return svm.decision_function(table[logit_columns(list(findings), num_classes)].to_numpy(float))


def oof_scores(X, y, groups, make_model, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold SVM scores on the fitting set, grouped by patient: the threshold is chosen on
    scores of films the scoring SVM did not see, so it is not tuned to the SVM's own fit."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y, dtype=int)
    k = int(max(2, min(n_splits, np.bincount(y).min())))
    scores = np.zeros(len(y), dtype=float)
    for tr, te in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y, groups):
        if len(set(y[tr])) < 2:
            raise ValueError("a fold lacks normal or abnormal films; the validation set is too small for out-of-fold scores")
        scores[te] = make_model().fit(X[tr], y[tr]).decision_function(X[te])
    return scores


def validation_rows(table):
    """The only rows the SVM and its thresholds may see. Everything downstream of this call is given
    this frame alone, so test, temporal and external films cannot reach the fit, by construction.
    Validation films whose source says neither normal nor abnormal (``abnormal`` NA) have no label to
    fit or certify on: they are left out, and the log says how many."""
    val = table[table["split"] == "val"]
    if val.empty:
        raise ValueError("the logits table has no validation films (split == 'val'); the SVM and its thresholds are chosen on them only")
    unknown = val["abnormal"].isna()
    if unknown.any():
        log.warning("%d of %d validation films have no normal/abnormal verdict from their source: left out of the SVM fit "
                    "and the thresholds", int(unknown.sum()), len(val))
    return val[~unknown].copy().reset_index(drop=True)


def fit_ensemble(cfg, val) -> tuple[DefiniteNormalSVM, Thresholds, "pd.DataFrame"]:
    """Fit the SVM on the validation films ``val`` (:func:`validation_rows`; never test, temporal or
    external) and freeze both thresholds from out-of-fold validation scores. Returns the SVM, the
    thresholds and the validation scores they were chosen on (image_id, patient_id, abnormal,
    score): the yield curve and the calibration of notebook 04 are fitted on them, never on test films."""
    import pandas as pd

    e = cfg.ensemble
    if not (val["split"] == "val").all():
        raise ValueError("fit_ensemble was given non-validation rows; pass validation_rows(table)")
    cols = logit_columns(list(cfg.findings), cfg.model.num_classes)
    X, y, g = val[cols].to_numpy(float), val["abnormal"].to_numpy(int), val["patient_id"].to_numpy()

    def make():
        return DefiniteNormalSVM(kernel=e.kernel, C=e.C, class_weight=None if e.class_weight == "none" else e.class_weight, random_state=cfg.seed)

    svm = make().fit(X, y)
    try:
        scores, source = oof_scores(X, y, g, make, seed=cfg.seed), "out-of-fold"
    except ValueError as err:
        # Tiny validation sets (the smoke profile) cannot be split by patient into folds that each
        # hold both classes; say so in the thresholds instead of failing or hiding it.
        log.warning("%s; thresholds use the SVM's in-sample validation scores (optimistic)", err)
        scores, source = svm.decision_function(X), "in-sample (validation too small for folds)"
    th = choose_thresholds(scores, y, g, e.sensitivity_target, cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci)
    val_scores = pd.DataFrame({"image_id": val["image_id"].to_numpy() if "image_id" in val else np.arange(len(val)),
                               "patient_id": g, "abnormal": y, "score": scores})
    return svm, dataclasses.replace(th, scores=source), val_scores


LOGITS_NAME = "logits.parquet"


def save_logits(table, out_dir: str | os.PathLike) -> Path:
    path = Path(out_dir) / LOGITS_NAME
    with atomic_open(path, "wb") as fh:
        table.to_parquet(fh, index=False)
    return path


VAL_SCORES_NAME = "val_scores.csv"


OOD_NAME = "ood.npz"
# Every training and validation film of the run (hashed patient id, split, source hash), scored or not:
# what `scxnn evaluate` must not count as new films (scxnn.trained_run.seen_films).
SEEN_NAME = "seen_films.parquet"


def write_seen_films(cfg, out_dir: str | os.PathLike) -> Path:
    """Record the run's training and validation films from the profile's PNG cache manifest."""
    m = read_manifest(cache_dir(cfg) / MANIFEST_NAME, list(cfg.findings), list(cfg.unseen_findings))
    seen = m.loc[m["split"].isin(["train", "val"]), ["patient_id", "split", "source_sha256"]].astype(str)
    path = Path(out_dir) / SEEN_NAME
    with atomic_open(path, "wb") as fh:
        seen.reset_index(drop=True).to_parquet(fh, index=False)
    return path


def build(cfg, model_dirs: dict, out_dir: str | os.PathLike, progress: bool = True,
          only: tuple[tuple[str, str], ...] | None = None, max_eval: int = 0):
    """Step 03 for a set of trained models: the logits table, the SVM fitted on validation films and
    its frozen thresholds, and the out-of-distribution model (fitted on training films' features,
    its threshold on validation films'), all saved in ``out_dir``. Returns (table, svm, thresholds).
    ``only`` restricts the table to (site, split) pairs (see :func:`logits_table`); without training
    films there is no out-of-distribution model, so such a run cannot serve ``scxnn predict``. Of the
    training films only ``evaluate.ood_fit_images`` are scored (for that model); every training and
    validation film is listed in ``seen_films.parquet`` for ``scxnn evaluate``. ``max_eval``: score a
    seeded sample of this many validation and test films each (0: all; see :func:`logits_table`)."""
    out = Path(out_dir)
    table, feats = logits_table(cfg, model_dirs, progress=progress, features=True, only=only,
                                max_train=cfg.evaluate.ood_fit_images, max_eval=max_eval)
    if only is None:
        write_seen_films(cfg, out)
    svm, th, val_scores = fit_ensemble(cfg, validation_rows(table))
    log.info("thresholds: %s", th.describe())
    save(svm, th, out)
    atomic_write_text(out / VAL_SCORES_NAME, val_scores.to_csv(index=False))
    split = table["split"].to_numpy()
    gate = None
    if (split == "train").any():
        try:
            gate = ood.fit(feats[split == "train"], feats[split == "val"], n_components=cfg.evaluate.ood_components,
                           quantile=cfg.evaluate.ood_quantile, seed=cfg.seed)
        except ValueError as e:  # too few films (a toy manifest): `scxnn predict` then refuses this run
            log.warning("no out-of-distribution model: %s", e)
    if gate is None:
        (out / OOD_NAME).unlink(missing_ok=True)
    else:
        ood.save(gate, out / OOD_NAME)
        # Each film's OOD score, so notebook 04 can measure the batch-level shift rule on held-out sets.
        table["ood_score"] = gate.score(feats)
    save_logits(table, out)
    return table, svm, th


def load_run(out_dir: str | os.PathLike, cfg):
    """What step 03 saved, ready to evaluate: (table with a ``score`` column, svm, thresholds,
    validation scores)."""
    import pandas as pd

    out = Path(out_dir)
    svm, th = load(out)
    table = pd.read_parquet(out / LOGITS_NAME)
    num_classes = 3 if f"{next(iter(cfg.findings))}__others" in table else 2
    table["score"] = table_scores(svm, table, cfg.findings, num_classes)
    val_scores = pd.read_csv(out / VAL_SCORES_NAME, dtype={"image_id": str, "patient_id": str})
    return table, svm, th, val_scores
