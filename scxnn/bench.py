"""``scxnn bench train``: images/s of one full SCXNN training step, project settings vs a plain loop.

One step = forward with the decoder, ``loss = CE + 0.8 * MSE(recon, target)``, backward, Adam step;
the thesis' recipe (section 3.3.4). Variants, all measured in the same process on the same inputs:

* ``fp32_nchw``: the baseline, the plain PyTorch loop anyone would write first;
* ``channels_last``: model and batch in NHWC memory format (oneDNN / cuDNN prefer it for convs);
* ``channels_last_bf16``: plus ``torch.autocast(bfloat16)``; only where the hardware has native bf16
  (AVX512-BF16 / AMX on CPU, bf16-capable CUDA GPUs), else reported as unsupported;
* ``compile``: plus ``torch.compile``; CUDA only and only when asked (compiling takes minutes).

Speed targets live here and in the benchmark notes, never in unit tests.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time

import torch
import torch.nn.functional as F

from scxnn.models import SCXNN
from scxnn.utils import seed_everything

BASELINE = "fp32_nchw"
RECON_WEIGHT = 0.8  # lambda of the thesis


def bf16_supported(device: str) -> bool:
    """Native bf16 compute: emulated bf16 on older CPUs is slower than fp32 and not worth measuring."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _measure(variant: str, backbone: str, decoder: str, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int, device: str) -> float:
    seed_everything(0, deterministic=False)  # same initial weights for every variant
    model = SCXNN(backbone=backbone, num_classes=3, decoder=decoder).to(device).train()
    if variant != BASELINE:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if variant == "compile" else model
    bf16 = variant in ("channels_last_bf16", "compile") and bf16_supported(device)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast(dev_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits, recon = step_model(x)
            loss = F.cross_entropy(logits.float(), y)
            if recon is not None:  # the target of the reconstruction decoder is the image itself
                loss = loss + RECON_WEIGHT * F.mse_loss(recon.float(), x)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return x.shape[0] * steps / (time.perf_counter() - t0)


def bench_train(
    backbone: str = "densenet121",
    size: int = 256,
    batch: int = 4,
    steps: int = 5,
    warmup: int = 2,
    decoder: str = "reconstruction",
    device: str = "cpu",
    compile: bool = False,
) -> dict:
    """Images/s of a full training step for each variant (see the module docstring).

    Returns ``{"img_per_s": {variant: float | "unsupported" | "skipped"}, "baseline", "best", "ratio"
    (best / baseline), "machine", "threads", "device", "torch", and the arguments}``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, size, size, generator=gen).to(device)
    y = torch.randint(0, 3, (batch,), generator=gen).to(device)

    results: dict[str, float | str] = {}
    for variant in (BASELINE, "channels_last", "channels_last_bf16", "compile"):
        if variant == "channels_last_bf16" and not bf16_supported(device):
            results[variant] = "unsupported"
        elif variant == "compile" and not (compile and device.startswith("cuda")):
            results[variant] = "skipped"
        else:
            results[variant] = _measure(variant, backbone, decoder, x, y, steps, warmup, device)

    timed = {k: v for k, v in results.items() if isinstance(v, float)}
    best = max(timed, key=timed.get)
    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "decoder": decoder,
        "device": device,
        "machine": machine_description(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "img_per_s": results,
        "baseline": BASELINE,
        "best": best,
        "ratio": timed[best] / timed[BASELINE],
    }


def format_bench_train(result: dict) -> str:
    r = result
    lines = [
        f"scxnn bench train: {r['backbone']} decoder={r['decoder']}, {r['size']} px, batch {r['batch']}, "
        f"{r['steps']} timed steps after {r['warmup']} warm-up, {r['device']}",
        f"machine: {r['machine']}; torch {r['torch']}, {r['threads']} threads",
        f"{'variant':<22}{'img/s':>10}{'vs baseline':>14}",
    ]
    base = r["img_per_s"][r["baseline"]]
    for name, v in r["img_per_s"].items():
        if isinstance(v, float):
            lines.append(f"{name:<22}{v:>10.2f}{v / base:>13.2f}x")
        else:
            lines.append(f"{name:<22}{v:>10}{'':>14}")
    lines.append(f"ratio: {r['ratio']:.1f}x vs plain fp32 NCHW (best: {r['best']})")
    return "\n".join(lines)
