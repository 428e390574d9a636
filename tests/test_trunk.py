"""The shipped trunk (model.pretrained: trunk): its films are disjoint from every study's, a damaged
copy is refused in one line, it loads safely into the models that start from it, and the pretraining
with lesion masks trains the decoder it ships. (The file itself, its checksum and card: test_weights.py.)"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from scxnn import pretrain as P
from scxnn.config import available_profiles, load_config
from scxnn.models import SCXNN, PretrainedWeightsMissing, TrunkChecksumError, build_model, shipped_trunk
from scxnn.weights import TRUNK_FILE, trunk_sha256_path
from scxnn.synth import plan
from scxnn.synth.build import _abnormal_patients

# Every profile whose data the synthetic generator makes: the trunk may share no patient or film with any.
SYNTH_PROFILES = [p for p in available_profiles() if p != "trunk" and load_config(p).data.source == "synth"]


@pytest.fixture(scope="module")
def trunk_jobs():
    return plan(load_config("trunk"))


def test_trunk_draw_is_internal_site_only_without_unseen_findings(trunk_jobs):
    assert {j["site"] for j in trunk_jobs} == {"internal"}
    assert not any(j["unseen"] for j in trunk_jobs)
    assert {j["split"] for j in trunk_jobs if j["label_type"] == "weak"} == {"train"}


@pytest.mark.parametrize("profile", SYNTH_PROFILES)
def test_trunk_shares_no_patient_and_no_film_with_a_study(trunk_jobs, profile):
    # A film is a pure function of its job (scxnn.synth.build.render: the anatomy seed and the image
    # seed), so disjoint patients and disjoint seeds mean disjoint films.
    study = plan(load_config(profile))
    assert load_config("trunk").seed != load_config(profile).seed
    assert not {j["patient_id"] for j in trunk_jobs} & {j["patient_id"] for j in study}
    assert not {tuple(j["image_seed"]) for j in trunk_jobs} & {tuple(j["image_seed"]) for j in study}
    assert not {j["anat_seed"] for j in trunk_jobs} & {j["anat_seed"] for j in study}


def test_trunk_films_differ_from_the_smoke_films_by_hash(smoke_cache, tmp_path):
    # The plan-level proof above, checked on bytes: a few trunk films rendered and hashed.
    from scxnn.synth.build import _work

    cfg = load_config("trunk")
    jobs = plan(cfg)[:12]
    rows = [_work(j, str(tmp_path), cfg.data.synth_difficulty, cfg.seed, list(cfg.findings), []) for j in jobs]
    smoke = pd.read_csv(smoke_cache / "data" / "raw" / "manifest.csv")
    assert not {r["source_sha256"] for r in rows} & set(smoke["source_sha256"])


def test_demo_validation_certifies_99_even_with_one_miss():
    # The certified bound (two-sided 95% Clopper-Pearson) reaches 0.99 with one miss at 555.
    cfg = load_config("demo")
    jobs = plan(cfg)
    assert _abnormal_patients(jobs, "val") >= 555
    base = plan(cfg.replace({"data.val_min_abnormal_patients": 0}))
    # The extra patients come last: every other film (train, test, sites) is the one it was.
    assert jobs[: len(base)] == base
    extra = jobs[len(base):]
    assert extra and {j["split"] for j in extra} == {"val"} and {j["site"] for j in extra} == {"internal"}
    assert not {j["patient_id"] for j in extra} & {j["patient_id"] for j in base}
    # Every finding among them, so the threshold is certified over all 13.
    assert set().union(*(j["findings"] for j in extra)) == set(cfg.findings)


@pytest.mark.parametrize("target", [0, 25, 60])
def test_val_min_abnormal_patients_is_met_exactly_or_above(target):
    cfg = load_config("smoke", {"data.val_min_abnormal_patients": target})
    jobs = plan(cfg)
    base = _abnormal_patients(plan(load_config("smoke")), "val")
    assert _abnormal_patients(jobs, "val") >= max(target, base)
    assert len(jobs) == len(plan(load_config("smoke"))) or _abnormal_patients(jobs, "val") < target + 10


def test_damaged_trunk_is_one_clear_error_line(tmp_path):
    copy = tmp_path / TRUNK_FILE.name
    shutil.copy(TRUNK_FILE, copy)
    shutil.copy(trunk_sha256_path(), trunk_sha256_path(copy))
    assert shipped_trunk(copy) == copy
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(TrunkChecksumError) as e:
        shipped_trunk(copy)
    assert "\n" not in str(e.value) and "does not match" in str(e.value) and "make trunk" in str(e.value)
    # A git LFS pointer in its place: the same one line, not an unpickling traceback.
    copy.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(TrunkChecksumError):
        shipped_trunk(copy)
    trunk_sha256_path(copy).unlink()
    with pytest.raises(PretrainedWeightsMissing, match="missing"):
        shipped_trunk(copy)


@pytest.mark.parametrize("profile", ["demo", "smoke"])
def test_profile_models_start_from_the_shipped_trunk(profile):
    cfg = load_config(profile)
    assert cfg.model.pretrained == "trunk"
    m = build_model(cfg.model)
    sd = torch.load(TRUNK_FILE, map_location="cpu", weights_only=True)["model"]
    mine = m.state_dict()
    for k, v in sd.items():
        assert torch.equal(mine[k].to(v.dtype), v), k
    # The decoder ships too (the demo's widths), so a model's lesion reconstruction starts trained.
    assert any(k.startswith("decoder.") for k in sd)


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_trunk_is_refused_for_another_backbone(backbone):
    with pytest.raises(ValueError, match="densenet121"):
        SCXNN(backbone=backbone, pretrained="trunk")


@pytest.mark.parametrize("masks", [True, False], ids=["masks", "labels_only"])
def test_pretraining_objective_trains_what_it_ships(smoke_cache, tmp_path, masks):
    cfg = load_config("smoke", {"paths.data": str(smoke_cache / "data"), "paths.runs": str(smoke_cache / "runs"),
                                "model.pretrained": "none", "pretrain.masks": masks, "pretrain.epochs": 1,
                                "pretrain.images_per_epoch": 8, "train.batch_size": 4})
    path = P.pretrain_trunk(cfg, tmp_path / "trunk", progress=False)
    sd = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert any(k.startswith("decoder.") for k in sd) == masks
    ship = tmp_path / "ship" / "densenet121_trunk.pt"
    sha = P.ship_trunk(cfg, path, ship, "make trunk", {"pretraining": 1.0}, {"train": 1})
    assert shipped_trunk(ship) == ship and sha in (ship.parent / "TRUNK_CARD.md").read_text()
    m = SCXNN(backbone="densenet121", decoder_widths=cfg.model.decoder_widths, pretrained=str(ship))
    for k, v in m.encoder.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v.half(), sd[f"encoder.{k}"].half()), k


def test_make_reports_never_rebuilds_the_trunk():
    from conftest import EVERYTHING_OUT_OF_DATE, run_make

    assert "scxnn trunk" not in run_make("-n", *EVERYTHING_OUT_OF_DATE, "reports").stdout
    assert "scxnn trunk --profile trunk" in run_make("-n", "trunk").stdout


def test_make_trunk_scores_its_head_per_finding_into_the_card(smoke_cache, tmp_path):
    # The epoch log keeps only the mean AUC; a trunk whose head misses one finding must show it
    # per finding before it ships (one pretraining is a draw).
    cfg = load_config("smoke", {"paths.data": str(smoke_cache / "data"), "paths.runs": str(smoke_cache / "runs"),
                                "model.pretrained": "none", "pretrain.epochs": 1, "pretrain.images_per_epoch": 8,
                                "train.batch_size": 4, "evaluate.bootstrap": 100})
    ship = tmp_path / "ship" / "densenet121_trunk.pt"
    path, sha = P.build_trunk(cfg, tmp_path / "trunk", ship, progress=False)
    head = pd.read_csv(path.parent / P.HEAD_AUC_NAME)
    assert list(head["finding"]) == list(cfg.findings)
    measured = head[head["auc"].notna()]
    assert len(measured) and (measured["auc_lo"] <= measured["auc"]).all() and (measured["auc"] <= measured["auc_hi"]).all()
    # The same head, scored again, gives the mean the log printed for its last epoch.
    last = pd.read_csv(path.parent / P.HISTORY_NAME)["val_mean_auc"].iloc[-1]
    assert head["auc"].mean() == pytest.approx(last, abs=1e-3)
    card = (ship.parent / "TRUNK_CARD.md").read_text()
    first = measured.iloc[0]
    assert "## Its head on the validation films" in card and f"| {first['finding']} | {first['auc']:.3f} [" in card
    # A shipped file carries no head: one clear error, not a KeyError.
    with pytest.raises(ValueError, match="no multi-label head"):
        P.head_auc(cfg, ship)


def test_a_finding_the_head_does_not_separate_is_warned(caplog):
    head = pd.DataFrame({"finding": ["nodule", "cardiomegaly", "fracture"], "n_pos": [9, 30, 0], "n_neg": [180, 159, 189],
                         "auc": [0.58, 0.95, float("nan")], "auc_lo": [0.41, 0.90, float("nan")], "auc_hi": [0.74, 0.98, float("nan")]})
    with caplog.at_level("WARNING", logger="scxnn"):
        assert P._warn_weak_findings(head) == ["nodule"]
    assert "nodule is not separated" in caplog.text and "0.580 [0.410, 0.740]" in caplog.text
