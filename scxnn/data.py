"""The manifest: one table that every image source (synthetic generator, adapters, the preprocessing
cache) produces and every later step reads.

One row per image. Columns (in this order):

====================  ==============================================================================
image_id              unique, stable id (no PHI: derived from the source, never a patient name)
patient_id            salted hash of the source's patient key (:func:`hash_patient`)
study_date            ISO date ``YYYY-MM-DD`` or ``YYYY-MM`` (synthetic sites, temporal splits); may be empty
site                  dataset / site: ``internal``, ``temporal``, ``external1``, ``external2``, ``kermany``…
split                 ``train`` / ``val`` / ``test`` (by patient and image; :func:`check_patient_splits`, :func:`check_image_splits`)
label_type            ``hard`` (lesion masks for its positive findings) or ``weak`` (image-level only)
<13 findings>         one column per target finding: 1 present, 0 absent, empty (NA) unknown
<unseen findings>     ``pneumonia``, ``edema``, ``fracture``: same coding, evaluation sets only
abnormal              the source's verdict on the whole film: 1 it gives the film any finding, mapped
                      to a column or not; 0 it calls the film normal; empty (NA) it says neither
                      (:func:`abnormal_labels`)
masks                 ``finding=relative/path.png;finding=…`` for hard labels (:func:`parse_masks`)
view                  ``PA``, ``AP``, ``LATERAL``… or empty
path                  the image, relative to the manifest's folder (or absolute)
source_sha256         sha256 of the source file's bytes (resume key, provenance)
====================  ==============================================================================

Optional technical columns (``modality``, ``body_part``, ``photometric``, ``bits_stored``,
``pixel_spacing_mm``, ``scope_flags``) may follow, and ``other_findings``: the source's findings that
no column maps, ``|``-separated label names (e.g. ``Emphysema|Infiltration``). Nothing else: no
names, no raw IDs, no free-text header fields.

**Normal means the source says normal.** A film is abnormal when its source gives it any finding,
whether or not a column maps it, and normal only when the source calls the whole film normal; a
source's "No Finding" vouches for the findings that source labels, so the columns it never labels
stay NA on its normal films. A manifest written without the ``abnormal`` column (a hand-made one) gets
it from the finding columns: 1 when any is 1, 0 when all are 0, NA otherwise.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from scxnn.utils import atomic_open, log, sha256_text

MANIFEST_NAME = "manifest.csv"
SPLITS = ("train", "val", "test")
LABEL_TYPES = ("hard", "weak")
BASE_COLUMNS = ("image_id", "patient_id", "study_date", "site", "split", "label_type")
TAIL_COLUMNS = ("masks", "view", "path", "source_sha256")
TECH_COLUMNS = ("modality", "body_part", "photometric", "bits_stored", "pixel_spacing_mm", "scope_flags")
ABNORMAL = "abnormal"  # the source's verdict on the film: 1 / 0 / NA (unknown)
OPTIONAL_COLUMNS = (*TECH_COLUMNS, "other_findings")
# A fixed, public salt: hashing is for de-identification in shared tables, not for secrecy against
# someone who already holds the source IDs. Change it per deployment via SCXNN_PATIENT_SALT.
_DEFAULT_SALT = "scxnn-patient-v1"


class ManifestError(ValueError):
    """A manifest is malformed or breaks a study rule (e.g. a patient in two splits)."""


MAIN_SITE = "internal"


def main_site(sites: Iterable[str]) -> str:
    """The site a study's headline is about: ``internal`` (the hospital the models were trained on)
    when present, else the first site given (a real dataset's own name; pass the training films'
    sites first). The one rule for Table 1, the screening headlines and notebook 04."""
    sites = [str(s) for s in sites]
    if not sites:
        raise ValueError("no site to choose the main one from")
    return MAIN_SITE if MAIN_SITE in sites else sites[0]


def manifest_columns(findings: Sequence[str], unseen: Sequence[str]) -> list[str]:
    return [*BASE_COLUMNS, *findings, *unseen, ABNORMAL, *TAIL_COLUMNS]


def abnormal_labels(df: pd.DataFrame, findings: Sequence[str], unseen: Sequence[str]) -> pd.Series:
    """Each film's reference label, three-way, as a nullable ``Int8`` Series aligned with ``df``:
    1 abnormal (any finding column is 1, or the source's ``abnormal`` verdict is 1: a finding no
    column maps), 0 normal (the source calls the film normal; without an ``abnormal`` column, every
    finding column is 0), NA unknown (the source says neither, e.g. CheXpert's uncertain -1 or SIIM's
    "no pneumothorax"). The one rule behind the finding models' "normal" class, the SVM fit, the
    thresholds and every normal-vs-abnormal figure; unknown films are scored but enter none of them."""
    cols = [c for c in (*findings, *unseen) if c in df]
    vals = df[cols].astype("Float64") if cols else pd.DataFrame(index=df.index)
    positive = (vals == 1).fillna(False).any(axis=1) if cols else pd.Series(False, index=df.index)
    if ABNORMAL in df:
        out = pd.to_numeric(df[ABNORMAL], errors="coerce").astype("Int8")
    else:
        all_absent = (vals == 0).fillna(False).all(axis=1) if cols else pd.Series(False, index=df.index)
        out = pd.Series(pd.NA, index=df.index, dtype="Int8")
        out[all_absent.to_numpy(dtype=bool)] = 0
    out = out.copy()
    out[positive.to_numpy(dtype=bool)] = 1
    return out


def hash_patient(raw_key: str, salt: str | None = None) -> str:
    """De-identified patient id: 16 hex chars of sha256(salt + key). Stable across runs."""
    salt = salt if salt is not None else os.environ.get("SCXNN_PATIENT_SALT", _DEFAULT_SALT)
    return sha256_text(f"{salt}\x00{raw_key}", 16)


def format_masks(masks: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in masks.items())


def parse_masks(value: object) -> dict[str, str]:
    """``"nodule=m/a.png;effusion=m/b.png"`` -> dict; empty / NA -> {}."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value == "":
        return {}
    out = {}
    for part in str(value).split(";"):
        if part:
            k, _, v = part.partition("=")
            if not v:
                raise ManifestError(f"masks entry {part!r} is not 'finding=path'")
            out[k] = v
    return out


