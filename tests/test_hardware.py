"""scxnn.hardware: the device and precision the networks run in, and the machine a figure names."""

from __future__ import annotations

import os

import pytest
import torch

from scxnn import hardware as H
from scxnn.config import load_config


@pytest.mark.parametrize("setting, cuda, local_rank, expected", [
    ("cpu", True, None, torch.device("cpu")),
    ("auto", False, None, torch.device("cpu")),
    ("auto", True, None, torch.device("cuda", 0)),
    ("cuda", True, "1", torch.device("cuda", 1)),  # under torchrun: this process's GPU
])
def test_resolve_device(monkeypatch, setting, cuda, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert H.resolve_device(load_config("smoke", {"device": setting})) == expected


def test_cuda_asked_for_but_absent_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        H.resolve_device(load_config("smoke", {"device": "cuda"}))
    assert not H.bf16_supported("cuda")


@pytest.mark.parametrize("setting, native, expected", [
    ("on", False, True), ("off", True, False), ("auto", True, True), ("auto", False, False),
])
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")], ids=["str", "torch.device"])
def test_use_bf16_resolves_auto_by_the_hardware(monkeypatch, setting, native, expected, device):
    seen = []
    monkeypatch.setattr(H, "bf16_supported", lambda kind: seen.append(kind) or native)
    assert H.use_bf16(setting, device) is expected
    assert seen in ([], ["cpu"])  # asked about the device kind, and only for auto


def test_a_bf16_setting_outside_auto_on_off_is_refused():
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        H.use_bf16("yes", "cpu")


@pytest.mark.parametrize("setting, dtype", [("on", torch.bfloat16), ("off", torch.float32)])
def test_autocast_follows_train_bf16(setting, dtype):
    cfg = load_config("smoke", {"train.bf16": setting})
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with H.autocast(cfg, torch.device("cpu")):
        assert (a @ b).dtype == dtype


@pytest.mark.parametrize("channels_last", [True, False])
def test_to_device_moves_tensors_and_leaves_the_rest(channels_last):
    batch = {"image": torch.rand(2, 3, 8, 8), "label": torch.tensor([0, 1]), "image_id": ["a", "b"]}
    out = H.to_device(batch, torch.device("cpu"), channels_last)
    assert out.keys() == batch.keys() and out["image_id"] is batch["image_id"]
    assert out["image"].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(out["image"], batch["image"]) and torch.equal(out["label"], batch["label"])
    assert batch["image"].is_contiguous()  # the caller's batch is not changed


def test_machine_description_names_the_cpu_and_its_logical_cpus():
    text = H.machine_description("cpu")
    assert text.endswith(f", {os.cpu_count()} logical CPUs") and len(text.splitlines()) == 1
    assert len(text) > len(f", {os.cpu_count()} logical CPUs")
