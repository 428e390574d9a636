"""Helpers shared by the dataset adapters: layout checks, image size, box/RLE -> mask files, label
coding, the film's verdict and the patient-level split.

Label policy (all adapters):

* a column the dataset labels gets 1 / 0 from its labels (uncertain -> NA where the dataset says so);
* a column the dataset never labels is NA ("cannot tell"), on every film, normal ones included: a
  source's "No Finding" vouches only for the findings that source labels;
* on a film the dataset calls normal as a whole (its ``NORMAL_LABELS``), a column the dataset labels
  but left blank (e.g. CheXpert's blanks on "No Finding" films) becomes 0, minus ``normal_keeps_na``
  (e.g. CheXpert's "No Finding" ignores support devices);
* every row carries the source's verdict on the whole film (:func:`verdict`, the manifest's
  ``abnormal``): 1 when the source gives the film any finding, mapped to a column or not, 0 when it
  calls the film normal and gives no finding, NA when it says neither; and ``other_findings``, the
  source's finding labels no column maps (:func:`other_findings`). A film whose only finding is an
  unmapped one (NIH "Infiltration") is therefore abnormal, never normal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from scxnn import data
from scxnn.utils import log, sha256_file, sha256_text

MASK_DIR = "masks"


def require_root(root: str | Path, dataset: str, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: root folder {root} not found. Expected layout:\n{layout}")
    return root


def require_file(root: Path, names: Sequence[str], dataset: str, layout: str) -> Path:
    """The first of ``names`` (relative to root) that exists, else a FileNotFoundError naming them."""
    for n in names:
        if (root / n).is_file():
            return root / n
    raise FileNotFoundError(
        f"{dataset}: expected label file {' or '.join(str(root / n) for n in names)} is missing. "
        f"Expected layout:\n{layout}"
    )


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image; DICOM from the header only, others decoded (small sets)."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return int(img.shape[0]), int(img.shape[1])


def boxes_to_mask(boxes: Iterable[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Union of ``(x_min, y_min, x_max, y_max)`` boxes (pixels, may be fractional) as a 0/255 mask.

    Edges are rounded outward so a thin box still covers at least one pixel."""
    h, w = shape
    m = np.zeros((h, w), np.uint8)
    for x0, y0, x1, y1 in boxes:
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
        m[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)] = 255
    return m


def opaque_id(dataset: str, raw_id: str) -> str:
    """The manifest's image id: public datasets put the patient in the file name (``person12_…``,
    ``00000012_000``), and no patient id may reach a manifest, so the file stem is hashed."""
    return f"{dataset}-{sha256_text(f'{dataset}:{raw_id}', 12)}"


def write_mask(mask: np.ndarray, out_dir: Path, dataset: str, image_id: str, finding: str) -> str:
    """Write ``mask`` as PNG under out_dir/masks/<dataset>/ and return its path relative to out_dir."""
    rel = Path(MASK_DIR) / dataset / f"{opaque_id(dataset, image_id)}__{finding}.png"
    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_dir / rel), mask):
        raise OSError(f"could not write mask {out_dir / rel}")
    return rel.as_posix()


def code_labels(
    positives: Iterable[str],
    labelled: Iterable[str],
    columns: Sequence[str],
    normal: bool,
    explicit: Mapping[str, object] | None = None,
    normal_keeps_na: Sequence[str] = (),
) -> dict[str, object]:
    """Finding columns for one image (see the module docstring).

    positives: target names present; labelled: target names the dataset can tell about for this
    image; explicit: per-column values that override (1 / 0 / pd.NA, e.g. CheXpert's -1 -> NA);
    normal: the dataset calls the film normal, so its labelled columns still NA (blanks) become 0."""
    pos, lab = set(positives), set(labelled)
    out: dict[str, object] = {}
    for c in columns:
        v: object = 1 if c in pos else 0 if c in lab else pd.NA
        if explicit and c in explicit:
            v = explicit[c]
        # "No Finding" vouches only for what the source labels: a never-labelled column stays NA.
        if normal and v is pd.NA and c in lab and c not in normal_keeps_na:
            v = 0
        out[c] = v
    return out


def verdict(any_finding: bool, normal: bool) -> object:
    """The source's verdict on the whole film (the manifest's ``abnormal``): 1 when it gives the film
    any finding (mapped or not: a finding always wins), 0 when it calls the film normal, else NA."""
    return 1 if any_finding else 0 if normal else pd.NA


def other_findings(labels: Iterable[str]) -> str:
    """The manifest's ``other_findings``: the source's unmapped finding labels, sorted, ``|``-joined."""
    return "|".join(sorted({str(s) for s in labels if str(s)}))


def path_for_manifest(path: Path, out_dir: Path) -> str:
    path, out_dir = Path(path).resolve(), Path(out_dir).resolve()
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        return str(path)


