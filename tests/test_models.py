"""SCXNN model: shapes for every backbone, the decode=False fast path, channels_last, a tiny overfit,
offline ImageNet weight loading and refusal of unsafe weight files. CPU only, small inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from scxnn.config import BACKBONES as CONFIG_BACKBONES
from scxnn.models import (
    BACKBONES,
    SCXNN,
    PretrainedWeightsMissing,
    UnsafeWeightsFile,
    build_model,
    imagenet_weights_path,
    load_imagenet_weights,
)


class NotAWeight:  # a custom object a hostile or careless checkpoint might pickle
    pass


@pytest.fixture(autouse=True)
def _small_threads():
    # Many tiny ops: extra threads only add overhead on a shared CI box.
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_backbones_match_config():
    assert BACKBONES == CONFIG_BACKBONES


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_shapes(backbone):
    torch.manual_seed(0)
    model = SCXNN(backbone, num_classes=3, decoder="reconstruction").eval()
    x = torch.rand(2, 1, 64, 64)
    calls = []
    model.decoder.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        feats = model.forward_features(x)
        logits, recon = model(x)
        assert len(calls) == 1
        logits_fast, none = model(x, decode=False)
    assert len(calls) == 1, "decode=False must not run the decoder"
    assert none is None
    torch.testing.assert_close(logits_fast, logits)
    assert logits.shape == (2, 3) and recon.shape == (2, 1, 64, 64)
    assert torch.isfinite(logits).all() and torch.isfinite(recon).all()
    assert 0 <= recon.min() and recon.max() <= 1

    assert len(feats) == 5
    sides = [f.shape[-1] for f in feats]
    assert sides == [32, 16, 8, 4, 2]  # strides 2, 4, 8, 16, 32
    assert [f.shape[1] for f in feats] == list(model.feature_channels)

    layer = model.gradcam_target_layer()
    assert any(layer is m for m in model.encoder.modules())

    assert model.encoder.get_submodule(_first_conv(backbone)).in_channels == 1


def _first_conv(backbone):
    from scxnn.models import _spec

    return _spec(backbone).first_conv


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("bf16", [False, True])
def test_pre_logits_are_the_float32_pooled_deepest_features(backbone, bf16):
    # The OOD gate is fitted on these in step 03 and scored on them in predict and ONNX: one
    # definition, fp32 even under bf16 autocast, so a gate fitted in one precision scores the other.
    torch.manual_seed(0)
    model = SCXNN(backbone, decoder="none").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    assert pre.dtype == torch.float32 and pre.shape == (2, model.feature_channels[-1])
    torch.testing.assert_close(pre, feats[-1].float().mean(dim=(2, 3)), rtol=0, atol=0)
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("backbone", ["densenet121", "resnet50"])
def test_two_classes_and_no_decoder(backbone):
    model = SCXNN(backbone, num_classes=2, decoder="none").eval()
    assert model.decoder is None
    with torch.no_grad():
        logits, recon = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 2) and recon is None
    with pytest.raises(RuntimeError):
        model.forward_decoder([])


def test_bad_input_and_args():
    model = SCXNN("googlenet", decoder="none").eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 1, 48, 64))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="unknown backbone"):
        SCXNN("alexnet")
    with pytest.raises(ValueError):
        SCXNN(num_classes=4)


def test_build_model_from_config():
    from scxnn.config import Model

    m = build_model(Model(backbone="efficientnet_b2", pretrained="none", num_classes=2, decoder="segmentation",
                          decoder_widths=(256, 128, 64, 32, 16), dilate_mask=True, recon_weight=0.8))
    assert m.backbone == "efficientnet_b2" and m.num_classes == 2 and m.decoder is not None


@pytest.mark.parametrize("backbone", ["densenet121", "resnet50"])
def test_decoder_widths_set_the_decoder_and_keep_its_output(backbone):
    from scxnn.config import Model

    mc = Model(backbone=backbone, pretrained="none", num_classes=3, decoder="reconstruction",
               decoder_widths=(64, 32, 16, 8, 8), dilate_mask=True, recon_weight=0.8)
    light, full = build_model(mc).eval(), SCXNN(backbone).eval()
    # The demo's light decoder: same encoder and head, a quarter of the decoder's weights, full-size output.
    assert [b[0][0].out_channels for b in light.decoder.blocks] == [64, 32, 16, 8, 8]
    assert sum(p.numel() for p in light.decoder.parameters()) < sum(p.numel() for p in full.decoder.parameters()) / 4
    with torch.no_grad():
        logits, recon = light(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3) and recon.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("widths", [[64, 32, 16, 8], [64, 32, 16, 8, 0]], ids=["four_levels", "zero_width"])
def test_config_refuses_decoder_widths_that_do_not_fit_the_five_levels(widths):
    from scxnn.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="decoder_widths"):
        load_config("smoke", {"model.decoder_widths": widths})


def test_channels_last_same_logits():
    torch.manual_seed(0)
    model = SCXNN("densenet121").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ref, rec_ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out, rec = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rec, rec_ref, atol=1e-4, rtol=1e-4)


def _toy_batch(n=8, side=64):
    """Bright disc = target (1), nothing = normal (0), two dim discs = others (2)."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")

    def disc(cy, cx, r):
        return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()

    gen = torch.Generator().manual_seed(0)
    imgs, labels = [], []
    for i in range(n):
        img = 0.2 + 0.05 * torch.rand(side, side, generator=gen)
        label = i % 3
        if label == 1:
            img = img + 0.7 * disc(20 + 3 * i, 32, 10)
        elif label == 2:
            img = img + 0.4 * disc(16, 16, 7) + 0.4 * disc(46, 46, 7)
        imgs.append(img.clamp(0, 1))
        labels.append(label)
    return torch.stack(imgs)[:, None], torch.tensor(labels)


