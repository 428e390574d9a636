"""SCXNN: a torchvision backbone (encoder) + a light U-Net reconstruction decoder + a 2/3-class head.

Thesis section 3.3: one model per finding; DenseNet-121 pretrained on ImageNet, its 1000-way FC layer
replaced by a 3-way one (normal / target / others), and a reconstruction decoder trained jointly with
``CE + lambda * MSE`` (lambda = 0.8) so the encoder learns where a lesion is and what it looks like.

Design choices (why):

* Input is one greyscale channel in [0, 1]. The model normalises it itself (so every caller feeds the
  same thing) and its first conv is the ImageNet 3-channel conv with the RGB kernels *summed*: for a
  grey image repeated to 3 channels ``sum_c W_c * g == (sum_c W_c) * g``, so this is exactly the
  3-channel network on repeated grey, at a third of the first layer's cost.
* The encoder keeps torchvision's module names, so an ImageNet checkpoint loads with
  ``load_state_dict(strict=True)`` after dropping the classifier and summing the first conv; nothing
  here downloads (the machines have no network): weights come from torchvision's cache or an error
  says which file to put where.
* Every backbone exposes five feature levels at strides 2, 4, 8, 16, 32 (the U-Net skips), which is
  why input sides must be multiples of 32 (see ``config.Preprocess``).
* The code only uses ``flatten``/``reshape`` and shape-agnostic ops, so ``channels_last`` works.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from scxnn.utils import sha256_file
from scxnn.weights import TRUNK_BACKBONE, TRUNK_FILE, recorded_sha256, trunk_sha256_path

log = logging.getLogger("scxnn")

BACKBONES = ("densenet121", "densenet169", "resnet50", "vgg16", "googlenet", "efficientnet_b2")
DECODER_WIDTHS = (256, 128, 64, 32, 16)  # /16, /8, /4, /2, /1: light enough for CPU training

# ImageNet statistics of a grey image: the mean of the RGB channel statistics.
IMAGENET_GREY_MEAN = (0.485 + 0.456 + 0.406) / 3
IMAGENET_GREY_STD = (0.229 + 0.224 + 0.225) / 3


class PretrainedWeightsMissing(FileNotFoundError):
    """The pretrained weights file is not on disk; the message says which file to put where."""


class UnsafeWeightsFile(ValueError):
    """A weights file holds pickled Python objects, not plain tensors, and was refused."""


class TrunkChecksumError(ValueError):
    """The shipped trunk's bytes are not the ones its card and checksum file name."""


def shipped_trunk(path: Path = TRUNK_FILE) -> Path:
    """The shipped trunk's path, once its bytes match its recorded SHA-256 (one clear error line
    otherwise: a git LFS pointer, a truncated checkout or a hand-edited file never starts a study)."""
    sums = trunk_sha256_path(path)
    want = recorded_sha256(path)
    if not path.is_file() or not want:
        raise PretrainedWeightsMissing(f"the shipped trunk {path} (or its checksum {sums.name}) is missing: restore it with "
                                       f"`git checkout -- {path.parent}` or rebuild it with `make trunk`; or use model.pretrained: none")
    got = sha256_file(path)
    if got != want:
        raise TrunkChecksumError(f"{path}: SHA-256 {got[:16]}... does not match {want[:16]}... in {sums.name}: the file is "
                                 f"damaged or not the shipped trunk (a git LFS pointer?); restore it with `git checkout -- {path}` or rebuild it with `make trunk`")
    return path


# --------------------------------------------------------------------------- backbone registry


@dataclass(frozen=True)
class _Spec:
    build: Callable[[], nn.Module]  # the torchvision model, random init, no download
    stages: tuple[tuple[str, ...], ...]  # module paths run in order; one tuple per stride level
    channels: tuple[int, ...]  # output channels per level
    first_conv: str  # path of the 3-channel input conv (summed to 1 channel)
    drop_prefixes: tuple[str, ...]  # torchvision keys that are not part of the encoder (ImageNet head)
    gradcam: str  # Grad-CAM target layer path
    weights: str  # torchvision weights enum member giving the ImageNet file name
    mean: float = IMAGENET_GREY_MEAN
    std: float = IMAGENET_GREY_STD


