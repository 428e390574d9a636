"""scxnn.sources: where a profile's raw images come from, and their preprocessing into its PNG cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import defects
from scxnn.config import load_config
from scxnn.data import MANIFEST_NAME, hash_patient, new_manifest, read_manifest, write_manifest
from scxnn.pixels import cache_dir, read_png
from scxnn.sources import build_study_cache, source_manifest_path


@pytest.mark.parametrize("overrides, expected", [
    ({}, "{data}/raw/manifest.csv"),  # the generator's manifest
    ({"data.source": "adapter", "data.adapter": "kermany", "data.root": "somewhere"}, "{data}/raw/manifest.csv"),
    ({"data.source": "manifest", "data.manifest": "lists/m.csv"}, "{root}/lists/m.csv"),  # relative: to the project
    ({"data.source": "manifest", "data.manifest": "{tmp}/m.csv"}, "{tmp}/m.csv"),
    ({"data.source": "manifest", "data.manifest": "~/m.csv"}, "{home}/m.csv"),
], ids=["synth", "adapter", "manifest-relative", "manifest-absolute", "manifest-home"])
def test_source_manifest_path(tmp_path, overrides, expected):
    cfg = load_config("smoke", {"paths.data": str(tmp_path / "data"),
                                **{k: v.format(tmp=tmp_path) for k, v in overrides.items()}})
    want = expected.format(data=tmp_path / "data", root=cfg.root, tmp=tmp_path, home=Path.home())
    assert source_manifest_path(cfg) == Path(want)


def test_a_manifest_source_is_preprocessed_into_the_profiles_cache(tmp_path):
    src = tmp_path / "src"
    defects.good_dicom(src / "a.dcm")
    defects.good_dicom(src / "b.dcm", seed=1)
    defects.junk(src / "c.dcm")
    cfg = load_config("smoke", {"data.source": "manifest", "data.manifest": str(src / MANIFEST_NAME),
                                "paths.data": str(tmp_path / "data"), "data.workers": 1})
    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    rows = [{"image_id": name, "patient_id": hash_patient(name), "study_date": "", "site": "internal", "split": "train",
             "label_type": "hard", **{f: 0 for f in findings + unseen}, "nodule": int(name == "a"), "masks": "",
             "view": "PA", "path": f"{name}.dcm", "source_sha256": ""} for name in "abc"]
    write_manifest(new_manifest(rows, findings, unseen), src / MANIFEST_NAME)
    df, skipped = build_study_cache(cfg, progress=False)
    assert df["image_id"].tolist() == ["a", "b"] and df["nodule"].tolist() == [1, 0]
    assert skipped["image_id"].tolist() == ["c"] and skipped["reason"].str.len().gt(0).all()
    out = cache_dir(cfg)
    assert out.parent == tmp_path / "data" and out != cache_dir(cfg.replace({"preprocess.contrast": "histeq"}))
    cols = ["image_id", "split", "path", *findings]
    pd.testing.assert_frame_equal(read_manifest(out / MANIFEST_NAME, findings, unseen)[cols], df[cols])
    for rel in df["path"]:
        assert read_png(out / rel).shape == (cfg.preprocess.size,) * 2


def test_the_synthetic_source_preprocesses_every_generated_film(smoke_cache):
    cfg = load_config("smoke", {"paths.data": str(smoke_cache / "data"), "paths.runs": str(smoke_cache / "runs")})
    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    raw = read_manifest(source_manifest_path(cfg), findings, unseen)
    cached = read_manifest(cache_dir(cfg) / MANIFEST_NAME, findings, unseen)
    assert len(raw) > 0 and sorted(cached["image_id"]) == sorted(raw["image_id"])
    labels = ["split", *findings]
    pd.testing.assert_frame_equal(cached.set_index("image_id").loc[raw["image_id"], labels].reset_index(drop=True),
                                  raw[labels].reset_index(drop=True))
    assert np.all([(cache_dir(cfg) / p).is_file() for p in cached["path"]])
