"""One example per finding (plus a normal) with its lesion mask outlined: a quick visual check that
the generator draws what the labels say."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from scxnn.data import parse_masks


def read_image(path) -> np.ndarray:
    """Display-ready float image in [0, 1], dense = bright, through the project's reader."""
    from scxnn.dicom import read_image as read_radiograph
    from scxnn.preprocess import percentiles

    a = read_radiograph(path).pixels
    lo, hi = percentiles(a, 0.5, 99.5)
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)


def _example(manifest: pd.DataFrame, finding: str | None, findings) -> pd.Series | None:
    if finding is None:
        rows = manifest[(manifest[list(findings)].fillna(0).sum(axis=1) == 0) & (manifest["label_type"] == "hard")]
        if "pneumonia" in manifest:
            rows = rows[rows[[c for c in ("pneumonia", "edema", "fracture") if c in manifest]].fillna(0).sum(axis=1) == 0]
        return rows.iloc[0] if len(rows) else None
    rows = manifest[(manifest[finding] == 1) & manifest["masks"].str.contains(f"{finding}=", regex=False)]
    if not len(rows):
        return None
    # Prefer an internal, single-finding example: the cleanest illustration of the label.
    single = rows[rows[list(findings)].fillna(0).sum(axis=1) == 1]
    rows = single if len(single) else rows
    internal = rows[rows["site"] == "internal"]
    rows = internal if len(internal) else rows
    return rows.iloc[len(rows) // 2]


def plot_gallery(manifest: pd.DataFrame, root, out_path, findings) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root, out_path = Path(root), Path(out_path)
    panels = [(None, "normal")] + [(f, f) for f in findings]
    cols = 5
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.0, rows * 3.4))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (f, title) in zip(np.ravel(axes), panels):
        row = _example(manifest, f, findings)
        if row is None:
            ax.set_title(f"{title}\n(no example)", fontsize=8)
            continue
        img = read_image(root / row["path"])
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        if f is not None:
            m = cv2.imread(str(root / parse_masks(row["masks"])[f]), cv2.IMREAD_GRAYSCALE)
            contours, _ = cv2.findContours((m > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            for c in contours:
                c = c[:, 0, :]
                ax.plot(np.r_[c[:, 0], c[:1, 0]], np.r_[c[:, 1], c[:1, 1]], color="red", lw=0.8)
        ax.set_title(f"{title}\n{row['image_id']} ({row['site']})", fontsize=8)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
