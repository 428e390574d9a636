"""MIMIC-CXR-JPG v2.0.0 (Johnson et al., 2019): CheXpert- or NegBio-labelled studies.

Layout (``root``): ``mimic-cxr-2.0.0-metadata.csv[.gz]`` (dicom_id, subject_id, study_id,
ViewPosition, StudyDate, …), ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` and/or
``mimic-cxr-2.0.0-negbio.csv[.gz]`` (subject_id, study_id + the 14 CheXpert labels),
``mimic-cxr-2.0.0-split.csv[.gz]`` (dicom_id, study_id, subject_id, split in train/validate/test;
optional) and images ``files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg``.

Labels are per study and apply to every image of the study; coding, mapping, the film's ``abnormal``
verdict and its ``other_findings`` are those of the CheXpert adapter (same label names, see
:mod:`.chexpert`): uncertain -1 and blank -> NA; any label 1, mapped or not -> abnormal 1; "No
Finding" alone -> abnormal 0. A study missing from the label CSV gets NA everywhere, its verdict
included. The official split is honoured (validate -> val).
Patient = subject_id. ViewPosition PA/AP/LATERAL (LL -> LATERAL). StudyDate is kept (it is MIMIC's
shifted, de-identified date) as YYYY-MM-DD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from scxnn.adapters import _common as C
from scxnn.adapters.chexpert import FINDING_MAP, NORMAL_LABELS, UNMAPPED, code_chexpert  # noqa: F401

DATASET = "mimic"
PREFIX = "mimic-cxr-2.0.0-"
LAYOUT = f"{PREFIX}metadata.csv[.gz], {PREFIX}chexpert.csv[.gz] or {PREFIX}negbio.csv[.gz], [{PREFIX}split.csv[.gz]], files/pXX/p<subject>/s<study>/<dicom_id>.jpg"
LABELERS = ("chexpert", "negbio")
VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LATERAL"}


def _csv(root: Path, name: str, required: bool) -> pd.DataFrame | None:
    names = [f"{PREFIX}{name}.csv", f"{PREFIX}{name}.csv.gz"]
    if not required and not any((root / n).is_file() for n in names):
        return None
    return pd.read_csv(C.require_file(root, names, DATASET, LAYOUT), dtype=str)


def build(root, out_dir, findings: Sequence[str], unseen: Sequence[str], seed: int = 0, split=(0.8, 0.1, 0.1), labeler: str = "chexpert") -> pd.DataFrame:
    if labeler not in LABELERS:
        raise ValueError(f"mimic: labeler must be one of {LABELERS}, got {labeler!r}")
    root = C.require_root(root, DATASET, LAYOUT)
    out_dir = Path(out_dir)
    cols = [*findings, *unseen]
    meta = _csv(root, "metadata", True)
    labels = _csv(root, labeler, True).set_index("study_id")
    sp = _csv(root, "split", False)
    official = None
    if sp is not None:
        official = dict(zip(sp["dicom_id"], sp["split"].replace({"validate": "val"})))
    rows, skipped = [], []
    for m in meta.to_dict("records"):
        sub, study, did = m["subject_id"], m["study_id"], m["dicom_id"]
        img = root / "files" / f"p{sub[:2]}" / f"p{sub}" / f"s{study}" / f"{did}.jpg"
        if not img.is_file():
            skipped.append({"path": str(img), "reason": "listed in metadata but missing on disk"})
            continue
        rec = labels.loc[study].to_dict() if study in labels.index else {}
        d = str(m.get("StudyDate") or "")
        date = f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) >= 8 and d[:8].isdigit() else ""
        view = VIEWS.get(str(m.get("ViewPosition") or "").upper(), "")
        labs, abnormal, other = code_chexpert(rec, cols)
        rows.append(C.base_row(did, sub, DATASET, img, out_dir, labs, view=view, study_date=date, abnormal=abnormal, other=other))
    return C.finish(rows, findings, unseen, seed, split, skipped, official=official, source=DATASET)
