"""scxnn.certify: the site threshold a labelled sample certifies, at which confidence, and the plan of
a site sample. The certificate file that ``scxnn predict`` trusts only for its own run is in
test_trained_run.py; the end-to-end ``scxnn certify`` on real films is in test_kermany.py."""

from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest

from scxnn.certify import plan, site_threshold
from scxnn.cli import main
from scxnn.metrics import certifiable_with, clopper_pearson, proportion_ci

from test_trained_run import _run


def test_flagged_films_cannot_be_misses_and_the_bound_holds():
    rng = np.random.default_rng(0)
    n_norm, n_abn = 400, 420
    s = np.r_[rng.normal(-2, 1, n_norm), rng.normal(2.5, 1, n_abn)]
    y = np.r_[np.zeros(n_norm, int), np.ones(n_abn, int)]
    g = np.arange(len(y))
    flags = np.zeros(len(y), bool)
    t, certified = site_threshold(s, flags, y, g, 0.99, 200, 0, 0.95)
    assert certified and proportion_ci(s[y == 1] >= t, g[y == 1])[0] >= 0.99
    # The abnormal films scoring lowest, flagged by the gate, are reviewed anyway: a higher threshold certifies.
    low = np.flatnonzero(y == 1)[np.argsort(s[y == 1])[:5]]
    flags[low] = True
    t2, certified2 = site_threshold(s, flags, y, g, 0.99, 200, 0, 0.95)
    assert certified2 and t2 > t
    # Too few abnormal films: refused.
    small = np.r_[np.arange(n_norm), np.flatnonzero(y == 1)[:100]]
    assert site_threshold(s[small], flags[small] * 0, y[small], g[small], 0.99, 200, 0, 0.95)[1] is False


# --------------------------------------------------------------------------- confidence


@pytest.mark.parametrize("target, confidence, misses, n", [
    (0.99, 0.975, 0, 368),  # the default: the lower end of the run's two-sided 95% intervals
    (0.99, 0.95, 0, 299),
    (0.99, 0.975, 1, 555),  # the figure docs/definite-normal.md and data.val_min_abnormal_patients quote
    (0.95, 0.975, 0, 72),
])
def test_abnormal_patients_a_target_takes(target, confidence, misses, n):
    ci = 2 * confidence - 1
    assert certifiable_with(target, ci, misses=misses) == n
    # The smallest such n: one patient fewer (with as many misses) falls short.
    assert clopper_pearson(n - misses, n, ci)[0] >= target > clopper_pearson(n - 1 - misses, n - 1, ci)[0]


def _sample(n_abnormal: int, overlap: bool):
    """A site sample, one film per patient: 400 normal, ``n_abnormal`` abnormal; with ``overlap`` the
    two score distributions overlap, so the certified threshold depends on the bound."""
    rng = np.random.default_rng(0)
    hi = (2.5, 1) if overlap else (8, 0.5)
    s = np.r_[rng.normal(-2, 1, 400), rng.normal(*hi, n_abnormal)]
    y = np.r_[np.zeros(400, int), np.ones(n_abnormal, int)]
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(len(y))], "patient_id": [f"p{i}" for i in range(len(y))],
                         "site": "site_b", "abnormal": y, "score": s, "ood_score": 0.0})


def _certify_cli(monkeypatch, tmp_path, capsys, table, *extra):
    """``scxnn certify --json`` on ``table`` as if the run had scored it: the models, SVM and gate are
    not what is tested here, the bound and the certificate are."""
    import scxnn.certify
    import scxnn.ood
    from scxnn.config import load_config

    run = _run(tmp_path)
    th = types.SimpleNamespace(target=0.99)
    monkeypatch.setattr(scxnn.certify, "score_manifest", lambda *a, **k: (load_config("smoke"), table.copy(), [], {"patients": 0, "images": 0}, th))
    monkeypatch.setattr(scxnn.ood, "load", lambda path: types.SimpleNamespace(threshold=1.0))
    out = tmp_path / f"cert{len(list(tmp_path.glob('cert*')))}"
    rc = main(["certify", "--models", str(run), "--manifest", str(tmp_path / "m.csv"), "--out", str(out), "--json", "--no-progress", *extra])
    return rc, json.loads(capsys.readouterr().out)


def test_a_looser_confidence_never_certifies_less(monkeypatch, tmp_path, capsys):
    table = _sample(420, overlap=True)
    rc, default = _certify_cli(monkeypatch, tmp_path, capsys, table)
    assert rc == 0 and default["confidence"] == 0.975 and default["ci"] == 0.95  # exactly the certificates before --confidence
    rc, same = _certify_cli(monkeypatch, tmp_path, capsys, table, "--confidence", "0.975")
    assert rc == 0 and same["threshold"] == default["threshold"]
    rc, loose = _certify_cli(monkeypatch, tmp_path, capsys, table, "--confidence", "0.95")
    assert rc == 0 and loose["threshold"] >= default["threshold"] and loose["ci"] == pytest.approx(0.90)
    assert "one-sided 95.0% lower bound" in loose["verdict"] and loose["sensitivity_lo"] >= 0.99


