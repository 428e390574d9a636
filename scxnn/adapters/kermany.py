"""Kermany et al. 2018 pediatric chest radiographs (normal / bacterial / viral pneumonia).

Layouts read (``root``):

* the shared dev sample: ``labels.csv`` (columns ``path``, ``label`` in normal | pneumonia_bacterial
  | pneumonia_viral) with the images under ``images/``;
* the upstream Mendeley/Kaggle folders: ``{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`` (no CSV; the
  pneumonia type is in the file name: ``personNNN_bacteria_MMM`` / ``personNNN_virus_MMM``).

Patient: from the file name -- ``personNNN`` for pneumonia images, ``IM-NNNN`` and
``NORMAL2-IM-NNNN`` for normals (the trailing ``-MMMM`` numbers the image). Some persons have both
bacterial and viral images; the split is by that key, so they land in one split. The upstream
train/test folders are not honoured: the dev sample is a re-selection by patient, and the study
needs train/val/test.

Mapping: both pneumonia types -> the unseen finding ``pneumonia``; normals are 0 for pneumonia (and
both subtypes, when asked): what the dataset grades. The 13 target findings are NA on every film,
normal ones included: Kermany's "normal" vouches only for what it grades, and a child with pneumonia
may well have consolidation or effusion that nobody graded. ``abnormal``: normal -> 0, pneumonia
-> 1; ``other_findings`` is always empty (every class is mapped). With ``findings=SUBTYPES`` the two
types become the finding columns instead (a subtype classifier).
Views: all films are AP (dataset description). No lesion masks: every row is ``weak``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from scxnn.adapters import _common as C

DATASET = "kermany"
LAYOUT = "labels.csv + images/<class>/<file>.jpeg, or {train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg"
SUBTYPES = ("bacterial_pneumonia", "viral_pneumonia")
NORMAL_LABELS = ("normal", "NORMAL")
FINDING_MAP: dict[str, str | None] = {
    "pneumonia_bacterial": "pneumonia",
    "pneumonia_viral": "pneumonia",
    "pneumonia": "pneumonia",  # upstream file without a type in its name: subtype columns stay NA
}
SUBTYPE_MAP = {"pneumonia_bacterial": "bacterial_pneumonia", "pneumonia_viral": "viral_pneumonia"}
UNMAPPED: tuple[str, ...] = ()  # every Kermany class is mapped

_PATIENT = re.compile(r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)", re.IGNORECASE)


def patient_of(file_name: str) -> str:
    m = _PATIENT.match(Path(file_name).name)
    if not m:
        raise ValueError(f"kermany: cannot find the patient in file name {file_name!r} (expected personNNN_…, IM-NNNN-…)")
    return m.group(1)


def _label_of_upstream(p: Path) -> str:
    if p.parent.name.upper() == "NORMAL":
        return "normal"
    name = p.name.lower()
    return "pneumonia_bacterial" if "bacteria" in name else "pneumonia_viral" if "virus" in name else "pneumonia"


def _listing(root: Path) -> pd.DataFrame:
    if (root / "labels.csv").is_file():
        df = pd.read_csv(root / "labels.csv", dtype=str)
        missing = {"path", "label"} - set(df.columns)
        if missing:
            raise ValueError(f"kermany: {root / 'labels.csv'} lacks columns {sorted(missing)}")
        return df[["path", "label"]]
    files = sorted(root.glob("*/*/*.jpeg")) + sorted(root.glob("*/*/*.jpg"))
    files = [f for f in files if f.parent.name.upper() in ("NORMAL", "PNEUMONIA")]
    if not files:
        C.require_file(root, ["labels.csv"], DATASET, LAYOUT)  # raises with the layout
    return pd.DataFrame({"path": [f.relative_to(root).as_posix() for f in files], "label": [_label_of_upstream(f) for f in files]})


def build(root, out_dir, findings: Sequence[str], unseen: Sequence[str], seed: int = 0, split=(0.8, 0.1, 0.1)) -> pd.DataFrame:
    root = C.require_root(root, DATASET, LAYOUT)
    out_dir = Path(out_dir)
    cols = [*findings, *unseen]
    rows, skipped = [], []
    for rel, label in _listing(root).itertuples(index=False):
        img = root / rel
        if not img.is_file():
            skipped.append({"path": str(img), "reason": "listed in labels but missing on disk"})
            continue
        normal = label in NORMAL_LABELS
        if not normal and label not in FINDING_MAP:
            skipped.append({"path": str(img), "reason": f"unknown Kermany label {label!r}"})
            continue
        try:
            patient = patient_of(rel)
        except ValueError as e:  # one renamed file must not stop the dataset: it is a skipped row
            skipped.append({"path": str(img), "reason": str(e)})
            continue
        pos = set() if normal else {FINDING_MAP[label], SUBTYPE_MAP.get(label)}
        # Only pneumonia and its subtypes are graded: a normal is 0 there and NA in every other column.
        lab = {"pneumonia", *(SUBTYPES if normal or label in SUBTYPE_MAP else ())}
        labels = C.code_labels(pos, lab, cols, normal)
        rows.append(C.base_row(Path(rel).stem, patient, DATASET, img, out_dir, labels, view="AP", abnormal=C.verdict(not normal, normal)))
    return C.finish(rows, findings, unseen, seed, split, skipped, source=DATASET)
