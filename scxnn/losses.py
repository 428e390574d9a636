"""The multi-task loss of a finding model (thesis section 3.3.4): ``CE + lambda * MSE``.

``CE`` is the cross-entropy of the head's logits; ``MSE`` the decoder output's mean squared error
against its lesion target (:func:`per_sample_mse`), averaged over the samples that have a target
(``has_recon``: hard labels with a mask); ``lambda`` is ``model.recon_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) mean squared error per sample over all its pixels, in float32: the MSE term's one definition."""
    return ((recon.float() - target) ** 2).flatten(1).mean(1)


def recon_mse(recon: torch.Tensor, batch) -> torch.Tensor:
    """The MSE term: the mean of :func:`per_sample_mse` over the samples with ``has_recon`` (0 when
    none has a target, still in the graph). Shared by the finding models and the trunk's pretraining."""
    has = batch["has_recon"].float()
    return (per_sample_mse(recon, batch["target"]) * has).sum() / has.sum().clamp(min=1.0)


def multitask_loss(logits, recon, batch, ce_weight, lam: float, use_mse: bool):
    """(total, ce, mse). MSE is the mean over samples with ``has_recon`` of their per-pixel MSE; it is
    always part of the graph (times 0 when no sample has a target), so DDP sees every parameter used."""
    y = batch["label"]
    ce = F.cross_entropy(logits.float(), y, weight=ce_weight)
    if use_mse and recon is not None:
        mse = recon_mse(recon, batch)
    else:
        mse = logits.new_zeros(()).float()
    return ce + lam * mse, ce, mse
