"""Whole-pipeline variants (scxnn.variants, config `variants`): settings, hashing, caching, Make vars."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from scxnn.config import RESULT_SECTIONS, ConfigError, load_config, variant_config
from scxnn import variants


def _cfg(tmp_path, runs=None, protocol=None, max_films=None):
    over = {"paths.runs": str(tmp_path / "runs")}
    if max_films is not None:
        over["variants.max_films"] = max_films
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
    scratch = load_config("smoke", {"paths.runs": str(tmp_path / "runs"), "model.pretrained": "none"})
    assert variant_config(scratch, "two_class").fingerprint(*RESULT_SECTIONS) == variants.variant_hash(scratch, "two_class")
    changed = load_config("smoke", {"paths.runs": str(tmp_path / "runs"), "train.lr": 0.002})
    assert variants.variant_hash(changed, "two_class") != h


@pytest.mark.parametrize("start", ["none", "study"])
def test_trunk_settings_name_a_variant_only_when_it_starts_from_the_trunk(tmp_path, start):
    base = {"paths.runs": str(tmp_path / "runs"), "model.pretrained": start}
    h = variants.variant_hash(load_config("smoke", base), "two_class")
    other = variants.variant_hash(load_config("smoke", {**base, "pretrain.images_per_epoch": 7}), "two_class")
    assert (other != h) == (start == "study")


def test_a_rebuilt_trunk_names_new_variants_only_where_they_start_from_it(tmp_path, monkeypatch):
    # The trunk's bytes decide a trunk-started variant's models as much as its settings do.
    cfg = _cfg(tmp_path)
    scratch = _cfg(tmp_path, protocol={"model.pretrained": "none"})
    before = variants.variant_hash(cfg, "two_class"), variants.variant_hash(scratch, "two_class")
    monkeypatch.setattr(variants, "recorded_sha256", lambda: "0" * 64)
    after = variants.variant_hash(cfg, "two_class"), variants.variant_hash(scratch, "two_class")
    assert after[0] != before[0] and after[1] == before[1]
    assert variants.is_profile_itself(cfg, "three_class")


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
    cfg = load_config("demo", {"paths.runs": str(tmp_path / "runs")})  # the thesis' rows (smoke runs a few)
    t = cfg.variants.tables
    assert list(t["table4_backbones"]) == ["vgg16", "resnet50", "googlenet", "densenet121", "densenet169", "efficientnet_b2"]
    assert t["table4_backbones"]["densenet121"] == t["table5_lambda"]["0.8"] == t["table6_preprocessing"]["clahe_reconstruction_dilation"] == "three_class"
    for name in t["table6_preprocessing"].values():
        variant_config(cfg, name)
    assert variant_config(cfg, "histeq_classification_only").model.decoder == "none"
    assert variant_config(cfg, "histeq_classification_only").preprocess.contrast == "histeq"
    with pytest.raises(ConfigError, match="not in variants.runs"):
        load_config("smoke", {"variants.tables": {"table4_backbones": {"vgg16": "vgg_typo"}}})


def _ablation_cfg(tmp_path, rows=None):
    runs = {"three_class": {}, "vgg16": {"model.backbone": "vgg16"}, "resnet50": {"model.backbone": "resnet50"}}
    return load_config("smoke", {"paths.runs": str(tmp_path / "runs"), "variants.runs": runs, "evaluate.bootstrap": 100,
                                 "variants.tables": {"table4_backbones": rows or {"vgg16": "vgg16", "densenet121": "three_class"}}})


def _films(n_patients=30, seed=0):
    """Validation and internal test films of 1-2 per patient, the films every variant scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("val", "test"):
        for p in range(n_patients):
            abnormal = int(p % 2 == 0)
            for i in range(1 + p % 2):
                rows.append({"image_id": f"{split}-{p}-{i}", "patient_id": f"{split}-{p}", "site": "internal",
                             "split": split, "abnormal": abnormal})
    df = pd.DataFrame(rows)
    df["difficulty"] = rng.normal(0, 1, len(df))
    return df


def _fake_variant(cfg, name, films, signal, seed=0):
    """What run_variant leaves in a variant folder, without training: a logits table (one logit
    carries ``signal`` x abnormal on top of the films' shared difficulty), the SVM and thresholds
    fitted on its validation films, and result.json from `summarize`."""
    from scxnn import ensemble

    vcfg = variant_config(cfg, name)
    out = variants.variant_dir(cfg, name)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    table = films.drop(columns="difficulty")
    cols = ensemble.logit_columns(list(vcfg.findings), vcfg.model.num_classes)
    logits = rng.normal(0, 0.3, (len(films), len(cols)))
    logits[:, 1] += signal * films["abnormal"].to_numpy() + films["difficulty"].to_numpy()
    table = pd.concat([table, pd.DataFrame(logits, columns=cols)], axis=1)
    svm, th, val_scores = ensemble.fit_ensemble(vcfg, ensemble.validation_rows(table))
    ensemble.save(svm, th, out)
    ensemble.save_logits(table, out)
    (out / ensemble.VAL_SCORES_NAME).write_text(val_scores.to_csv(index=False))
    scored = ensemble.load_run(out, vcfg)[0]
    summary = variants.summarize(scored, th.point, vcfg.evaluate.bootstrap, vcfg.seed, vcfg.evaluate.ci)
    variants.result_path(cfg, name).write_text(json.dumps({"hash": variants.variant_hash(cfg, name), "threshold": th.point, **summary}))
    return scored


