"""scxnn.weights: the shipped trunk file, its checksum file and card, readable without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from scxnn.models import shipped_trunk
from scxnn.utils import sha256_file
from scxnn.weights import CARD_NAME, TRUNK_BACKBONE, TRUNK_FILE, WEIGHTS_DIR, recorded_sha256, trunk_sha256_path

from conftest import ROOT


def test_shipped_trunk_matches_its_checksum_and_card():
    assert shipped_trunk() == TRUNK_FILE
    assert TRUNK_FILE.stat().st_size <= 25 * 2**20
    sha = trunk_sha256_path().read_text().split()[0]
    card = (TRUNK_FILE.parent / "TRUNK_CARD.md").read_text()
    assert sha in card and "make trunk" in card and "seed: 770001" in card
    # weights_only: tensors and plain containers only.
    sd = torch.load(TRUNK_FILE, map_location="cpu", weights_only=True)["model"]
    assert all(v.dtype in (torch.float16, torch.int64) for v in sd.values())


def test_the_recorded_checksum_is_the_shipped_files_and_its_card_names_the_backbone():
    assert TRUNK_FILE.parent == WEIGHTS_DIR and TRUNK_FILE.name.startswith(TRUNK_BACKBONE)
    assert recorded_sha256() == sha256_file(TRUNK_FILE)
    assert trunk_sha256_path().read_text().split()[1] == TRUNK_FILE.name  # sha256sum's "<sum>  <name>"
    assert TRUNK_BACKBONE in (WEIGHTS_DIR / CARD_NAME).read_text()


@pytest.mark.parametrize("sums, expected", [
    (None, ""),  # no checksum file beside the trunk
    ("ABCDEF0123  my_trunk.pt\n", "abcdef0123"),  # sha256sum's format, upper case read as lower
    ("abcdef0123\n", "abcdef0123"),  # the sum alone
], ids=["missing", "sha256sum-format", "sum-only"])
def test_the_checksum_file_sits_beside_any_trunk(tmp_path, sums, expected):
    trunk = tmp_path / "my_trunk.pt"
    assert trunk_sha256_path(trunk) == tmp_path / "my_trunk.pt.sha256"
    if sums is not None:
        trunk_sha256_path(trunk).write_text(sums)
    assert recorded_sha256(trunk) == expected


def test_reading_the_checksum_does_not_import_torch():
    # The Makefile's settings (`scxnn config --make`) name the trunk's checksum without loading torch.
    code = "import sys; from scxnn.weights import recorded_sha256; recorded_sha256(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
