"""Plan the synthetic study (who gets which finding, where, which split), render it in parallel and
write the manifest.

Planning is sequential and cheap; every image then draws from its own RNG (seed, image index), so
the bytes do not depend on the number of workers or on the order in which processes finish.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from scxnn import data as D
from scxnn.synth import sites
from scxnn.synth.anatomy import compose, jitter, make_geometry, render_layers, sample_anatomy, sample_rendering
from scxnn.synth.findings import FINDINGS, sample_severity
from scxnn.utils import atomic_write_bytes, atomic_write_text, sha256_file, sha256_text

GENERATOR_VERSION = "6"
META_NAME = "synth.json"
# Comorbidity: the share of abnormal images with a second target finding, and of those with a third.
# Real films with a finding mostly carry another (in the NIH labels of ../shared, 56% of cardiomegaly
# and 83-87% of effusion, atelectasis and consolidation films). With v3's 0.2 and no third, a model
# learnt "another lesion: not mine" and scored real atelectasis below chance (docs/evaluation.md,
# "Transfer to real films").
SECOND_FINDING = 0.7
THIRD_FINDING = 0.4
UNSEEN_SHARE = 0.12  # share of abnormal evaluation images with an unseen finding
PATIENT_IMAGES = ([1, 2, 3], [0.75, 0.18, 0.07])


def fingerprint(cfg) -> str:
    d = cfg.to_dict()["data"]
    for k in ("workers", "source", "manifest"):  # do not change the images
        d.pop(k, None)
    blob = {"version": GENERATOR_VERSION, "seed": cfg.seed, "data": d, "findings": list(cfg.findings), "unseen": list(cfg.unseen_findings)}
    return sha256_text(json.dumps(blob, sort_keys=True), 16)


# --------------------------------------------------------------------------- planning


def _weights(findings, boost_device: float = 1.0) -> np.ndarray:
    # Flattened Table 1 prevalence: rare findings still occur among co-findings and eval sets.
    w = np.array([np.sqrt(sum(sites.TABLE1.get(f, (100, 0)))) * (boost_device if f == "support_device" else 1.0) for f in findings])
    return w / w.sum()


def _add_second(specs, findings, rng, boost=1.0):
    """Co-findings: a second target finding for SECOND_FINDING of the abnormal specs, and a third
    for THIRD_FINDING of those (a draw that repeats a finding adds nothing)."""
    w = _weights(findings, boost)
    for sp in specs:
        if not sp["findings"] or rng.random() >= SECOND_FINDING:
            continue
        for more in (True, rng.random() < THIRD_FINDING):
            f2 = findings[int(rng.choice(len(findings), p=w))]
            if more and f2 not in sp["findings"]:
                sp["findings"].append(f2)


def _group_patients(specs, rng):
    """Consecutive specs -> patients of 1-3 images; returns a list of lists."""
    order = rng.permutation(len(specs))
    out, i = [], 0
    while i < len(order):
        k = int(rng.choice(PATIENT_IMAGES[0], p=PATIENT_IMAGES[1]))
        out.append([specs[j] for j in order[i : i + k]])
        i += k
    return out


def _dates(site: str, n: int, rng) -> list[str]:
    lo, hi = (dt.date.fromisoformat(d) for d in sites.SITE_DATES[site])
    span = (hi - lo).days
    start = int(rng.integers(0, max(1, span - 30 * (n - 1))))
    days = sorted(start + int(rng.integers(0, 30)) * i + i for i in range(n))
    return [(lo + dt.timedelta(days=min(d, span))).isoformat() for d in days]


def plan(cfg) -> list[dict]:
    """Every film of the study as a job for :func:`render`, in index order: the internal site's
    patients, then each evaluation site's, then any extra validation patients."""
    rng = np.random.default_rng([cfg.seed, 101])
    jobs: list[dict] = []
    if "internal" in cfg.data.sites:
        hard, weak, n_norm = sites.internal_counts(list(cfg.findings), cfg.data.scale, cfg.data.min_per_finding)
        _plan_internal(jobs, cfg, rng, hard, weak, n_norm)
    unseen_i = 0  # the unseen findings take turns across the evaluation sites
    for site in (s for s in ("temporal", "external1", "external2") if s in cfg.data.sites):
        unseen_i = _plan_eval_site(jobs, cfg, rng, site, unseen_i)
    # Extra validation patients last, from their own stream: every film above stays as it was.
    need = cfg.data.val_min_abnormal_patients - _abnormal_patients(jobs, "val")
    if "internal" in cfg.data.sites and need > 0:
        _plan_extra_val(jobs, cfg, need, n_norm / (n_norm + sum(hard.values())))
    return jobs


