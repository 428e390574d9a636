"""scxnn.distributed: the data-parallel helpers, as no-ops in one process and under torchrun with 2 ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from scxnn import checkpoints as C
from scxnn import distributed as D

from conftest import ROOT
from test_train import TRAIN_OVERRIDES


_DDP_SCRIPT = textwrap.dedent(
    """
    import copy, json, os, sys
    import torch, torch.nn.functional as F
    from torch import nn
    from scxnn import distributed as D
    from scxnn import train as T

    torch.manual_seed(0)
    d = D.init_distributed(torch.device("cpu"))
    assert d.world == 2, d
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    idx = D.shard_indices(range(8), d.rank, d.world)
    ddp = D.wrap_ddp(model, d, torch.device("cpu"))
    F.cross_entropy(ddp(x[idx]), y[idx]).backward()  # DDP averages the two shards' gradients
    F.cross_entropy(ref(x), y).backward()  # the full batch in one process
    err = max(float((a.grad - b.grad).abs().max()) for a, b in zip(model.parameters(), ref.parameters()))
    out = {"rank": d.rank, "grad_err": err, "shard": idx}
    if len(sys.argv) > 2:  # the real trainer, 2 ranks
        import torch.distributed as dist
        from scxnn.config import load_config
        cfg = load_config("smoke", json.loads(sys.argv[2]))
        r = T.train_finding(cfg, "nodule", out_dir=sys.argv[3], resume=False, progress=False)
        out["world_size"] = r.metrics["world_size"]
        out["history"] = r.history.drop(columns=["seconds"]).to_dict("list")
    with open(os.path.join(sys.argv[1], f"rank{d.rank}.json"), "w") as fh:
        json.dump(out, fh)
    """
)


def test_ddp_two_processes_gloo(smoke_cache, tmp_path):
    script = tmp_path / "ddp_check.py"
    script.write_text(_DDP_SCRIPT)
    ov = {"paths.data": str(smoke_cache / "data"), **TRAIN_OVERRIDES, "train.max_epochs": 1, "train.stage2_epochs": 1, "train.augment": False}
    out = tmp_path / "ddp_run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path), json.dumps(ov), str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["grad_err"] < 1e-6 for r in res), res
    assert sorted(res[0]["shard"] + res[1]["shard"]) == list(range(8))
    # Both ranks reach the same decisions (same history); rank 0 wrote the artifacts.
    assert res[0]["world_size"] == 2 and res[0]["history"] == res[1]["history"]
    assert res[0]["history"]["stage"] == [1, 2]
    assert (out / C.BEST_NAME).is_file() and (out / C.HISTORY_NAME).is_file()
    assert not list(out.glob(".*.tmp"))
    ck = C.load_checkpoint(out / C.LAST_NAME)
    assert not any(k.startswith("module.") for k in ck["model"])  # the bare model's state, not DDP's


@pytest.mark.parametrize("n, world", [(8, 2), (7, 2), (5, 3), (2, 4), (1, 3)])
def test_shards_have_equal_length_and_deal_the_list_round_robin(n, world):
    shards = [D.shard_indices(range(n), r, world) for r in range(world)]
    assert {len(s) for s in shards} == {-(-n // world)}
    dealt = [s[k] for k in range(len(shards[0])) for s in shards]
    assert dealt[:n] == list(range(n)) and set(dealt[n:]) <= set(range(n))  # the padding wraps to the start


@pytest.mark.parametrize("world", [0, 1])
def test_one_process_keeps_the_whole_list_in_its_order(world):
    assert D.shard_indices([3, 1, 2], 0, world) == [3, 1, 2]
    assert D.shard_indices([], 1, 2) == []


@pytest.mark.parametrize("world_size", [None, "1"], ids=["no-torchrun", "world-1"])
def test_in_one_process_every_helper_is_a_no_op(monkeypatch, world_size):
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    cpu = torch.device("cpu")
    d = D.init_distributed(cpu)
    assert d == D.Dist() and d.main and not d.enabled
    model = nn.BatchNorm1d(3)
    t = torch.arange(4)
    assert D.wrap_ddp(model, d, cpu) is model and D.all_gather_cat(t, d, cpu) is t
    assert D.all_reduce_sum([1.0, 2.5], d, cpu) == [1.0, 2.5]
    D.sync_buffers(model, d)
    D.barrier(d)
    D.close_distributed(d)
    assert not torch.distributed.is_initialized()


def test_only_rank_0_is_the_main_process():
    assert [D.Dist(rank=r, world=3).main for r in range(3)] == [True, False, False]
    assert D.Dist(rank=1, world=3).enabled and not D.Dist().enabled
