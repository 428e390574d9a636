"""The manifest: one table that every image source (synthetic generator, adapters, the preprocessing
cache) produces and every later step reads.

One row per image. Columns (in this order):

====================  ==============================================================================
image_id              unique, stable id (no PHI: derived from the source, never a patient name)
patient_id            salted hash of the source's patient key (:func:`hash_patient`)
study_date            ISO date ``YYYY-MM-DD`` or ``YYYY-MM`` (synthetic sites, temporal splits); may be empty
site                  dataset / site: ``internal``, ``temporal``, ``external1``, ``external2``, ``kermany``…
split                 ``train`` / ``val`` / ``test`` (by patient; :func:`check_patient_splits`)
label_type            ``hard`` (lesion masks for its positive findings) or ``weak`` (image-level only)
<13 findings>         one column per target finding: 1 present, 0 absent, empty (NA) unknown
<unseen findings>     ``pneumonia``, ``edema``, ``fracture``: same coding, evaluation sets only
masks                 ``finding=relative/path.png;finding=…`` for hard labels (:func:`parse_masks`)
view                  ``PA``, ``AP``, ``LATERAL``… or empty
path                  the image, relative to the manifest's folder (or absolute)
source_sha256         sha256 of the source file's bytes (resume key, provenance)
====================  ==============================================================================

Optional technical columns (``modality``, ``body_part``, ``photometric``, ``bits_stored``,
``pixel_spacing_mm``, ``scope_flags``) may follow. Nothing else: no names, no raw IDs, no free-text
header fields.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from scxnn.utils import atomic_open

MANIFEST_NAME = "manifest.csv"
SPLITS = ("train", "val", "test")
LABEL_TYPES = ("hard", "weak")
BASE_COLUMNS = ("image_id", "patient_id", "study_date", "site", "split", "label_type")
TAIL_COLUMNS = ("masks", "view", "path", "source_sha256")
TECH_COLUMNS = ("modality", "body_part", "photometric", "bits_stored", "pixel_spacing_mm", "scope_flags")
# A fixed, public salt: hashing is for de-identification in shared tables, not for secrecy against
# someone who already holds the source IDs. Change it per deployment via SCXNN_PATIENT_SALT.
_DEFAULT_SALT = "scxnn-patient-v1"


class ManifestError(ValueError):
    """A manifest is malformed or breaks a study rule (e.g. a patient in two splits)."""


def manifest_columns(findings: Sequence[str], unseen: Sequence[str]) -> list[str]:
    return [*BASE_COLUMNS, *findings, *unseen, *TAIL_COLUMNS]


def hash_patient(raw_key: str, salt: str | None = None) -> str:
    """De-identified patient id: 16 hex chars of sha256(salt + key). Stable across runs."""
    salt = salt if salt is not None else os.environ.get("SCXNN_PATIENT_SALT", _DEFAULT_SALT)
    return hashlib.sha256(f"{salt}\x00{raw_key}".encode()).hexdigest()[:16]


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
    extra = sorted({k for r in rows for k in r} - set(cols) - set(TECH_COLUMNS))
    if extra:
        raise ManifestError(f"unknown manifest columns {extra}; allowed extras: {', '.join(TECH_COLUMNS)}")
    tech = [c for c in TECH_COLUMNS if any(c in r for r in rows)]
    df = pd.DataFrame(rows, columns=[*cols, *tech])
    return normalise(df, findings, unseen)


def normalise(df: pd.DataFrame, findings: Sequence[str], unseen: Sequence[str]) -> pd.DataFrame:
    for c in (*findings, *unseen):
        if c not in df:
            df[c] = pd.NA
        df[c] = pd.to_numeric(df[c], errors="raise").astype("Int8")
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
    missing = [c for c in manifest_columns(findings, unseen) if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing columns {missing}")
    for c in (*findings, *unseen):
        df[c] = df[c].replace("", pd.NA)
    df = normalise(df, findings, unseen)
    validate_manifest(df, findings, unseen, source=str(path))
    return df


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        df.to_csv(fh, index=False)
    return path


def validate_manifest(df: pd.DataFrame, findings: Sequence[str], unseen: Sequence[str], source: str = "manifest") -> None:
    """Fail loudly on a broken manifest: duplicate ids, bad split or label values, bad finding codes,
    and patients in two splits."""
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ManifestError(f"{source}: duplicate image_id {list(dup[:5])}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise ManifestError(f"{source}: split must be one of {SPLITS}, got {bad}")
    bad = sorted(set(df["label_type"]) - set(LABEL_TYPES))
    if bad:
        raise ManifestError(f"{source}: label_type must be one of {LABEL_TYPES}, got {bad}")
    for c in (*findings, *unseen):
        vals = set(df[c].dropna().unique())
        if not vals <= {0, 1}:
            raise ManifestError(f"{source}: column {c!r} must be 1, 0 or empty, got {sorted(vals)}")
    check_patient_splits(df, source)


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


def split_by_patient(patients: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Assign each distinct patient to train / val / test with the given fractions, deterministically."""
    uniq = sorted(set(patients))
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
    return out