def _patient_id(cfg, site: str, pool: str, i: int) -> str:
    return D.hash_patient(f"synth:{cfg.seed}:{site}:{pool}:{i}")


def _emit(jobs: list[dict], cfg, rng, site: str, pool: str, patients: list[list[dict]], split_of) -> None:
    """Append a job to ``jobs`` for every film of ``patients`` (lists of specs): the patient's dates
    and anatomy, each film's device, shape, spacing and view drawn from ``rng``."""
    for pi, group in enumerate(patients):
        pid = _patient_id(cfg, site, pool, pi)
        dates = _dates(site, len(group), rng)
        anat_seed = int(rng.integers(2**62))
        for sp, date in zip(group, dates):
            idx = len(jobs)
            dev = sites.pick_device(site, rng)
            H, W = sites.image_shape(site, cfg.data.synth_size, rng)
            # Physical field of view ~350-430 mm across the film.
            spacing = rng.uniform(350, 430) / W
            jobs.append(
                dict(
                    index=idx,
                    image_id=f"{sites.SITE_PREFIX[site]}-{idx:06d}",
                    site=site,
                    patient_id=pid,
                    anat_seed=anat_seed,
                    image_seed=[cfg.seed, 202, idx],
                    study_date=date,
                    split=split_of(pid),
                    view="AP" if rng.random() < sites.STYLES[site]["ap"] else "PA",
                    device=dev,
                    shape=(H, W),
                    spacing=spacing,
                    **sp,
                )
            )


def _plan_internal(jobs: list[dict], cfg, rng, hard: dict, weak: dict, n_norm: int) -> None:
    """The internal site: hard-label and normal patients are split by patient; weak-label patients all train."""
    findings = list(cfg.findings)
    hn = [dict(label_type="hard", findings=[f], unseen=[]) for f in findings for _ in range(hard[f])]
    hn += [dict(label_type="hard", findings=[], unseen=[]) for _ in range(n_norm)]
    wk = [dict(label_type="weak", findings=[f], unseen=[]) for f in findings for _ in range(weak[f])]
    _add_second(hn, findings, rng)
    _add_second(wk, findings, rng)
    hn_patients = _group_patients(hn, rng)
    split = D.split_by_patient([_patient_id(cfg, "internal", "hard", i) for i in range(len(hn_patients))], cfg.data.split, cfg.seed)
    _emit(jobs, cfg, rng, "internal", "hard", hn_patients, split.__getitem__)
    _emit(jobs, cfg, rng, "internal", "weak", _group_patients(wk, rng), lambda pid: "train")


def _plan_eval_site(jobs: list[dict], cfg, rng, site: str, unseen_i: int) -> int:
    """An evaluation site's patients, all test; returns ``unseen_i`` advanced past the unseen findings it used."""
    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    n_norm_e, n_abn = sites.eval_counts(site, cfg.data.eval_scale)
    w = _weights(findings, sites.STYLES[site]["device_boost"])
    abn = [dict(label_type="hard", findings=[findings[int(rng.choice(len(findings), p=w))]], unseen=[]) for _ in range(n_abn)]
    _add_second(abn, findings, rng, sites.STYLES[site]["device_boost"])
    n_unseen = max(1, int(round(UNSEEN_SHARE * n_abn))) if unseen else 0
    for j in range(min(n_unseen, n_abn)):
        abn[j]["unseen"] = [unseen[unseen_i % len(unseen)]]
        if j % 2 == 0:  # an unseen finding alone: abnormal, yet no target model's finding
            abn[j]["findings"] = []
        unseen_i += 1
    specs = abn + [dict(label_type="hard", findings=[], unseen=[]) for _ in range(n_norm_e)]
    _emit(jobs, cfg, rng, site, "eval", _group_patients(specs, rng), lambda pid: "test")
    return unseen_i


