"""scxnn.metrics and scxnn.ensemble: screening metrics, patient bootstrap, the SVM and its
validation-chosen definite-normal thresholds, skops persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scxnn.ensemble import DefiniteNormalSVM, choose_thresholds, load, logit_columns, save
from scxnn.metrics import certifiable_with, clopper_pearson, patient_bootstrap, proportion_ci, screening_metrics, screening_with_ci


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(0, 1, (n, 39)) + y[:, None] * np.linspace(0, 1.5, 39)
    patients = np.repeat(np.arange(n // 2), 2)
    return X, y, patients


def test_screening_metrics_by_hand():
    m = screening_metrics([1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 1, 0])
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(3 / 4) and m["ppv"] == pytest.approx(2 / 3)
    assert m["auto_normal"] == pytest.approx(4 / 7)
    assert np.isnan(screening_metrics([0, 0], [0, 1])["sensitivity"])  # undefined, not 0


def test_bootstrap_resamples_patients_and_brackets_the_estimate():
    _, y, patients = _data()
    pred = y.copy()
    pred[:30] = 1 - pred[:30]
    out = screening_with_ci(y, pred, patients, n_boot=300, seed=1)
    for k in ("sensitivity", "specificity", "auto_normal"):
        assert out[f"{k}_lo"] <= out[k] <= out[f"{k}_hi"] and out[f"{k}_hi"] - out[f"{k}_lo"] > 0
    # Same seed, same interval.
    assert screening_with_ci(y, pred, patients, n_boot=300, seed=1) == out
    # Resampling whole patients: the two films of a patient always travel together.
    seen = []
    patient_bootstrap(patients, lambda idx: seen.append(idx) or {"x": 0.0}, n=5, seed=0)
    for idx in seen:
        assert all(np.isin(np.flatnonzero(np.isin(patients, patients[idx])), idx))


def test_svm_is_a_sklearn_classifier_and_fit_returns_self():
    X, y, _ = _data()
    svm = DefiniteNormalSVM(random_state=3)
    assert svm.fit(X, y) is svm
    assert (svm.predict(X) == y).mean() > 0.8
    s = svm.decision_function(X)
    assert s[y == 1].mean() > s[y == 0].mean()  # larger = more abnormal
    with pytest.raises(ValueError, match="both normal"):
        DefiniteNormalSVM().fit(X[:5], np.ones(5, int))


def test_linear_score_keeps_ordering_films_beyond_the_fitted_range():
    # Why the demo's SVM is linear: real films land far from the synthetic logits it was fitted on.
    # There an RBF score flattens to its bias and stops ordering films by their evidence; a linear
    # one keeps rising with it.
    X, y, _ = _data()
    direction = np.linspace(0, 1.5, 39)
    far = np.outer(np.linspace(4, 12, 9), direction)  # ever more abnormal, all beyond the fitted cloud
    lin = DefiniteNormalSVM(kernel="linear").fit(X, y).decision_function(far)
    rbf = DefiniteNormalSVM(kernel="rbf").fit(X, y).decision_function(far)
    assert (np.diff(lin) > 0).all()
    assert np.ptp(rbf[-4:]) < 0.05 * np.ptp(lin[-4:])


def test_thresholds_keep_validation_sensitivity_and_strict_is_stricter():
    X, y, patients = _data(400)
    svm = DefiniteNormalSVM().fit(X, y)
    s = svm.decision_function(X)
    th = choose_thresholds(s, y, patients, target=0.95, n_boot=200, seed=0)
    assert screening_metrics(y, s >= th.point)["sensitivity"] >= 0.95
    assert th.strict <= th.point  # a lower cut-off calls fewer films normal
    assert screening_metrics(y, s >= th.strict)["sensitivity"] >= screening_metrics(y, s >= th.point)["sensitivity"]
    assert 0 < th.val_auto_normal < 1


@pytest.mark.parametrize("kernel", ["rbf", "linear"])  # the defaults' and the demo's
def test_skops_roundtrip_and_untrusted_types_refused(kernel, tmp_path):
    import skops.io as sio

    X, y, patients = _data()
    svm = DefiniteNormalSVM(kernel=kernel).fit(X, y)
    th = choose_thresholds(svm.decision_function(X), y, patients, 0.9, 100, 0)
    save(svm, th, tmp_path)
    back, th2 = load(tmp_path)
    assert np.allclose(back.decision_function(X), svm.decision_function(X)) and th2 == th
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.pkl"))
    import functools
    import operator

    # A callable smuggled in beside the model: skops would call it on load if it were trusted.
    (tmp_path / "svm.skops").write_bytes(sio.dumps({"model": svm, "extra": functools.partial(operator.add, 1)}))
    with pytest.raises(ValueError, match="untrusted"):
        load(tmp_path)


def _svm_with(steps, X=None, y=None):
    """A DefiniteNormalSVM around a pipeline of ``steps``, fitted when ``X`` is given."""
    from sklearn.pipeline import Pipeline

    m = DefiniteNormalSVM()
    m.pipeline_ = Pipeline(steps) if X is None else Pipeline(steps).fit(X, y)
    return m


def _impostors():
    """Files named svm.skops that `save` did not write: {case: (build(svm, X, y), what the refusal
    names)}. skops trusts every estimator among them by default."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler as Scale
    from sklearn.svm import SVC, LinearSVC

    return {
        "logistic_regression": (lambda svm, X, y: LogisticRegression().fit(X, y), "untrusted sklearn.linear_model._logistic.LogisticRegression"),
        "linear_svc_step": (lambda svm, X, y: _svm_with([("scale", Scale()), ("svm", LinearSVC())], X, y), "untrusted sklearn.svm._classes.LinearSVC"),
        "bare_pipeline": (lambda svm, X, y: svm.pipeline_, "found a Pipeline;"),
        "extra_step": (lambda svm, X, y: _svm_with([("scale", Scale()), ("again", Scale()), ("svm", SVC())], X, y),
                       r"pipeline is \[scale=StandardScaler, again=StandardScaler, svm=SVC\], expected \[scale=StandardScaler, svm=SVC\]"),
        "renamed_step": (lambda svm, X, y: _svm_with([("scale", Scale()), ("clf", SVC())], X, y), r"pipeline is \[scale=StandardScaler, clf=SVC\]"),
        "unfitted_svc": (lambda svm, X, y: _svm_with([("scale", Scale().fit(X)), ("svm", SVC())]), "not fitted"),
        "other_classes": (lambda svm, X, y: _svm_with([("scale", Scale()), ("svm", SVC())], X, y + 1), r"classes \[1, 2\], expected \[0, 1\]"),
        "not_a_zip": (lambda svm, X, y: b"PK\x03\x04 junk", "not a skops archive"),
    }