def _densenet(name: str, channels: tuple[int, ...]) -> _Spec:
    f = lambda *names: tuple(f"features.{n}" for n in names)  # noqa: E731
    return _Spec(
        build=lambda: getattr(torchvision.models, name)(weights=None),
        stages=(
            f("conv0", "norm0", "relu0"),
            f("pool0", "denseblock1"),
            f("transition1", "denseblock2"),
            f("transition2", "denseblock3"),
            # torchvision applies F.relu(inplace=True) after norm5 in forward(); a separate,
            # not-in-place ReLU keeps norm5's output intact for Grad-CAM hooks.
            (*f("transition3", "denseblock4", "norm5"), "final_relu"),
        ),
        channels=channels,
        first_conv="features.conv0",
        drop_prefixes=("classifier.",),
        # norm5 = ``features[-1]``, the layer pytorch-grad-cam's README uses for DenseNet: it is the
        # last feature map before the global pool, i.e. what the FC layer actually sees (up to ReLU),
        # whereas denseblock4's raw output is an un-normalised concatenation reaching back to
        # transition3. For a GAP + linear head Grad-CAM on it equals CAM.
        gradcam="features.norm5",
        weights=f"{name.capitalize().replace('net', 'Net')}_Weights",
    )


_SPECS: dict[str, _Spec] = {
    "densenet121": _densenet("densenet121", (64, 256, 512, 1024, 1024)),
    "densenet169": _densenet("densenet169", (64, 256, 512, 1280, 1664)),
    "resnet50": _Spec(
        build=lambda: torchvision.models.resnet50(weights=None),
        stages=(("conv1", "bn1", "relu"), ("maxpool", "layer1"), ("layer2",), ("layer3",), ("layer4",)),
        channels=(64, 256, 512, 1024, 2048),
        first_conv="conv1",
        drop_prefixes=("fc.",),
        gradcam="layer4.2",  # layer4[-1], the pytorch-grad-cam convention; same output as layer4
        weights="ResNet50_Weights",
    ),
    "vgg16": _Spec(
        build=lambda: torchvision.models.vgg16(weights=None),
        # taps after each max-pool: features[4, 9, 16, 23, 30]
        stages=tuple(tuple(f"features.{i}" for i in range(a, b)) for a, b in ((0, 5), (5, 10), (10, 17), (17, 24), (24, 31))),
        channels=(64, 128, 256, 512, 512),
        first_conv="features.0",
        drop_prefixes=("classifier.",),
        gradcam="features.29",  # relu5_3, the last conv layer's rectified maps (Grad-CAM paper, /16)
        weights="VGG16_Weights",
    ),
    "googlenet": _Spec(
        build=lambda: torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=True),
        stages=(
            ("conv1",),
            ("maxpool1", "conv2", "conv3"),
            ("maxpool2", "inception3a", "inception3b"),
            ("maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
            ("maxpool4", "inception5a", "inception5b"),
        ),
        channels=(64, 192, 480, 832, 1024),
        first_conv="conv1.conv",
        drop_prefixes=("fc.", "aux1.", "aux2."),
        gradcam="inception5b",
        weights="GoogLeNet_Weights",
        # torchvision's ImageNet GoogLeNet (ported from TF) expects (x - 0.5) / 0.5; its
        # transform_input=True re-maps ImageNet-normalised input to exactly that. We normalise so directly.
        mean=0.5,
        std=0.5,
    ),
    "efficientnet_b2": _Spec(
        build=lambda: torchvision.models.efficientnet_b2(weights=None),
        stages=(
            ("features.0", "features.1"),
            ("features.2",),
            ("features.3",),
            ("features.4", "features.5"),
            ("features.6", "features.7", "features.8"),
        ),
        channels=(16, 24, 48, 120, 1408),
        first_conv="features.0.0",
        drop_prefixes=("classifier.",),
        gradcam="features.8",  # features[-1], the 1x1 conv head before the pool (README convention)
        weights="EfficientNet_B2_Weights",
    ),
}
assert tuple(_SPECS) == BACKBONES


def _spec(backbone: str) -> _Spec:
    if backbone not in _SPECS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    return _SPECS[backbone]


# --------------------------------------------------------------------------- encoder


class Encoder(nn.Module):
    """A torchvision backbone without its classifier, returning the 5 stride levels, shallow -> deep.

    Its state dict keys are torchvision's (``features.conv0.weight``, ``layer1.0.conv1.weight``, ...),
    so ImageNet checkpoints load strictly. Takes grey [0, 1] input and normalises it.
    """

    def __init__(self, backbone: str = "densenet121"):
        super().__init__()
        spec = _spec(backbone)
        self.backbone = backbone
        self.channels = spec.channels
        self._stages = spec.stages
        net = spec.build()
        used = {path.split(".", 1)[0] for stage in spec.stages for path in stage}
        for name, child in net.named_children():  # keep torchvision's names; drop the head and pools
            if name in used:
                self.add_module(name, child)
        if backbone.startswith("densenet"):
            self.final_relu = nn.ReLU()
        self._first_conv = spec.first_conv
        self._set_first_conv(_sum_rgb_conv(self.get_submodule(spec.first_conv)))
        # Buffers, not persistent: they are constants of the backbone, not learned state.
        self.register_buffer("mean", torch.tensor(spec.mean).reshape(1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).reshape(1, 1, 1, 1), persistent=False)

    def _set_first_conv(self, conv: nn.Conv2d) -> None:
        parent, _, leaf = self._first_conv.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, conv)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        feats = []
        for stage in self._stages:
            for path in stage:
                x = self.get_submodule(path)(x)
            feats.append(x)
        return feats


