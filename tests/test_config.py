"""scxnn.config: merging defaults -> profile -> overrides into frozen dataclasses, and its errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from scxnn.config import (
    BACKBONES,
    Config,
    ConfigError,
    available_profiles,
    config_from_dict,
    load_config,
    load_resolved,
    profile_chain,
    save_resolved,
    variant_config,
)

from scxnn.thesis import load_tables

from conftest import PARAMS, require_shared


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("profile", ["smoke", "demo", "thesis"])
def test_shipped_profiles_resolve(profile):
    cfg = load_config(profile, params=PARAMS)
    assert cfg.profile == profile
    assert len(cfg.findings) == 13
    assert cfg.model.backbone in BACKBONES


def test_profiles_listed():
    assert {"smoke", "demo", "thesis"} <= set(available_profiles(PARAMS))


def test_thesis_profile_matches_the_thesis_settings():
    """The thesis profile carries §3.2-3.3.4's settings (numbers from ../shared/thesis/tables.yaml)."""
    cfg = load_config("thesis", params=PARAMS)
    assert cfg.preprocess.size == 1024
    assert cfg.model.backbone == "densenet121" and cfg.model.pretrained == "imagenet"
    assert cfg.model.recon_weight == 0.8
    t = cfg.train
    assert (t.lr, t.betas[0], t.weight_decay, t.batch_size, t.max_epochs) == (1e-3, 0.9, 5e-4, 4, 300)
    assert (t.plateau_factor, t.plateau_patience, t.lr_floor) == (0.5, 50, 1e-4)
    assert cfg.preprocess.clip_percentiles == (0.5, 99.5) and cfg.preprocess.contrast == "clahe"


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore::scxnn.thesis.ThesisTablesWarning")
def test_findings_and_risk_groups_match_thesis_table1():
    tables = load_tables(require_shared())
    cfg = load_config("demo", params=PARAMS)
    assert list(cfg.findings) == list(tables["findings"])  # same order as Table 1
    assert cfg.findings == {k: v["risk"] for k, v in tables["findings"].items()}
    assert list(cfg.unseen_findings) == tables["unseen_findings"]


def test_precedence_defaults_profile_override():
    base = load_config("demo", params=PARAMS)
    smoke = load_config("smoke", params=PARAMS)
    assert smoke.preprocess.size != base.preprocess.size  # the profile wins over defaults
    assert smoke.preprocess.clahe_tiles == base.preprocess.clahe_tiles  # untouched keys keep defaults
    o = load_config("smoke", {"preprocess.size": 96, "train": {"max_epochs": 7}}, params=PARAMS)
    assert (o.preprocess.size, o.train.max_epochs) == (96, 7)  # overrides win over the profile
    assert o.train.batch_size == smoke.train.batch_size  # a nested override merges, it does not replace
    s = load_config("smoke", ["train.lr=0.01", "model.backbone=resnet50"], params=PARAMS)
    assert s.train.lr == 0.01 and s.model.backbone == "resnet50"