@pytest.mark.parametrize("case", sorted(_impostors()))
def test_load_refuses_anything_but_the_saved_ensemble(case, tmp_path):
    import skops.io as sio

    X, y, patients = _data(120)
    svm = DefiniteNormalSVM().fit(X, y)
    save(svm, choose_thresholds(svm.decision_function(X), y, patients, 0.9, 50, 0), tmp_path)
    build, names = _impostors()[case]
    obj = build(svm, X, y)
    (tmp_path / "svm.skops").write_bytes(obj if isinstance(obj, bytes) else sio.dumps(obj))
    with pytest.raises(ValueError, match=names) as err:
        load(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'svm.skops'} is not an SCXNN ensemble: found ") and msg.endswith("re-run `make ensemble`")
    assert "\n" not in msg


@pytest.mark.parametrize("n_features, loads", [(39, True), (26, False)], ids=["13x3_logits", "13x2_logits"])
def test_load_checks_the_logits_against_the_runs_findings_x_classes(n_features, loads, tmp_path):
    from scxnn.config import load_config, save_resolved

    save_resolved(load_config("smoke"), tmp_path)  # 13 findings x 3 classes
    X, y, patients = _data(120)
    svm = DefiniteNormalSVM().fit(X[:, :n_features], y)
    save(svm, choose_thresholds(svm.decision_function(X[:, :n_features]), y, patients, 0.9, 50, 0), tmp_path)
    if loads:
        assert load(tmp_path)[0].n_features_in_ == 39
    else:
        with pytest.raises(ValueError, match="an SVC over 26 logits, expected 39"):
            load(tmp_path)


def test_logit_columns():
    cols = logit_columns(["nodule", "cardiomegaly"])
    assert cols == ["nodule__normal", "nodule__target", "nodule__others", "cardiomegaly__normal", "cardiomegaly__target", "cardiomegaly__others"]


def _table(n_val=120, n_test=60, seed=0):
    import pandas as pd

    from scxnn.config import load_config
    from scxnn.ensemble import logit_columns

    cfg = load_config("smoke")
    cols = logit_columns(list(cfg.findings))
    X, y, patients = _data(n_val + n_test, seed)
    t = pd.DataFrame(X, columns=cols)
    t["abnormal"] = y
    t["patient_id"] = [f"p{p}" for p in patients]
    t["split"] = ["val"] * n_val + ["test"] * n_test
    t["site"] = "internal"
    return cfg, t


