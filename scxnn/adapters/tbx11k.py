"""TBX11K (Liu et al., CVPR 2020): healthy / sick-but-not-TB / TB films, TB boxes by category.

Layout (``root``): ``lists/TBX11K_train.txt`` and ``lists/TBX11K_val.txt`` (image paths relative to
``imgs/``, e.g. ``tb/tb0003.png``; required), ``annotations/json/TBX11K_{train,val}.json`` (COCO:
images with file_name/width/height, annotations with bbox [x, y, w, h], categories
ActiveTuberculosis / ObsoletePulmonaryTuberculosis / PulmonaryTuberculosis; optional -- without it
there are no boxes) and ``imgs/{health,sick,tb}/*.png``. The unlabelled test part is not read.

Official split honoured: val -> val, train re-split by patient into train/test. No patient id is
released: each image is its own patient.

Mapping: ActiveTuberculosis boxes -> active_tuberculosis (mask, ``hard``).
UNMAPPED: ObsoletePulmonaryTuberculosis (healed/latent TB is neither active nor the thesis'
"advanced" TB) and PulmonaryTuberculosis (activity undetermined: active_tuberculosis becomes NA on
such images unless an active box is also present). A TB image with only obsolete boxes is
active_tuberculosis 0. TBX11K labels only active TB: ``health`` and ``sick`` films are
active_tuberculosis 0 and NA elsewhere ("healthy" vouches only for what TBX11K labels);
advanced_tuberculosis is never labelled (NA).

``abnormal`` (the film's verdict): ``health`` -> 0; ``sick`` (sick but not TB) -> 1, a sick film is
never normal, with ``other_findings`` ``sick_non_tb``; ``tb`` -> 1 whatever its boxes (active,
obsolete only, or undetermined), with its unmapped box categories as ``other_findings`` (e.g.
``ObsoletePulmonaryTuberculosis``), or ``tb_unboxed`` when no box tells its category (no
annotation file).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pandas as pd

from scxnn.adapters import _common as C

DATASET = "tbx11k"
LAYOUT = "lists/TBX11K_{train,val}.txt, [annotations/json/TBX11K_{train,val}.json], imgs/{health,sick,tb}/*.png"
NORMAL_LABELS = ("health",)
FINDING_MAP: dict[str, str | None] = {"ActiveTuberculosis": "active_tuberculosis"}
UNMAPPED: tuple[str, ...] = ("ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis")
UNDETERMINED = "PulmonaryTuberculosis"
SICK = "sick_non_tb"  # other_findings of a sick film: a disease no column names
TB_UNBOXED = "tb_unboxed"  # other_findings of a tb film whose boxes (its TB category) are unknown
SICK_CLASSES = ("sick", "tb")  # never normal, whatever their boxes


def _boxes(path: Path) -> dict[str, list[tuple[str, tuple]]]:
    out: dict[str, list] = defaultdict(list)
    if not path.is_file():
        return out
    coco = json.loads(path.read_text())
    cats = {c["id"]: c["name"] for c in coco.get("categories", [])}
    names = {i["id"]: Path(i["file_name"]).name for i in coco.get("images", [])}
    for a in coco.get("annotations", []):
        x, y, w, h = a["bbox"]
        out[names[a["image_id"]]].append((cats[a["category_id"]], (x, y, x + w, y + h)))
    return out


def _other(cls: str, cats: set[str]) -> set[str]:
    """A film's findings no column maps: a sick film's disease, a TB film's unmapped categories."""
    if cls == "sick":
        return {SICK}
    if cls == "tb":
        return (cats - set(FINDING_MAP)) if cats else {TB_UNBOXED}
    return set()


def build(root, out_dir, findings: Sequence[str], unseen: Sequence[str], seed: int = 0, split=(0.8, 0.1, 0.1)) -> pd.DataFrame:
    root = C.require_root(root, DATASET, LAYOUT)
    out_dir = Path(out_dir)
    cols = [*findings, *unseen]
    C.require_file(root, ["lists/TBX11K_train.txt"], DATASET, LAYOUT)
    rows, skipped, official = [], [], {}
    for part, sp in (("train", "train"), ("val", "val")):
        lst = root / "lists" / f"TBX11K_{part}.txt"
        if not lst.is_file():
            continue
        boxes = _boxes(root / "annotations" / "json" / f"TBX11K_{part}.json")
        for rel in lst.read_text().split():
            img = root / "imgs" / rel
            if not img.is_file():
                skipped.append({"path": str(img), "reason": "listed but missing on disk"})
                continue
            cls = Path(rel).parent.name  # health / sick / tb
            bx = boxes.get(img.name, [])
            cats = {c for c, _ in bx}
            explicit = {}
            if cls == "tb" and "ActiveTuberculosis" not in cats:
                explicit["active_tuberculosis"] = pd.NA if (UNDETERMINED in cats or not cats) else 0
            pos = {"active_tuberculosis"} if "ActiveTuberculosis" in cats else set()
            labels = C.code_labels(pos, {"active_tuberculosis"}, cols, cls in NORMAL_LABELS, explicit)
            active = [b for c, b in bx if c == "ActiveTuberculosis"]
            masks = {}
            if active and "active_tuberculosis" in cols:
                m = C.boxes_to_mask(active, C.image_size(img))
                masks = {"active_tuberculosis": C.write_mask(m, out_dir, DATASET, img.stem, "active_tuberculosis")}
            rows.append(C.base_row(img.stem, img.stem, DATASET, img, out_dir, labels, masks,
                                   abnormal=C.verdict(cls in SICK_CLASSES, cls in NORMAL_LABELS), other=_other(cls, cats)))
            official[img.stem] = sp
    return C.finish(rows, findings, unseen, seed, split, skipped, official=official, source=DATASET)
