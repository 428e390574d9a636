"""scxnn.bench: the training, prediction and preprocessing benchmarks and their printed tables."""

from __future__ import annotations

import cv2
import pytest

from scxnn.bench import bench_preprocess, bench_train, format_bench_predict, format_bench_train
from scxnn.config import load_config


def test_bench_train_smoke():
    r = bench_train("densenet121", size=64, batch=2, steps=1, warmup=0)
    assert r["img_per_s"]["fp32_nchw"] > 0
    assert r["ratio"] > 0 and r["machine"]
    text = format_bench_train(r)
    assert "ratio:" in text and "vs plain fp32 NCHW" in text
    assert "profile_decoder" not in r["img_per_s"]  # the default decoder needs no extra row


def test_bench_train_times_a_profiles_light_decoder_beside_the_default():
    r = bench_train("densenet121", size=64, batch=2, steps=1, warmup=0, decoder_widths=(64, 32, 16, 8, 8))
    assert r["img_per_s"]["profile_decoder"] > 0 and r["decoder_widths"] == [64, 32, 16, 8, 8]
    assert "profile_decoder widths [64, 32, 16, 8, 8]" in format_bench_train(r)


@pytest.mark.parametrize("contrast", ["clahe", "none"])
def test_bench_preprocess_times_each_step_on_one_core_and_restores_opencv_threads(contrast):
    p = load_config("smoke", {"preprocess.contrast": contrast}).preprocess
    threads = cv2.getNumThreads()
    r = bench_preprocess((240, 200), repeats=1, p=p)
    assert cv2.getNumThreads() == threads
    assert (r["shape"], r["size"], r["contrast"]) == ((240, 200), p.size, contrast)
    assert list(r["steps_s"]) == ["percentiles", "clip+minmax", "pad", "contrast", "resize", "png"]
    assert all(t > 0 for t in r["steps_s"].values()) and r["ours_s"] > 0 and r["reference_s"] > 0
    assert r["ratio"] == pytest.approx(r["reference_s"] / r["ours_s"])


def test_format_bench_predict_shows_each_variant_against_the_naive_path():
    r = {"backbone": "densenet121", "size": 64, "models": 2, "images": 1, "batch": 1, "warmup": 1, "device": "cpu",
         "machine": "a CPU", "threads": 2, "torch": "2.x", "baseline": "naive", "best": "fast_fp32", "ratio": 2.0,
         "img_per_s": {"naive": 2.0, "fast_fp32": 4.0, "fast_bf16": "unsupported", "compile": "skipped", "onnxruntime": "unavailable"}}
    lines = format_bench_predict(r).splitlines()
    assert lines[0].startswith("scxnn bench predict: 2 x densenet121 per image, 64 px")
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[3:-1]}
    assert rows["naive"] == ["2.000", "0.500", "1.00x"] and rows["fast_fp32"] == ["4.000", "0.250", "2.00x"]
    assert rows["fast_bf16"] == ["unsupported"] and rows["compile"] == ["skipped"] and rows["onnxruntime"] == ["unavailable"]
    assert lines[-1] == "ratio: 2.0x vs the naive path (fp32 NCHW, decoder on); best: fast_fp32"