def test_config_is_frozen_and_replace_validates():
    cfg = load_config("smoke", params=PARAMS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    assert cfg.replace({"seed": 5}).seed == 5 and cfg.seed != 5
    with pytest.raises(ConfigError, match=r"override: train\.lr"):
        cfg.replace({"train.lr": -1})


def test_unknown_key_names_key_and_file(params_copy):
    bad = _write(params_copy / "typo.yaml", {"extends": "smoke", "train": {"max_epoch": 3}})
    with pytest.raises(ConfigError) as e:
        load_config("typo", params=params_copy)
    msg = str(e.value)
    assert str(bad) in msg and "'train.max_epoch'" in msg
    assert "did you mean 'train.max_epochs'" in msg.replace("train.'max_epochs'", "'train.max_epochs'") or "max_epochs" in msg


def test_unknown_top_level_key_in_defaults_names_defaults(params_copy):
    d = params_copy / "defaults.yaml"
    d.write_text(d.read_text() + "\nbogus_section: 1\n")
    with pytest.raises(ConfigError, match=r"defaults\.yaml: unknown key 'bogus_section'"):
        load_config("smoke", params=params_copy)


@pytest.mark.parametrize(
    "section, key, value, expect",
    [
        ("train", "lr", "fast", "expected a number"),
        ("train", "batch_size", 0, "must be >= 1"),
        ("train", "batch_size", 2.5, "expected an integer"),
        ("train", "augment", "yes", "expected true or false"),
        ("model", "backbone", "resnet18", "expected one of"),
        ("model", "num_classes", 4, "expected one of"),
        ("preprocess", "size", 100, "multiple of 32"),
        ("preprocess", "clip_percentiles", [99.5, 0.5], "low < high"),
        ("data", "split", [0.5, 0.5, 0.5], "summing to 1"),
        ("ensemble", "sensitivity_target", 1.5, "must be in (0, 1)"),
    ],
)
def test_bad_value_names_key_and_file(params_copy, section, key, value, expect):
    bad = _write(params_copy / "bad.yaml", {"extends": "smoke", section: {key: value}})
    with pytest.raises(ConfigError) as e:
        load_config("bad", params=params_copy)
    msg = str(e.value)
    assert str(bad) in msg, msg
    assert f"{section}.{key}" in msg and expect in msg, msg


def test_bool_is_not_an_int(params_copy):
    _write(params_copy / "b.yaml", {"model": {"num_classes": True}})
    with pytest.raises(ConfigError, match="model.num_classes"):
        load_config("b", params=params_copy)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'.*smoke"):
        load_config("nope", params=PARAMS)


def test_extends_chain_and_cycle(params_copy):
    _write(params_copy / "child.yaml", {"extends": "smoke", "seed": 7})
    chain = profile_chain("child", params_copy)
    assert [p.name for p in chain] == ["defaults.yaml", "smoke.yaml", "child.yaml"]
    cfg = load_config("child", params=params_copy)
    assert cfg.seed == 7 and cfg.preprocess.size == load_config("smoke", params=params_copy).preprocess.size
    _write(params_copy / "a.yaml", {"extends": "b"})
    _write(params_copy / "b.yaml", {"extends": "a"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config("a", params=params_copy)


def test_invalid_yaml_names_file(params_copy):
    f = _write(params_copy / "broken.yaml", "train: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{f}: not valid YAML"):
        load_config("broken", params=params_copy)


def test_findings_are_replaced_whole_not_merged(params_copy):
    _write(params_copy / "two.yaml", {"findings": {"nodule": "urgent", "cardiomegaly": "cardiomegaly"}})
    assert list(load_config("two", params=params_copy).findings) == ["nodule", "cardiomegaly"]


def test_resolved_roundtrip_and_fingerprint(tmp_path):
    cfg = load_config("smoke", {"train.max_epochs": 3}, params=PARAMS)
    path = save_resolved(cfg, tmp_path / "artifact", extra={"step": "x"})
    assert path.name == "config.resolved.yaml" and not list(path.parent.glob("*.tmp"))
    back = load_resolved(path)
    assert back.to_dict() == cfg.to_dict()
    assert back.fingerprint() == cfg.fingerprint()
    assert cfg.fingerprint() != load_config("smoke", params=PARAMS).fingerprint()
    assert cfg.fingerprint("model") == load_config("smoke", params=PARAMS).fingerprint("model")
    assert isinstance(config_from_dict(cfg.to_dict()), Config)


def test_paths_resolve_against_the_project_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke", params=PARAMS)
    assert cfg.path("runs") == PARAMS.parent / "runs" / "smoke"


# --------------------------------------------------------------------------- per-finding budgets


@pytest.mark.parametrize("finding", ["nodule", "interstitial_opacity"])
def test_by_finding_changes_that_findings_model_only(finding):
    cfg = load_config("demo", {"train.by_finding": {finding: {"max_epochs": 17, "lr": 3e-4}},
                               "variants.protocol": {"train.by_finding": {}}}, params=PARAMS)
    mine = cfg.for_finding(finding)
    assert (mine.train.max_epochs, mine.train.lr) == (17, 3e-4)
    assert mine.for_finding(finding) == mine  # applying it twice changes nothing
    other = next(f for f in cfg.findings if f != finding)
    assert cfg.for_finding(other) is cfg and cfg.train.max_epochs != 17


@pytest.mark.parametrize("entry, expect", [
    ({"nodulex": {"max_epochs": 2}}, r"not in this profile: \['nodulex'\]"),
    ({"nodule": {"max_epoch": 2}}, r"nodule: \['max_epoch'\] are not train keys"),
    ({"nodule": {"max_epochs": 0}}, r"nodule\.max_epochs: must be >= 1"),
    ({"nodule": {"lr_floor": 0.5}}, r"nodule\.lr_floor: must be >= 0 and below lr"),
    ({"nodule": {"max_epochs": "many"}}, "wrong type"),
    ({"nodule": {"by_finding": {}}}, "not train keys"),
])
def test_bad_by_finding_fails_when_the_profile_loads(entry, expect):
    with pytest.raises(ConfigError, match=r"train\.by_finding: .*" + expect):
        load_config("smoke", {"train.by_finding": entry}, params=PARAMS)


def test_by_finding_cannot_silently_beat_a_reduced_variant_protocol():
    """Demo variants train one epoch each; a finding's own 20 would make its rows incomparable."""
    with pytest.raises(ConfigError, match=r"add train\.by_finding .* to variants\.protocol"):
        load_config("demo", {"train.by_finding": {"nodule": {"max_epochs": 20}},
                             "variants.protocol": {"train.max_epochs": 1}}, params=PARAMS)
    cfg = load_config("demo", {"train.by_finding": {"nodule": {"max_epochs": 20}},
                               "variants.protocol": {"train.max_epochs": 1, "train.by_finding": {}}}, params=PARAMS)
    assert variant_config(cfg, "two_class").for_finding("nodule").train.max_epochs == 1
