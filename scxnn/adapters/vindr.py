"""VinDr-CXR (Nguyen et al., Sci Data 2022; PhysioNet v1.0.0): 22 local labels with boxes, 6 global.

Layout (``root``): ``annotations/annotations_{train,test}.csv`` (image_id, rad_id, class_name,
x_min, y_min, x_max, y_max; required), ``annotations/image_labels_{train,test}.csv`` (image_id,
rad_id, one 0/1 column per label incl. the global ones; optional) and the images
``{train,test}/<image_id>.dicom``. A PNG export (``<image_id>.png`` in the same folders) is read too;
box coordinates must then still be in the original pixel grid (same size).

The official train/test split is honoured; train is re-split into train/val. VinDr releases no
patient id (one image per study, de-identified), so each image is its own patient. Train images
were read by three radiologists, test by a consensus of five: a finding is positive if any reader
marked it and its mask is the union of all readers' boxes.

Mapping: Pneumothorax, Pleural effusion, Nodule/Mass -> nodule, Consolidation, Atelectasis,
Cardiomegaly, ILD -> interstitial_opacity; unseen: Pneumonia (global), Edema, Rib/Clavicle
fracture -> fracture.
UNMAPPED (reason): Aortic enlargement (not mediastinal widening), Calcification (any site, not
pleural), Tuberculosis (global, active vs advanced unknown), Pulmonary fibrosis, Pleural thickening,
Infiltration, Lung Opacity, Lung cavity, Lung cyst, Emphysema, Enlarged PA, Mediastinal shift,
Other lesion, COPD, Lung tumor, Other diseases (no counterpart or too broad).
Never labelled -> NA on every film, "No finding" films included (they vouch only for what VinDr
labels): pneumoperitoneum, mediastinal widening, both TB findings, support device, pleural
calcification.

``abnormal``: 0 when every reader gave only "No finding"; 1 when any reader gave any other class,
local or global, mapped or not (an "Aortic enlargement"- or "Other diseases"-only film is abnormal,
never normal); the unmapped classes are the film's ``other_findings``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pandas as pd

from scxnn.adapters import _common as C

DATASET = "vindr"
LAYOUT = "annotations/annotations_{train,test}.csv, [annotations/image_labels_{train,test}.csv], {train,test}/<image_id>.dicom (or .png)"
NORMAL_LABELS = ("No finding",)
FINDING_MAP: dict[str, str | None] = {
    "Pneumothorax": "pneumothorax",
    "Pleural effusion": "pleural_effusion",
    "Nodule/Mass": "nodule",
    "Consolidation": "consolidation",
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "ILD": "interstitial_opacity",
    "Pneumonia": "pneumonia",
    "Edema": "edema",
    "Rib fracture": "fracture",
    "Clavicle fracture": "fracture",
}
UNMAPPED: tuple[str, ...] = (
    "Aortic enlargement", "Calcification", "Tuberculosis", "Pulmonary fibrosis", "Pleural thickening",
    "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst", "Emphysema", "Enlarged PA",
    "Mediastinal shift", "Other lesion", "COPD", "Lung tumor", "Other disease", "Other diseases",
)
SPLIT_NAMES = {"train": "train", "test": "test"}


def _image(root: Path, part: str, image_id: str) -> Path:
    for ext in (".dicom", ".dcm", ".png"):
        p = root / part / f"{image_id}{ext}"
        if p.is_file():
            return p
    return root / part / f"{image_id}.dicom"


def build(root, out_dir, findings: Sequence[str], unseen: Sequence[str], seed: int = 0, split=(0.8, 0.1, 0.1)) -> pd.DataFrame:
    root = C.require_root(root, DATASET, LAYOUT)
    out_dir = Path(out_dir)
    cols = [*findings, *unseen]
    parts = [p for p in SPLIT_NAMES if (root / "annotations" / f"annotations_{p}.csv").is_file()]
    if not parts:
        C.require_file(root, ["annotations/annotations_train.csv"], DATASET, LAYOUT)
    labelled = C.target_names(FINDING_MAP)
    rows, skipped, official = [], [], {}
    for part in parts:
        ann = pd.read_csv(root / "annotations" / f"annotations_{part}.csv")
        names: dict[str, set] = defaultdict(set)
        boxes: dict[str, dict] = defaultdict(lambda: defaultdict(list))
        for r in ann.itertuples(index=False):
            names[r.image_id].add(r.class_name)
            t = FINDING_MAP.get(r.class_name)
            if t in cols and pd.notna(r.x_min):
                boxes[r.image_id][t].append((r.x_min, r.y_min, r.x_max, r.y_max))
        gl = root / "annotations" / f"image_labels_{part}.csv"
        if gl.is_file():  # global labels (Pneumonia, Tuberculosis…) exist only here
            g = pd.read_csv(gl).drop(columns=["rad_id"], errors="ignore").groupby("image_id").max()
            for iid, rec in g.iterrows():
                names[iid] |= {c for c, v in rec.items() if v == 1}
        for iid in sorted(names):
            img = _image(root, part, iid)
            if not img.is_file():
                skipped.append({"path": str(img), "reason": "listed in annotations but missing on disk"})
                continue
            src = names[iid]
            found = src - set(NORMAL_LABELS)  # any other class, local or global, mapped or not
            normal = bool(src) and not found  # "No finding" from every reader
            pos = {FINDING_MAP[s] for s in src if FINDING_MAP.get(s)}
            labels = C.code_labels(pos, labelled, cols, normal)
            masks = {}
            if boxes.get(iid):
                shape = C.image_size(img)
                masks = {t: C.write_mask(C.boxes_to_mask(b, shape), out_dir, DATASET, iid, t) for t, b in boxes[iid].items()}
            rows.append(C.base_row(iid, iid, DATASET, img, out_dir, labels, masks, abnormal=C.verdict(bool(found), normal),
                                   other=found - set(FINDING_MAP)))
            official[iid] = SPLIT_NAMES[part]
    return C.finish(rows, findings, unseen, seed, split, skipped, official=official, source=DATASET)
