"""Tables and figures under ``reports/``: each table as CSV and Markdown, with the thesis' numbers
beside ours where the thesis has them, and each figure as PNG. All writes are atomic."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from scxnn.config import Config
from scxnn.utils import atomic_write_bytes, atomic_write_text


def tables_dir(cfg: Config) -> Path:
    return cfg.path("reports") / "tables" / cfg.profile


def figures_dir(cfg: Config) -> Path:
    return cfg.path("reports") / "figures" / cfg.profile


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-style table without the optional ``tabulate`` dependency."""
    cols = [str(c) for c in df.columns]

    def fmt(v) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(cfg: Config, df: pd.DataFrame, name: str, caption: str) -> Path:
    """``reports/tables/<profile>/<name>.csv`` and ``.md`` (the caption heads the Markdown)."""
    d = tables_dir(cfg)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(d / f"{name}.csv", buf.getvalue())
    atomic_write_text(d / f"{name}.md", f"**{name}.** {caption}\n\n{to_markdown(df)}")
    return d / f"{name}.csv"


def save_figure(cfg: Config, fig, name: str, dpi: int = 110) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    path = figures_dir(cfg) / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- Table 1


def table1(manifest: pd.DataFrame, cfg: Config, thesis: dict | None) -> pd.DataFrame:
    """Images per finding in the internal (training) site, hard and weak labels, by risk group, in the
    thesis' layout; an image with two findings counts under both, as in the thesis. The thesis'
    counts sit beside ours when ``thesis`` (``scxnn.thesis.load_tables``) is given."""
    internal = manifest[manifest["site"] == "internal"]
    ref = (thesis or {}).get("table1_dataset", {})
    rows = []
    for finding, risk in cfg.findings.items():
        pos = internal[internal[finding] == 1]
        hard = int((pos["label_type"] == "hard").sum())
        weak = int((pos["label_type"] == "weak").sum())
        t = ref.get(finding, {}) if isinstance(ref.get(finding), dict) else {}
        rows.append({"risk": risk, "finding": finding, "hard": hard, "weak": weak, "total": hard + weak,
                     "thesis_hard": t.get("hard"), "thesis_weak": t.get("weak"), "thesis_total": t.get("total")})
    target = list(cfg.findings)
    normal = internal[(internal[target].fillna(0) == 0).all(axis=1) & (internal[list(cfg.unseen_findings)].fillna(0) == 0).all(axis=1)]
    t = ref.get("normal", {}) if isinstance(ref.get("normal"), dict) else {}
    rows.append({"risk": "normal", "finding": "normal", "hard": int((normal["label_type"] == "hard").sum()),
                 "weak": int((normal["label_type"] == "weak").sum()), "total": len(normal),
                 "thesis_hard": None, "thesis_weak": None, "thesis_total": t.get("total")})
    df = pd.DataFrame(rows)
    if not thesis:
        df = df.drop(columns=["thesis_hard", "thesis_weak", "thesis_total"])
    for c in df.columns[2:]:
        df[c] = df[c].astype("Int64")
    return df


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per site and split, with how many are normal."""
    g = manifest.groupby(["site", "split", "label_type"])
    return g.agg(images=("image_id", "size"), patients=("patient_id", "nunique")).reset_index()


def source_examples(cfg: Config, manifest: pd.DataFrame, n: int) -> dict[str, list[str]]:
    """Up to ``n`` images, one per site first, with their source file and their cached PNG."""
    from scxnn.data import read_manifest
    from scxnn.preprocess import cache_dir, source_manifest_path

    src_manifest = source_manifest_path(cfg)
    src = read_manifest(src_manifest, list(cfg.findings), list(cfg.unseen_findings)).set_index("image_id")
    picks = manifest.groupby("site", sort=False).head(1)
    picks = pd.concat([picks, manifest.drop(picks.index)]).head(n)
    out: dict[str, list[str]] = {"source": [], "png": [], "title": []}
    for r in picks.itertuples():
        sp = Path(src.loc[r.image_id, "path"])
        out["source"].append(str(sp if sp.is_absolute() else src_manifest.parent / sp))
        out["png"].append(str(cache_dir(cfg) / r.path))
        out["title"].append(f"{r.site} {r.image_id}")
    return out


def before_after_figure(raw_paths: Sequence[str], processed_paths: Sequence[str], titles: Sequence[str]):
    """Source radiographs (as read, MONOCHROME2 sense) above their preprocessed PNGs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from scxnn.dicom import read_image
    from scxnn.preprocess import read_png

    n = len(raw_paths)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    for i, (src, dst, title) in enumerate(zip(raw_paths, processed_paths, titles)):
        rad = read_image(src)
        axes[0, i].imshow(rad.pixels, cmap="gray")
        axes[0, i].set_title(f"{title}\n{rad.meta.get('photometric') or rad.meta.get('format')} {rad.pixels.shape[1]}x{rad.pixels.shape[0]}", fontsize=8)
        axes[1, i].imshow(read_png(dst), cmap="gray", vmin=0, vmax=255)
        axes[1, i].set_title("preprocessed", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training


def training_curves(history: pd.DataFrame, title: str = ""):
    """Loss parts, validation AUC and learning rate per epoch, stage 1 and stage 2 side by side."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h = history.reset_index(drop=True).copy()
    h["step"] = np.arange(1, len(h) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for col, style in (("train_loss", "-"), ("val_loss", "-"), ("train_mse", ":"), ("val_mse", ":")):
        if col in h and h[col].notna().any():
            axes[0].plot(h["step"], h[col], style, label=col)
    axes[0].set_title("loss (CE + λ·MSE)")
    axes[0].legend(fontsize=7)
    for col in ("val_auc", "val_acc"):
        if col in h:
            axes[1].plot(h["step"], h[col], marker="o", ms=3, label=col)
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("validation")
    axes[1].legend(fontsize=7)
    axes[2].semilogy(h["step"], h["lr"], drawstyle="steps-post")
    axes[2].set_title("learning rate")
    if "stage" in h and h["stage"].nunique() > 1:
        first2 = h.index[h["stage"] == h["stage"].max()][0] + 0.5
        for ax in axes:
            ax.axvline(first2, color="grey", lw=0.8, ls="--")
    for ax in axes:
        ax.set_xlabel("epoch (stage 1 | stage 2)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reconstruction_examples(cfg: Config, finding: str, checkpoint, n: int = 4, split: str = "val"):
    """Hard-labelled ``split`` images positive for ``finding``: input, the decoder's target (image x
    dilated lesion mask) and the model's reconstruction, one row each."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import torch

    from scxnn.data import MANIFEST_NAME, read_manifest
    from scxnn.dataset import RadiographDataset
    from scxnn.preprocess import cache_dir
    from scxnn.train import finding_labels, load_model

    model, mcfg = load_model(checkpoint)
    df = read_manifest(cache_dir(cfg) / MANIFEST_NAME, list(cfg.findings), list(cfg.unseen_findings))
    pick = df[(df["split"] == split) & (df["label_type"] == "hard") & (df[finding] == 1)]
    if pick.empty:  # tiny profiles: fall back to the training images
        pick = df[(df["label_type"] == "hard") & (df[finding] == 1)]
    pick = pick.head(n).reset_index(drop=True)
    labels = finding_labels(pick, finding, mcfg.model.num_classes, list(cfg.findings), list(cfg.unseen_findings)).fillna(0).astype(int)
    ds = RadiographDataset(pick, cache_dir(cfg), finding, labels.to_numpy(), mcfg)
    fig, axes = plt.subplots(max(len(ds), 1), 3, figsize=(7.5, 2.5 * max(len(ds), 1)), squeeze=False)
    with torch.inference_mode():
        for i in range(len(ds)):
            item = ds[i]
            logits, recon = model(item["image"][None], decode=model.decoder is not None)
            prob = torch.softmax(logits, 1)[0, 1].item()
            panels = [(item["image"][0], "input"), (item["target"][0], "target (image x dilated mask)"),
                      (recon[0, 0] if recon is not None else torch.zeros_like(item["image"][0]), f"reconstruction, p(target)={prob:.2f}")]
            for ax, (img, title) in zip(axes[i], panels):
                ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"{finding}: decoder reconstructions ({split})", fontsize=10)
    fig.tight_layout()
    return fig
