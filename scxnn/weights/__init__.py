"""The one binary the repository tracks: the shipped trunk, ``densenet121_trunk.pt`` in this folder.

A DenseNet-121 encoder and the demo's light U-Net decoder in fp16, pretrained by ``make trunk``
(:func:`scxnn.pretrain.build_trunk`, profile ``params/trunk.yaml``) on a synthetic draw of its own;
``model.pretrained: trunk`` starts every finding model from it (:mod:`scxnn.models` checks its
SHA-256 first). Its card, ``TRUNK_CARD.md``, says how it was made. Torch-free, so that the Makefile's
settings (``scxnn config --make``) can name the trunk's checksum without importing torch.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
TRUNK_BACKBONE = "densenet121"
TRUNK_FILE = WEIGHTS_DIR / "densenet121_trunk.pt"
CARD_NAME = "TRUNK_CARD.md"


def trunk_sha256_path(path: Path = TRUNK_FILE) -> Path:
    """The checksum file beside a trunk: ``<sha256>  <name>`` (sha256sum's format)."""
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path = TRUNK_FILE) -> str:
    """The SHA-256 the trunk's checksum file records ('' when there is none)."""
    sums = trunk_sha256_path(path)
    return sums.read_text().split()[0].strip().lower() if sums.is_file() else ""