def test_fit_ensemble_uses_validation_only_with_out_of_fold_thresholds():
    from scxnn.ensemble import fit_ensemble, logit_columns, validation_rows

    cfg, t = _table()
    svm, th, _ = fit_ensemble(cfg, validation_rows(t))
    assert th.scores == "out-of-fold" and th.n_val == 120
    poisoned = t.copy()
    test = poisoned["split"] == "test"
    poisoned.loc[test, "abnormal"] = 1 - poisoned.loc[test, "abnormal"]  # test labels must not matter
    svm2, th2, _ = fit_ensemble(cfg, validation_rows(poisoned))
    X = t[logit_columns(list(cfg.findings))].to_numpy()
    assert np.array_equal(svm.decision_function(X), svm2.decision_function(X)) and th == th2


def test_validation_films_of_unknown_status_enter_neither_the_svm_nor_the_thresholds(caplog):
    # A validation film whose source says neither normal nor abnormal (CheXpert's -1 alone) has no
    # label: counted as normal it would train the SVM to clear it and loosen the certified bound.
    from scxnn.ensemble import fit_ensemble, logit_columns, validation_rows

    cfg, t = _table()
    svm, th, _ = fit_ensemble(cfg, validation_rows(t))
    extra = t[t["split"] == "val"].head(15).assign(abnormal=pd.NA, patient_id=lambda d: "u" + d["patient_id"])
    mixed = pd.concat([t, extra], ignore_index=True)
    mixed["abnormal"] = mixed["abnormal"].astype("Int8")
    with caplog.at_level("WARNING", logger="scxnn"):
        rows = validation_rows(mixed)
    assert len(rows) == 120 and rows["abnormal"].notna().all() and "15 of 135 validation films" in caplog.text
    svm2, th2, _ = fit_ensemble(cfg, rows)
    X = t[logit_columns(list(cfg.findings))].to_numpy()
    assert np.allclose(svm.decision_function(X), svm2.decision_function(X)) and th2 == th


def test_threshold_lies_between_separated_groups():
    # Normals score in [-3, -2], abnormals in [1, 2]: any threshold in (-2, 1] calls every normal
    # normal and keeps every abnormal; the chosen one must sit there and keep validation sensitivity.
    rng = np.random.default_rng(0)
    s = np.r_[rng.uniform(-3, -2, 60), rng.uniform(1, 2, 40)]
    y = np.r_[np.zeros(60, int), np.ones(40, int)]
    th = choose_thresholds(s, y, np.arange(100), target=0.99, n_boot=200, seed=0)
    assert s[y == 0].max() < th.point <= s[y == 1].min()
    assert th.val_sensitivity >= 0.99 and th.val_auto_normal == pytest.approx(0.6)
    assert th.strict <= th.point


def test_threshold_selection_cannot_see_test_rows():
    """Structural: the fit receives validation_rows(table) only. Test rows full of NaN logits would
    crash StandardScaler/SVC if any of them reached the fit, and cannot change the thresholds."""
    from scxnn.ensemble import fit_ensemble, validation_rows

    cfg, t = _table()
    svm, th, _ = fit_ensemble(cfg, validation_rows(t))
    poisoned = t.copy()
    test = poisoned["split"] == "test"
    cols = logit_columns(list(cfg.findings))
    poisoned.loc[test, cols] = np.nan
    poisoned.loc[test, "abnormal"] = 1 - poisoned.loc[test, "abnormal"]
    svm2, th2, _ = fit_ensemble(cfg, validation_rows(poisoned))
    assert th2 == th
    assert set(validation_rows(poisoned)["split"]) == {"val"}
    with pytest.raises(ValueError, match="non-validation"):
        fit_ensemble(cfg, t)
    with pytest.raises(ValueError, match="no validation films"):
        fit_ensemble(cfg, validation_rows(t[t["split"] == "test"]))


def test_validation_scores_are_out_of_fold_and_saved(tmp_path):
    from scxnn.ensemble import fit_ensemble, validation_rows

    cfg, t = _table()
    svm, th, vs = fit_ensemble(cfg, validation_rows(t))
    assert len(vs) == th.n_val == 120 and list(vs.columns) == ["image_id", "patient_id", "abnormal", "score"]
    X = validation_rows(t)[logit_columns(list(cfg.findings))].to_numpy()
    # out-of-fold scores differ from the final SVM's own (in-sample) scores
    assert not np.allclose(vs["score"].to_numpy(), svm.decision_function(X))
    assert screening_metrics(vs["abnormal"], vs["score"] >= th.point)["sensitivity"] >= cfg.ensemble.sensitivity_target


# --------------------------------------------------------------------------- intervals at the edges


