"""scxnn.gallery: display scaling and reading, the gallery's choice of examples (and no gallery for a
profile the generator cannot draw), real normal films from a hand-made realdata folder, and the
before/after preprocessing figure. The gallery and the synthetic-vs-real figure of the smoke set
are drawn in test_synth.py, beside its generated films."""

from __future__ import annotations

import cv2
import defects
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scxnn import gallery as G
from scxnn.config import load_config
from scxnn.pixels import encode_png
from scxnn.synth import plan

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- display


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_display_norm_clips_the_extremes_into_zero_to_one(dtype):
    rng = np.random.default_rng(0)
    a = rng.uniform(100, 200, (64, 64))
    a[0, 0], a[0, 1] = 0, 1000 if dtype != np.uint8 else 255  # two outliers, beyond the 0.5 / 99.5 percentiles
    out = G.display_norm(a.astype(dtype))
    assert out.dtype == np.float32 and out.shape == (64, 64)
    assert out.min() == 0 and out.max() == 1 and out[0, 0] == 0 and out[0, 1] == 1
    assert 0.05 < np.median(out) < 0.95  # the body of the film is spread out, not squashed by the outliers


def test_display_norm_shares_the_grey_scale_of_a_reference():
    twin = np.tile(np.linspace(0, 100, 50, dtype=np.float32), (50, 1))
    film = twin.copy()
    film[20:30, 20:30] += 20  # a lesion: brighter than its twin there, the same elsewhere
    pair = G.display_norm(film, ref=twin), G.display_norm(twin)
    np.testing.assert_allclose(pair[0][:, :20], pair[1][:, :20], atol=1e-6)  # one scale for the pair
    assert (pair[0][20:30, 20:30] >= pair[1][20:30, 20:30]).all()
    assert not G.display_norm(np.full((8, 8), 7.0)).any()  # a flat film: no division by zero


def _png(path):
    path.write_bytes(encode_png((defects.chest() >> 4).astype(np.uint8)))
    return path


def _monochrome1(path):
    return defects._save(defects._dataset(4095 - defects.chest(), PhotometricInterpretation="MONOCHROME1"), path)


@pytest.mark.parametrize("write", [_png, defects.good_dicom, _monochrome1], ids=["png", "dicom-monochrome2", "dicom-monochrome1"])
def test_read_image_shows_dense_as_bright_whatever_the_format(tmp_path, write):
    img = G.read_image(write(tmp_path / "film"))
    assert img.dtype == np.float32 and img.shape == (320, 288) and 0 <= img.min() and img.max() <= 1
    mediastinum, lung = img[140:180, 136:152].mean(), img[140:180, 76:92].mean()  # x = 0.5 vs x = 0.3 of defects.chest
    assert mediastinum > lung + 0.3


# --------------------------------------------------------------------------- the gallery's examples


def test_without_a_manifest_the_plan_gives_every_finding_a_clean_example():
    cfg = load_config("smoke")
    examples = G.gallery_examples(cfg)
    assert [f for f, _ in examples] == list(cfg.findings) + list(cfg.unseen_findings)
    jobs = plan(cfg)
    for f, job in examples:
        assert job is not None and f in job["findings"] + job["unseen"], f
        # Clean (the finding alone, hard-labelled, internal for a target finding) whenever the plan
        # has such a film; with generator v4's co-findings a small plan may not.
        clean = [j for j in jobs if j["findings"] + j["unseen"] == [f] and j["label_type"] == "hard"
                 and (j["site"] == "internal") == (f in cfg.findings)]
        if clean:
            assert job["findings"] + job["unseen"] == [f], f
            assert job["label_type"] == "hard" and (job["site"] == "internal") == (f in cfg.findings), f
    assert G.gallery_examples(cfg) == examples  # the middle candidate: the same choice every time


def test_a_manifest_of_other_films_has_no_example_in_the_plan(tmp_path):
    cfg = load_config("smoke")
    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    rows = [{"image_id": f"real-{i}", "site": "internal", "label_type": "hard", **dict.fromkeys(findings + unseen, 0), f: 1}
            for i, f in enumerate(findings)]
    examples = G.gallery_examples(cfg, pd.DataFrame(rows))
    assert all(job is None for _, job in examples)
    (tmp_path / "g.png").write_bytes(b"an old blank gallery")
    assert G.plot_gallery(cfg, pd.DataFrame(rows), tmp_path / "g.png") is None and not (tmp_path / "g.png").exists()