def assign_splits(
    rows: list[dict], fractions: Sequence[float], seed: int, official: Mapping[str, str] | None = None
) -> None:
    """Fill row["split"] in place, always by patient, and patients who share an identical image
    (``source_sha256``) as one: a copy under another patient id must not cross splits.

    Without ``official`` (image_id -> train/val/test) patients are split with the given fractions.
    With it the official assignment is kept and its train pool is re-split by patient into the splits
    the dataset does not provide (e.g. NIH train_val -> train/val, CheXpert train -> train/test),
    using the fractions renormalised over those splits. A pool patient linked to the dataset's own
    val or test films (by an identical image, or their own film there) follows them."""
    patients, images = [r["patient_id"] for r in rows], [r["source_sha256"] for r in rows]
    if not official:
        sp = data.split_by_patient(patients, fractions, seed, images)
        for r in rows:
            r["split"] = sp[r["patient_id"]]
        return
    given = set(official.values())
    bad = given - set(data.SPLITS)
    if bad:
        raise ValueError(f"official split values must be in {data.SPLITS}, got {sorted(bad)}")
    group = data.link_patients(patients, images)
    held: dict[str, set[str]] = {}
    for r in rows:
        if official.get(r["_raw_id"], "train") != "train":
            held.setdefault(group[r["patient_id"]], set()).add(official[r["_raw_id"]])
    # linked to both official val and test: left as is, so validate_manifest names the dataset's own leak
    held = {g: s.pop() for g, s in held.items() if len(s) == 1}
    frac = dict(zip(data.SPLITS, fractions))
    targets = ["train", *[s for s in ("val", "test") if s not in given]]
    pool = [r for r in rows if official.get(r["_raw_id"], "train") == "train"]
    moved = {r["patient_id"] for r in pool if group[r["patient_id"]] in held}
    if moved:
        log.warning("%d patient(s) of the official training pool share films or identical images with the official "
                    "val/test films: moved to that split", len(moved))
    pool = [r for r in pool if r["patient_id"] not in moved]
    if len(targets) > 1:
        tot = sum(frac[s] for s in targets)
        f3 = [frac[s] / tot if s in targets else 0.0 for s in data.SPLITS]
        sp = data.split_by_patient([r["patient_id"] for r in pool], f3, seed, [r["source_sha256"] for r in pool])
        # split_by_patient guarantees a patient in every split; move the absent split's share back.
        sp = {p: (s if s in targets else "train") for p, s in sp.items()}
    else:
        sp = {r["patient_id"]: "train" for r in pool}
    for r in rows:
        o = official.get(r["_raw_id"], "train")
        r["split"] = o if o != "train" else held.get(group[r["patient_id"]]) or sp[r["patient_id"]]


def finish(
    rows: list[dict],
    findings: Sequence[str],
    unseen: Sequence[str],
    seed: int,
    split: Sequence[float],
    skipped: list[dict],
    official: Mapping[str, str] | None = None,
    source: str = "adapter",
) -> pd.DataFrame:
    """Split by patient, build and validate the manifest, attach ``attrs['skipped']``."""
    assign_splits(rows, split, seed, official)
    for r in rows:
        del r["_raw_id"]  # only the splits needed the dataset's own id
    df = data.new_manifest(rows, findings, unseen)
    data.validate_manifest(df, findings, unseen, source=source)
    df.attrs["skipped"] = skipped
    return df


def base_row(
    image_id: str,
    raw_patient: str,
    dataset: str,
    image: Path,
    out_dir: Path,
    labels: Mapping[str, object],
    masks: Mapping[str, str] | None = None,
    view: str = "",
    study_date: str = "",
    *,
    abnormal: object,
    other: Iterable[str] = (),
) -> dict:
    """One manifest row. ``abnormal`` (:func:`verdict`) has no default: every adapter must say what its
    source says about the whole film; ``other`` are the source's unmapped finding labels."""
    return {
        "image_id": opaque_id(dataset, image_id),
        "_raw_id": image_id,
        "patient_id": data.hash_patient(f"{dataset}:{raw_patient}"),
        "study_date": study_date,
        "site": dataset,
        "split": "",
        "label_type": "hard" if masks else "weak",
        **labels,
        data.ABNORMAL: abnormal,
        "other_findings": other_findings(other),
        "masks": data.format_masks(masks or {}),
        "view": view,
        "path": path_for_manifest(image, out_dir),
        "source_sha256": sha256_file(image),
    }


def target_names(fmap: Mapping[str, str | None]) -> set[str]:
    return {v for v in fmap.values() if v}


def unique_ids(stems: Sequence[str], parents: Sequence[str]) -> list[str]:
    """Ids from file stems; a stem seen twice (same image at two resolutions) gets its folder appended."""
    counts = pd.Series(list(stems)).value_counts()
    return [s if counts[s] == 1 else f"{s}@{p.replace('/', '-')}" for s, p in zip(stems, parents)]
