"""scxnn.ort: the ONNX Runtime backend gives the PyTorch model's logits and pooled features, and its
cache is keyed by the checkpoint's content."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scxnn import ort
from scxnn.models import SCXNN

pytestmark = pytest.mark.skipif(not ort.available(), reason="onnx / onnxruntime not installed")


@pytest.mark.parametrize("backbone", ["densenet121", "resnet50"])
def test_onnx_graph_matches_torch_at_any_size(backbone, tmp_path):
    torch.manual_seed(0)
    m = SCXNN(backbone=backbone, num_classes=3, decoder="reconstruction").eval()
    engine = ort.OrtEnsemble({"a": m}, None, tmp_path)
    for size in (64, 96):  # one graph, dynamic height and width
        x = torch.rand(2, 1, size, size)
        logits, pooled = engine.run(x.numpy())
        with torch.inference_mode():
            f = m.forward_features(x)
            ref, ref_pooled = m.forward_head(f), f[-1].mean(dim=(2, 3))
        assert logits.shape == (1, 2, 3) and pooled.shape == ref_pooled.shape
        np.testing.assert_allclose(logits[0], ref.numpy(), atol=1e-4)
        # Relative too: an untrained ResNet-50's pooled activations reach ~40, where float32 sums taken in
        # another order (ONNX Runtime's, or torch with one thread) differ by a few ulps (3e-6 seen).
        np.testing.assert_allclose(pooled, ref_pooled.numpy(), rtol=1e-5, atol=1e-4)


def test_export_cache_follows_the_checkpoint(tmp_path):
    torch.manual_seed(1)
    m = SCXNN(backbone="densenet121", num_classes=3, decoder="none").eval()
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights v1")
    cache = tmp_path / "onnx"
    ort.OrtEnsemble({"nodule": m}, {"nodule": ckpt}, cache)
    (first,) = cache.glob("nodule-*.onnx")
    stamp = first.stat().st_mtime_ns
    ort.OrtEnsemble({"nodule": m}, {"nodule": ckpt}, cache)
    assert first.stat().st_mtime_ns == stamp  # reused, not exported again
    ckpt.write_bytes(b"weights v2")  # a retrained model gets its own file
    ort.OrtEnsemble({"nodule": m}, {"nodule": ckpt}, cache)
    assert len(list(cache.glob("nodule-*.onnx"))) == 2
    assert not list(cache.glob(".*.tmp"))