def test_no_gallery_for_a_profile_whose_findings_the_generator_does_not_draw(tmp_path):
    cfg = load_config("kermany")  # pneumonia subtypes: labels of real films, not drawn by scxnn.synth
    examples = G.gallery_examples(cfg)
    assert [f for f, _ in examples] == list(cfg.findings) and all(job is not None for _, job in examples)
    (tmp_path / "g.png").write_bytes(b"an old blank gallery")
    assert G.plot_gallery(cfg, None, tmp_path / "g.png") is None and not (tmp_path / "g.png").exists()


# --------------------------------------------------------------------------- real normal films


def _realdata(root, nih_small: int = 4, nih_full: int = 2, kermany: int = 3):
    """A realdata folder in the layout of ../shared/realdata: labels.csv beside the images, normals
    and abnormal films mixed; films of distinct sizes so each can be told apart."""
    def film(path, h, w):
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((h, w), 90, np.uint8))
        return str(path.relative_to(path.parents[2]))

    nih = root / "nih_cxr14_mini"
    rows = [(film(nih / "images" / "nih1000_64px" / f"n{i}.png", 64, 64 + i), 1) for i in range(nih_small)]
    rows += [(film(nih / "images" / "nih1000_64px" / "sick.png", 64, 10), 0)]
    rows += [(film(nih / "images" / "full_res" / f"f{i}.png", 300 + i, 250), 1) for i in range(nih_full)]
    pd.DataFrame(rows, columns=["path", "no_finding"]).to_csv(nih / "labels.csv", index=False)
    ker = root / "kermany_dev"
    rows = [(film(ker / "images" / "normal" / f"k{i}.jpeg", 80 + i, 100), 1) for i in range(kermany)]
    rows += [(film(ker / "images" / "pneumonia" / "p.jpeg", 11, 11), 0)]
    pd.DataFrame(rows, columns=["path", "normal"]).to_csv(ker / "labels.csv", index=False)
    return root


@pytest.mark.parametrize("n", [2, 10], ids=["a-sample", "more-than-there-are"])
def test_real_normals_are_the_normal_films_of_each_source(tmp_path, n):
    got = G.real_normals(_realdata(tmp_path), n=n, seed=0)
    assert sorted(got) == ["kermany", "nih_64", "nih_full"]
    assert len(got["nih_64"]) == min(n, 4) and len(got["kermany"]) == min(n, 3)
    assert len(got["nih_full"]) == 2  # every full-resolution normal, whatever n
    assert all(a.dtype == np.uint8 and a.ndim == 2 for v in got.values() for a in v)
    assert {a.shape[1] for a in got["nih_64"]} <= {64, 65, 66, 67}  # never the abnormal film (width 10)
    assert {a.shape for a in got["kermany"]} <= {(80, 100), (81, 100), (82, 100)}
    again = G.real_normals(tmp_path, n=n, seed=0)
    assert all(np.array_equal(a, b) for k in got for a, b in zip(got[k], again[k]))


def test_real_normals_leave_out_a_source_without_its_folder_or_labels(tmp_path):
    root = _realdata(tmp_path)
    (root / "kermany_dev" / "labels.csv").unlink()
    assert sorted(G.real_normals(root, n=2)) == ["nih_64", "nih_full"]
    assert G.real_normals(tmp_path / "nowhere") == {}


# --------------------------------------------------------------------------- before and after preprocessing


def test_before_after_shows_each_source_film_above_its_preprocessed_png(tmp_path):
    raw = [defects.good_dicom(tmp_path / "a.dcm"), _monochrome1(tmp_path / "b.dcm")]
    png = []
    for i in range(2):
        png.append(tmp_path / f"p{i}.png")
        png[-1].write_bytes(encode_png(np.full((32, 32), 60 * i, np.uint8)))
    fig = G.before_after_figure([str(p) for p in raw], [str(p) for p in png], ["internal a", "temporal b"])
    assert len(fig.axes) == 4
    top = [ax.get_title() for ax in fig.axes[:2]]
    assert top == ["internal a\nMONOCHROME2 288x320", "temporal b\nMONOCHROME1 288x320"]
    assert [ax.get_title() for ax in fig.axes[2:]] == ["preprocessed"] * 2
    assert fig.axes[2].get_images()[0].get_array().shape == (32, 32)
