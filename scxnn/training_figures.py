"""Notebook 02's figures of one finding model: its training curves and its reconstructions of
validation films (this one runs the model), each returned for :func:`scxnn.reports.save_figure`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scxnn.checkpoints import load_model
from scxnn.config import Config
from scxnn.data import MANIFEST_NAME, read_manifest
from scxnn.dataset import RadiographDataset
from scxnn.labels import finding_labels
from scxnn.pixels import cache_dir


def training_curves(history: pd.DataFrame, title: str = ""):
    """Loss parts, AUC on the training draws and on validation (the gap is over-fitting), and the
    learning rate per epoch, stage 1 and stage 2 side by side. The labels say only what the model has:
    a classification-only model (no decoder) has no MSE term, a one-stage run no stage 2."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h = history.reset_index(drop=True).copy()
    h["step"] = np.arange(1, len(h) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for col, style in (("train_loss", "-"), ("val_loss", "-"), ("train_mse", ":"), ("val_mse", ":")):
        if col in h and h[col].notna().any():
            axes[0].plot(h["step"], h[col], style, label=col)
    has_mse = any(c in h and h[c].notna().any() for c in ("train_mse", "val_mse"))
    axes[0].set_title("loss (CE + λ·MSE)" if has_mse else "loss (CE)")
    axes[0].legend(fontsize=7)
    for col in ("train_auc", "val_auc", "val_acc"):
        if col in h and h[col].notna().any():
            axes[1].plot(h["step"], h[col], marker="o", ms=3, label=col)
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("AUC (train draws vs validation)")
    axes[1].legend(fontsize=7)
    axes[2].semilogy(h["step"], h["lr"], drawstyle="steps-post")
    axes[2].set_title("learning rate")
    two_stages = "stage" in h and h["stage"].nunique() > 1
    if two_stages:
        first2 = h.index[h["stage"] == h["stage"].max()][0] + 0.5
        for ax in axes:
            ax.axvline(first2, color="grey", lw=0.8, ls="--")
    for ax in axes:
        ax.set_xlabel("epoch (stage 1 | stage 2)" if two_stages else "epoch")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reconstruction_examples(cfg: Config, finding: str, checkpoint, n: int = 4, split: str = "val"):
    """Hard-labelled ``split`` images positive for ``finding``: input, the decoder's target (image x
    dilated lesion mask) and the model's reconstruction, one row each. None (nothing to draw) for a
    model without a decoder (classification only) or a finding without a hard-labelled film."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import torch

    model, mcfg = load_model(checkpoint)
    if model.decoder is None:
        return None
    df = read_manifest(cache_dir(cfg) / MANIFEST_NAME, list(cfg.findings), list(cfg.unseen_findings))
    pick = df[(df["split"] == split) & (df["label_type"] == "hard") & (df[finding] == 1)]
    if pick.empty:  # tiny profiles: fall back to the training images
        pick = df[(df["label_type"] == "hard") & (df[finding] == 1)]
    pick = pick.head(n).reset_index(drop=True)
    if pick.empty:
        return None
    labels = finding_labels(pick, finding, mcfg.model.num_classes, list(cfg.findings), list(cfg.unseen_findings)).fillna(0).astype(int)
    ds = RadiographDataset(pick, cache_dir(cfg), finding, labels.to_numpy(), mcfg)
    fig, axes = plt.subplots(max(len(ds), 1), 3, figsize=(7.5, 2.5 * max(len(ds), 1)), squeeze=False)
    with torch.inference_mode():
        for i in range(len(ds)):
            item = ds[i]
            logits, recon = model(item["image"][None], decode=True)
            prob = torch.softmax(logits, 1)[0, 1].item()
            panels = [(item["image"][0], "input"), (item["target"][0], "target (image x dilated mask)"),
                      (recon[0, 0], f"reconstruction, p(target)={prob:.2f}")]
            for ax, (img, title) in zip(axes[i], panels):
                ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"{finding}: decoder reconstructions ({split})", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- screening figures
# Each takes plain arrays or the DataFrames of scxnn.evaluation and returns a Figure; no file IO
# (save with save_figure). Empty or all-NaN input gives a figure that says so instead of an error.
