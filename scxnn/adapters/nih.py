"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 14 NLP-mined image labels + 984 expert boxes.

Layouts read (``root``):

* official: ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``; columns ``Image Index``,
  ``Finding Labels``, ``Patient ID``, ``View Position``), optional ``BBox_List_2017.csv``, the 1024-px
  images anywhere below root (``images/`` or ``images_0NN/images/``), optional ``train_val_list.txt``
  + ``test_list.txt`` (the official split: honoured; train_val is re-split into train/val by
  patient). It wins when a ``labels.csv`` lies beside it;
* a shared sample's ``labels.csv`` with ``finding_labels``, ``patient_id``, ``view`` and either
  ``image`` (the NIH Image Index, the file in ``images/``; e.g. ``nih_cxr14_512``, 512-px PNGs) or
  ``path`` + ``image_index`` (the file's path below root; e.g. ``nih_cxr14_mini``), with optional
  boxes in ``nih_bbox_subset_origcoords.csv`` or ``BBox_List_2017.csv``. A sample's own folders are
  not NIH's split, so patients are split here. A ``labels.csv`` lacking these columns is a
  ValueError naming the file and the columns.

Boxes are in the 1024x1024 space of the released PNGs and are rescaled to each file's size.

Mapping decisions:

* Pneumothorax, Effusion -> pleural_effusion, Nodule, Consolidation, Atelectasis, Cardiomegaly: the
  target findings of the same name.
* Mass -> nodule: the study's label set has no separate mass class, and a mass is a large nodular
  opacity; leaving it out would call mass-only films normal for the nodule model's purposes.
* Pneumonia -> pneumonia and Edema -> edema (unseen findings, evaluation only).
* UNMAPPED: Infiltration (vague NLP label, neither consolidation nor pneumonia reliably),
  Fibrosis (only loosely interstitial opacity), Pleural_Thickening (not pleural calcification),
  Emphysema and Hernia (no counterpart). Boxes of unmapped labels (``Infiltrate``) are not written.
* Findings NIH never labels (pneumoperitoneum, mediastinal widening, both TB, support device,
  pleural calcification, interstitial opacity, fracture) are NA on every film: "No Finding" vouches
  only for the findings NIH labels, which are 0 on it.
* ``abnormal``: "No Finding" -> 0; any other label, mapped or not (an "Infiltration"-only film is
  abnormal, never normal) -> 1; no label at all -> NA. The unmapped labels of a film are its
  ``other_findings``.

Patient age and sex are never read into the manifest. ``label_type`` is ``hard`` for an image with at
least one box of a mapped finding (its other positive labels have no mask).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pandas as pd

from scxnn.adapters import _common as C

DATASET = "nih"
LAYOUT = (
    "Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv), [BBox_List_2017.csv], images/**.png (1024 px), "
    "[train_val_list.txt, test_list.txt]; or a sample's labels.csv (image, finding_labels, patient_id, view; "
    "images/<image>) or (path, image_index, finding_labels, patient_id, view), [nih_bbox_subset_origcoords.csv]"
)
ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
SAMPLE_COLUMNS = ("finding_labels", "patient_id", "view")
SAMPLE_BOX_FILES = ("nih_bbox_subset_origcoords.csv", "BBox_List_2017.csv")
NORMAL_LABELS = ("No Finding",)
FINDING_MAP: dict[str, str | None] = {
    "Pneumothorax": "pneumothorax",
    "Effusion": "pleural_effusion",
    "Nodule": "nodule",
    "Mass": "nodule",
    "Consolidation": "consolidation",
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Pneumonia": "pneumonia",
    "Edema": "edema",
}
UNMAPPED: tuple[str, ...] = ("Infiltration", "Fibrosis", "Pleural_Thickening", "Emphysema", "Hernia")
BOX_ALIASES = {"Infiltrate": "Infiltration"}  # BBox_List spells it differently
BOX_SPACE = 1024.0


def _read(path: Path, needed: Sequence[str], alternatives: Sequence[Sequence[str]] = ((),)) -> pd.DataFrame:
    """The CSV as strings, or a one-line ValueError naming the file and the columns it lacks (a
    KeyError deep in the adapter would tell a person nothing). It needs every column of ``needed``
    and every column of at least one of ``alternatives``."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    have = set(df.columns)
    missing = [c for c in needed if c not in have]
    alt = next((a for a in alternatives if set(a) <= have), None)
    if missing or alt is None:
        what = [repr(c) for c in missing]
        if alt is None:
            what.append(" or ".join(" + ".join(repr(c) for c in a) for a in alternatives))
        raise ValueError(f"nih: {path} lacks columns {', '.join(what)}. Expected layout: {LAYOUT}")
    return df


def _sample_entries(root: Path) -> tuple[pd.DataFrame, Path | None]:
    """A shared sample's labels.csv: ``image`` (in images/) or ``path`` + ``image_index``."""
    df = _read(root / "labels.csv", SAMPLE_COLUMNS, (("image",), ("path", "image_index")))
    if "image" in df:
        index, rel = df["image"], "images/" + df["image"]
    else:
        index, rel = df["image_index"], df["path"]
    out = pd.DataFrame({"image_index": index, "rel": rel, "labels": df["finding_labels"], "patient": df["patient_id"], "view": df["view"]})
    box = next((root / n for n in SAMPLE_BOX_FILES if (root / n).is_file()), None)
    return out, box


def _entries(root: Path) -> tuple[pd.DataFrame, Path | None, bool]:
    """(image_index, rel_path, labels, patient, view), the box file, and whether official. Only these
    columns are kept: age and sex never reach the manifest."""
    if (root / "labels.csv").is_file() and not any((root / n).is_file() for n in ENTRY_FILES):
        return (*_sample_entries(root), False)
    entry = C.require_file(root, ENTRY_FILES, DATASET, LAYOUT)
    df = _read(entry, ENTRY_COLUMNS)
    found = {p.name: p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    out = pd.DataFrame(
        {
            "image_index": df["Image Index"],
            "rel": [found.get(n, f"images/{n}") for n in df["Image Index"]],
            "labels": df["Finding Labels"],
            "patient": df["Patient ID"],
            "view": df["View Position"],
        }
    )
    box = root / "BBox_List_2017.csv"
    return out, (box if box.is_file() else None), True


def _boxes(path: Path | None) -> dict[str, list[tuple[str, float, float, float, float]]]:
    out: dict[str, list] = defaultdict(list)
    if path is None:
        return out
    b = pd.read_csv(path)
    # Header "Bbox [x,y,w,h]" splits into four oddly named columns: read by position.
    for r in b.itertuples(index=False):
        out[r[0]].append((BOX_ALIASES.get(r[1], r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5])))
    return out


def _official_split(root: Path, ids: dict[str, list[str]]) -> dict[str, str] | None:
    tv, te = root / "train_val_list.txt", root / "test_list.txt"
    if not (tv.is_file() and te.is_file()):
        return None
    out = {}
    for f, s in ((tv, "train"), (te, "test")):
        for name in f.read_text().split():
            for iid in ids.get(name, []):
                out[iid] = s
    return out


def build(root, out_dir, findings: Sequence[str], unseen: Sequence[str], seed: int = 0, split=(0.8, 0.1, 0.1)) -> pd.DataFrame:
    root = C.require_root(root, DATASET, LAYOUT)
    out_dir = Path(out_dir)
    cols = [*findings, *unseen]
    entries, box_file, official = _entries(root)
    boxes = _boxes(box_file)
    labelled = C.target_names(FINDING_MAP)
    ids = C.unique_ids([Path(n).stem for n in entries["image_index"]], [Path(r).parent.as_posix() for r in entries["rel"]])
    rows, skipped, by_name = [], [], defaultdict(list)
    for iid, e in zip(ids, entries.itertuples(index=False)):
        img = root / e.rel
        if not img.is_file():
            skipped.append({"path": str(img), "reason": "listed in labels but missing on disk"})
            continue
        src = {s.strip() for s in str(e.labels).split("|") if s.strip()}
        found = src - set(NORMAL_LABELS)  # any other label, mapped or not, is a finding
        pos = {FINDING_MAP[s] for s in src if FINDING_MAP.get(s)}
        labels = C.code_labels(pos, labelled, cols, normal=bool(src) and not found)
        masks = {}
        if boxes.get(e.image_index):
            h, w = C.image_size(img)
            sx, sy = w / BOX_SPACE, h / BOX_SPACE
            per: dict[str, list] = defaultdict(list)
            for lab, x, y, bw, bh in boxes[e.image_index]:
                t = FINDING_MAP.get(lab)
                if t in cols:
                    per[t].append((x * sx, y * sy, (x + bw) * sx, (y + bh) * sy))
            masks = {t: C.write_mask(C.boxes_to_mask(b, (h, w)), out_dir, DATASET, iid, t) for t, b in per.items()}
        rows.append(C.base_row(iid, str(e.patient), DATASET, img, out_dir, labels, masks, view=str(e.view).upper(),
                               abnormal=C.verdict(bool(found), bool(src)), other=found - set(FINDING_MAP)))
        by_name[e.image_index].append(iid)
    off = _official_split(root, by_name) if official else None
    return C.finish(rows, findings, unseen, seed, split, skipped, official=off, source=DATASET)