def _sum_rgb_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The same conv with 1 input channel whose kernel is the sum of the RGB kernels."""
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


# --------------------------------------------------------------------------- decoder and head


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetDecoder(nn.Module):
    """From the deepest feature: (upsample x2, concat the skip, conv-bn-relu x2) per level, up to the
    input resolution, then a 1x1 conv and a sigmoid (the targets are images / masks in [0, 1]).

    The same module serves ``decoder: reconstruction`` and ``decoder: segmentation``; only the target
    the trainer compares it with differs.
    """

    def __init__(self, encoder_channels: tuple[int, ...], widths: tuple[int, ...] = DECODER_WIDTHS):
        super().__init__()
        skips = list(encoder_channels[-2::-1]) + [0]  # /16, /8, /4, /2 skips; the last level has none
        cin = encoder_channels[-1]
        blocks = []
        for skip, w in zip(skips, widths):
            blocks.append(nn.Sequential(_conv_bn_relu(cin + skip, w), _conv_bn_relu(w, w)))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(cin, 1, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        skips = feats[-2::-1]
        for i, block in enumerate(self.blocks):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if i < len(skips):
                x = torch.cat([x, skips[i]], dim=1)
            x = block(x)
        return torch.sigmoid(self.out(x))


class Head(nn.Module):
    """Global average pool + Linear: the "FC layer" the thesis replaces (1000 -> num_classes)."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- the model


