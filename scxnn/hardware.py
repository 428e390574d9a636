"""Where and in which precision the networks run: one home for the choice that training, scoring,
``predict`` and the benchmarks share.

bf16 is used only where it is native (recent GPUs; CPUs with AVX512-BF16 or AMX): emulated bf16 on
older CPUs is slower than fp32. Settings ``train.bf16`` and ``evaluate.bf16`` are ``auto`` (native
only), ``on`` or ``off``.
"""

from __future__ import annotations

import os
import platform
from contextlib import nullcontext

import torch


def resolve_device(cfg) -> torch.device:
    """``cfg.device`` (auto, cpu, cuda) as a torch device; under torchrun, this process's GPU."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda requested but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def bf16_supported(device: str) -> bool:
    """Native bf16 compute: emulated bf16 on older CPUs is slower than fp32 and not worth measuring."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(setting: str, device: torch.device | str) -> bool:
    """A bf16 setting (``auto``, ``on``, ``off``) resolved for ``device``."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {setting!r}")
    kind = device.type if isinstance(device, torch.device) else str(device)
    return setting == "on" or (setting == "auto" and bf16_supported(kind))


def autocast(cfg, device: torch.device):
    """The training forward pass's precision context (``train.bf16``)."""
    # auto: wherever bf16 is native (recent GPUs; CPUs with AVX512-BF16/AMX, where it trains ~1.7x
    # faster than fp32 at 64-128 px, see `scxnn bench train`); emulated bf16 would be slower.
    on = use_bf16(cfg.train.bf16, device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else nullcontext()


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def machine_description(device: str) -> str:
    """The machine a figure was measured on, in one line: the GPU, or the CPU model and its logical CPUs."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"
