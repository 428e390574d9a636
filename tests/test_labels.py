"""scxnn.labels: a finding model's classes, its validation cap, the epoch's sample list and the class weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from scxnn import distributed as D
from scxnn import labels as L
from scxnn.config import load_config
from scxnn.data import new_manifest


def _manifest(rows):
    cfg = load_config("smoke")
    base = dict(patient_id="p", study_date="", site="internal", split="train", label_type="hard", masks="", view="PA", path="x.png", source_sha256="")
    full = []
    for i, r in enumerate(rows):
        d = {**base, "image_id": f"i{i}", "patient_id": f"p{i}", **{f: 0 for f in cfg.findings}, **{f: 0 for f in cfg.unseen_findings}}
        d.update(r)
        full.append(d)
    return new_manifest(full, list(cfg.findings), list(cfg.unseen_findings)), cfg


def test_finding_labels_normal_target_other_na_and_two_class_folding():
    df, cfg = _manifest(
        [
            {},  # normal
            {"nodule": 1},  # target
            {"nodule": 1, "cardiomegaly": 1},  # target wins over others
            {"cardiomegaly": 1},  # other
            {"nodule": pd.NA, "cardiomegaly": 1},  # unknown target: excluded
            {"pneumonia": 1},  # unseen finding only: abnormal, never "normal"
            # NA among the others with nothing marked: the source said neither normal nor abnormal,
            # so normal and "others" cannot be told apart (3 classes); with 2 classes it is "not nodule".
            {"atelectasis": pd.NA},
            {"atelectasis": pd.NA, "abnormal": 0},  # the source calls the film normal (NIH's No Finding)
            {"abnormal": 1},  # a finding of its source that no column maps (NIH's Emphysema): others
        ]
    )
    lab3 = L.finding_labels(df, "nodule", 3, list(cfg.findings), list(cfg.unseen_findings))
    assert lab3.tolist()[:4] == [0, 1, 1, 2] and pd.isna(lab3[4]) and lab3[5] == 2
    assert pd.isna(lab3[6]) and lab3[7] == 0 and lab3[8] == 2
    lab2 = L.finding_labels(df, "nodule", 2, list(cfg.findings), list(cfg.unseen_findings))
    assert lab2.tolist()[:4] == [0, 1, 1, 0] and pd.isna(lab2[4]) and lab2[5] == 0 and lab2[6:].tolist() == [0, 0, 0]
    assert L.finding_labels(df, "nodule", 3).equals(lab3)  # defaults: the study's finding columns
    with pytest.raises(ValueError):
        L.finding_labels(df, "nodule", 4)


@pytest.mark.parametrize("finding", list(load_config("smoke").findings))
def test_a_film_abnormal_only_by_an_unmapped_finding_is_others_for_every_model_never_normal(finding):
    # NIH gives a film "Emphysema" alone: no column maps it, every column is 0, and its source's
    # verdict is the only trace. Before, every model learned it as normal.
    df, cfg = _manifest([{"abnormal": 1}, {"abnormal": 0}])
    lab3 = L.finding_labels(df, finding, 3, list(cfg.findings), list(cfg.unseen_findings))
    assert lab3.tolist() == [2, 0]


def test_finding_seed_is_stable_and_differs_per_finding():
    assert L.finding_seed(1, "nodule") == L.finding_seed(1, "nodule") != L.finding_seed(1, "cardiomegaly")


def test_epoch_indices_balanced_capped_and_sharded():
    y = np.array([0] * 90 + [1] * 10)
    idx = L.epoch_indices(y, 1, 5, "sampler", 60, 2)
    assert len(idx) == 60 and idx == L.epoch_indices(y, 1, 5, "sampler", 60, 2)
    assert idx != L.epoch_indices(y, 1, 6, "sampler", 60, 2)
    assert 0.25 < np.mean(y[idx]) < 0.75  # class-balanced draws
    perm = L.epoch_indices(y, 1, 5, "none", 0, 2)
    assert sorted(perm) == list(range(100))
    shards = [D.shard_indices(range(7), r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4 and set(shards[0]) | set(shards[1]) == set(range(7))


def test_validation_cap_keeps_every_target_film_and_is_fixed():
    import numpy as np
    import pandas as pd

    from scxnn.labels import _val_subset

    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(50)]})
    labels = np.r_[np.ones(6, int), np.zeros(30, int), np.full(14, 2)]
    sub, y = _val_subset(rows, labels, 20, seed=3)
    assert len(sub) == 20 and (y == 1).sum() == 6  # all the rare target films stay
    sub2, y2 = _val_subset(rows, labels, 20, seed=3)
    assert sub["image_id"].tolist() == sub2["image_id"].tolist() and np.array_equal(y, y2)


def test_validation_cap_keeps_both_classes_when_the_target_is_common():
    import numpy as np
    import pandas as pd

    from scxnn.labels import _val_subset

    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(60)]})
    labels = np.r_[np.ones(40, int), np.zeros(12, int), np.full(8, 2)]
    sub, y = _val_subset(rows, labels, 24, seed=1)
    assert len(sub) == 24 and (y == 1).sum() == 12 and (y != 1).sum() == 12
    few_rest = np.r_[np.ones(40, int), np.zeros(4, int)]
    _, y = _val_subset(rows.iloc[:44], few_rest, 24, seed=1)
    assert (y != 1).sum() == 4 and (y == 1).sum() == 20  # the cap is filled with targets when the rest runs out


@pytest.mark.parametrize("labels, num_classes, expected", [
    ([0, 0, 1, 2], 3, [4 / 6, 4 / 3, 4 / 3]),  # n / (C * count): the rarer class weighs more
    ([0, 1, 0, 1], 2, [1.0, 1.0]),  # balanced: all 1
    ([0, 0, 1], 3, [0.5, 1.0, 0.0]),  # a class with no sample: 0, not a division by zero
])
def test_class_weights_balance_the_cross_entropy(labels, num_classes, expected):
    w = L.class_weights(np.array(labels), num_classes)
    assert w.dtype == torch.float32 and w.tolist() == pytest.approx(expected)