def new_manifest(rows: Iterable[Mapping], findings: Sequence[str], unseen: Sequence[str]) -> pd.DataFrame:
    """A manifest DataFrame in canonical column order and dtypes from dict rows.

    Finding columns become nullable ``Int8`` (1 / 0 / NA). Unknown extra keys are kept only if they
    are known technical columns; anything else is an error, so no stray (possibly identifying) field
    slips into a manifest.
    """
    cols = manifest_columns(findings, unseen)
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(cols) - set(OPTIONAL_COLUMNS))
    if extra:
        raise ManifestError(f"unknown manifest columns {extra}; allowed extras: {', '.join(OPTIONAL_COLUMNS)}")
    # A row without a verdict (the generator's, a loose file's) gets the one its columns give.
    lacks = np.array([ABNORMAL not in r for r in rows], dtype=bool)
    if lacks.all():
        cols.remove(ABNORMAL)
    tech = [c for c in OPTIONAL_COLUMNS if any(c in r for r in rows)]
    df = normalise(pd.DataFrame(rows, columns=[*cols, *tech]), findings, unseen)
    if lacks.any() and not lacks.all():
        df.loc[lacks, ABNORMAL] = abnormal_labels(df.drop(columns=[ABNORMAL]), findings, unseen)[lacks]
    return df


def normalise(df: pd.DataFrame, findings: Sequence[str], unseen: Sequence[str]) -> pd.DataFrame:
    for c in (*findings, *unseen):
        if c not in df:
            df[c] = pd.NA
        df[c] = pd.to_numeric(df[c], errors="raise").astype("Int8")
    if ABNORMAL in df:
        df[ABNORMAL] = pd.to_numeric(df[ABNORMAL].replace("", pd.NA), errors="raise").astype("Int8")
        bad = (df[ABNORMAL] == 0).fillna(False) & (df[list((*findings, *unseen))] == 1).fillna(False).any(axis=1)
        if bad.any():
            raise ManifestError(f"{int(bad.sum())} film(s) are abnormal 0 (normal) yet have a finding marked 1, e.g. "
                                f"{list(df.loc[bad, 'image_id'][:3])}")
    df[ABNORMAL] = abnormal_labels(df, findings, unseen)
    df = df[[c for c in manifest_columns(findings, unseen) if c in df] + [c for c in df if c not in manifest_columns(findings, unseen)]]
    for c in (*BASE_COLUMNS, *TAIL_COLUMNS):
        if c not in df:
            df[c] = ""
        df[c] = df[c].fillna("").astype(str)
    return df