class SCXNN(nn.Module):
    """Encoder + U-Net decoder (optional) + classification head. Input: (B, 1, H, W) in [0, 1]."""

    def __init__(self, backbone: str = "densenet121", num_classes: int = 3, decoder: str = "reconstruction", pretrained: str = "none",
                 decoder_widths: tuple[int, ...] = DECODER_WIDTHS):
        super().__init__()
        if num_classes not in (2, 3):
            raise ValueError(f"num_classes must be 2 or 3, got {num_classes!r}")
        if decoder not in ("reconstruction", "segmentation", "none"):
            raise ValueError(f"decoder must be 'reconstruction', 'segmentation' or 'none', got {decoder!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.decoder_kind = decoder
        self.encoder = Encoder(backbone)
        self.decoder: nn.Module | None = None if decoder == "none" else UNetDecoder(self.encoder.channels, tuple(decoder_widths))
        self.head = Head(self.encoder.channels[-1], num_classes)
        self.load_pretrained(pretrained)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return self.encoder.channels

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"expected (B, 1, H, W) with H and W multiples of 32, got {tuple(x.shape)}")
        return self.encoder(x)

    def forward_head(self, feats: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The classification logits (B, num_classes) from :meth:`forward_features`' output; with
        ``pre_logits`` (timm's convention), the globally average-pooled deepest feature map (B, C)
        instead, in float32 whatever the autocast dtype. Those pooled features are the one definition
        the out-of-distribution gate is fitted and scored on (step 03, ``predict``, ONNX)."""
        if pre_logits:
            return feats[-1].float().mean(dim=(2, 3))
        return self.head(feats[-1])

    def forward_decoder(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if self.decoder is None:
            raise RuntimeError("this model was built with decoder='none'")
        return self.decoder(feats)

    def forward(self, x: torch.Tensor, decode: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.forward_features(x)
        logits = self.forward_head(feats)
        # decode=False: inference fast path; the decoder is never run (it costs about as much as the encoder).
        recon = self.forward_decoder(feats) if decode and self.decoder is not None else None
        return logits, recon

    def gradcam_target_layer(self) -> nn.Module:
        return self.encoder.get_submodule(_spec(self.backbone).gradcam)

    # -- weights -------------------------------------------------------------------------------
    def load_pretrained(self, pretrained: str) -> None:
        """"none": keep the random init; "imagenet": torchvision's cached ImageNet weights; "trunk": the
        shipped trunk (checksum-verified; its decoder too when the widths fit); otherwise a path to a
        state dict: encoder weights (torchvision layout) or a full SCXNN state dict (fp16 is cast)."""
        if pretrained == "none":
            return
        if pretrained == "imagenet":
            self.encoder.load_state_dict(_encoder_state(self.backbone, load_imagenet_weights(self.backbone)))
            return
        if pretrained == "trunk":
            if self.backbone != TRUNK_BACKBONE:
                raise ValueError(f"model.pretrained: trunk is a {TRUNK_BACKBONE} start; a {self.backbone} model needs 'none', "
                                 f"'study', 'imagenet' or a path")
            pretrained = str(shipped_trunk())
        sd = _load_weights_file(pretrained)
        if any(k.startswith("encoder.") for k in sd):
            self._load_scxnn_state(sd, pretrained)
        else:
            try:
                self.encoder.load_state_dict(_encoder_state(self.backbone, sd))
            except RuntimeError as e:
                raise ValueError(f"{pretrained}: not {self.backbone} encoder weights nor an SCXNN state dict: {e}") from None

    def _load_scxnn_state(self, sd: Mapping[str, torch.Tensor], source: str) -> None:
        parts = {name: {k[len(name) + 1 :]: v for k, v in sd.items() if k.startswith(name + ".")} for name in ("encoder", "decoder", "head")}
        unknown = [k for k in sd if k.split(".", 1)[0] not in parts]
        if unknown:
            raise ValueError(f"{source}: unexpected keys in an SCXNN state dict: {unknown[:5]}")
        try:
            self.encoder.load_state_dict(parts["encoder"])  # strict: the encoder must match exactly
        except RuntimeError as e:
            raise ValueError(f"{source}: encoder weights do not fit a {self.backbone} SCXNN: {e}") from None
        # Decoder and head are taken when they fit; a 3-class checkpoint can seed a 2-class model, say.
        for name in ("decoder", "head"):
            module = getattr(self, name)
            if module is None or not parts[name]:
                continue
            mine = module.state_dict()
            if set(mine) == set(parts[name]) and all(mine[k].shape == v.shape for k, v in parts[name].items()):
                module.load_state_dict(parts[name])
            else:
                log.warning("%s: %s weights do not fit this model; keeping its fresh %s", source, name, name)


def build_model(mcfg) -> SCXNN:
    """An SCXNN from a :class:`scxnn.config.Model`."""
    return SCXNN(backbone=mcfg.backbone, num_classes=mcfg.num_classes, decoder=mcfg.decoder, pretrained=mcfg.pretrained,
                 decoder_widths=mcfg.decoder_widths)


# --------------------------------------------------------------------------- weight files


def imagenet_weights_url(backbone: str) -> str:
    """The torchvision URL of the ImageNet weights (IMAGENET1K_V1: what ``pretrained=True`` gave)."""
    return getattr(torchvision.models, _spec(backbone).weights).IMAGENET1K_V1.url


def imagenet_weights_path(backbone: str) -> Path:
    """Where torchvision's own download would cache the file: ``<torch hub dir>/checkpoints/<name>``."""
    name = os.path.basename(urlparse(imagenet_weights_url(backbone)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def load_imagenet_weights(backbone: str) -> dict[str, torch.Tensor]:
    """The torchvision-layout ImageNet state dict of ``backbone``, read from torchvision's cache.

    Never downloads. Old-style DenseNet keys (``denselayer1.norm.1.weight``) are renamed to the
    current layout (``denselayer1.norm1.weight``) as torchvision does. The classifier and the 3-channel
    first conv are returned as stored; :class:`SCXNN` drops / sums them.
    """
    path = imagenet_weights_path(backbone)
    if not path.is_file():
        url = imagenet_weights_url(backbone)
        raise PretrainedWeightsMissing(
            f"ImageNet weights for {backbone} not found: put the file {path.name} at {path} "
            f"(download {url} on a machine with network access; torch hub dir: {path.parent.parent}, "
            f"set with $TORCH_HOME). Or use pretrained: none."
        )
    return _load_weights_file(path)


_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise PretrainedWeightsMissing(f"pretrained weights file {str(path)!r} not found (use 'imagenet', 'none' or a path to a state dict)")
    try:
        # weights_only=True: tensors and plain containers only, so a file cannot run code on load.
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeWeightsFile(
            f"{p}: refused: it holds pickled Python objects, not just tensors (torch.load weights_only=True). "
            f"Save plain weights with torch.save(model.state_dict(), path). Detail: {str(e).splitlines()[0]}"
        ) from None
    for key in ("model", "state_dict"):  # training checkpoints wrap the state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p}: not a state dict (a mapping of names to tensors)")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel prefix
    return {(m.group(1) + m.group(2) if (m := _DENSENET_OLD_KEY.match(k)) else k): v for k, v in sd.items()}


def _encoder_state(backbone: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision-layout state dict -> the Encoder's: drop the ImageNet head, sum the RGB kernels."""
    spec = _spec(backbone)
    out = {k: v for k, v in sd.items() if not k.startswith(spec.drop_prefixes)}
    key = spec.first_conv + ".weight"
    if key in out and out[key].shape[1] == 3:
        out[key] = out[key].sum(dim=1, keepdim=True)
    return out
