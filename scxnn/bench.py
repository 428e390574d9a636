"""``scxnn bench train``: images/s of one full SCXNN training step, project settings vs a plain loop.

One step = forward with the decoder, the training loss ``CE + lambda * MSE(recon, target)``
(:func:`scxnn.losses.multitask_loss`, lambda = ``model.recon_weight``), backward, Adam step; the
thesis' recipe (section 3.3.4). Variants, all measured in the same process on the same inputs:

* ``fp32_nchw``: the baseline, the plain PyTorch loop anyone would write first;
* ``channels_last``: model and batch in NHWC memory format (oneDNN / cuDNN prefer it for convs);
* ``channels_last_bf16``: plus ``torch.autocast(bfloat16)``; only where the hardware has native bf16
  (AVX512-BF16 / AMX on CPU, bf16-capable CUDA GPUs), else reported as unsupported;
* ``compile``: plus ``torch.compile``; CUDA only and only when asked (compiling takes minutes).

``scxnn bench predict`` (:func:`bench_predict`) and ``scxnn bench preprocess`` (:func:`bench_preprocess`,
the OpenCV preprocessing vs a scikit-image reference) live here too.

Speed targets live here and in the benchmark notes, never in unit tests.
"""

from __future__ import annotations

import contextlib
import time

import cv2
import numpy as np
import torch

from scxnn.config import Preprocess
from scxnn.hardware import bf16_supported, machine_description
from scxnn.losses import multitask_loss
from scxnn.models import DECODER_WIDTHS, SCXNN
from scxnn.pixels import Geometry, clip_and_normalise, encode_png, enhance, percentiles, preprocess_pixels, reference_pipeline
from scxnn.utils import seed_everything

