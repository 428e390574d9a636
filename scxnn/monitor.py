"""The site monitor: a certified site watched across ``scxnn predict`` calls.

Why
---
The batch-level rule (:func:`scxnn.ood.batch_shift`) protects a batch: a folder of adult films sent
to a pediatric run is flagged as a whole. A site that calls ``predict`` once per study (a PACS hook)
sends batches of one film, and one film is judged by its own flag only, so a shifted population
that passes the per-film gate now and then would get ``definite_normal`` calls. Products that clear
normal films alone watch each site over time. So does this one: wherever ``definite_normal`` can be
issued (a site certificate, or the run's own certified validation), every call appends its scored
films to the site's monitor, and two sequential charts run over the whole stream.

What is recorded
----------------
``monitor.jsonl``, one JSON object per line, appended (never rewritten):

* ``start``: the monitor begins, or restarts because the certificate (or the rule's settings)
  changed: a re-certification starts afresh. It holds the rule, so a replay needs nothing else.
* ``film``: per scored film, its ``film_id`` (from the content hash; no file name, no PHI), the
  gate's flag, the SVM score and whether it is below the certified threshold. A film already
  recorded since the last start is not recorded again (a resumed or repeated call).
* ``alarm``: written when a chart first crosses its limit (for the reader; a replay derives it).
* ``clear``: a person cleared the alarm (``scxnn monitor clear --by NAME --why TEXT``); both
  charts restart from zero.

Appends hold an exclusive ``flock`` on ``monitor.jsonl.lock`` for the read-replay-append, so
concurrent calls lose no record and see each other's films in order. Each append is one
``write`` of whole lines, flushed and fsynced. A process killed mid-write can leave at most a torn
last line: the reader skips any line that is not a whole record (counted as ``damaged``), and the
next append starts on a new line.

The stream rule
---------------
Each chart is a Bernoulli CUSUM (Page, Biometrika 1954; for a proportion inspected one item at a
time, Reynolds & Stoumbos, J. Quality Technology 1999): ``S_t = max(0, S_{t-1} + w_t)`` with
``w_t = log(p1/p0)`` when the film is an event and ``log((1-p1)/(1-p0))`` when not, and an alarm
at ``S_t >= h``. The increments are kept on an integer lattice (``log(p1/p0)`` is 50 steps), so
the chart's in-control average run length (ARL: films between false alarms) is computed exactly by
the Markov chain of Brook & Evans (Biometrika 1972), and ``h`` is the smallest limit that reaches
the design ARL.

1. **Flagged share.** Event: the out-of-distribution gate flagged the film. ``p0`` is the
   tolerance of the batch rule (:func:`scxnn.ood.tolerance`: ``evaluate.batch_ood_share`` or the
   exact upper bound of the reference's own flagged share, whichever is larger); ``p1`` is
   ``evaluate.monitor_shift_share``, the share it is tuned to catch fastest.
2. **Scores of unflagged films.** Event: an unflagged film scores below the certified threshold.
   ``p0`` is the exact upper bound of that share among the reference's *normal* unflagged films,
   so even a stream of only normal films from the certified population stays in control whatever
   the site's prevalence; ``p1`` is halfway from ``p0`` to 1. It catches a shift the gate misses
   that pushes scores down. It is off when ``p0`` is above 0.95 (nothing left to detect).

Each chart is designed for twice ``evaluate.monitor_arl``, so the two together raise a false
alarm no more often than once per ``monitor_arl`` in-distribution films on average (at the
worst in-control shares ``p0``). Once either fires, no film is ``definite_normal`` (or
``likely_normal``) under that certificate until it is re-certified or a person clears the alarm.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.sparse import identity, lil_matrix
from scipy.sparse.linalg import spsolve

from scxnn.metrics import clopper_pearson
from scxnn.ood import tolerance
from scxnn.utils import file_lock, log, sha256_text

MONITOR_NAME = "monitor.jsonl"
STEPS_PER_EVENT = 50  # lattice steps of one event's increment log(p1/p0): the rounding of the other is < 1%
MAX_SCORE_P0 = 0.95  # above this in-control share the score chart has nothing left to detect
_FORMAT = 1


class MonitorError(ValueError):
    """A monitor that cannot be used: not a monitor file, or a clear without an alarm."""


# --------------------------------------------------------------------------- one chart


@dataclass(frozen=True)
class Chart:
    """A Bernoulli CUSUM on an integer lattice: ``event`` adds ``up`` steps, a non-event adds
    ``down`` (negative) steps, floored at 0; the alarm is at ``limit`` steps. ``step`` converts to
    log-likelihood-ratio units (what the module docstring calls ``S`` and ``h``)."""

    name: str
    p0: float  # the worst in-control event share it is designed for
    p1: float  # the shifted share it detects fastest
    up: int
    down: int
    limit: int
    arl: float  # in-control average run length at p0, films (exact for this lattice chart)

    @property
    def step(self) -> float:
        return math.log(self.p1 / self.p0) / self.up

    @property
    def h(self) -> float:
        return self.limit * self.step

    def update(self, s: int, event: bool) -> int:
        return s + self.up if event else max(0, s + self.down)

    def run_length(self, p: float) -> float:
        """Average films to an alarm from zero when the true event share is ``p``."""
        return average_run_length(p, self.up, self.down, self.limit)

    def alarm_within(self, p: float, films: int) -> float:
        """Probability that the chart, started from zero, fires within ``films`` films when the true
        event share is ``p`` (exact: the lattice chain propagated film by film)."""
        states = np.arange(self.limit)
        step_up, step_down = states + self.up, np.maximum(0, states + self.down)
        stay = step_up < self.limit
        v, fired = np.zeros(self.limit), 0.0
        v[0] = 1.0
        for _ in range(int(films)):
            nv = np.zeros(self.limit)
            np.add.at(nv, step_up[stay], v[stay] * p)
            np.add.at(nv, step_down, v * (1 - p))
            fired += float(v[~stay].sum() * p)
            v = nv
        return fired

    @classmethod
    def design(cls, name: str, p0: float, p1: float, arl: float) -> "Chart":
        """The chart for ``p0 -> p1`` whose in-control ARL at ``p0`` is at least ``arl``: the
        smallest such limit (doubling, then bisection; the ARL grows with the limit)."""
        if not 0 < p0 < p1 < 1:
            raise ValueError(f"a {name} chart needs 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
        up = STEPS_PER_EVENT
        down = min(-1, round(math.log((1 - p1) / (1 - p0)) / (math.log(p1 / p0) / up)))
        hi = up
        while average_run_length(p0, up, down, hi) < arl:
            hi *= 2
            if hi > 1 << 16:
                raise ValueError(f"no {name} chart limit reaches ARL {arl} for p0={p0}, p1={p1}")
        lo = hi // 2 if hi > up else 1
        while lo < hi:  # smallest limit with ARL >= arl
            mid = (lo + hi) // 2
            if average_run_length(p0, up, down, mid) >= arl:
                hi = mid
            else:
                lo = mid + 1
        return cls(name, float(p0), float(p1), up, int(down), int(hi), float(average_run_length(p0, up, down, hi)))


def average_run_length(p: float, up: int, down: int, limit: int) -> float:
    """Exact ARL from state 0 of the lattice CUSUM (Brook & Evans 1972): with ``Q`` the
    transitions among the in-control states 0..limit-1, ``L = (I - Q)^-1 1``."""
    if limit <= 0:
        return 1.0
    q = lil_matrix((limit, limit))
    for i in range(limit):
        if i + up < limit:
            q[i, i + up] += p
        q[i, max(0, i + down)] += 1 - p
    lengths = spsolve((identity(limit, format="csc") - q.tocsc()), np.ones(limit))
    return float(np.atleast_1d(lengths)[0])


# --------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Rule:
    """The two charts of a site (``score`` may be None: off)."""

    flagged: Chart
    score: Chart | None
    arl: float  # the design ARL of both together

    def to_dict(self) -> dict:
        return {"flagged": asdict(self.flagged), "score": asdict(self.score) if self.score else None, "arl": self.arl}

    @classmethod
    def from_dict(cls, d: dict) -> "Rule":
        return cls(Chart(**d["flagged"]), Chart(**d["score"]) if d.get("score") else None, float(d["arl"]))

    def describe(self) -> str:
        parts = [f"flagged share: CUSUM {self.flagged.p0:.1%} -> {self.flagged.p1:.0%}, limit h = {self.flagged.h:.2f}"]
        if self.score is not None:
            parts.append(f"unflagged films below the certified threshold: {self.score.p0:.1%} -> {self.score.p1:.0%}, h = {self.score.h:.2f}")
        else:
            parts.append("score chart off (the reference's normal films are nearly all below the threshold)")
        return f"{'; '.join(parts)}; in-control ARL >= {self.arl:g} films"


def design_rule(flag_share: float, flag_films: int, normals_below: int, normals: int, *, max_share: float, alpha: float,
                shift_share: float, arl: float) -> Rule:
    """The site's rule from its reference (the certificate's sample, or the run's validation
    films): its flagged share over ``flag_films`` films, and ``normals_below`` of its ``normals``
    unflagged normal films scoring below the certified threshold (see the module docstring)."""
    p0 = tolerance(flag_share, flag_films, max_share, alpha)
    p1 = shift_share if shift_share > p0 + 0.05 else (1 + p0) / 2
    r0 = clopper_pearson(normals_below, normals, 1 - 2 * alpha)[1] if normals > 0 else 1.0
    score = None if r0 > MAX_SCORE_P0 else Chart.design("score", max(r0, 1e-4), (1 + r0) / 2, 2 * arl)
    return Rule(Chart.design("flagged", p0, p1, 2 * arl if score else arl), score, float(arl))


def replay_false_alarms(flags: np.ndarray, below: np.ndarray, rule: Rule, streams: int = 1000, films: int = 1000,
                        seed: int = 0) -> dict:
    """The stream rule on in-distribution replays: ``streams`` streams of ``films`` films, each film
    drawn with replacement from the given in-distribution films (their gate ``flags`` and whether
    they scored ``below`` the certified threshold), both charts run as :func:`replay` runs them.
    Returns the streams that raised an alarm, the films watched up to the first alarms, and each
    stream's first alarm (``alarm_at``: film number, 0 for none)."""
    f, b = np.asarray(flags, dtype=bool), np.asarray(below, dtype=bool)
    if f.size == 0 or f.shape != b.shape:
        raise ValueError("replay_false_alarms needs as many flags as below values, at least one")
    rng = np.random.default_rng(seed)
    s_flag = np.zeros(streams, dtype=np.int64)
    s_score = np.zeros(streams, dtype=np.int64)
    alarm_at = np.full(streams, -1)
    for t in range(films):
        i = rng.integers(0, f.size, streams)
        fl, bl = f[i], b[i]
        s_flag = np.where(fl, s_flag + rule.flagged.up, np.maximum(0, s_flag + rule.flagged.down))
        hit = s_flag >= rule.flagged.limit
        if rule.score is not None:
            s_score = np.where(fl, s_score, np.where(bl, s_score + rule.score.up, np.maximum(0, s_score + rule.score.down)))
            hit |= s_score >= rule.score.limit
        alarm_at[(alarm_at < 0) & hit] = t + 1
    alarmed = int((alarm_at > 0).sum())
    watched = int(np.where(alarm_at > 0, alarm_at, films).sum())
    return {"streams": streams, "films": films, "alarmed": alarmed, "films_watched": watched,
            "alarms_per_1000_films": 1000.0 * alarmed / watched, "alarm_at": np.maximum(alarm_at, 0)}