def _plan_extra_val(jobs: list[dict], cfg, need: int, n_norm_share: float) -> None:
    """Internal validation patients until ``need`` more of them are abnormal (``data.val_min_abnormal_patients``)."""
    findings = list(cfg.findings)
    xrng = np.random.default_rng([cfg.seed, 103])
    vx: list[list[dict]] = []
    while need > 0:
        # Findings in turn (every finding as often), normals in the hard pool's proportion.
        batch = [dict(label_type="hard", findings=[findings[(len(vx) + i) % len(findings)]], unseen=[]) for i in range(need)]
        batch += [dict(label_type="hard", findings=[], unseen=[]) for _ in range(int(round(need * n_norm_share / (1 - n_norm_share))))]
        _add_second(batch, findings, xrng)
        groups = _group_patients(batch, xrng)
        vx += groups
        need -= sum(any(sp["findings"] for sp in g) for g in groups)
    _emit(jobs, cfg, xrng, "internal", "valx", vx, lambda pid: "val")  # its dates, devices and shapes from xrng too


def _abnormal_patients(jobs: list[dict], split: str) -> int:
    """Patients of ``split`` with any finding (target or unseen) on any film."""
    pats: dict[str, bool] = {}
    for j in jobs:
        if j["split"] == split:
            pats[j["patient_id"]] = pats.get(j["patient_id"], False) or bool(j["findings"] or j["unseen"])
    return sum(pats.values())


# --------------------------------------------------------------------------- rendering


def render(job: dict, difficulty: float) -> tuple[np.ndarray, dict]:
    """(image in [0, 1], {finding: bool mask}) for one planned job."""
    p = sample_anatomy(np.random.default_rng(job["anat_seed"]))
    rng = np.random.default_rng(job["image_seed"])  # positioning and acquisition
    # Lesions draw from their own stream: the same job without findings renders the same film
    # without the lesions (the gallery's "same patient, normal" twin).
    lrng = np.random.default_rng([*job["image_seed"], 7])
    p = jitter(p, rng)
    # Domain randomisation from a stream of its own, independent of the findings, so that the
    # positioning, acquisition and lesion draws stay as they were.
    p["render"] = sample_rendering(np.random.default_rng([*job["image_seed"], 11]))
    p["lung_depth"] = p["lung_depth"] * p["render"]["aeration"]
    p["view"] = job.get("view", "PA")  # AP films are taken supine or semi-erect: fluid layers, air rises anteriorly
    if p["view"] == "AP":  # bedside film: the heart magnified, a shallower breath, scapulae over the lungs
        p["ctr"] = p["ctr"] * 1.1
        p["dome"] = {s: d - 0.04 for s, d in p["dome"].items()}
        p["clav"] = p["clav"] - 0.04
        p["scapula"] = p["scapula"] + 0.12
    names = job["findings"] + job["unseen"]
    sev = {f: sample_severity(lrng, difficulty) for f in names}
    for f in names:
        pre = FINDINGS[f][0]
        if pre is not None:
            pre(p, lrng, sev[f])
    H, W = job["shape"]
    g = make_geometry(p, H, W, job["spacing"])
    layers = render_layers(g)
    att = compose(layers, p)
    masks = {}
    for f in names:
        delta, mask = FINDINGS[f][1](g, layers, lrng, sev[f])
        att += delta
        if not mask.any():  # guarantee a non-empty mask for every positive
            mask = np.abs(delta) > 0.5 * np.abs(delta).max() if np.abs(delta).max() > 0 else mask
        masks[f] = mask
    att, masks = _tilt(att, masks, p["tilt"])
    return sites.acquire(att, job["site"], rng, g.tw, scatter_gain=p["render"]["scatter"]), masks