def test_tiny_overfit():
    torch.manual_seed(0)
    x, y = _toy_batch()
    model = SCXNN("densenet121", num_classes=3, decoder="reconstruction").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):  # it typically falls to ~3% of the start within 10 steps
        logits, recon = model(x)
        loss = F.cross_entropy(logits, y) + 0.8 * F.mse_loss(recon, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses))
    assert min(losses[-5:]) < 0.5 * losses[0], losses


def test_gradcam_runs_on_target_layer():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Logits(torch.nn.Module):  # pytorch-grad-cam wants a model that returns logits only
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, decode=False)[0]

    torch.manual_seed(0)
    model = SCXNN("densenet121").eval()
    with GradCAM(model=Logits(model), target_layers=[model.gradcam_target_layer()]) as cam:
        heat = cam(input_tensor=torch.rand(2, 1, 64, 64), targets=[ClassifierOutputTarget(1)] * 2)
    assert heat.shape == (2, 64, 64) and (heat >= 0).all() and (heat <= 1 + 1e-6).all()
    assert model.gradcam_target_layer() is model.encoder.features.norm5


def test_imagenet_missing_names_the_file(empty_hub):
    with pytest.raises(PretrainedWeightsMissing) as e:
        SCXNN("densenet121", pretrained="imagenet")
    expected = empty_hub / "checkpoints" / "densenet121-a639ec97.pth"
    assert imagenet_weights_path("densenet121") == expected
    assert str(expected) in str(e.value) and "densenet121-a639ec97.pth" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def _old_style_densenet_keys(sd):
    """torchvision's published DenseNet files use 'denselayer1.norm.1.weight' for 'norm1'."""
    import re

    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in sd.items()}


def test_imagenet_from_cache_sums_first_conv(empty_hub):
    torch.manual_seed(0)
    tv = torchvision.models.densenet121(weights=None).eval()
    for m in tv.modules():  # non-trivial BN statistics, so a wrong key mapping cannot pass
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = _old_style_densenet_keys(tv.state_dict())
    assert any(".norm.1." in k for k in sd)
    path = imagenet_weights_path("densenet121")
    path.parent.mkdir(parents=True)
    torch.save(sd, path)

    assert "features.denseblock1.denselayer1.norm1.weight" in load_imagenet_weights("densenet121")
    model = SCXNN("densenet121", pretrained="imagenet").eval()
    conv = model.encoder.features.conv0
    assert conv.in_channels == 1
    torch.testing.assert_close(conv.weight, tv.features.conv0.weight.sum(1, keepdim=True))

    # Summing the kernels == the 3-channel torchvision network on the grey image repeated.
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ours = model.forward_features(x)[-1]
        theirs = F.relu(tv.features(((x - model.encoder.mean) / model.encoder.std).repeat(1, 3, 1, 1)))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_pretrained_path_encoder_and_full_state(tmp_path):
    torch.manual_seed(0)
    src = SCXNN("googlenet", num_classes=3).eval()
    full = tmp_path / "full.pt"
    torch.save({"model": src.state_dict(), "epoch": 3}, full)  # a trainer-style checkpoint
    enc = tmp_path / "enc.pt"
    torch.save(src.encoder.state_dict(), enc)

    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ref_logits, ref_recon = src(x)
        torch.manual_seed(1)
        a = SCXNN("googlenet", num_classes=3, pretrained=str(full)).eval()
        logits, recon = a(x)
        torch.testing.assert_close(logits, ref_logits)
        torch.testing.assert_close(recon, ref_recon)
        b = SCXNN("googlenet", num_classes=2, decoder="none", pretrained=str(enc)).eval()
        torch.testing.assert_close(b.forward_features(x)[-1], src.forward_features(x)[-1])
    # A 3-class checkpoint may seed a 2-class model: the head is left fresh.
    SCXNN("googlenet", num_classes=2, pretrained=str(full))
    with pytest.raises(ValueError, match="resnet50"):
        SCXNN("resnet50", pretrained=str(full))
    with pytest.raises(PretrainedWeightsMissing):
        SCXNN("googlenet", pretrained=str(tmp_path / "nope.pt"))


def test_pickled_object_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": NotAWeight(), "w": torch.zeros(1)}, path)
    with pytest.raises(UnsafeWeightsFile, match="refused"):
        SCXNN("densenet121", decoder="none", pretrained=str(path))