# --------------------------------------------------------------------------- the stream


@dataclass
class Status:
    """The monitor after a replay of its current segment (since the last start)."""

    path: str
    new: bool  # no film recorded before this call
    rule: Rule | None
    since: str = ""  # time of the segment's start
    films: int = 0
    flagged: int = 0
    cusum: dict = field(default_factory=dict)  # chart -> statistic now (log-likelihood units)
    alarm: dict | None = None  # {"chart", "film" (1-based index in the segment), "time", "statistic"}
    clears: list = field(default_factory=list)
    damaged: int = 0  # lines that are not whole records (a torn write), skipped
    series: list = field(default_factory=list)  # per film: (flag, flagged-chart S, score-chart S) for the plot
    marks: list = field(default_factory=list)  # (film index, "alarm" | "clear")

    def describe(self) -> str:
        if self.rule is None:
            return f"site monitor {self.path}: new, no film yet"
        state = (f"ALARM since film {self.alarm['film']} ({self.alarm['time']}): {self.alarm['chart']} chart "
                 f"{self.alarm['statistic']:.2f} >= {self.alarm['limit']:.2f}") if self.alarm else "no alarm"
        recent = f"{self.flagged} of {self.films} films flagged" if self.films else "no film yet"
        extra = f"; {self.damaged} damaged line(s) skipped" if self.damaged else ""
        cleared = f"; {len(self.clears)} alarm(s) cleared" if self.clears else ""
        return f"site monitor{' (new)' if self.new else ''} since {self.since}: {recent}; {state}{cleared}{extra}"

    def alarm_reason(self) -> str:
        a = self.alarm
        return (f"site monitor alarm since film {a['film']} of the stream ({a['time']}; {a['chart']} chart {a['statistic']:.2f} >= "
                f"{a['limit']:.2f}): no film is definite_normal here until the site is re-certified or a person clears it "
                f"(scxnn monitor clear --by NAME --why TEXT)")