def test_ablation_table_puts_the_thesis_beside_each_row(tmp_path):
    cfg = _ablation_cfg(tmp_path)
    films = _films()
    for name, signal in (("three_class", 2.0), ("vgg16", 0.7)):
        _fake_variant(cfg, name, films, signal)
    thesis = {"table4_backbones": {"vgg16": {"accuracy": 0.7655, "auc": 0.726, "specificity": 0.709, "sensitivity": 0.822}}}
    df = variants.ablation_table(cfg, "table4_backbones", thesis)
    results = [json.loads(variants.result_path(cfg, n).read_text()) for n in ("vgg16", "three_class")]
    assert df["row"].tolist() == ["vgg16", "densenet121"] and df["auc"].tolist() == [r["auc"] for r in results]
    assert df.loc[0, "thesis_auc"] == 0.726 and np.isnan(df.loc[1, "thesis_auc"])


def test_ablation_rows_are_ranked_against_the_reference_row(tmp_path):
    cfg = _ablation_cfg(tmp_path, {"vgg16": "vgg16", "densenet121": "three_class", "resnet50": "resnet50"})
    films = _films()
    for name, signal in (("three_class", 2.0), ("vgg16", 0.7), ("resnet50", 2.0)):
        _fake_variant(cfg, name, films, signal, seed=len(name))
    df = variants.ablation_table(cfg, "table4_backbones").set_index("row")
    assert df["is_reference"].tolist() == [False, True, False]
    ref = df.loc["densenet121"]
    assert ref["delta_auc"] == 0 and np.isnan(ref["delta_auc_lo"]) and np.isnan(ref["delta_auc_hi"])
    for row in ("vgg16", "resnet50"):  # the delta is the difference of the rows' own AUCs, paired interval around it
        r = df.loc[row]
        assert r["delta_auc"] == pytest.approx(r["auc"] - ref["auc"])
        assert r["delta_auc_lo"] <= r["delta_auc"] <= r["delta_auc_hi"]
    assert df.loc["vgg16", "delta_auc_hi"] < 0  # the weak backbone is ranked below the reference
    for row in df.index:  # the same threshold rule everywhere: each pipeline's own validation-chosen point
        r = json.loads(variants.result_path(cfg, df.loc[row, "variant"]).read_text())
        assert (df.loc[row, "called_normal_abnormal"], df.loc[row, "abnormal_films"]) == (r["point_fn"], r["point_fn"] + r["point_tp"])
    assert df["abnormal_films"].nunique() == 1


def test_ablation_table_refuses_variants_that_scored_other_films(tmp_path):
    cfg = _ablation_cfg(tmp_path)
    films = _films()
    _fake_variant(cfg, "three_class", films, 2.0)
    _fake_variant(cfg, "vgg16", films[films["image_id"] != "test-3-1"].reset_index(drop=True), 0.7)
    with pytest.raises(ValueError, match=r"'three_class' and 'vgg16' scored different internal test films .*test-3-1"):
        variants.ablation_table(cfg, "table4_backbones")


def test_ablation_table_without_the_reference_row_has_no_deltas(tmp_path):
    cfg = _ablation_cfg(tmp_path, {"vgg16": "vgg16", "resnet50": "resnet50"})
    films = _films()
    for name in ("vgg16", "resnet50"):
        _fake_variant(cfg, name, films, 1.0)
    df = variants.ablation_table(cfg, "table4_backbones")
    assert not df["is_reference"].any() and df["delta_auc"].isna().all()


@pytest.mark.parametrize("name", ["same", "two"])
def test_a_film_cap_names_new_results_but_not_new_models(tmp_path, name):
    runs = {"same": {}, "two": {"model.num_classes": 2}}
    full, capped = _cfg(tmp_path, runs=runs), _cfg(tmp_path, runs=runs, max_films=40)
    # Other films scored are other results (their own folder), but the same models: the variant that
    # equals the profile still reuses the profile's trained models.
    assert variants.variant_hash(capped, name) != variants.variant_hash(full, name)
    assert variants.models_hash(capped, name) == variants.models_hash(full, name)
    assert variants.is_profile_itself(capped, name) == variants.is_profile_itself(full, name) == (name == "same")
    with pytest.raises(ConfigError, match="max_films"):
        _cfg(tmp_path, max_films=-1)


@pytest.mark.parametrize("max_films", [0, 40])
def test_captions_say_when_variants_scored_a_sample_of_films(tmp_path, max_films):
    text = variants.protocol_text(_cfg(tmp_path, protocol={"train.max_epochs": 1}, max_films=max_films))
    assert "train.max_epochs=1" in text
    assert ("40 validation and 40 internal test films" in text) == bool(max_films)


def test_the_study_profile_runs_every_variant_at_the_demos_own_protocol():
    study, demo = load_config("study"), load_config("demo")
    # Only the start differs (every thesis row from scratch at the thesis' lr; trunk_start is the trunk's row).
    assert study.variants.protocol == {"model.pretrained": "none", "train.lr": 0.001, "train.lr_floor": 0.0001}
    assert study.variants.max_films == 0
    assert study.path("data") == demo.path("data")  # the same films
    assert variants.is_profile_itself(study, "trunk_start")
    assert variant_config(study, "vgg16").train == dataclasses.replace(demo.train, lr=0.001, lr_floor=0.0001)
    assert variant_config(study, "vgg16").preprocess == demo.preprocess