@pytest.mark.parametrize("confidence, certified", [(None, False), ("0.975", False), ("0.95", True)])
def test_320_abnormal_patients_certify_99_at_95_but_not_at_97_5(confidence, certified, monkeypatch, tmp_path, capsys):
    # None missed: 299 patients suffice at one-sided 95%, 368 are needed at 97.5%.
    rc, cert = _certify_cli(monkeypatch, tmp_path, capsys, _sample(320, overlap=False),
                            *(["--confidence", confidence] if confidence else []))
    assert (rc, cert["certified"], cert["missed"]) == (0 if certified else 3, certified, 0)
    if not certified:
        assert "at one-sided 97.5% confidence takes at least 368 abnormal patients with none missed, 48 more" in cert["reason"]


@pytest.mark.parametrize("plan_flag", [[], ["--plan"]], ids=["certify", "plan"])
@pytest.mark.parametrize("confidence", ["0.5", "1", "1.2", "nan"])
def test_a_confidence_outside_its_range_is_one_error_line(confidence, plan_flag, tmp_path, capsys):
    # Refused before any film is scored or any file read: the run and manifest need not exist.
    files = [] if plan_flag else ["--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o")]
    assert main(["certify", "--models", str(tmp_path / "run"), *files, *plan_flag, "--confidence", confidence]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: confidence must be in (0.5, 1)"), err


# --------------------------------------------------------------------------- plan


def _planned_run(tmp_path, n_abnormal=200, n_normal=60):
    run = _run(tmp_path)
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(n_normal, int), np.ones(n_abnormal, int)]
    s = np.r_[rng.normal(-1.5, 1, n_normal), rng.normal(1.5, 1, n_abnormal)]
    pd.DataFrame({"image_id": [f"i{i}" for i in range(len(y))], "patient_id": [f"p{i // 2}" for i in range(len(y))],
                  "abnormal": y, "score": s}).to_csv(run / "03_svm_ensemble" / "val_scores.csv", index=False)
    return run, s, y


def test_a_plan_asks_more_for_more_and_expects_less(tmp_path):
    run, s, y = _planned_run(tmp_path)
    df = plan(run)
    assert len(df) == 5 * 4 and df.attrs["validation_abnormal_patients"] == 100
    for axis, other in (("target", "confidence"), ("confidence", "target")):
        for _, rows in df.sort_values(axis).groupby(other):
            assert rows["abnormal_patients"].is_monotonic_increasing and rows["abnormal_patients"].is_unique
            assert (rows["abnormal_patients_1_miss"] > rows["abnormal_patients"]).all()
            for col in ("expected_threshold", "expected_auto_normal", "expected_normals_cleared"):
                assert rows[col].is_monotonic_decreasing, (axis, col)
    row = df[(df["target"] == 0.99) & (df["confidence"] == 0.975)].iloc[0]
    assert (row["abnormal_patients"], row["abnormal_patients_1_miss"]) == (368, 555)
    # Past the 200 validation abnormal films, the estimate is their lowest score, and says so.
    assert (df["extrapolated"] == (df["abnormal_patients"] > 200)).all() and 0 < df["extrapolated"].sum() < len(df)
    assert (df.loc[df["extrapolated"], "expected_threshold"] == s[y == 1].min()).all()
    inside = df[~df["extrapolated"]]
    assert (inside["expected_threshold"] > s[y == 1].min()).all()
    t = inside["expected_threshold"].iloc[0]
    assert inside["expected_normals_cleared"].iloc[0] == pytest.approx((s[y == 0] < t).mean())


def test_plan_on_the_command_line(tmp_path, capsys):
    run, *_ = _planned_run(tmp_path)
    assert main(["certify", "--models", str(run), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "  99%       97.5%                368          555" in out and "validation scores of" in out and "* more patients" in out
    # A target or confidence given with --plan replaces that axis's defaults, whether among them or not.
    assert main(["certify", "--models", str(run), "--plan", "--json", "--target", "0.99", "--confidence", "0.95"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [(r["target"], r["confidence"], r["abnormal_patients"]) for r in got["plan"]] == [(0.99, 0.95, 299)]
    assert got["run"] == str(run) and got["validation_abnormal_patients"] == 100
    assert main(["certify", "--models", str(run), "--plan", "--json", "--target", "0.985"]) == 0
    assert {r["target"] for r in json.loads(capsys.readouterr().out)["plan"]} == {0.985}


@pytest.mark.parametrize("argv, message", [
    (["--plan"], "no validation scores to plan from"),  # a run without step 03's val_scores.csv
    (["--plan", "--out", "o"], "--plan scores no film and writes nothing, so it takes no --out"),
    ([], "certify needs --manifest (the site's labelled sample) and --out"),
    (["--manifest", "m.csv"], "certify needs --out"),
], ids=["no-val-scores", "plan-with-out", "no-manifest", "no-out"])
def test_certify_and_plan_say_what_is_missing_or_too_much(argv, message, tmp_path, capsys):
    assert main(["certify", "--models", str(_run(tmp_path)), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
