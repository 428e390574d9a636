"""A trained study run (``runs/<profile>``), as the commands that use one see it.

``scxnn predict``, ``scxnn certify`` and ``scxnn evaluate`` each start from a trained run; this module
is what they share, so none of them imports another:

* loading the run's config (:func:`load_run_config`), refusing a folder that is not a trained run;
* the films the run has seen, its training and validation patients and their files' hashes
  (:func:`seen_films`), and leaving them out of a new set or refusing it (:func:`leave_out_seen`,
  :class:`PatientOverlap`);
* scoring a labelled manifest with the run as it is, nothing refitted (:func:`score_manifest`);
* the site certificate bound to the run (:class:`Certificate`, :func:`load_certificate`, written by
  ``scxnn certify``) and the run's id that binds it (:func:`run_id`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from scxnn import ensemble, ood
from scxnn.batch import preprocess_manifest
from scxnn.checkpoints import RunIncomplete, run_model_dirs
from scxnn.config import RESOLVED_NAME, load_resolved
from scxnn.data import read_manifest
from scxnn.metrics import fmt_num
from scxnn.utils import log, sha256_file, sha256_text

CERTIFICATE_NAME = "certificate.json"
SITE_SCORES_NAME = "site_scores.csv"
_FORMAT = 1
_RUN_FILES = ("svm.skops", "thresholds.json", "ood.npz")


class CertificateError(ValueError):
    """A certificate that cannot be used: refused, for another run, or not a certificate."""


# --------------------------------------------------------------------------- the run


class PatientOverlap(ValueError):
    """The manifest holds patients, or identical films, the run trained or validated on."""


def load_run_config(run_dir: str | os.PathLike):
    """The resolved config of the run ``run_dir`` (``runs/<profile>``), as step 03 saved it; a folder
    that is not a trained run is a :class:`RunIncomplete` naming what is missing."""
    step3 = Path(run_dir) / "03_svm_ensemble"
    if not (step3 / RESOLVED_NAME).is_file():
        raise RunIncomplete(f"{run_dir} is not a trained study run: no {step3 / RESOLVED_NAME} (pass runs/<profile> after `make ensemble PROFILE=<profile>`)")
    return load_resolved(step3 / RESOLVED_NAME)


def seen_films(run_dir: str | os.PathLike) -> tuple[set[str], set[str]]:
    """(hashed patient ids, source hashes) of the run's training and validation films: step 03's
    record of them all (``seen_films.parquet``), or, for a run from before it, its logits table
    (every film was scored then). A run from before the table kept ``source_sha256`` gives no
    hashes (logged)."""
    step3 = Path(run_dir) / "03_svm_ensemble"
    path = step3 / ensemble.SEEN_NAME if (step3 / ensemble.SEEN_NAME).is_file() else step3 / ensemble.LOGITS_NAME
    cols = ["patient_id", "split", "source_sha256"]
    has_sha = "source_sha256" in pq.read_schema(path).names
    if not has_sha:
        log.warning("%s predates source_sha256: films the run has seen are found by patient only; a copy under another "
                    "patient id cannot be checked (rerun `make ensemble` with this scxnn version)", path)
    t = pd.read_parquet(path, columns=cols if has_sha else cols[:2])
    t = t[t["split"].isin(["train", "val"])]
    hashes = set(t["source_sha256"].astype(str)) - {"", "nan"} if has_sha else set()
    return set(t["patient_id"].astype(str)), hashes


def leave_out_seen(df: pd.DataFrame, seen: tuple[set[str], set[str]], drop_seen: bool, source: str) -> tuple[pd.DataFrame, dict]:
    """``df`` less the films of patients in ``seen`` and the films identical to its films (same
    non-empty ``source_sha256``), with ``{"patients": n, "images": n}`` counted; without
    ``drop_seen`` any such film is a :class:`PatientOverlap`."""
    patients, hashes = seen
    by_patient = df["patient_id"].astype(str).isin(patients)
    sha = df["source_sha256"].astype(str)
    by_image = ~by_patient & sha.ne("") & sha.isin(hashes)
    n = {"patients": int(df.loc[by_patient, "patient_id"].nunique()), "images": int(by_image.sum())}
    if (by_patient | by_image).any() and not drop_seen:
        what = []
        if n["patients"]:
            what.append(f"{n['patients']} patient(s) ({int(by_patient.sum())} films) were in the run's training or validation split")
        if n["images"]:
            ids = ", ".join(df.loc[by_image, "image_id"].astype(str)[:3])
            what.append(f"{n['images']} film(s) are identical to training or validation films of the run under another patient id "
                        f"(same source_sha256; e.g. image_id {ids})")
        raise PatientOverlap(f"{source}: {' and '.join(what)}: scoring them would overstate the result. Pass --drop-seen to leave them out.")
    return df[~(by_patient | by_image)].reset_index(drop=True), n


def score_manifest(run_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike,
                   drop_seen: bool = False, progress: bool = True, ood_scores: bool = False):
    """The labelled films of ``manifest`` through the run ``run_dir`` as it is: its preprocessing
    (into ``out_dir/png``), models, SVM and, with ``ood_scores``, its out-of-distribution gate
    (column ``ood_score``). Nothing is refitted. Returns ``(cfg, table with a score column,
    skipped, {"patients": n, "images": n} left out as seen (:func:`leave_out_seen`), thresholds)``;
    ``out_dir/logits.parquet`` holds the table. Shared by ``scxnn evaluate`` and ``scxnn certify``."""
    run, out, mpath = Path(run_dir), Path(out_dir), Path(manifest)
    cfg = load_run_config(run)
    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    if not mpath.is_file():
        raise FileNotFoundError(f"no manifest at {mpath} (build one with `scxnn manifest DATASET ROOT --out DIR`)")
    df = read_manifest(mpath, findings, unseen)
    missing = [f for f in findings if df[f].isna().all()]
    if missing:
        log.warning("the manifest grades none of %s: those findings count only through the abnormal label", ", ".join(missing))
    seen = seen_films(run)
    # The manifest's own hashes (adapters fill them) spare preprocessing the seen films...
    n_films = len(df)
    df, dropped = leave_out_seen(df, seen, drop_seen, str(mpath))
    if df.empty:
        raise ValueError(f"no film of {mpath} is left to evaluate (all {n_films} were seen by the run)")
    # Every film is an evaluation film here, whatever split the adapter gave it.
    df["split"] = "test"
    # Tables and figures go under out_dir, not the study's reports/.
    cfg = cfg.replace({"paths.reports": str(out.resolve())})
    cache = out / "png"
    pre, skipped = preprocess_manifest(cfg, df, mpath.parent, cache, progress=progress)
    if pre.empty:
        raise ValueError(f"none of the {len(df)} films could be read; see {cache / 'skipped.csv'}")
    # ... and the hashes preprocessing took of every file's bytes catch the rest, before any scoring.
    kept, more = leave_out_seen(pre, seen, drop_seen, str(mpath))
    dropped = {k: dropped[k] + more[k] for k in dropped}
    if kept.empty:
        raise ValueError(f"no film of {mpath} is left to evaluate (all {n_films} were seen by the run or unreadable)")
    dirs = run_model_dirs(run, cfg)
    gate_path = run / "03_svm_ensemble" / ensemble.OOD_NAME
    if ood_scores and not gate_path.is_file():
        raise RunIncomplete(f"{run}: no out-of-distribution model ({gate_path}); rerun `make ensemble` with this scxnn version")
    # logits_table checks each model's preprocessing fingerprint
    scored = ensemble.logits_table(cfg, dirs, progress=progress, cache=cache, features=ood_scores,
                                   exclude=sorted(set(pre["image_id"]) - set(kept["image_id"])))
    table, feats = scored if ood_scores else (scored, None)
    svm, th = ensemble.load(run / "03_svm_ensemble")
    table["score"] = ensemble.table_scores(svm, table, findings, cfg.model.num_classes)
    if ood_scores:
        table["ood_score"] = ood.load(gate_path).score(feats)
    ensemble.save_logits(table, out)
    return cfg, table, skipped, dropped, th


# --------------------------------------------------------------------------- its site certificates


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
    confidence: float = 0.975  # level of the one-sided exact lower bound of sensitivity; ci = 2 * confidence - 1

    def describe(self) -> str:
        if not self.certified:
            return f"site {self.site}: not certified: {self.reason}"
        return (f"site {self.site}: threshold {self.threshold:.4f} certifies sensitivity >= {pct(self.target)} "
                f"(exact one-sided {self.confidence:.1%} lower bound {fmt_num(self.sensitivity_lo, rounding='down')}, {self.abnormal_films} abnormal films of "
                f"{self.abnormal_patients} patients, {self.missed} missed); auto-normal {self.auto_normal:.1%} of {self.films} films")


def pct(x: float) -> str:
    """0.99 -> "99%", 0.975 -> "97.5%": a target or confidence as typed, without false rounding."""
    return f"{100 * x:.2f}".rstrip("0").rstrip(".") + "%"


def run_id(run_dir: str | os.PathLike) -> str:
    """A short hash of the run's SVM, thresholds and out-of-distribution gate: what a certificate binds to."""
    step3 = Path(run_dir) / "03_svm_ensemble"
    return sha256_text("".join(f"{name}\0{sha256_file(step3 / name) if (step3 / name).is_file() else 'absent'}\0"
                               for name in _RUN_FILES), 16)


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
    fields = {f.name: f for f in dataclasses.fields(Certificate)}
    if not isinstance(data, dict):
        raise CertificateError(f"{p}: not a certificate (a JSON {type(data).__name__}, not an object)")
    # A key this version does not know is refused; a field added since the file was written (it has
    # a default) is filled in, so the certificates of an earlier version still load.
    unknown = sorted(set(data) - set(fields))
    missing = sorted(k for k, f in fields.items() if k not in data
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if unknown or missing:
        raise CertificateError(f"{p}: not a certificate of this scxnn version ("
                               + "; ".join(x for x in (unknown and f"unknown keys {unknown}", missing and f"missing keys {missing}") if x)
                               + ")")
    if data.get("format", _FORMAT) != _FORMAT:
        raise CertificateError(f"{p}: certificate format {data['format']}, this scxnn reads {_FORMAT}")
    if "confidence" not in data:  # before --confidence: the lower end of the two-sided ci interval
        data = {**data, "confidence": (1 + float(data["ci"])) / 2}
    cert = Certificate(**data)
    if not cert.certified:
        raise CertificateError(f"{p}: {cert.describe()}")
    if run_dir is not None and cert.run_id != run_id(run_dir):
        raise CertificateError(f"{p}: made for another run (run id {cert.run_id}, {run_dir} is {run_id(run_dir)}); "
                               "certify the site again with this run")
    return cert
