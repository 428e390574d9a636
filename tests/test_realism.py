"""``scxnn bench realism``: the feature functions, the discriminator recipe on real films, end to end.

Needs the NIH mini set in ../shared beside the checkout (as in CI); a missing folder fails, loudly.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from scxnn.cli import main
from scxnn.config import load_config
from scxnn.synth import realism as R


@pytest.fixture(scope="module")
def cfg():
    return load_config("smoke", {"data.workers": 1})


@pytest.fixture(scope="module")
def real(cfg):
    # The default location, as the command resolves it; no skip when absent: the benchmark needs it.
    assert R.default_real_root().is_dir(), f"NIH mini set not found at {R.default_real_root()} (../shared beside the checkout)"
    return R.real_normals(None, cfg)


@pytest.fixture(scope="module")
def result(cfg):
    return R.bench_realism(cfg, n=40, progress=False)


# --------------------------------------------------------------------------- features


def test_histogram_is_a_density():
    rng = np.random.default_rng(0)
    x = np.stack([rng.random((64, 64)), np.full((64, 64), 0.3), rng.beta(2, 5, (64, 64))]).astype(np.float32)
    h = R.histogram_features(x)
    assert h.shape == (3, R.HIST_BINS)
    np.testing.assert_allclose(h.sum(axis=1) / R.HIST_BINS, 1.0, rtol=1e-5)  # bin width 1/32: integrates to 1
    assert (h >= 0).all()
    np.testing.assert_allclose(R.histogram_features(x[0]), h[0])  # one image: a 1-D vector


def test_spectrum_of_white_noise_is_flatter_than_of_a_smoothed_image():
    noise = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    s_noise, s_smooth = R.spectrum_features(np.stack([noise, smooth]))
    assert s_noise.shape == (R.SPECTRUM_BINS,)
    assert np.isfinite([s_noise, s_smooth]).all()
    slope_noise, slope_smooth = s_noise[-4:].mean() - s_noise[:4].mean(), s_smooth[-4:].mean() - s_smooth[:4].mean()
    assert abs(slope_noise) < 1.0  # white: flat, within sampling noise
    assert slope_smooth < slope_noise - 3.0  # smoothed: high frequencies far down
    assert (s_smooth[-4:] < s_noise[-4:]).all()
    # The mean is removed: a constant offset changes nothing.
    np.testing.assert_allclose(R.spectrum_features(noise + 0.2), s_noise, atol=1e-4)


def _step(contrast: float, blur: float) -> np.ndarray:
    img = np.full((64, 64), 0.5 - contrast / 2, np.float32)
    img[:, 32:] = 0.5 + contrast / 2
    return cv2.GaussianBlur(img, (0, 0), blur) if blur > 0 else img


def test_edge_features_increase_with_sharper_edges():
    f = R.edge_features(np.stack([_step(0.1, 0), _step(0.9, 0), _step(0.9, 3.0)]))
    low, high, blurred = f
    assert f.shape == (3, 2 + len(R.EDGE_THRESHOLDS))
    # A stronger edge: every feature at least as high, the mean, std and top share higher.
    assert (high >= low).all() and high[0] > low[0] and high[1] > low[1] and high[-1] > low[-1]
    # A sharper edge of the same height: more spread in the gradient and more pixels above the top thresholds.
    assert high[1] > blurred[1] and high[-1] > blurred[-1] and high[-2] > blurred[-2]
    assert R.edge_features(np.full((64, 64), 0.4, np.float32)).sum() == 0  # flat: no edges


def test_to_study_64_squashes_and_preprocesses(cfg):
    img = (np.random.default_rng(0).random((300, 200)) * 255).astype(np.uint8)
    out = R.to_study_64(img, cfg)
    assert out.shape == (64, 64) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1
    with pytest.raises(ValueError, match="uint8"):
        R.to_study_64(img.astype(np.float32), cfg)


# --------------------------------------------------------------------------- the discriminator on real films


def test_real_normals_are_the_nih_no_finding_films(real):
    assert 480 <= len(real) <= 510 and real.shape[1:] == (64, 64) and real.dtype == np.float32
    assert 0 <= real.min() and real.max() <= 1


@pytest.mark.parametrize("feature_set", ["pixels", "histogram"])
def test_inverted_films_are_told_apart(real, feature_set):
    auc, lo, hi = R.separability(real, 1 - real, feature_set, seed=0)
    assert auc > 0.95, f"{feature_set}: real vs inverted AUC {auc:.3f}"
    assert lo <= auc <= hi


@pytest.mark.parametrize("feature_set", R.FEATURE_SETS)
def test_real_halves_are_not_told_apart(real, feature_set):
    a, b = R.split_halves(real, seed=0)
    assert abs(len(a) - len(b)) <= 1
    auc, lo, hi = R.separability(a, b, feature_set, seed=0)
    assert auc < 0.75, f"{feature_set}: real vs real AUC {auc:.3f}"
    assert 0 <= lo <= auc <= hi <= 1


def test_separability_needs_enough_films(real):
    with pytest.raises(ValueError, match="at least 5"):
        R.separability(real[:4], real[4:8], "histogram")
    with pytest.raises(ValueError, match="unknown feature set"):
        R.separability(real, real, "colour")


# --------------------------------------------------------------------------- end to end (smoke profile)


@pytest.mark.parametrize("feature_set", R.FEATURE_SETS)
def test_bench_realism_reports_each_feature_set(result, feature_set):
    v = result["feature_sets"][feature_set]
    assert 0 <= v["lo"] <= v["auc"] <= v["hi"] <= 1, f"{feature_set}: {v}"
    assert 0 <= v["control_lo"] <= v["control_auc"] <= v["control_hi"] <= 1, f"{feature_set}: {v}"
    assert v["excess"] == pytest.approx(v["auc"] - v["control_auc"])


def test_bench_realism_facts(cfg, result):
    n_normals = len(R.normal_jobs(cfg))
    assert result["n_synth_available"] == n_normals
    assert result["n_synth"] == min(40, n_normals)
    assert result["n_per_class"] == min(result["n_synth"], result["n_real"])
    assert result["n_control_per_class"] == result["n_real"] // 2
    assert result["profile"] == "smoke" and result["synth_size"] == cfg.data.synth_size and result["size"] == 64
    assert result["render_s"] > 0 and result["generator_version"]
    assert json.loads(json.dumps(result)) == result  # JSON-serialisable as is
    text = R.format_bench_realism(result)
    for fs in R.FEATURE_SETS:
        assert fs in text
    assert "real_vs_real" in text and "not the benchmark" in text


def test_synthetic_normals_are_deterministic_and_64px(cfg):
    a = R.synthetic_normals(cfg, n=3, progress=False)
    b = R.synthetic_normals(cfg, n=3, progress=False)
    assert a.shape == (3, 64, 64) and a.dtype == np.float32 and 0 <= a.min() <= a.max() <= 1
    np.testing.assert_array_equal(a, b)


def test_cli_bench_realism_writes_the_json(tmp_path, capsys):
    out = tmp_path / "tmp.json"
    # Default workers: the spawn pool path.
    assert main(["bench", "realism", "--profile", "smoke", "--images", "40", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert set(r["feature_sets"]) == set(R.FEATURE_SETS)
    assert "scxnn bench realism" in printed and "real vs real" in printed


def test_cli_bench_realism_without_the_real_data_is_one_error_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["bench", "realism", "--profile", "smoke", "--real", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and str(missing) in err and "--real" in err
    (missing).mkdir()
    assert main(["bench", "realism", "--profile", "smoke", "--real", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "labels.csv" in err and "--real" in err
