"""scxnn.metrics: the paired AUC difference of two pipelines on the same films, and the AUC itself."""

from __future__ import annotations

import numpy as np
import pytest

from scxnn.metrics import paired_auc_delta, patient_bootstrap, roc_auc

N_BOOT = 200


def films(n_patients: int = 40, seed: int = 0, per_patient: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(abnormal, patient ids, shared difficulty): films of a patient share a label, and every film
    has a difficulty that any pipeline's score inherits (the film-to-film variation the pairing removes)."""
    rng = np.random.default_rng(seed)
    y_pat = rng.random(n_patients) < 0.5
    y_pat[:2] = [True, False]  # both classes, whatever the seed
    g = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    y = np.repeat(y_pat, per_patient).astype(int)
    return y, g, rng.normal(0, 1, len(y))


def test_identical_scores_differ_by_exactly_zero():
    y, g, d = films()
    s = y + d
    assert paired_auc_delta(y, s, s.copy(), g, N_BOOT, 0) == (0.0, 0.0, 0.0)


def test_a_pipeline_better_on_the_same_films_has_a_positive_delta_that_excludes_zero():
    y, g, d = films(60)
    a, b = 0.5 * y + d, 2.5 * y + d  # b separates the same films much better
    delta, lo, hi = paired_auc_delta(y, a, b, g, N_BOOT, 0)
    assert delta == pytest.approx(roc_auc(y, b) - roc_auc(y, a))
    assert 0 < lo <= delta <= hi
    # the order of the arguments is the sign of the difference
    assert paired_auc_delta(y, b, a, g, N_BOOT, 0) == pytest.approx((-delta, -hi, -lo))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_interval_is_narrower_than_two_independent_ones(seed):
    # Shared film difficulty dominates and each pipeline adds a little noise of its own: the
    # situation of two ablation rows, where the separate AUC intervals overlap although one
    # pipeline is consistently a bit better.
    y, g, d = films(80, seed)
    rng = np.random.default_rng(100 + seed)
    a = y + d + 0.15 * rng.normal(size=len(y))
    b = 1.2 * y + d + 0.15 * rng.normal(size=len(y))
    _, lo, hi = paired_auc_delta(y, a, b, g, N_BOOT, seed)
    ia = patient_bootstrap(g, lambda idx: {"auc": roc_auc(y[idx], a[idx])}, N_BOOT, seed)["auc"]
    ib = patient_bootstrap(g, lambda idx: {"auc": roc_auc(y[idx], b[idx])}, N_BOOT, seed)["auc"]
    independent = np.hypot(ia[1] - ia[0], ib[1] - ib[0])  # the most generous way to combine two separate CIs
    assert hi - lo < 0.5 * independent


def test_fixed_seed_is_deterministic():
    y, g, d = films()
    a, b = y + d, 1.5 * y + d + np.random.default_rng(3).normal(0, 0.5, len(y))
    assert paired_auc_delta(y, a, b, g, N_BOOT, 7) == paired_auc_delta(y, a, b, g, N_BOOT, 7)
    assert paired_auc_delta(y, a, b, g, N_BOOT, 7)[1:] != paired_auc_delta(y, a, b, g, N_BOOT, 8)[1:]


def test_patients_not_films_are_resampled():
    # Five copies of every film under its patient carry no more information than one film. A
    # film-level bootstrap would narrow the interval by about sqrt(5); resampling patients draws
    # the same patients with the same seed, so the interval is the same to the last digit.
    y, g, d = films(30, per_patient=1)
    rng = np.random.default_rng(4)
    a, b = y + d, y + d + rng.normal(0, 0.7, len(y))
    one = paired_auc_delta(y, a, b, g, N_BOOT, 0)
    five = paired_auc_delta(*(np.repeat(v, 5) for v in (y, a, b, g)), N_BOOT, 0)
    assert five == pytest.approx(one, abs=1e-12)


def test_one_class_gives_nan_and_bad_lengths_raise():
    g = np.array(["p0", "p1", "p2"])
    assert all(np.isnan(paired_auc_delta([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], g, 20, 0)))
    with pytest.raises(ValueError, match="one label, two scores"):
        paired_auc_delta([0, 1], [0.1, 0.2], [0.1], ["p0", "p1"], 20, 0)


def test_resamples_with_one_class_are_left_out():
    # Two patients only: a quarter of the resamples per class draw one class; they must not turn
    # into a NaN interval (or a fake 0.5 AUC).
    y, g = np.array([0, 1]), np.array(["n", "a"])
    delta, lo, hi = paired_auc_delta(y, [0.0, 1.0], [1.0, 0.0], g, 50, 0)
    assert (delta, lo, hi) == (-1.0, -1.0, -1.0)


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_is_scikit_learns_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 150)
    y[:2] = [0, 1]
    p = np.round(rng.normal(size=150) + y, seed % 2)  # rounding makes ties across the classes
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(5, int), p[:5]))
