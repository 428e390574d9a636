"""Batch-level fuzzing (issue 14): seeded mutants of valid chest films go through ``scxnn preprocess``
(process pool) and ``scxnn predict`` (in process). Every mutant must be decoded plausibly or refused
with a specific reason; no mutant may crash or hang either batch, or hit the catch-all "could not
be screened" / "cannot preprocess" path (that would be a reason nobody can act on).

About 30 s in CI (``SCXNN_FUZZ_MUTANTS``, default 80). The longer run of docs/reliability.md:
``SCXNN_FUZZ_MUTANTS=2000 .venv/bin/python -m pytest tests/test_fuzz.py -s``; it prints the count
of each outcome.
"""

from __future__ import annotations

import collections
import os
import random
import re
from pathlib import Path

import pandas as pd
import pydicom
import pytest

import defects
from conftest import SHARED
from scxnn.config import load_config

N_MUTANTS = int(os.environ.get("SCXNN_FUZZ_MUTANTS", "80"))
SEED = int(os.environ.get("SCXNN_FUZZ_SEED", "14"))
_REAL = ["chest/SIIM_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm", "chest/WG04_RG1_j2k_lossy.dcm",
         "chest/WG04_RG1_jpegls_near_lossless.dcm"]
# Header fields a corrupt file gets wrong, and values that break readers.
_FIELDS = {
    "Rows": [0, 1, 7, 45, 65535], "Columns": [0, 1, 7, 10, 65535], "BitsStored": [0, 1, 6, 8, 17, 64],
    "BitsAllocated": [0, 1, 8, 12, 32, 64], "HighBit": [0, 7, 31, 200], "PixelRepresentation": [0, 1, 2],
    "RescaleSlope": ["1e-38", "0", "NaN", "-1", "1e30", "abc"], "RescaleIntercept": ["1e300", "-32768", "x"],
    "PhotometricInterpretation": ["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", ""],
    "SamplesPerPixel": [0, 3, 4], "NumberOfFrames": ["0", "2", "1A", "-1"], "WindowWidth": ["0", "-5", "1e40"],
    "Modality": ["CT", "MR", "SEG", "RTDOSE", ""],
}


def _seeds(folder: Path) -> list[Path]:
    seeds = [defects.good_dicom(folder / "native.dcm"), defects.good_rle(folder / "rle.dcm"), defects.good_jpeg(folder / "jpeg.dcm")]
    root = SHARED / "realdata" / "dicom_cr_samples"
    seeds += [root / r for r in _REAL if (root / r).is_file()]
    return seeds


def _mutate(data: bytes, rng: random.Random, tmp: Path) -> bytes:
    kind = rng.choice(["flip", "flip", "field", "field", "truncate", "pixels"])
    if kind == "field":
        tmp.write_bytes(data)
        try:
            ds = pydicom.dcmread(tmp)
            field = rng.choice(sorted(_FIELDS))
            setattr(ds, field, rng.choice(_FIELDS[field]))
            ds.save_as(tmp, enforce_file_format=True)
            return tmp.read_bytes()
        except Exception:  # pydicom refuses to write some values: fall back to raw damage
            kind = "flip"
    out = bytearray(data)
    if kind == "truncate":
        return bytes(out[: rng.randrange(132, len(out))])
    start = data.rfind(b"\xe0\x7f\x10\x00") if kind == "pixels" else 0
    for _ in range(rng.choice([1, 2, 4, 16, 256]) if kind == "flip" else max(1, (len(out) - start) // rng.choice([10, 100, 1000]))):
        out[rng.randrange(max(start, 0), len(out))] = rng.randrange(256)
    return bytes(out)


@pytest.fixture(scope="module")
def mutants(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("fuzz")
    seeds = _seeds(root / "seeds")
    rng = random.Random(SEED)
    folder = root / "mutants"
    folder.mkdir()
    paths = []
    for i in range(N_MUTANTS):
        seed = seeds[i % len(seeds)]
        path = folder / f"m{i:05d}_{seed.stem[:12]}.dcm"
        path.write_bytes(_mutate(seed.read_bytes(), rng, root / "scratch.dcm"))
        paths.append(path)
    return folder, paths


def _summary(reasons: pd.Series) -> str:
    kinds = collections.Counter(re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", ": ".join(r.split(": ")[:2]))[:90] for r in reasons)
    return "\n".join(f"{n:6d}  {k}" for k, n in kinds.most_common())


@pytest.mark.timeout(600)
def test_fuzzed_films_never_break_preprocess(mutants, tmp_path):
    from scxnn.batch import preprocess_inputs

    folder, paths = mutants
    cfg = load_config("smoke", {"data.workers": 2})
    df, skipped = preprocess_inputs(cfg, [folder], tmp_path / "png", progress=False)
    assert len(df) + len(skipped) == len(paths)  # every mutant has its row
    assert skipped["reason"].str.len().gt(0).all()
    assert not skipped["reason"].str.contains("DOE|JANE|MRN-0042").any()  # the seeds' patient name and id
    vague = skipped[skipped["reason"].str.startswith("cannot preprocess (")]
    assert vague.empty, vague["reason"].tolist()[:5]
    print(f"\npreprocess: {len(paths)} mutants, {len(df)} decoded plausibly, {len(skipped)} refused\n{_summary(skipped['reason'])}")


@pytest.mark.timeout(600)
def test_fuzzed_films_never_break_predict(mutants, tmp_path):
    from test_predict import _FakeScreener

    from scxnn.predict import predict

    folder, paths = mutants
    s = _FakeScreener(score_value=-1.0)
    s.models, s.threshold_name, s.device, s.bf16 = {}, "point", type("D", (), {"type": "cpu"})(), False
    t = predict(None, [folder], tmp_path / "out", overlays=False, progress=False, screener=s)
    assert len(t) == len(paths) and (tmp_path / "out" / "report.html").is_file()
    rejected = t[t["decision"] == "rejected"]
    assert rejected["reason"].str.len().gt(0).all()
    assert not rejected["reason"].str.contains("DOE|JANE|MRN-0042").any()
    vague = rejected[rejected["reason"].str.startswith("could not be screened")]
    assert vague.empty, vague["reason"].tolist()[:5]
    print(f"\npredict: {len(paths)} mutants, {len(t) - len(rejected)} scored, {len(rejected)} rejected\n{_summary(rejected['reason'])}")
