"""scxnn.losses: the multi-task loss CE + lambda * MSE and its reconstruction term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scxnn.losses import multitask_loss, per_sample_mse, recon_mse


def _batch(has: tuple[bool, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(logits, recon, batch) for len(has) samples of 3 classes and 1 x 8 x 8 lesion targets."""
    g = torch.Generator().manual_seed(seed)
    n = len(has)
    logits = torch.randn(n, 3, generator=g, requires_grad=True)
    recon = torch.rand(n, 1, 8, 8, generator=g, requires_grad=True)
    batch = {"label": torch.arange(n) % 3, "target": torch.rand(n, 1, 8, 8, generator=g), "has_recon": torch.tensor(has)}
    return logits, recon, batch


def test_per_sample_mse_is_each_samples_mean_in_float32():
    recon, target = torch.rand(3, 1, 4, 5), torch.rand(3, 1, 4, 5)
    got = per_sample_mse(recon.bfloat16(), target)
    assert got.shape == (3,) and got.dtype == torch.float32
    want = torch.stack([F.mse_loss(recon[i].bfloat16().float(), target[i]) for i in range(3)])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("has", [(True, True, True), (True, False, True), (False, True, False)], ids=["all", "two", "one"])
def test_recon_mse_averages_over_the_samples_with_a_target_only(has):
    _, recon, batch = _batch(has)
    per = per_sample_mse(recon, batch["target"])
    want = per[torch.tensor(has)].mean()
    torch.testing.assert_close(recon_mse(recon, batch), want)
    # A sample without a target gets no gradient from the MSE term.
    recon_mse(recon, batch).backward()
    for i, h in enumerate(has):
        assert bool(recon.grad[i].abs().sum() > 0) == h


def test_without_any_target_the_mse_is_zero_but_stays_in_the_graph():
    _, recon, batch = _batch((False, False))
    mse = recon_mse(recon, batch)
    assert mse.item() == 0.0 and mse.requires_grad
    mse.backward()  # DDP needs every parameter used: the decoder gets zero gradients, not none
    assert recon.grad is not None and float(recon.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_total_is_ce_plus_lambda_mse(lam):
    logits, recon, batch = _batch((True, False, True, True))
    weight = torch.tensor([1.0, 3.0, 0.5])
    total, ce, mse = multitask_loss(logits, recon, batch, weight, lam, use_mse=True)
    torch.testing.assert_close(ce, F.cross_entropy(logits, batch["label"], weight=weight))
    torch.testing.assert_close(mse, recon_mse(recon, batch))
    torch.testing.assert_close(total, ce + lam * mse)


@pytest.mark.parametrize("use_mse, with_recon", [(False, True), (True, False)], ids=["mse-off", "no-decoder"])
def test_without_the_mse_term_the_loss_is_the_cross_entropy(use_mse, with_recon):
    logits, recon, batch = _batch((True, True))
    total, ce, mse = multitask_loss(logits.bfloat16(), recon if with_recon else None, batch, None, 1.0, use_mse)
    assert float(mse) == 0.0 and mse.dtype == torch.float32 and ce.dtype == torch.float32
    torch.testing.assert_close(total, ce)
    torch.testing.assert_close(ce, F.cross_entropy(logits.bfloat16().float(), batch["label"]))