def _tilt(att: np.ndarray, masks: dict, degrees: float) -> tuple[np.ndarray, dict]:
    """Positioning: the patient stands a little askew on the detector (lesion masks follow)."""
    if abs(degrees) < 0.05:
        return att, masks
    H, W = att.shape
    m = cv2.getRotationMatrix2D((W / 2, H / 2), degrees, 1.0)
    att = cv2.warpAffine(att, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = {}
    for f, mk in masks.items():
        w = cv2.warpAffine(mk.astype(np.uint8), m, (W, H), flags=cv2.INTER_NEAREST, borderValue=0) > 0
        out[f] = w if w.any() else mk
    return att, out


def _work(job: dict, root: str, difficulty: float, seed: int, findings: list, unseen: list) -> dict:
    cv2.setNumThreads(1)
    rootp = Path(root)
    dev = job["device"]
    rel = f"images/{job['site']}/{job['image_id']}.{dev['fmt']}"
    targets = [f for f in job["findings"] if f in findings]
    mask_rel = {f: f"masks/{job['image_id']}_{f}.png" for f in targets} if job["label_type"] == "hard" else {}
    outputs = [rootp / rel, *(rootp / m for m in mask_rel.values())]
    if not all(o.is_file() for o in outputs):
        v, masks = render(job, difficulty)
        meta = dict(seed=seed, uid_key=job["image_id"], patient_id=job["patient_id"], study_date=job["study_date"], view=job["view"], spacing=job["spacing"])
        atomic_write_bytes(rootp / rel, sites.encode(v, dev, meta))
        for f, m in mask_rel.items():
            ok, buf = cv2.imencode(".png", masks[f].astype(np.uint8) * 255)
            atomic_write_bytes(rootp / m, buf.tobytes())
    row = dict(
        image_id=job["image_id"],
        patient_id=job["patient_id"],
        study_date=job["study_date"],
        site=job["site"],
        split=job["split"],
        label_type=job["label_type"],
        **{f: int(f in job["findings"]) for f in findings},
        **{f: int(f in job["unseen"]) for f in unseen},
        masks=D.format_masks(mask_rel),
        view=job["view"],
        path=rel,
        source_sha256=sha256_file(rootp / rel),
        modality=dev["modality"],
        body_part="CHEST",
        photometric=dev["photometric"],
        bits_stored=dev["bits"],
        pixel_spacing_mm=round(job["spacing"], 4) if dev["fmt"] == "dcm" else "",  # JPEG: spacing lost, as in MIMIC-CXR-JPG
    )
    return row


def generate(cfg, out_dir, progress: bool = True) -> pd.DataFrame:
    """Generate (or resume) the synthetic study under ``out_dir``; returns the manifest.

    Files: ``images/<site>/<image_id>.dcm|.jpg``, ``masks/<image_id>_<finding>.png`` (uint8 0/255,
    image geometry), ``manifest.csv`` (paths relative to ``out_dir``) and ``synth.json`` (the
    generator fingerprint). A complete set with the same fingerprint is returned as is; an
    interrupted one is finished without rewriting the images already written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    fp = fingerprint(cfg)
    meta_path, man_path = out / META_NAME, out / D.MANIFEST_NAME
    old = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if old.get("fingerprint") == fp and old.get("complete") and man_path.is_file():
        return D.read_manifest(man_path, findings, unseen)
    if not old and any(out.iterdir()):
        # Never delete what the generator did not write.
        raise FileExistsError(f"{out} is not empty and holds no {META_NAME}: not a synthetic-data folder; choose an empty or new folder")
    if old.get("fingerprint") != fp:
        # Images from other settings must not be mistaken for ours.
        man_path.unlink(missing_ok=True)
        for sub in ("images", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
    atomic_write_text(meta_path, json.dumps({"fingerprint": fp, "version": GENERATOR_VERSION, "complete": False}, indent=1))

    jobs = plan(cfg)
    work = partial(_work, root=str(out), difficulty=cfg.data.synth_difficulty, seed=cfg.seed, findings=findings, unseen=unseen)
    n_workers = min(cfg.data.workers or os.cpu_count() or 1, len(jobs))
    rows = []
    with tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress) as bar:
        if n_workers <= 1:
            for j in jobs:
                rows.append(work(j))
                bar.update()
        else:
            # spawn, not fork: forking a process that already runs torch or OpenCV threads can deadlock.
            ctx = mp.get_context("spawn")
            with ctx.Pool(n_workers) as pool:
                for r in pool.imap_unordered(work, jobs, chunksize=max(1, len(jobs) // (n_workers * 16))):
                    rows.append(r)
                    bar.update()
    order = {j["image_id"]: j["index"] for j in jobs}
    rows.sort(key=lambda r: order[r["image_id"]])
    df = D.new_manifest(rows, findings, unseen)
    D.validate_manifest(df, findings, unseen, source="synth")
    D.write_manifest(df, man_path)
    counts = df.groupby(["site", "split", "label_type"]).size()
    summary = {f"{a}/{b}/{c}": int(n) for (a, b, c), n in counts.items()}
    atomic_write_text(meta_path, json.dumps({"fingerprint": fp, "version": GENERATOR_VERSION, "complete": True, "counts": summary}, indent=1))
    return D.read_manifest(man_path, findings, unseen)