def append_records(path: Path, records: list[dict]) -> None:
    """Append whole lines in one ``write``, fsynced; the caller holds the monitor's lock."""
    if not records:
        return
    data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size:  # a torn last line must not swallow the first new record
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    data = b"\n" + data
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_records(path: str | os.PathLike) -> tuple[list[dict], int]:
    """(records, damaged lines) of a monitor file; a missing file is empty. Never raises for a torn
    line; a file that is not a monitor at all (no record has a ``kind``) is a MonitorError."""
    p = Path(path)
    if not p.exists():
        return [], 0
    records, damaged = [], 0
    with open(p, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                damaged += 1  # the torn tail of a killed write
                continue
            try:
                r = json.loads(line)
            except ValueError:
                damaged += 1
                continue
            if isinstance(r, dict) and r.get("kind") in ("start", "film", "alarm", "clear"):
                records.append(r)
            else:
                damaged += 1
    if damaged and not records:
        raise MonitorError(f"{p} is not a site monitor ({damaged} line(s), none a monitor record)")
    return records, damaged


def replay(records: list[dict], path: str = "", damaged: int = 0) -> Status:
    """The status after the last ``start`` record: both charts run film by film, an alarm holds
    until a ``clear``."""
    seg = _segment(records)
    if not seg:
        return Status(path, new=True, rule=None, damaged=damaged)
    rule = Rule.from_dict(seg[0]["rule"])
    st = Status(path, new=False, rule=rule, since=seg[0]["time"], damaged=damaged)
    s_flag = s_score = 0
    for r in seg[1:]:
        if r["kind"] == "clear":
            if st.alarm is not None:
                st.clears.append({k: r.get(k) for k in ("time", "by", "why")} | {"alarm": st.alarm})
                st.marks.append((st.films, "clear"))
            st.alarm, s_flag, s_score = None, 0, 0
        elif r["kind"] == "film":
            st.films += 1
            flag = bool(r["flag"])
            st.flagged += flag
            s_flag = rule.flagged.update(s_flag, flag)
            if rule.score is not None and not flag:
                s_score = rule.score.update(s_score, bool(r["below"]))
            st.series.append((int(flag), s_flag * rule.flagged.step, s_score * rule.score.step if rule.score else 0.0))
            if st.alarm is None:
                for chart, s in ((rule.flagged, s_flag), (rule.score, s_score)):
                    if chart is not None and s >= chart.limit:
                        st.alarm = {"chart": chart.name, "film": st.films, "time": r["time"], "statistic": s * chart.step, "limit": chart.h}
                        st.marks.append((st.films, "alarm"))
                        break
    st.cusum = {"flagged": s_flag * rule.flagged.step, **({"score": s_score * rule.score.step} if rule.score else {})}
    return st


class Monitor:
    """The monitor of one site at ``path`` (``monitor.jsonl``), bound to one certificate and rule."""

    def __init__(self, path: str | os.PathLike, binding: str, rule: Rule, site: str):
        self.path, self.binding, self.rule, self.site = Path(path), binding, rule, site
        self.lock = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab"):
                pass
        except OSError as e:
            raise PermissionError(f"the site monitor {self.path} cannot be written ({e.strerror or e}); "
                                  "pass --monitor PATH to keep it elsewhere") from None

    def _start_record(self) -> dict:
        return {"kind": "start", "time": _now(), "format": _FORMAT, "site": self.site, "binding": self.binding,
                "rule": self.rule.to_dict()}

    def observe(self, films: list[dict]) -> Status:
        """Append ``films`` (dicts with ``film``, ``flag``, ``score``, ``below``; in stream order)
        and return the status with them. Starts the monitor, or restarts it when its binding (the
        certificate) changed. Films already recorded since the start are skipped."""
        with file_lock(self.lock):
            records, damaged = read_records(self.path)
            seg = _segment(records)
            new: list[dict] = []
            if not seg or seg[0].get("binding") != self.binding:
                if seg:
                    log.info("site monitor %s: the certificate or its rule changed; the monitor restarts", self.path)
                new.append(self._start_record())
                seg = []
            seen = {r["film"] for r in seg if r["kind"] == "film"}
            films_before = len(seen)
            for f in films:
                if f["film"] in seen:
                    continue
                seen.add(f["film"])
                new.append({"kind": "film", "time": _now(), "film": str(f["film"]), "flag": int(bool(f["flag"])),
                            "score": float(f["score"]) if np.isfinite(f["score"]) else None, "below": int(bool(f["below"]))})
            after = replay(seg + new, str(self.path), damaged)
            if after.alarm is not None and after.alarm["film"] > films_before:  # it fired on a film of this call
                new.append({"kind": "alarm", "time": _now(), **after.alarm})
                log.warning("%s", after.alarm_reason())
            append_records(self.path, new)
        after.new = films_before == 0
        return after


def _segment(records: list[dict]) -> list[dict]:
    """The records from the last ``start`` on: the monitor of the current certificate."""
    starts = [i for i, r in enumerate(records) if r["kind"] == "start"]
    return records[starts[-1]:] if starts else []


def status_of(path: str | os.PathLike) -> Status:
    """The status of the monitor file at ``path`` (no rule needed: its start record holds it)."""
    records, damaged = read_records(path)
    return replay(records, str(path), damaged)


def clear(path: str | os.PathLike, by: str, why: str) -> Status:
    """Record that ``by`` cleared the active alarm because ``why``; both charts restart from zero.
    Refused when there is no alarm, or without a name and a reason."""
    by, why = (by or "").strip(), (why or "").strip()
    if not by or not why:
        raise MonitorError("clearing an alarm needs who (--by NAME) and why (--why TEXT); both are recorded")
    p = Path(path)
    with file_lock(p.with_name(p.name + ".lock")):
        st = status_of(p)
        if st.alarm is None:
            raise MonitorError(f"{p}: no alarm to clear ({st.describe()})")
        append_records(p, [{"kind": "clear", "time": _now(), "by": by, "why": why}])
    return status_of(p)


def locate(monitor: str | os.PathLike | None = None, certificate: str | os.PathLike | None = None,
           run: str | os.PathLike | None = None) -> Path:
    """Where a site's monitor lives: ``monitor`` (a folder means the ``monitor.jsonl`` in it), else
    in the certificate's folder (``certificate`` is the folder or its ``certificate.json``), else
    in the run folder (the run's own population)."""
    if monitor is not None:
        p = Path(monitor)
        return p / MONITOR_NAME if p.is_dir() else p
    if certificate is not None:
        c = Path(certificate)
        return (c if c.is_dir() else c.parent) / MONITOR_NAME
    if run is not None:
        return Path(run) / MONITOR_NAME
    raise ValueError("name the monitor: --monitor PATH, --certificate CERT or --models RUN")


def binding_of(*parts: str) -> str:
    """What a monitor is bound to: a hash of the certificate file (or the run's id) and the rule."""
    return sha256_text("\0".join(parts), 16)
