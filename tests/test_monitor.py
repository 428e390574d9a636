"""The site monitor (scxnn.monitor): the stream rule's error rates, and a log that survives
concurrent calls and kills."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scxnn import monitor as M
from scxnn.cli import main

# The rule of a site like the kermany certificate of docs/definite-normal.md: 1 of 81 sample films flagged, 26 of
# 34 normal films below the certified threshold (the score chart), design ARL 1000.
KERMANY = dict(flag_share=1 / 81, flag_films=81, normals_below=26, normals=34)
DESIGN = dict(max_share=0.10, alpha=0.01, shift_share=0.5, arl=1000)
SHIFT_WITHIN = 20  # films after a switch to a 73%-flagged population (the adult films of docs/definite-normal.md)


def _rule(**kw) -> M.Rule:
    return M.design_rule(**{**KERMANY, **kw}, **DESIGN)


def _simulate(chart: M.Chart, p: float, streams: int, seed: int, cap: int = 200_000) -> np.ndarray:
    """Run lengths of ``streams`` independent Bernoulli(p) streams through ``chart``, vectorised."""
    rng = np.random.default_rng(seed)
    s = np.zeros(streams, dtype=np.int64)
    length = np.zeros(streams, dtype=np.int64)
    alive = np.ones(streams, dtype=bool)
    t = 0
    while alive.any() and t < cap:
        t += 1
        ev = rng.random(streams) < p
        s = np.where(ev, s + chart.up, np.maximum(0, s + chart.down))
        hit = alive & (s >= chart.limit)
        length[hit] = t
        alive &= ~hit
    length[alive] = cap
    return length


@pytest.mark.parametrize("p0, p1", [(0.10, 0.5), (0.02, 0.4), (0.6, 0.8)])
def test_the_exact_average_run_length_matches_simulation(p0, p1):
    # The limit h comes from the Markov-chain ARL; if the chain were wrong, the promised false-alarm
    # rate would be too.
    chart = M.Chart.design("flagged", p0, p1, arl=300)
    assert chart.arl >= 300
    runs = _simulate(chart, p0, 3000, seed=1)
    assert runs.mean() == pytest.approx(chart.arl, rel=0.1)


def test_the_design_keeps_false_alarms_rarer_than_one_per_1000_films():
    rule = _rule()
    assert rule.flagged.arl >= 2000 and rule.score is not None and rule.score.arl >= 2000
    # 1 / ARL adds up over the two charts: together at most one false alarm per 1000 films.
    assert 1 / rule.flagged.arl + 1 / rule.score.arl <= 1 / 1000


def test_an_in_distribution_stream_of_single_films_raises_no_alarm(tmp_path):
    """1200 films one call each, flagged and scored as the certified sample was (1.2% flagged, 76%
    of the normals below the threshold, a 40% normal stream): no alarm."""
    mon = M.Monitor(tmp_path / "m.jsonl", "cert-a", _rule(), "site")
    rng = np.random.default_rng(0)
    for i in range(1200):
        normal = rng.random() < 0.4
        st = mon.observe([{"film": f"film-{i}", "flag": rng.random() < 1 / 81, "score": 0.0,
                           "below": normal and rng.random() < 26 / 34}])
        assert st.alarm is None, f"false alarm at film {i + 1}"
    assert st.films == 1200 and not st.new


@pytest.mark.parametrize("seed", range(5))
def test_a_stream_that_switches_to_shifted_films_fires_within_20_films(tmp_path, seed):
    rule = _rule()
    mon = M.Monitor(tmp_path / "m.jsonl", "cert-a", rule, "site")
    rng = np.random.default_rng(seed)
    films = [{"film": f"in-{i}", "flag": rng.random() < 1 / 81, "score": 0.0, "below": False} for i in range(200)]
    films += [{"film": f"out-{i}", "flag": rng.random() < 0.73, "score": 0.0, "below": rng.random() < 0.3} for i in range(50)]
    fired = None
    for i, f in enumerate(films):
        st = mon.observe([f])
        if st.alarm is not None:
            fired = i
            break
    assert fired is not None and 200 <= fired < 200 + SHIFT_WITHIN, fired


def test_the_detection_delay_holds_across_many_streams():
    """The statement of docs/definite-normal.md: at 73% flagged the flagged chart fires within 20 films with
    probability 0.9998 (exact), and 2000 simulated streams agree."""
    chart = _rule().flagged
    exact = chart.alarm_within(0.73, SHIFT_WITHIN)
    assert exact >= 0.999
    runs = _simulate(chart, 0.73, 2000, seed=3)
    assert np.mean(runs <= SHIFT_WITHIN) == pytest.approx(exact, abs=0.002) and runs.mean() < 8
    assert chart.alarm_within(0.10, 1000) < 1 - np.exp(-1000 / chart.arl) + 0.05  # in control: rare within 1000


def test_the_vectorised_replay_runs_the_charts_as_the_monitor_does(tmp_path):
    # replay_false_alarms measures the false-alarm rate of docs/definite-normal.md; it must agree with the real log.
    rule = _rule()
    flags = np.array([True, True, False, True, False, True, True])
    below = np.array([False, False, True, False, True, False, False])
    r = M.replay_false_alarms(flags, below, rule, streams=200, films=40, seed=5)
    rng = np.random.default_rng(5)
    mon = M.Monitor(tmp_path / "m.jsonl", "c", rule, "site")
    first = None
    for t in range(40):
        i = rng.integers(0, flags.size, 200)[0]
        st = mon.observe([{"film": f"f{t}", "flag": flags[i], "score": 0.0, "below": below[i]}])
        if st.alarm and first is None:
            first = t + 1
    assert first is not None and r["alarm_at"][0] == first  # stream 0 drew the same films
    assert r["alarmed"] == int((r["alarm_at"] > 0).sum()) > 0


def test_the_score_chart_catches_a_shift_the_gate_misses(tmp_path):
    """Unflagged films that nearly all score below the threshold, in a site whose normal films were
    below it only 26 of 34 times: scores have moved down, and the score chart fires."""
    rule = _rule(normals_below=10, normals=34)
    mon = M.Monitor(tmp_path / "m.jsonl", "cert-a", rule, "site")
    for i in range(200):
        st = mon.observe([{"film": f"f{i}", "flag": False, "score": -2.0, "below": True}])
        if st.alarm:
            break
    assert st.alarm is not None and st.alarm["chart"] == "score" and st.films < 50


def _writer(path: str, rule: dict, worker: int, n: int) -> None:
    mon = M.Monitor(path, "cert-a", M.Rule.from_dict(rule), "site")
    for i in range(n):
        mon.observe([{"film": f"w{worker}-{i}", "flag": False, "score": 0.0, "below": False}])


def test_concurrent_writers_lose_no_record(tmp_path):
    path = tmp_path / "m.jsonl"
    rule = _rule().to_dict()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), rule, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    records, damaged = M.read_records(path)
    films = [r["film"] for r in records if r["kind"] == "film"]
    assert damaged == 0 and len(films) == 160 and len(set(films)) == 160
    assert sum(r["kind"] == "start" for r in records) == 1  # one start, though four calls found it new


_KILLED = """
import sys
from scxnn import monitor as M
rule = M.Rule.from_dict(__import__("json").loads(sys.argv[2]))
mon = M.Monitor(sys.argv[1], "cert-a", rule, "site")
i = 0
while True:
    mon.observe([{"film": f"k{i}-{j}", "flag": False, "score": 0.0, "below": False} for j in range(50)])
    i += 1
    if i == 3:
        print("ready", flush=True)
