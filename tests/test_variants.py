"""Whole-pipeline variants (scxnn.variants, config `variants`): settings, hashing, caching, Make vars."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scxnn.config import RESULT_SECTIONS, ConfigError, load_config, variant_config
from scxnn import variants


def _cfg(tmp_path, runs=None, protocol=None):
    over = {"paths.runs": str(tmp_path / "runs")}
    if runs is not None:
        over["variants.runs"] = runs
        over["variants.tables"] = {}
    if protocol is not None:
        over["variants.protocol"] = protocol
    return load_config("smoke", over)


def test_variant_applies_protocol_then_its_own_overrides(tmp_path):
    cfg = _cfg(tmp_path, runs={"a": {"model.num_classes": 2, "train.max_epochs": 5}, "b": {}},
               protocol={"preprocess.size": 96, "train.max_epochs": 2})
    a, b = variant_config(cfg, "a"), variant_config(cfg, "b")
    assert (a.model.num_classes, a.train.max_epochs, a.preprocess.size) == (2, 5, 96)
    assert (b.model.num_classes, b.train.max_epochs, b.preprocess.size) == (3, 2, 96)
    assert a.variants.runs == {} and a.data == cfg.data  # same data, no nested variants
    with pytest.raises(ConfigError, match="no variant 'zzz'"):
        variant_config(cfg, "zzz")


def test_bad_variants_fail_when_the_profile_loads(tmp_path):
    with pytest.raises(ConfigError, match="model.nope"):
        _cfg(tmp_path, runs={"x": {"model.nope": 1}})
    with pytest.raises(ConfigError, match="cannot vary"):
        _cfg(tmp_path, runs={"x": {"data.scale": 0.5}})
    with pytest.raises(ConfigError, match="num_classes"):
        _cfg(tmp_path, runs={"x": {"model.num_classes": 4}})


def test_equal_settings_share_one_folder_and_the_profile_reuses_its_models(tmp_path):
    cfg = _cfg(tmp_path, runs={"same": {}, "alias": {"model.recon_weight": 0.8}, "two": {"model.num_classes": 2}})
    assert cfg.model.recon_weight == 0.8
    assert variants.variant_dir(cfg, "same") == variants.variant_dir(cfg, "alias") != variants.variant_dir(cfg, "two")
    assert variants.is_profile_itself(cfg, "same") and not variants.is_profile_itself(cfg, "two")
    assert variants.model_dirs(cfg, "same")["nodule"] == cfg.path("runs") / "02_train_disease_model" / "nodule"
    assert variants.model_dirs(cfg, "two")["nodule"].parent == variants.variant_dir(cfg, "two")
    assert variants.names_for_hash(cfg, variants.variant_hash(cfg, "same")) == ["same", "alias"]
    lines = dict(ln.split(" := ", 1) for ln in variants.make_vars(cfg, tmp_path))
    assert len(lines["VARIANT_RESULTS"].split()) == 2  # one Make target per distinct settings
    assert lines["VARIANT_REUSES_MODELS"] == lines["VARIANT_same"]


def test_hash_ignores_settings_that_do_not_change_results(tmp_path):
    cfg = _cfg(tmp_path)
    h = variants.variant_hash(cfg, "two_class")
    other = load_config("smoke", {"paths.runs": str(tmp_path / "runs"), "evaluate.bootstrap": 999, "description": "x"})
    assert variants.variant_hash(other, "two_class") == h
    assert variant_config(cfg, "two_class").fingerprint(*RESULT_SECTIONS) == h
    changed = load_config("smoke", {"paths.runs": str(tmp_path / "runs"), "train.lr": 0.002})
    assert variants.variant_hash(changed, "two_class") != h


def test_a_finished_variant_is_not_recomputed(tmp_path):
    cfg = _cfg(tmp_path)
    path = variants.result_path(cfg, "two_class")
    path.parent.mkdir(parents=True)
    done = {"hash": variants.variant_hash(cfg, "two_class"), "sensitivity": 0.5}
    path.write_text(json.dumps(done))
    # No data, no models: anything but the cached answer would fail here.
    assert variants.run_variant(cfg, "two_class", progress=False) == done
    with pytest.raises(FileNotFoundError, match="has not run"):
        variants.load_variant(cfg, "three_class")


def test_ablation_tables_name_known_variants_and_share_the_baseline(tmp_path):
    cfg = _cfg(tmp_path)
    t = cfg.variants.tables
    assert list(t["table4_backbones"]) == ["vgg16", "resnet50", "googlenet", "densenet121", "densenet169", "efficientnet_b2"]
    assert t["table4_backbones"]["densenet121"] == t["table5_lambda"]["0.8"] == t["table6_preprocessing"]["clahe_reconstruction_dilation"] == "three_class"
    for name in t["table6_preprocessing"].values():
        variant_config(cfg, name)
    assert variant_config(cfg, "histeq_classification_only").model.decoder == "none"
    assert variant_config(cfg, "histeq_classification_only").preprocess.contrast == "histeq"
    with pytest.raises(ConfigError, match="not in variants.runs"):
        load_config("smoke", {"variants.tables": {"table4_backbones": {"vgg16": "vgg_typo"}}})


def test_ablation_table_puts_the_thesis_beside_each_row(tmp_path):
    cfg = _cfg(tmp_path, runs={"three_class": {}, "vgg16": {"model.backbone": "vgg16"}})
    cfg = load_config("smoke", {"paths.runs": str(tmp_path / "runs"), "variants.runs": {"three_class": {}, "vgg16": {"model.backbone": "vgg16"}},
                                "variants.tables": {"table4_backbones": {"vgg16": "vgg16", "densenet121": "three_class"}}})
    for name, auc in (("three_class", 0.9), ("vgg16", 0.7)):
        p = variants.result_path(cfg, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"images": 10, "accuracy": 0.8, "auc": auc, "auc_lo": 0.5, "auc_hi": 1.0,
                                 **{f"{k}{b}": 0.5 for k in ("sensitivity", "specificity") for b in ("", "_lo", "_hi")}}))
    thesis = {"table4_backbones": {"vgg16": {"accuracy": 0.7655, "auc": 0.726, "specificity": 0.709, "sensitivity": 0.822}}}
    df = variants.ablation_table(cfg, "table4_backbones", thesis)
    assert df["row"].tolist() == ["vgg16", "densenet121"] and df["auc"].tolist() == [0.7, 0.9]
    assert df.loc[0, "thesis_auc"] == 0.726 and np.isnan(df.loc[1, "thesis_auc"])
