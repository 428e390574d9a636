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
   abnormal films it would take;
3. screen: ``scxnn predict --certificate CERT`` reports ``definite_normal`` with that threshold.
   Without a certificate, films that would be normal are ``likely_normal`` (uncertified site),
   unless the run's own validation set certifies the target and the batch looks like its population.

The sample is scored as ``predict`` scores: a film the out-of-distribution gate flags is always
reviewed, so it can never be a miss. The certificate (``certificate.json``) names the run it belongs
to by a hash of the run's SVM, thresholds and gate files; ``predict`` refuses it for any other run.
It also keeps the sample's flagged share, the reference of the batch-level shift check for that site.
Beside it: ``site_scores.csv`` (hashed image and patient ids, label, scores: the audit trail) and
the run's resolved config. No file name or other identifier of a film is written.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scxnn.metrics import fmt_num
from scxnn.utils import atomic_write_text, log, sha256_file, sha256_text

CERTIFICATE_NAME = "certificate.json"
SITE_SCORES_NAME = "site_scores.csv"
_FORMAT = 1
_RUN_FILES = ("svm.skops", "thresholds.json", "ood.npz")


class CertificateError(ValueError):
    """A certificate that cannot be used: refused, for another run, or not a certificate."""


@dataclass(frozen=True)
class Certificate:
    """What ``scxnn certify`` froze for one site (see the module docstring)."""

    site: str
    run_id: str  # hash of the run's step-03 files: the certificate holds for that run only
    target: float
    ci: float
    certified: bool
    threshold: float  # SVM score below which a film is definite_normal at this site
    films: int
    patients: int
    abnormal_films: int
    abnormal_patients: int
    missed: int  # abnormal films of the sample called normal at the threshold
    sensitivity: float
    sensitivity_lo: float
    sensitivity_hi: float
    specificity: float
    specificity_lo: float
    specificity_hi: float
    auto_normal: float
    auto_normal_lo: float
    auto_normal_hi: float
    ood_flagged_share: float  # the sample's share flagged by the gate: the site's batch reference
    abnormal_needed: int  # abnormal patients, none missed, that certifying the target takes at least
    reason: str
    created: str
    format: int = _FORMAT
    unknown_films: int = 0  # sample films whose source says neither normal nor abnormal: left out of the certificate

    def describe(self) -> str:
        if not self.certified:
            return f"site {self.site}: not certified: {self.reason}"
        return (f"site {self.site}: threshold {self.threshold:.4f} certifies sensitivity >= {self.target:.0%} "
                f"(exact {self.ci:.0%} lower bound {fmt_num(self.sensitivity_lo, rounding='down')}, {self.abnormal_films} abnormal films of "
                f"{self.abnormal_patients} patients, {self.missed} missed); auto-normal {self.auto_normal:.1%} of {self.films} films")


def run_id(run_dir: str | os.PathLike) -> str:
    """A short hash of the run's SVM, thresholds and out-of-distribution gate: what a certificate binds to."""
    step3 = Path(run_dir) / "03_svm_ensemble"
    return sha256_text("".join(f"{name}\0{sha256_file(step3 / name) if (step3 / name).is_file() else 'absent'}\0"
                               for name in _RUN_FILES), 16)


def site_threshold(scores: np.ndarray, ood_flags: np.ndarray, abnormal: np.ndarray, patients: np.ndarray,
                   target: float, n_boot: int, seed: int, ci: float) -> tuple[float, bool]:
    """(threshold, certified) for a site sample scored as ``predict`` scores it: a flagged film is
    reviewed whatever its score, so it counts as caught."""
    from scxnn.ensemble import certified_threshold

    s = np.where(np.asarray(ood_flags, dtype=bool), np.inf, np.asarray(scores, dtype=float))
    t, _, certified = certified_threshold(s, abnormal, patients, target, n_boot, seed, ci)
    return t, certified


