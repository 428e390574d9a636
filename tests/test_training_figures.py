"""scxnn.training_figures: notebook 02's training curves, labelled by what the model has, and its
reconstruction figure of validation films (none for a classification-only model)."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from scxnn.checkpoints import CHECKPOINT_FORMAT, save_checkpoint
from scxnn.config import load_config
from scxnn.data import MANIFEST_NAME, read_manifest
from scxnn.models import build_model
from scxnn.pixels import cache_dir, fingerprint
from scxnn.training_figures import reconstruction_examples, training_curves

matplotlib.use("Agg")


@pytest.mark.parametrize("decoder, stages", [(True, 2), (False, 1), (False, 2)], ids=["decoder-2stages", "classification-1stage", "classification-2stages"])
def test_training_curves_label_only_what_the_model_has(decoder, stages):
    from scxnn.training_figures import training_curves

    n = 4
    h = pd.DataFrame({"stage": [1] * (n - 2) + [stages] * 2, "epoch": range(n), "lr": [1e-3] * n,
                      "train_loss": np.linspace(1, 0.5, n), "val_loss": np.linspace(1.1, 0.6, n),
                      "train_mse": np.linspace(0.2, 0.1, n) if decoder else [np.nan] * n,
                      "val_mse": np.linspace(0.2, 0.1, n) if decoder else [np.nan] * n,
                      "train_auc": np.linspace(0.6, 0.9, n), "val_auc": np.linspace(0.6, 0.8, n), "val_acc": [0.5] * n})
    fig = training_curves(h, "nodule")
    assert fig.axes[0].get_title() == ("loss (CE + λ·MSE)" if decoder else "loss (CE)")
    assert fig.axes[0].get_xlabel() == ("epoch (stage 1 | stage 2)" if stages == 2 else "epoch")
    plt.close(fig)



def _labels(ax) -> list[str]:
    return [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]


@pytest.mark.parametrize("stages", [None, [1, 1, 2, 2, 2]], ids=["no-stage-column", "two-stages"])
def test_training_curves_draw_only_the_columns_with_values(stages):
    n = 5
    h = pd.DataFrame({"epoch": range(n), "lr": np.geomspace(1e-3, 1e-5, n), "train_loss": np.linspace(1, 0.5, n),
                      "val_loss": [np.nan] * n, "train_auc": np.linspace(0.6, 0.9, n), "val_auc": np.linspace(0.6, 0.8, n)},
                     index=range(10, 10 + n))  # a slice of a longer history: its index does not start at 0
    if stages is not None:
        h["stage"] = stages
    fig = training_curves(h, "nodule")
    loss, auc, lr = fig.axes
    assert _labels(loss) == ["train_loss"]  # val_loss all NaN, no MSE columns at all
    assert _labels(auc) == ["train_auc", "val_auc"] and auc.get_ylim() == (0, 1.02)
    assert lr.get_yscale() == "log" and list(lr.get_lines()[0].get_xdata()) == [1, 2, 3, 4, 5]
    dividers = [ln for ln in lr.get_lines() if list(ln.get_xdata()) == [2.5, 2.5]]  # between step 2 and 3
    assert len(dividers) == (1 if stages else 0)
    assert fig._suptitle.get_text() == "nodule"
    plt.close(fig)


@pytest.mark.parametrize("decoder", ["reconstruction", "none"])
def test_reconstruction_examples_show_input_target_and_output_of_a_decoder_only(smoke_cache, tmp_path, decoder):
    cfg = load_config("smoke", {"paths.data": str(smoke_cache / "data"), "model.decoder": decoder})
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "nodule" / "best.pt", {
        "format": CHECKPOINT_FORMAT, "model": build_model(cfg.model).state_dict(), "config": cfg.to_dict(),
        "finding": "nodule", "preprocess_fingerprint": fingerprint(cfg.preprocess)})
    fig = reconstruction_examples(cfg, "nodule", ckpt, n=2)
    if decoder == "none":
        assert fig is None
        return
    m = read_manifest(cache_dir(cfg) / MANIFEST_NAME, list(cfg.findings), list(cfg.unseen_findings))
    films = int(((m["split"] == "val") & (m["label_type"] == "hard") & (m["nodule"] == 1)).sum())
    assert films >= 1 and len(fig.axes) == 3 * min(films, 2)  # one row per film: input, target, reconstruction
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["input", "target (image x dilated mask)"] and titles[2].startswith("reconstruction, p(target)=")
    for ax in fig.axes:
        img = ax.get_images()[0].get_array()
        assert img.shape == (cfg.preprocess.size, cfg.preprocess.size) and 0 <= img.min() and img.max() <= 1
    assert fig._suptitle.get_text() == "nodule: decoder reconstructions (val)"
    plt.close(fig)