"""


def test_a_kill_leaves_a_readable_monitor(tmp_path):
    path = tmp_path / "m.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(path), json.dumps(_rule().to_dict())], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    records, _ = M.read_records(path)
    n = sum(r["kind"] == "film" for r in records)
    assert n >= 150 and n % 50 == 0  # each call's films land together or not at all
    st = M.Monitor(path, "cert-a", _rule(), "site").observe([{"film": "after", "flag": False, "score": 0.0, "below": False}])
    assert st.films == n + 1


def test_a_torn_last_line_is_skipped_and_the_next_record_starts_afresh(tmp_path):
    path = tmp_path / "m.jsonl"
    mon = M.Monitor(path, "cert-a", _rule(), "site")
    mon.observe([{"film": "a", "flag": False, "score": 0.0, "below": False}])
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"film","film":"half')  # what a power cut mid-write could leave
    st = mon.observe([{"film": "b", "flag": True, "score": 0.0, "below": False}])
    assert st.films == 2 and st.damaged == 1
    assert M.status_of(path).films == 2


def test_a_new_certificate_restarts_the_monitor_and_an_alarm_holds_until_cleared(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    mon = M.Monitor(path, "cert-a", _rule(), "site")
    st = mon.observe([{"film": f"s{i}", "flag": True, "score": 0.0, "below": False} for i in range(10)])
    assert st.alarm is not None and st.alarm["chart"] == "flagged" and st.alarm["film"] <= 5
    # In-distribution films after the alarm do not lift it: only a person or a new certificate does.
    st = mon.observe([{"film": f"ok{i}", "flag": False, "score": 0.0, "below": False} for i in range(500)])
    assert st.alarm is not None
    with pytest.raises(M.MonitorError, match="who"):
        M.clear(path, "", "fixed")
    assert main(["monitor", "clear", "--monitor", str(path), "--by", "Dr. A", "--why", "wrong site's films were routed here"]) == 0
    st = M.status_of(path)
    assert st.alarm is None and st.clears[0]["by"] == "Dr. A" and st.cusum["flagged"] == 0
    assert main(["monitor", "clear", "--monitor", str(path), "--by", "Dr. A", "--why", "again"]) == 2
    assert "no alarm to clear" in capsys.readouterr().err
    mon.observe([{"film": f"t{i}", "flag": True, "score": 0.0, "below": False} for i in range(10)])
    st = M.Monitor(path, "cert-b", _rule(), "site").observe([])  # re-certified
    assert st.alarm is None and st.films == 0 and st.new
    assert main(["monitor", "show", "--monitor", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["alarm"] is None and shown["rule"]["flagged"]["limit"] == _rule().flagged.limit


def test_a_film_seen_before_is_not_counted_twice(tmp_path):
    # A resumed predict run re-finalises films it scored before the kill.
    mon = M.Monitor(tmp_path / "m.jsonl", "cert-a", _rule(), "site")
    mon.observe([{"film": "a", "flag": True, "score": 0.0, "below": False}])
    st = mon.observe([{"film": "a", "flag": True, "score": 0.0, "below": False}])
    assert st.films == 1


def test_an_unwritable_monitor_is_one_clear_error(tmp_path):
    # A file where the folder should be fails for root too (mode bits would not).
    (tmp_path / "taken").write_text("x")
    with pytest.raises(PermissionError, match="--monitor PATH"):
        M.Monitor(tmp_path / "taken" / "m.jsonl", "cert-a", _rule(), "site")


def test_a_file_that_is_not_a_monitor_is_refused(tmp_path, capsys):
    p = tmp_path / "notes.txt"
    p.write_text("hello\nworld\n")
    assert main(["monitor", "show", "--monitor", str(p)]) == 2
    assert "is not a site monitor" in capsys.readouterr().err
    assert main(["monitor", "show", "--monitor", str(tmp_path / "none.jsonl")]) == 2
