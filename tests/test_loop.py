"""The training loop shared by the finding models and the trunk (scxnn.loop): steps, evaluation,
resumption and the epoch's checkpoints."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from scxnn.checkpoints import BEST_NAME, HISTORY_NAME, LAST_NAME, CheckpointError
from scxnn.config import load_config
from scxnn.loop import RESUME_ONLY, RUN_FILES, evaluate, optimise, prepare_run_dir, resumable, save_epoch

CPU = torch.device("cpu")


def _cfg(bf16: str = "off", channels_last: bool = False):
    return load_config("smoke", {"train.bf16": bf16, "train.channels_last": channels_last})


def _batches(n: int, size: int = 4, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(size, 3, generator=g), "y": torch.randn(size, 1, generator=g), "index": torch.arange(size) + i * size}
            for i in range(n)]


def _mse(out, b):
    value = ((out - b["y"]) ** 2).mean()
    return value, (float(value.detach()), b["index"].tolist())


def test_optimise_steps_once_per_batch_and_returns_the_records_in_batch_order():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    recs = optimise(_batches(5), lambda b: model(b["image"]), _mse, opt, _cfg(), CPU, sched=sched, progress=False)
    assert [r[1][0] for r in recs] == [0, 4, 8, 12, 16]
    assert sched.last_epoch == 5  # a per-step schedule steps after every batch
    assert not torch.equal(before, model.weight)


def test_optimise_is_the_plain_sgd_loop_it_replaces():
    """The shared loop must leave the weights exactly where a hand-written loop leaves them: the
    finding models and the trunk were refactored onto it without changing a single weight."""
    batches = _batches(6, seed=3)
    torch.manual_seed(1)
    a = nn.Linear(3, 1)
    b = nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.Adam(a.parameters(), lr=0.01)
    optimise(batches, lambda b: a(b["image"]), _mse, opt_a, _cfg(), CPU, progress=False)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.01)
    for batch in batches:
        loss = ((b(batch["image"]) - batch["y"]) ** 2).mean()
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("bf16", ["on", "off"])
def test_the_forward_pass_runs_under_the_configured_precision(bf16):
    seen = []

    def forward(b):
        seen.append(torch.is_autocast_enabled("cpu"))
        return b["image"].sum(1, keepdim=True) * torch.ones(1, requires_grad=True)

    optimise(_batches(2), forward, _mse, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), _cfg(bf16), CPU, progress=False)
    assert seen == [bf16 == "on"] * 2
    # ...and the loss outside it: it is computed in the loss's own precision.


def test_evaluate_yields_every_batch_on_the_device_without_gradients():
    model = nn.Linear(3, 1)
    pairs = list(evaluate(_batches(3), lambda b: model(b["image"]), _cfg(), CPU))
    assert [b["index"][0].item() for b, _ in pairs] == [0, 4, 8]
    assert all(not out.requires_grad for _, out in pairs)
    assert torch.is_grad_enabled()  # the caller's gradient mode is left as it was


def _ckpt(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((2,), float(epoch))}, "optimizer": {"state": {}}, "scheduler": {"x": 1}, "rng": {"torch": torch.zeros(3)}}


@pytest.mark.parametrize("improved", [True, False], ids=["improved", "not-improved"])
def test_save_epoch_writes_best_only_when_improved_and_without_resume_only_states(tmp_path, improved):
    save_epoch(tmp_path, _ckpt(1), [{"epoch": 1, "loss": 0.5}], improved=True)
    save_epoch(tmp_path, _ckpt(2), [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}], improved=improved, columns=("epoch", "loss", "extra"))
    best = torch.load(tmp_path / BEST_NAME, weights_only=True)
    last = torch.load(tmp_path / LAST_NAME, weights_only=True)
    assert best["epoch"] == (2 if improved else 1)
    assert not set(RESUME_ONLY) & set(best)
    assert set(RESUME_ONLY) <= set(last) and last["epoch"] == 2
    hist = pd.read_csv(tmp_path / HISTORY_NAME)
    assert list(hist.columns) == ["epoch", "loss", "extra"] and hist["epoch"].tolist() == [1, 2]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resumable_says_whether_last_pt_can_be_continued(tmp_path):
    assert resumable(tmp_path, CPU, lambda ck: None) == (None, None)
    save_epoch(tmp_path, _ckpt(3), [])
    ck, why = resumable(tmp_path, CPU, lambda ck: None)
    assert why is None and ck["epoch"] == 3
    assert resumable(tmp_path, CPU, lambda ck: "made with other settings") == (None, "made with other settings")


def test_resumable_refuses_a_last_pt_that_holds_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"model": Evil()}, tmp_path / LAST_NAME)
    with pytest.raises(CheckpointError, match="refused to load"):
        resumable(tmp_path, CPU, lambda ck: None)


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "resumed"])
def test_prepare_run_dir_removes_a_killed_write_and_a_fresh_runs_old_files_only(tmp_path, fresh):
    for name in RUN_FILES:
        (tmp_path / name).write_bytes(b"old")
    (tmp_path / f".{LAST_NAME}.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "notes.txt").write_text("mine")
    prepare_run_dir(tmp_path, _cfg(), fresh, extra={"step": "test"})
    names = {p.name for p in tmp_path.iterdir()}
    assert f".{LAST_NAME}.abc123.tmp" not in names
    assert "notes.txt" in names and "config.resolved.yaml" in names
    assert (set(RUN_FILES) & names) == (set() if fresh else set(RUN_FILES))
    assert "step: test" in (tmp_path / "config.resolved.yaml").read_text()
