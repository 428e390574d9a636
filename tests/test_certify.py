"""scxnn.certify: the site threshold a labelled sample certifies, and the certificate file that
``scxnn predict`` trusts only for its own run. The end-to-end ``scxnn certify`` on real films is in
test_kermany.py."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from scxnn.certify import Certificate, CertificateError, load_certificate, run_id, site_threshold
from scxnn.metrics import proportion_ci


def _run(tmp_path, svm=b"svm-1"):
    step3 = tmp_path / "run" / "03_svm_ensemble"
    step3.mkdir(parents=True, exist_ok=True)
    for name, data in (("svm.skops", svm), ("thresholds.json", b"{}"), ("ood.npz", b"gate")):
        (step3 / name).write_bytes(data)
    return tmp_path / "run"


def _cert(run, certified=True, **kw) -> Certificate:
    base = dict(site="site_b", run_id=run_id(run), target=0.99, ci=0.95, certified=certified, threshold=-0.5, films=900,
                patients=800, abnormal_films=450, abnormal_patients=400, missed=0, sensitivity=1.0, sensitivity_lo=0.9908,
                sensitivity_hi=1.0, specificity=0.6, specificity_lo=0.55, specificity_hi=0.65, auto_normal=0.3,
                auto_normal_lo=0.27, auto_normal_hi=0.33, ood_flagged_share=0.02, abnormal_needed=368,
                reason="the exact lower 95% bound reaches 99%", created="2026-11-30")
    base.update(kw)
    return Certificate(**base)


def _write(folder, cert):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "certificate.json").write_text(json.dumps(asdict(cert)))
    return folder


def test_a_certificate_loads_for_its_own_run_only(tmp_path):
    run = _run(tmp_path)
    folder = _write(tmp_path / "cert", _cert(run))
    assert load_certificate(folder, run).threshold == -0.5
    assert load_certificate(folder / "certificate.json").site == "site_b"
    other = _run(tmp_path / "other", svm=b"svm-2")  # retrained: another SVM, another run id
    with pytest.raises(CertificateError, match="another run"):
        load_certificate(folder, other)


def test_a_refused_or_foreign_file_is_no_certificate(tmp_path):
    run = _run(tmp_path)
    refused = _write(tmp_path / "refused", _cert(run, certified=False, reason="needs at least 368 abnormal patients"))
    with pytest.raises(CertificateError, match="not certified: needs at least 368"):
        load_certificate(refused, run)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "certificate.json").write_text('{"threshold": 5}')
    with pytest.raises(CertificateError, match="not a certificate"):
        load_certificate(tmp_path / "junk", run)
    with pytest.raises(FileNotFoundError, match="scxnn certify"):
        load_certificate(tmp_path / "nowhere", run)


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