@pytest.mark.parametrize("k, n, lo, hi", [
    (47, 47, 0.9245, 1.0),  # 0 misses in 47 abnormal films: not "[1.000, 1.000]"
    (0, 47, 0.0, 0.0755),
    (46, 47, 0.8871, 0.9995),
    (300, 300, 0.9878, 1.0),
])
def test_clopper_pearson_is_exact_at_and_near_the_edges(k, n, lo, hi):
    got = clopper_pearson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert np.isnan(clopper_pearson(0, 0)).all()


def test_no_miss_in_47_abnormal_patients_certifies_only_0925():
    y = np.r_[np.ones(47, int), np.zeros(40, int)]
    out = screening_with_ci(y, y, np.arange(len(y)), n_boot=300, seed=0)
    assert out["sensitivity"] == 1.0 and out["sensitivity_lo"] == pytest.approx(0.9245, abs=1e-4) and out["sensitivity_hi"] == 1.0
    assert out["specificity_lo"] == pytest.approx(clopper_pearson(40, 40)[0])
    for k in ("sensitivity", "specificity", "npv", "ppv", "auto_normal"):
        assert out[f"{k}_lo"] < out[f"{k}_hi"], k  # never degenerate on a finite sample


def test_patients_not_films_are_the_trials_when_nothing_is_missed():
    # 47 abnormal patients with 3 films each: 141 films, but only 47 independent trials.
    films = np.repeat(np.arange(47), 3)
    assert proportion_ci(np.ones(141, bool), films)[0] == pytest.approx(clopper_pearson(47, 47)[0])
    # A miss never raises the lower bound above the no-miss bound.
    one_miss = np.ones(141, bool)
    one_miss[0] = False
    assert proportion_ci(one_miss, films, bootstrap=(0.99, 1.0))[0] <= proportion_ci(np.ones(141, bool), films)[0]


@pytest.mark.parametrize("target, ci, n", [(0.99, 0.95, 368), (0.95, 0.95, 72), (0.99, 0.90, 299)])
def test_abnormal_patients_needed_to_certify(target, ci, n):
    assert certifiable_with(target, ci) == n
    assert clopper_pearson(n, n, ci)[0] >= target > clopper_pearson(n - 1, n - 1, ci)[0]


def test_strict_is_not_point_when_the_validation_set_cannot_certify():
    """The Kermany case: validation has no miss at the point threshold, yet 47 abnormal patients can
    certify only 0.925, so strict must call nothing normal and say what certifying would take."""
    rng = np.random.default_rng(0)
    s = np.r_[rng.uniform(-3, -2, 60), rng.uniform(1, 2, 47)]
    y = np.r_[np.zeros(60, int), np.ones(47, int)]
    th = choose_thresholds(s, y, np.arange(len(y)), target=0.99, n_boot=200, seed=0)
    assert th.val_sensitivity == 1.0 and th.val_auto_normal > 0.5
    assert th.strict != th.point and th.strict < s.min() and not th.certified
    assert th.point_sensitivity_lo == pytest.approx(0.9245, abs=1e-4) and th.strict_auto_normal == 0.0
    assert th.abnormal_needed == 368 and th.n_val_abnormal_patients == 47
    assert "368" in th.describe() and "321 more" in th.describe()


def test_strict_certifies_with_enough_abnormal_validation_patients():
    rng = np.random.default_rng(1)
    s = np.r_[rng.normal(-2, 1, 600), rng.normal(3, 1, 600)]
    y = np.r_[np.zeros(600, int), np.ones(600, int)]
    th = choose_thresholds(s, y, np.arange(len(y)), target=0.99, n_boot=300, seed=0)
    assert th.certified and th.strict_sensitivity_lo >= 0.99 and th.strict < th.point and th.strict_auto_normal > 0.2
    # The certified threshold keeps the exact lower bound at the target: just above it, it fails.
    pos = s[y == 1]
    assert proportion_ci(pos >= th.strict, np.arange(600))[0] >= 0.99
    assert "certifies sensitivity >= 99%" in th.describe()


def test_thresholds_files_from_before_certification_load_as_uncertified(tmp_path):
    import json

    from scxnn.ensemble import load_thresholds

    old = {"point": 0.1, "strict": 0.1, "target": 0.99, "n_val": 80, "val_sensitivity": 1.0, "val_auto_normal": 0.3, "scores": "out-of-fold"}
    (tmp_path / "thresholds.json").write_text(json.dumps(old))
    assert load_thresholds(tmp_path).certified is False
    (tmp_path / "thresholds.json").write_text(json.dumps({**old, "surprise": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_thresholds(tmp_path)
