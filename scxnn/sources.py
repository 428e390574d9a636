"""The choice of data source: where the profile's raw images come from (the synthetic generator, a
dataset adapter or ``data.manifest``) and the PNG cache they are preprocessed into."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scxnn.batch import preprocess_manifest
from scxnn.config import Config
from scxnn.pixels import cache_dir
from scxnn.utils import log


def source_manifest_path(cfg: Config) -> Path:
    """The manifest of the profile's source images: the generator's, the adapter's, or ``data.manifest``."""
    from scxnn.data import MANIFEST_NAME

    if cfg.data.source in ("synth", "adapter"):
        return cfg.path("data") / "raw" / MANIFEST_NAME
    p = Path(cfg.data.manifest).expanduser()
    return p if p.is_absolute() else cfg.root / p


def build_study_cache(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The profile's data step: the raw images (synthetic by default, or ``data.manifest``) through the
    preprocessing into the PNG cache. Returns (preprocessed manifest, skipped)."""
    from scxnn.data import MANIFEST_NAME, read_manifest

    mpath = source_manifest_path(cfg)
    if cfg.data.source == "synth":
        from scxnn import synth

        raw = synth.generate(cfg, mpath.parent, progress=progress)
    elif cfg.data.source == "adapter":
        from scxnn.adapters import build_manifest

        root = Path(cfg.data.root).expanduser()
        root = root if root.is_absolute() else cfg.root / root
        raw = build_manifest(cfg.data.adapter, root, mpath.parent, list(cfg.findings), list(cfg.unseen_findings),
                             seed=cfg.seed, split=cfg.data.split)
        n_skip = len(raw.attrs.get("skipped", []))
        log.info("%s: %d images from %s%s", cfg.data.adapter, len(raw), root, f", {n_skip} skipped (see {mpath.parent / 'skipped.csv'})" if n_skip else "")
    else:
        raw = read_manifest(mpath, list(cfg.findings), list(cfg.unseen_findings))
    out = cache_dir(cfg)
    df, skipped = preprocess_manifest(cfg, raw, mpath.parent, out, progress=progress)
    assert (out / MANIFEST_NAME).is_file()
    return df, skipped
