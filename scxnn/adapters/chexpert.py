"""CheXpert (Irvin et al., AAAI 2019): 14 report-mined labels, 1 / 0 / -1 (uncertain) / blank.

Layout: ``<root>/train.csv`` and ``<root>/valid.csv`` (required: train.csv) with ``Path`` like
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``, resolved against root's parent
(the official unpacking) or, failing that, against root with the first component dropped.
Columns used: Path, Frontal/Lateral, AP/PA and the labels; Sex and Age are never read.

Official split honoured: valid -> val, train re-split by patient into train/test. Patient = the
``patientNNNNN`` folder.

Coding: 1 -> 1, 0 -> 0, -1 (uncertain) -> NA, blank -> NA. Blank means "not mentioned in the
report"; many papers read it as 0, but here "not mentioned" is "cannot tell" (documented choice).
"No Finding" = 1 zero-fills the blanks, except support_device (CheXpert's No Finding ignores
support devices).

Mapping: Pneumothorax, Pleural Effusion, Consolidation, Atelectasis, Cardiomegaly, Support Devices
-> support_device, Lung Lesion -> nodule (nodule or mass); unseen: Pneumonia, Edema, Fracture.
UNMAPPED: Enlarged Cardiomediastinum (includes cardiomegaly; not mediastinal widening alone),
Lung Opacity (umbrella label), Pleural Other (thickening/fibrosis/calcification mixed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from scxnn.adapters import _common as C

DATASET = "chexpert"
LAYOUT = "train.csv, valid.csv with Path = CheXpert-v1.0[-small]/{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg"
NORMAL_LABELS = ("No Finding",)
FINDING_MAP: dict[str, str | None] = {
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural_effusion",
    "Consolidation": "consolidation",
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Support Devices": "support_device",
    "Lung Lesion": "nodule",
    "Pneumonia": "pneumonia",
    "Edema": "edema",
    "Fracture": "fracture",
}
UNMAPPED: tuple[str, ...] = ("Enlarged Cardiomediastinum", "Lung Opacity", "Pleural Other")
NORMAL_KEEPS_NA = ("support_device",)


def code_chexpert(rec: Mapping[str, object], cols: Sequence[str]) -> dict[str, object]:
    """Finding columns from one CheXpert-style record (also used by the MIMIC adapter)."""
    explicit: dict[str, object] = {}
    for src, t in FINDING_MAP.items():
        if t not in cols or src not in rec:
            continue
        v = pd.to_numeric(rec[src], errors="coerce")
        v = pd.NA if pd.isna(v) or v == -1 else int(v)
        # Two sources for one target (none today, but keep it safe): any 1 wins, else first known.
        prev = explicit.get(t, pd.NA)
        explicit[t] = 1 if (v is not pd.NA and v == 1) or (prev is not pd.NA and prev == 1) else (prev if prev is not pd.NA else v)
    normal = pd.to_numeric(rec.get("No Finding"), errors="coerce") == 1
    return C.code_labels((), (), cols, bool(normal), explicit, NORMAL_KEEPS_NA)


def _resolve(root: Path, rel: str) -> Path:
    p = root.parent / rel
    if p.is_file():
        return p
    return root.joinpath(*Path(rel).parts[1:])


def build(root, out_dir, findings: Sequence[str], unseen: Sequence[str], seed: int = 0, split=(0.8, 0.1, 0.1)) -> pd.DataFrame:
    root = C.require_root(root, DATASET, LAYOUT)
    out_dir = Path(out_dir)
    cols = [*findings, *unseen]
    C.require_file(root, ["train.csv"], DATASET, LAYOUT)
    rows, skipped, official = [], [], {}
    for csv, part in (("train.csv", "train"), ("valid.csv", "val")):
        if not (root / csv).is_file():
            continue
        for rec in pd.read_csv(root / csv, dtype=str).to_dict("records"):
            rel = rec["Path"]
            img = _resolve(root, rel)
            if not img.is_file():
                skipped.append({"path": str(img), "reason": "listed in labels but missing on disk"})
                continue
            parts = Path(rel).parts
            patient = next((q for q in parts if q.startswith("patient")), None)
            if patient is None:
                raise ValueError(f"chexpert: no patientNNNNN folder in Path {rel!r}")
            iid = "_".join(Path(rel).with_suffix("").parts[-3:])  # patient_study_view: unique
            lateral = str(rec.get("Frontal/Lateral", "")).lower() == "lateral"
            view = "LATERAL" if lateral else str(rec.get("AP/PA") or "").upper()
            if view == "NAN":
                view = ""
            rows.append(C.base_row(iid, patient, DATASET, img, out_dir, code_chexpert(rec, cols), view=view))
            official[iid] = part
    return C.finish(rows, findings, unseen, seed, split, skipped, official=official, source=DATASET)
