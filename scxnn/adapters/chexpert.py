"""CheXpert (Irvin et al., AAAI 2019): 14 report-mined labels, 1 / 0 / -1 (uncertain) / blank.

Layout: ``<root>/train.csv`` and ``<root>/valid.csv`` (required: train.csv) with ``Path`` like
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``, resolved against root's parent
(the official unpacking) or, failing that, against root with the first component dropped.
Columns used: Path, Frontal/Lateral, AP/PA and the labels; Sex and Age are never read.

Official split honoured: valid -> val, train re-split by patient into train/test. Patient = the
``patientNNNNN`` folder.

Coding: 1 -> 1, 0 -> 0, -1 (uncertain) -> NA, blank -> NA. Blank means "not mentioned in the
report"; many papers read it as 0, but here "not mentioned" is "cannot tell" (documented choice).
"No Finding" = 1 with no pathology 1 or -1 zero-fills the blanks of the mapped columns, except
support_device (CheXpert's No Finding ignores support devices, so a blank there stays NA).

``abnormal`` (the film's verdict): 1 when any label is 1, mapped or not (Enlarged Cardiomediastinum,
Lung Opacity, Pleural Other) and Support Devices included (the study counts a device as a finding);
0 when "No Finding" is 1, no label is 1 or -1 and Support Devices is not -1; NA otherwise (only
uncertain -1s, or nothing said). A "No Finding" film with Support Devices blank is normal at film
level while its support_device column stays NA: the report mentions devices when present, so the
blank says "none" for the film, but the labeler's No Finding does not vouch for the column. The
unmapped labels that are 1 are the film's ``other_findings``.

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
DEVICE = "Support Devices"


def _value(rec: Mapping[str, object], src: str) -> int | None:
    """One label as 1 / 0 / -1, or None when blank or absent."""
    v = pd.to_numeric(rec.get(src, ""), errors="coerce")
    return None if pd.isna(v) else int(v)


def code_chexpert(rec: Mapping[str, object], cols: Sequence[str]) -> tuple[dict[str, object], object, set[str]]:
    """(finding columns, ``abnormal`` verdict, unmapped labels that are 1) from one CheXpert-style
    record (also used by the MIMIC adapter); see the module docstring."""
    vals = {src: _value(rec, src) for src in (*FINDING_MAP, *UNMAPPED)}
    ones = {s for s, v in vals.items() if v == 1}
    unsure = {s for s, v in vals.items() if v == -1}
    # No Finding vouches for the pathologies only: a device (1 or -1) does not undo it.
    vouches = _value(rec, "No Finding") == 1 and not (ones | unsure) - {DEVICE}
    known: dict[str, int] = {}
    for src, t in FINDING_MAP.items():
        v = vals[src]
        if t in cols and v in (0, 1):  # uncertain -1 and blank: cannot tell
            # Two sources for one target (none today, but keep it safe): any 1 wins, else first known.
            known[t] = 1 if v == 1 else known.get(t, v)
    explicit = {t: known.get(t, pd.NA) for t in set(FINDING_MAP.values()) if t in cols}
    labels = C.code_labels((), C.target_names(FINDING_MAP), cols, vouches, explicit, NORMAL_KEEPS_NA)
    normal = vouches and DEVICE not in unsure
    return labels, C.verdict(bool(ones), normal), ones & set(UNMAPPED)


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
            labels, abnormal, other = code_chexpert(rec, cols)
            rows.append(C.base_row(iid, patient, DATASET, img, out_dir, labels, view=view, abnormal=abnormal, other=other))
            official[iid] = part
    return C.finish(rows, findings, unseen, seed, split, skipped, official=official, source=DATASET)
