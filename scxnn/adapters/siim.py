"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019): pneumothorax masks as run-length encodings.

Layout (``root``): ``train-rle.csv`` (columns ``ImageId`` and `` EncodedPixels`` -- the original
header has a leading space; both spellings are accepted) and the images
``dicom-images-train/<study>/<series>/<ImageId>.dcm``; a PNG export
(``train_png/<ImageId>.png`` or ``png-images-train/<ImageId>.png``) is read too.

RLE format (Kaggle ``mask_functions.py``): whitespace-separated ``start length`` pairs where each
start is an offset from the END of the previous run (the first from pixel 0), over the image
flattened column-major (i.e. the transposed 1024x1024 image). ``-1`` means no pneumothorax; several
rows for one ImageId are separate pneumothoraces whose masks are OR-ed.

Patient: the DICOM PatientID tag (a random UID in this release); for the PNG export, where there is
no header, the ImageId (one image per patient in practice). No official labelled split: patients are
split here. Only pneumothorax is labelled: every other column is NA (there is no "normal" label;
``-1`` says only "no pneumothorax"). Every image with a positive RLE is ``hard``; negatives are
``weak`` with pneumothorax = 0. ``abnormal``: 1 with a positive RLE; NA for ``-1`` (SIIM says nothing
about the rest of the film, so it is not a normal film); ``other_findings`` is always empty.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from scxnn.adapters import _common as C

DATASET = "siim"
LAYOUT = "train-rle.csv (ImageId, EncodedPixels), dicom-images-train/<study>/<series>/<ImageId>.dcm (or train_png/<ImageId>.png)"
NORMAL_LABELS: tuple[str, ...] = ()  # "-1" is "no pneumothorax", not a normal film
FINDING_MAP: dict[str, str | None] = {"pneumothorax": "pneumothorax"}
UNMAPPED: tuple[str, ...] = ()
NO_MASK = "-1"


def rle_decode(rle: str, height: int = 1024, width: int = 1024) -> np.ndarray:
    """Kaggle SIIM RLE -> (height, width) uint8 mask with 255 inside. ``-1`` / empty -> all zeros."""
    flat = np.zeros(height * width, np.uint8)
    rle = str(rle).strip()
    if rle and rle != NO_MASK:
        a = np.asarray(rle.split(), dtype=np.int64)
        if len(a) % 2:
            raise ValueError(f"SIIM RLE has an odd number of values ({len(a)})")
        pos = 0
        for start, length in zip(a[0::2], a[1::2]):
            pos += start
            if start < 0 or length < 0 or pos + length > flat.size:
                raise ValueError(f"SIIM RLE run ({start}, {length}) leaves the {height}x{width} image")
            flat[pos : pos + length] = 255
            pos += length
    # column-major: the flat index walks down each column first
    return flat.reshape(width, height).T.copy()


def rle_encode(mask: np.ndarray) -> str:
    """Reference encoder of the same format (for tests and round trips); empty mask -> ``-1``."""
    flat = (np.asarray(mask).T.reshape(-1) > 0).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts):
        return NO_MASK
    out, prev_end = [], 0
    for s, e in zip(starts, ends):
        out += [int(s - prev_end), int(e - s)]
        prev_end = e
    return " ".join(map(str, out))


def _images(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pattern in ("dicom-images-train/**/*.dcm", "train_png/*.png", "png-images-train/*.png"):
        for p in root.glob(pattern):
            found.setdefault(p.stem, p)
    return found


def _patient(img: Path) -> str:
    if img.suffix.lower() == ".dcm":
        import pydicom

        pid = str(pydicom.dcmread(img, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", "") or "")
        if pid:
            return pid
    return img.stem


def build(root, out_dir, findings: Sequence[str], unseen: Sequence[str], seed: int = 0, split=(0.8, 0.1, 0.1)) -> pd.DataFrame:
    root = C.require_root(root, DATASET, LAYOUT)
    out_dir = Path(out_dir)
    cols = [*findings, *unseen]
    rle = pd.read_csv(C.require_file(root, ["train-rle.csv"], DATASET, LAYOUT), dtype=str, keep_default_na=False)
    rle.columns = [c.strip() for c in rle.columns]
    runs: dict[str, list[str]] = defaultdict(list)
    for iid, enc in zip(rle["ImageId"], rle["EncodedPixels"]):
        runs[iid].append(enc.strip())
    found = _images(root)
    rows, skipped = [], []
    for iid, encs in runs.items():
        img = found.get(iid)
        if img is None:
            skipped.append({"path": f"{root}/dicom-images-train/**/{iid}.dcm", "reason": "listed in train-rle.csv but missing on disk"})
            continue
        positive = any(e and e != NO_MASK for e in encs)
        labels = C.code_labels({"pneumothorax"} if positive else (), {"pneumothorax"}, cols, normal=False)
        masks = {}
        if positive and "pneumothorax" in cols:
            h, w = C.image_size(img)
            m = np.zeros((h, w), np.uint8)
            for e in encs:
                m |= rle_decode(e, h, w)
            masks = {"pneumothorax": C.write_mask(m, out_dir, DATASET, iid, "pneumothorax")}
        rows.append(C.base_row(iid, _patient(img), DATASET, img, out_dir, labels, masks, abnormal=C.verdict(positive, normal=False)))
    return C.finish(rows, findings, unseen, seed, split, skipped, source=DATASET)