BASELINE = "fp32_nchw"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _measure(variant: str, backbone: str, decoder: str, x: torch.Tensor, y: torch.Tensor, recon_weight: float, steps: int, warmup: int, device: str,
             decoder_widths: tuple[int, ...] = DECODER_WIDTHS) -> float:
    seed_everything(0, deterministic=False)  # same initial weights for every variant
    model = SCXNN(backbone=backbone, num_classes=3, decoder=decoder, decoder_widths=decoder_widths).to(device).train()
    if variant != BASELINE:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if variant == "compile" else model
    bf16 = variant in ("channels_last_bf16", "compile") and bf16_supported(device)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    # The target of the reconstruction decoder is the image itself, for every sample.
    batch = {"label": y, "target": x, "has_recon": torch.ones(len(y), dtype=torch.bool, device=y.device)}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast(dev_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits, recon = step_model(x)
            loss = multitask_loss(logits, recon, batch, None, recon_weight, use_mse=True)[0]
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
    decoder_widths: tuple[int, ...] | None = None,
    recon_weight: float | None = None,
) -> dict:
    """Images/s of a full training step for each variant (see the module docstring). With
    ``decoder_widths`` other than the default (a profile's ``model.decoder_widths``), one more row,
    ``profile_decoder``, times the fastest supported path with that decoder. ``recon_weight``: the
    loss's lambda (a profile's ``model.recon_weight``; default the thesis profile's).

    Returns ``{"img_per_s": {variant: float | "unsupported" | "skipped"}, "baseline", "best", "ratio"
    (best / baseline), "machine", "threads", "device", "torch", and the arguments}``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if recon_weight is None:
        from scxnn.config import load_config

        recon_weight = load_config("thesis").model.recon_weight
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
            results[variant] = _measure(variant, backbone, decoder, x, y, recon_weight, steps, warmup, device)
    widths = tuple(decoder_widths or DECODER_WIDTHS)
    if widths != DECODER_WIDTHS and decoder != "none":
        fast = "channels_last_bf16" if bf16_supported(device) else "channels_last"
        results["profile_decoder"] = _measure(fast, backbone, decoder, x, y, recon_weight, steps, warmup, device, widths)

    timed = {k: v for k, v in results.items() if isinstance(v, float)}
    best = max(timed, key=timed.get)
    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "decoder": decoder,
        "decoder_widths": list(widths),
        "recon_weight": recon_weight,
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
        + (f"profile_decoder widths {r['decoder_widths']}, " if "profile_decoder" in r["img_per_s"] else "")
        + f"{r['steps']} timed steps after {r['warmup']} warm-up, {r['device']}",
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


# --------------------------------------------------------------------------- bench predict

PREDICT_BASELINE = "naive"


def _predict_models(backbone: str, n_models: int, device: str, channels_last: bool) -> list[SCXNN]:
    # Distinct weights per model, as in the real ensemble: 13 sets of weights stream through the
    # caches, which one model reused 13 times would hide.
    models = []
    for i in range(n_models):
        torch.manual_seed(i)
        m = SCXNN(backbone=backbone, num_classes=3, decoder="reconstruction").to(device).eval()
        models.append(m.to(memory_format=torch.channels_last) if channels_last else m)
    return models


def _measure_predict(variant: str, backbone: str, n_models: int, x: torch.Tensor, images: int, batch: int, warmup: int, device: str) -> float:
    fast = variant != PREDICT_BASELINE
    models = _predict_models(backbone, n_models, device, channels_last=fast)
    bf16 = variant in ("fast_bf16", "compile") and bf16_supported(device)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    if variant == "compile":
        # One compiled callable shared by the models: parameters are graph inputs (dynamo inlines
        # nn.Modules), so the 13 models reuse one graph instead of compiling 13 times.
        fwd = torch.compile(lambda m, t: m(t, decode=False))
    elif fast:
        fwd = lambda m, t: m(t, decode=False)  # noqa: E731
    else:
        fwd = lambda m, t: m(t)  # noqa: E731  (the naive path: the decoder runs too)
    xb = x[:batch].contiguous(memory_format=torch.channels_last) if fast else x[:batch]
    grad_ctx = torch.inference_mode if fast else torch.no_grad

    def run(n_batches: int) -> None:
        with grad_ctx():
            for _ in range(n_batches):
                ctx = torch.autocast(dev_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
                with ctx:
                    for m in models:
                        out = fwd(m, xb)
                        out[0].float().softmax(1)

    run(warmup)
    _sync(device)
    n_batches = max(1, images // batch)
    t0 = time.perf_counter()
    run(n_batches)
    _sync(device)
    del models
    return n_batches * batch / (time.perf_counter() - t0)


def bench_predict(
    backbone: str = "densenet121",
    size: int = 1024,
    n_models: int = 13,
    images: int = 2,
    batch: int = 1,
    warmup: int = 1,
    device: str = "cpu",
    compile: bool = False,
) -> dict:
    """Images/s of the whole ensemble (``n_models`` finding models per image) at inference.

    Variants, measured in one process on the same input:

    * ``naive``: the baseline, fp32 NCHW with the decoder on (``model(x)`` as trained);
    * ``fast_fp32``: channels_last, decoder skipped, ``inference_mode``;
    * ``fast_bf16``: plus bf16 autocast, where the hardware has native bf16;
    * ``compile``: plus ``torch.compile``, only when asked (compiling takes a while);
    * ``onnxruntime``: the same graph (no decoder) exported to ONNX and run by ONNX Runtime in fp32,
      on a CPU when ``onnxruntime`` is installed (export time not counted).

    On a CPU use ``batch=1`` (what `scxnn predict` does there); on a GPU batch over images and loop
    over the models.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = max(1, min(batch, images))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, size, size, generator=gen).to(device)
    results: dict[str, float | str] = {}
    for variant in (PREDICT_BASELINE, "fast_fp32", "fast_bf16", "compile", "onnxruntime"):
        if variant == "fast_bf16" and not bf16_supported(device):
            results[variant] = "unsupported"
        elif variant == "compile" and not compile:
            results[variant] = "skipped"
        elif variant == "onnxruntime" and (device != "cpu" or not _ort_available()):
            results[variant] = "unavailable"
        elif variant == "onnxruntime":
            results[variant] = _measure_ort(backbone, n_models, x, images, batch, warmup)
        else:
            results[variant] = _measure_predict(variant, backbone, n_models, x, images, batch, warmup, device)
    timed = {k: v for k, v in results.items() if isinstance(v, float)}
    best = max(timed, key=timed.get)
    return {
        "backbone": backbone, "size": size, "models": n_models, "images": images, "batch": batch,
        "warmup": warmup, "device": device, "machine": machine_description(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "img_per_s": results,
        "baseline": PREDICT_BASELINE, "best": best, "ratio": timed[best] / timed[PREDICT_BASELINE],
    }


def _ort_available() -> bool:
    from scxnn.ort import available

    return available()


def _measure_ort(backbone: str, n_models: int, x: torch.Tensor, images: int, batch: int, warmup: int) -> float:
    import tempfile

    from scxnn.ort import OrtEnsemble

    models = _predict_models(backbone, n_models, "cpu", channels_last=False)
    with tempfile.TemporaryDirectory() as d:
        engine = OrtEnsemble({f"m{i}": m for i, m in enumerate(models)}, None, d)
        del models
        xb = x[:batch].numpy()

        def run(n_batches: int) -> None:
            for _ in range(n_batches):
                logits, _ = engine.run(xb)
                torch.from_numpy(logits).softmax(-1)

        run(warmup)
        n_batches = max(1, images // batch)
        t0 = time.perf_counter()
        run(n_batches)
        return n_batches * batch / (time.perf_counter() - t0)


def format_bench_predict(result: dict) -> str:
    r = result
    lines = [
        f"scxnn bench predict: {r['models']} x {r['backbone']} per image, {r['size']} px, batch {r['batch']}, "
        f"{r['images']} timed images after {r['warmup']} warm-up batch(es), {r['device']}",
        f"machine: {r['machine']}; torch {r['torch']}, {r['threads']} threads",
        f"{'variant':<14}{'img/s':>10}{'s/img':>10}{'vs naive':>12}",
    ]
    base = r["img_per_s"][r["baseline"]]
    for name, v in r["img_per_s"].items():
        if isinstance(v, float):
            lines.append(f"{name:<14}{v:>10.3f}{1 / v:>10.3f}{v / base:>11.2f}x")
        else:
            lines.append(f"{name:<14}{v:>10}")
    lines.append(f"ratio: {r['ratio']:.1f}x vs the naive path (fp32 NCHW, decoder on); best: {r['best']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- bench preprocess


def bench_preprocess(size_hw: tuple[int, int] = (3000, 2500), bits: int = 12, repeats: int = 3, p: Preprocess | None = None, seed: int = 0) -> dict:
    """``scxnn bench preprocess``: time :func:`scxnn.pixels.preprocess_pixels` against
    :func:`scxnn.pixels.reference_pipeline` on one core, same image.

    The input is a smooth 12-bit radiograph-like field with noise (structure matters little to these
    steps' cost, but CLAHE and the percentiles see a realistic histogram). Returns per-step seconds.
    """
    if p is None:
        from scxnn.config import load_config

        p = load_config("thesis").preprocess
    rng = np.random.default_rng(seed)
    h, w = size_hw
    small = cv2.GaussianBlur(rng.random((h // 16, w // 16)).astype(np.float32), (0, 0), 3)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / (img.max() - img.min()) * 0.8 + 0.1 + rng.normal(0, 0.01, (h, w)).astype(np.float32)
    img = np.clip(img * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        def timed(fn) -> float:
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            return best

        geo = Geometry(h, w, p.size)
        img8 = clip_and_normalise(img, p)
        sq = geo.pad(img8)
        eq = enhance(sq, p)
        out = geo.resize(eq)
        steps = {
            "percentiles": timed(lambda: percentiles(img, *p.clip_percentiles)),
            "clip+minmax": timed(lambda: clip_and_normalise(img, p)),
            "pad": timed(lambda: geo.pad(img8)),
            "contrast": timed(lambda: enhance(sq, p)),
            "resize": timed(lambda: geo.resize(eq)),
            "png": timed(lambda: encode_png(out)),
        }
        ours = timed(lambda: encode_png(preprocess_pixels(img, p)[0]))
        ref = timed(lambda: encode_png(reference_pipeline(img, p)))
    finally:
        cv2.setNumThreads(threads)
    return {"shape": (h, w), "bits": bits, "size": p.size, "contrast": p.contrast, "steps_s": steps, "ours_s": ours, "reference_s": ref, "ratio": ref / ours}