def read_manifest(path: str | os.PathLike, findings: Sequence[str], unseen: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in manifest_columns(findings, unseen) if c not in df.columns and c != ABNORMAL]
    if missing:
        raise ManifestError(f"{path}: missing columns {missing}")
    for c in (*findings, *unseen, ABNORMAL):
        if c in df:
            df[c] = df[c].replace("", pd.NA)
    df = normalise(df, findings, unseen)
    validate_manifest(df, findings, unseen, source=str(path))
    return df


PREVIOUS_SUFFIX = ".previous"


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` atomically. A different file already at ``path`` (an earlier build, or one edited
    by hand) is not lost: it is kept as ``<name>.previous`` (one generation), with a warning."""
    path = Path(path)
    text = df.to_csv(index=False)
    if path.is_file():
        old = path.read_bytes()
        if old == text.encode("utf-8"):
            return path
        keep = path.with_name(path.name + PREVIOUS_SUFFIX)
        with atomic_open(keep, "wb") as fh:
            fh.write(old)
        log.warning("%s already existed with other contents: replaced, the old file kept as %s", path, keep.name)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return path


def validate_manifest(df: pd.DataFrame, findings: Sequence[str], unseen: Sequence[str], source: str = "manifest") -> None:
    """Fail loudly on a broken manifest: duplicate ids, bad split or label values, bad finding codes,
    and patients or identical images in two splits."""
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ManifestError(f"{source}: duplicate image_id {list(dup[:5])}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise ManifestError(f"{source}: split must be one of {SPLITS}, got {bad}")
    bad = sorted(set(df["label_type"]) - set(LABEL_TYPES))
    if bad:
        raise ManifestError(f"{source}: label_type must be one of {LABEL_TYPES}, got {bad}")
    for c in (*findings, *unseen, *([ABNORMAL] if ABNORMAL in df else [])):
        vals = set(df[c].dropna().unique())
        if not vals <= {0, 1}:
            raise ManifestError(f"{source}: column {c!r} must be 1, 0 or empty, got {sorted(vals)}")
    check_patient_splits(df, source)
    check_image_splits(df, source)


def check_patient_splits(df: pd.DataFrame, source: str = "manifest") -> None:
    """Raise if any patient appears in more than one split (leakage between train and evaluation)."""
    per_patient = df.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        ex = df[df["patient_id"].isin(leaked.index[:3])][["patient_id", "split"]].drop_duplicates()
        raise ManifestError(
            f"{source}: {len(leaked)} patient(s) appear in more than one split, e.g. "
            + "; ".join(f"{p}: {sorted(g['split'])}" for p, g in ex.groupby("patient_id"))
        )


def check_image_splits(df: pd.DataFrame, source: str = "manifest") -> None:
    """Raise if one film (same non-empty ``source_sha256``) is in more than one split: a copy filed
    under another patient id leaks past :func:`check_patient_splits`."""
    films = df.loc[df["source_sha256"].astype(str) != "", ["source_sha256", "split", "image_id"]]
    per_image = films.groupby("source_sha256")["split"].nunique()
    leaked = per_image[per_image > 1]
    if len(leaked):
        ex = films[films["source_sha256"].isin(leaked.index[:3])]
        # image ids and hash prefixes only: a path or file name can carry a patient's name
        raise ManifestError(
            f"{source}: {len(leaked)} image(s) appear in more than one split under {int(films['source_sha256'].isin(leaked.index).sum())} "
            "image ids (same source_sha256, e.g. a copy under another patient id), e.g. "
            + "; ".join(f"{h[:12]}: " + ", ".join(f"{i} ({s})" for i, s in zip(g["image_id"], g["split"])) for h, g in ex.groupby("source_sha256"))
        )


def link_patients(patients: Sequence[str], images: Sequence[str]) -> dict[str, str]:
    """Each patient -> the smallest patient id joined to it through identical images (the same
    non-empty hash in ``images``, one per entry of ``patients``), transitively (union-find)."""
    parent = {p: p for p in patients}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    first: dict[str, str] = {}
    for p, h in zip(patients, images):
        if h:
            a, b = root(p), root(first.setdefault(h, p))
            parent[max(a, b)] = min(a, b)
    return {p: root(p) for p in parent}


def split_by_patient(patients: Sequence[str], fractions: Sequence[float], seed: int,
                     images: Sequence[str] | None = None) -> dict[str, str]:
    """Assign each distinct patient to train / val / test with the given fractions, deterministically.
    With ``images`` (content hashes, one per entry of ``patients``), patients who share an identical
    image are assigned together; without such links the split is the same as without ``images``."""
    group = link_patients(patients, images) if images is not None else {p: p for p in patients}
    uniq = sorted(set(group.values()))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n = len(uniq)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3:  # every split gets at least one patient when there are enough
        n_val = max(n_val, 1)
        n_train = min(max(n_train, 1), n - n_val - 1)
    out = {}
    for rank, i in enumerate(order):
        out[uniq[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return {p: out[g] for p, g in group.items()}


def in_scope(df: pd.DataFrame, source: str = "manifest") -> tuple[pd.DataFrame, dict[str, int]]:
    """The films the study screens (chest PA/AP CR/DX): the rows with an empty ``scope_flags``
    (a manifest without the column is all in scope), and how many films each flag left out. The one
    rule for training and evaluation: a CT or a lateral film neither teaches nor tests a screener of
    frontal chest films, whatever made the manifest."""
    if "scope_flags" not in df:
        return df, {}
    flags = df["scope_flags"].fillna("").astype(str).str.strip()
    out = flags != ""
    if not out.any():
        return df, {}
    counts = dict(sorted(Counter(f for v in flags[out] for f in v.split(";") if f).items()))
    log.warning("%s: %d of %d films left out as out of scope (%s)", source, int(out.sum()), len(df),
                ", ".join(f"{k}: {n}" for k, n in counts.items()))
    return df[~out].reset_index(drop=True), counts


# --------------------------------------------------------------------------- summaries (notebook 01)


def table1(manifest: pd.DataFrame, cfg, thesis: dict | None) -> pd.DataFrame:
    """Images per finding in the internal (training) site, hard and weak labels, by risk group, in the
    thesis' layout; an image with two findings counts under both, as in the thesis. The thesis'
    counts sit beside ours when ``thesis`` (``scxnn.thesis.load_tables``) is given."""
    # The training site: "internal" for the synthetic study, the dataset's own name for an adapter's.
    site = main_site(manifest.loc[manifest["split"] == "train", "site"].value_counts().index)
    internal = manifest[manifest["site"] == site]
    if site != MAIN_SITE:
        thesis = None  # the thesis' counts describe its hospital's data, not another dataset
    ref = (thesis or {}).get("table1_dataset", {})
    rows = []
    for finding, risk in cfg.findings.items():
        pos = internal[internal[finding] == 1]
        hard = int((pos["label_type"] == "hard").sum())
        weak = int((pos["label_type"] == "weak").sum())
        t = ref.get(finding, {}) if isinstance(ref.get(finding), dict) else {}
        rows.append({"risk": risk, "finding": finding, "hard": hard, "weak": weak, "total": hard + weak,
                     "thesis_hard": t.get("hard"), "thesis_weak": t.get("weak"), "thesis_total": t.get("total")})
    target = list(cfg.findings)
    normal = internal[(abnormal_labels(internal, target, list(cfg.unseen_findings)) == 0).fillna(False).to_numpy(dtype=bool)]
    t = ref.get("normal", {}) if isinstance(ref.get("normal"), dict) else {}
    rows.append({"risk": "normal", "finding": "normal", "hard": int((normal["label_type"] == "hard").sum()),
                 "weak": int((normal["label_type"] == "weak").sum()), "total": len(normal),
                 "thesis_hard": None, "thesis_weak": None, "thesis_total": t.get("total")})
    df = pd.DataFrame(rows)
    if not thesis:
        df = df.drop(columns=["thesis_hard", "thesis_weak", "thesis_total"])
    for c in df.columns[2:]:
        df[c] = df[c].astype("Int64")
    return df


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per site and split, with how many are normal."""
    g = manifest.groupby(["site", "split", "label_type"])
    return g.agg(images=("image_id", "size"), patients=("patient_id", "nunique")).reset_index()
