"""scxnn.metrics and scxnn.ensemble: screening metrics, patient bootstrap, the SVM and its
validation-chosen definite-normal thresholds, skops persistence."""

from __future__ import annotations

import numpy as np
import pytest

from scxnn.ensemble import DefiniteNormalSVM, choose_thresholds, load, logit_columns, save
from scxnn.metrics import patient_bootstrap, screening_metrics, screening_with_ci


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


def test_thresholds_keep_validation_sensitivity_and_strict_is_stricter():
    X, y, patients = _data(400)
    svm = DefiniteNormalSVM().fit(X, y)
    s = svm.decision_function(X)
    th = choose_thresholds(s, y, patients, target=0.95, n_boot=200, seed=0)
    assert screening_metrics(y, s >= th.point)["sensitivity"] >= 0.95
    assert th.strict <= th.point  # a lower cut-off calls fewer films normal
    assert screening_metrics(y, s >= th.strict)["sensitivity"] >= screening_metrics(y, s >= th.point)["sensitivity"]
    assert 0 < th.val_auto_normal < 1


def test_skops_roundtrip_and_untrusted_types_refused(tmp_path):
    import skops.io as sio

    X, y, patients = _data()
    svm = DefiniteNormalSVM().fit(X, y)
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
    from scxnn.ensemble import fit_ensemble, logit_columns

    cfg, t = _table()
    svm, th = fit_ensemble(cfg, t)
    assert th.scores == "out-of-fold" and th.n_val == 120
    poisoned = t.copy()
    test = poisoned["split"] == "test"
    poisoned.loc[test, "abnormal"] = 1 - poisoned.loc[test, "abnormal"]  # test labels must not matter
    svm2, th2 = fit_ensemble(cfg, poisoned)
    X = t[logit_columns(list(cfg.findings))].to_numpy()
    assert np.array_equal(svm.decision_function(X), svm2.decision_function(X)) and th == th2


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
    from scxnn.ensemble import fit_ensemble, fit_ensemble_with_scores, validation_rows

    cfg, t = _table()
    svm, th = fit_ensemble(cfg, t)
    poisoned = t.copy()
    test = poisoned["split"] == "test"
    cols = logit_columns(list(cfg.findings))
    poisoned.loc[test, cols] = np.nan
    poisoned.loc[test, "abnormal"] = 1 - poisoned.loc[test, "abnormal"]
    svm2, th2 = fit_ensemble(cfg, poisoned)
    assert th2 == th
    assert set(validation_rows(poisoned)["split"]) == {"val"}
    with pytest.raises(ValueError, match="non-validation"):
        fit_ensemble_with_scores(cfg, t)
    with pytest.raises(ValueError, match="no validation films"):
        fit_ensemble(cfg, t[t["split"] == "test"])


def test_validation_scores_are_out_of_fold_and_saved(tmp_path):
    from scxnn.ensemble import fit_ensemble_with_scores, validation_rows

    cfg, t = _table()
    svm, th, vs = fit_ensemble_with_scores(cfg, validation_rows(t))
    assert len(vs) == th.n_val == 120 and list(vs.columns) == ["image_id", "patient_id", "abnormal", "score"]
    X = validation_rows(t)[logit_columns(list(cfg.findings))].to_numpy()
    # out-of-fold scores differ from the final SVM's own (in-sample) scores
    assert not np.allclose(vs["score"].to_numpy(), svm.decision_function(X))
    assert screening_metrics(vs["abnormal"], vs["score"] >= th.point)["sensitivity"] >= cfg.ensemble.sensitivity_target
