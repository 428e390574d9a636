"""Adapters: read a local copy of a public chest X-ray dataset into the common manifest
(:mod:`scxnn.data`). One module per dataset, each with ``FINDING_MAP`` (source label -> target or
unseen finding), ``UNMAPPED`` (source labels deliberately left out, reasons in the module
docstring), ``NORMAL_LABELS`` and ``build(root, out_dir, findings, unseen, seed, split)``. Every row
carries the source's verdict on the whole film, ``abnormal`` (1 any finding, mapped or not; 0 the
source calls it normal; NA neither), and its unmapped labels, ``other_findings``: a film whose only
finding no column maps is abnormal, never normal (label policy: :mod:`._common`).

``build_manifest`` runs one adapter and writes ``out_dir/manifest.csv``; images the labels list
but the disk lacks are skipped and reported in ``df.attrs["skipped"]``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Sequence

import pandas as pd

from scxnn import data
from scxnn.adapters import chexpert, kermany, mimic, nih, siim, tbx11k, vindr

Adapter = ModuleType  # a module exposing FINDING_MAP, UNMAPPED, NORMAL_LABELS, build()

ADAPTERS: dict[str, Adapter] = {
    "kermany": kermany,
    "nih": nih,
    "vindr": vindr,
    "chexpert": chexpert,
    "mimic": mimic,
    "siim": siim,
    "tbx11k": tbx11k,
}


def build_manifest(
    name: str,
    root,
    out_dir,
    findings: Sequence[str],
    unseen: Sequence[str],
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
) -> pd.DataFrame:
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; adapters: {', '.join(ADAPTERS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = ADAPTERS[name].build(root, out_dir, tuple(findings), tuple(unseen), seed=seed, split=tuple(split))
    data.write_manifest(df, out_dir / data.MANIFEST_NAME)
    skipped = pd.DataFrame(df.attrs.get("skipped", []), columns=["path", "reason"])
    data.write_manifest(skipped, out_dir / "skipped.csv")
    return df
