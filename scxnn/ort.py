"""ONNX Runtime backend for inference on CPUs (``scxnn predict --backend onnx``, ``scxnn bench predict``).

Each finding model's inference path (encoder, then the classification head; the decoder is not
exported) becomes one ONNX graph with two outputs: the logits and the pooled last-block features
that the out-of-distribution gate reads. Batch, height and width are dynamic, so one file serves any
resolution. Files are cached under a folder the caller names, keyed by the checkpoint's content hash:
a retrained model gets a new file, never a stale one. Export uses the TorchScript-based exporter
(``dynamo=False``), which needs only the ``onnx`` package.

Why: on a CPU without native bf16, ONNX Runtime's fused fp32 kernels beat PyTorch's eager
channels_last path (the issue's 2-core measurement: ~10.5 s vs ~17 s per film at 1024 px); where
bf16 is native, PyTorch + bf16 autocast is faster still, so ``auto`` never picks this backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from scxnn.utils import sha256_file

OPSET = 17


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise RuntimeError("the ONNX Runtime backend needs the packages onnx and onnxruntime "
                           "(pip install -e . installs them; see pyproject.toml)")


class _Scorer(nn.Module):
    """The inference path of an SCXNN model: (logits, pooled features), no decoder."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        return self.model.forward_head(feats), self.model.forward_head(feats, pre_logits=True)


def export(model: nn.Module, path: str | os.PathLike, size: int = 64) -> Path:
    """Write ``model``'s inference graph to ``path`` (atomically: a half-written file is never read)."""
    require()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scorer = _Scorer(model).eval().float().to("cpu").to(memory_format=torch.contiguous_format)
    dyn = {0: "batch", 2: "height", 3: "width"}
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(scorer, (torch.zeros(1, 1, size, size),), str(tmp), input_names=["image"],
                              output_names=["logits", "pooled"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"image": dyn, "logits": {0: "batch"}, "pooled": {0: "batch"}})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # 13 sessions each keeping an arena sized for 1024-px activations would hold gigabytes and
    # evict one another from the caches; plain allocations measured faster for the ensemble.
    opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtEnsemble:
    """One ONNX Runtime session per finding model, exported on first use into ``cache_dir``."""

    def __init__(self, models: Mapping[str, nn.Module], checkpoints: Mapping[str, str | os.PathLike] | None,
                 cache_dir: str | os.PathLike, threads: int | None = None):
        require()
        cache = Path(cache_dir)
        self.findings = list(models)
        self.sessions = []
        for i, (finding, model) in enumerate(models.items()):
            key = sha256_file(checkpoints[finding])[:16] if checkpoints else f"m{i}"
            path = cache / f"{finding}-{key}.onnx"
            if not path.is_file():
                export(model, path)
            self.sessions.append(session(path, threads))

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x``: float32 (N, 1, S, S) in [0, 1]. Returns logits (models, N, C) and pooled features
        (N, sum of the models' channels), in findings order."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        logits, pooled = [], []
        for s in self.sessions:
            lg, pl = s.run(["logits", "pooled"], {"image": x})
            logits.append(lg)
            pooled.append(pl)
        return np.stack(logits), np.concatenate(pooled, axis=1)