def certify(run_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike, site: str | None = None,
            target: float | None = None, drop_seen: bool = False, progress: bool = True) -> Certificate:
    """Score the labelled site sample ``manifest`` with the run and write ``out_dir/certificate.json``
    (certified or refused, with the reason), ``site_scores.csv`` and the run's resolved config.
    ``target`` defaults to the run's ``ensemble.sensitivity_target``; ``site`` to the manifest's
    site name(s)."""
    from scxnn import ood
    from scxnn.config import save_resolved
    from scxnn.ensemble import OOD_NAME
    from scxnn.external import score_manifest
    from scxnn.metrics import certifiable_with, screening_with_ci

    run, out = Path(run_dir), Path(out_dir)
    cfg, table, skipped, dropped, th = score_manifest(run, manifest, out, drop_seen, progress, ood_scores=True)
    gate = ood.load(run / "03_svm_ensemble" / OOD_NAME)
    target = float(th.target if target is None else target)
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    n_boot, seed, ci = cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci
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
                         f"and {int((1 - y).sum())} normal (at least {needed} abnormal patients for {target:.0%})")
    t, certified = site_threshold(s, flags, y, g, target, n_boot, seed, ci)
    pred = (s >= t) | flags
    m = screening_with_ci(y, pred, g, n_boot, seed, ci)
    if certified:
        reason = f"the exact lower {ci:.0%} bound of the sample's sensitivity reaches {target:.0%} at this threshold"
    else:
        more = max(needed - n_abn_pat, 0)
        reason = (f"no threshold certifies sensitivity >= {target:.0%} on this sample ({n_abn_pat} abnormal patients): certifying it "
                  f"takes at least {needed} abnormal patients with none missed" + (f", {more} more than the sample has" if more else
                                                                                  ", and fewer misses than this sample shows"))
    sites = sorted(set(table["site"].astype(str)))
    cert = Certificate(
        site=site or "+".join(sites), run_id=run_id(run), target=target, ci=ci, certified=certified, threshold=float(t),
        films=int(len(table)), patients=int(len(np.unique(g))), abnormal_films=int(y.sum()), abnormal_patients=n_abn_pat,
        missed=int(m["fn"]), **{k: float(m[k]) for k in ("sensitivity", "sensitivity_lo", "sensitivity_hi", "specificity",
                                                          "specificity_lo", "specificity_hi", "auto_normal", "auto_normal_lo",
                                                          "auto_normal_hi")},
        ood_flagged_share=float(flags.mean()), abnormal_needed=needed, reason=reason,
        created=_dt.date.today().isoformat(), unknown_films=int(unknown.sum()))
    out.mkdir(parents=True, exist_ok=True)
    cols = ["image_id", "patient_id", "site", "abnormal", "score", "ood_score"]
    atomic_write_text(out / SITE_SCORES_NAME, table[cols].assign(ood_flag=flags).to_csv(index=False))
    save_resolved(cfg, out)
    atomic_write_text(out / CERTIFICATE_NAME, json.dumps(asdict(cert), indent=1))
    log.info("%s (%d films skipped; left out as seen by the run: %d patient(s), %d identical film(s) under other patient ids)",
             cert.describe(), len(skipped), dropped["patients"], dropped["images"])
    return cert


def load_certificate(path: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Certificate:
    """Read ``certificate.json`` (``path`` is the file or its folder). Refuses a certificate that
    did not certify, one made for another run than ``run_dir``, and files that are not certificates."""
    p = Path(path)
    p = p / CERTIFICATE_NAME if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no certificate at {p} (make one with `scxnn certify --models RUN --manifest SITE.csv --out DIR`)")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise CertificateError(f"{p}: not a certificate ({e})") from None
    fields = {f.name for f in dataclasses.fields(Certificate)}
    if not isinstance(data, dict) or set(data) != fields:
        raise CertificateError(f"{p}: not a certificate of this scxnn version (keys differ from {sorted(fields)})")
    if data["format"] != _FORMAT:
        raise CertificateError(f"{p}: certificate format {data['format']}, this scxnn reads {_FORMAT}")
    cert = Certificate(**data)
    if not cert.certified:
        raise CertificateError(f"{p}: {cert.describe()}")
    if run_dir is not None and cert.run_id != run_id(run_dir):
        raise CertificateError(f"{p}: made for another run (run id {cert.run_id}, {run_dir} is {run_id(run_dir)}); "
                               "certify the site again with this run")
    return cert
