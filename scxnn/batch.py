"""The batch step of ``scxnn preprocess``: files through :mod:`scxnn.pixels` into a PNG cache and its
manifest, in crash-isolated worker processes.

:func:`preprocess_manifest` and :func:`preprocess_inputs` (the command) build the jobs, read, gate
(:mod:`scxnn.plausibility`) and preprocess each file in a worker (:func:`_process`), and write
``images/``, ``masks/``, ``manifest.csv`` and ``skipped.csv``. Each finished image leaves a record,
so a rerun after a kill redoes only unfinished images. :func:`run_isolated` is the process pool in
which a decoder that aborts its process costs one file, not the batch; ``scxnn predict`` decodes
through it too (:func:`screening_pixels`).
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import pandas as pd

from scxnn import plausibility
from scxnn.config import Config, Preprocess, save_resolved
from scxnn.data import MANIFEST_NAME, hash_patient, new_manifest, parse_masks, read_manifest, write_manifest
from scxnn.dicom import ImageReadError, find_images, read_image
from scxnn.pixels import encode_png, fingerprint, preprocess_pixels, preview
from scxnn.plausibility import GATE_VERSION
from scxnn.utils import atomic_write_bytes, atomic_write_text, log, remove_stale_temporaries, sha256_file, sha256_text

SKIPPED_NAME = "skipped.csv"


@dataclass(frozen=True)
class _Job:
    row: dict
    source: str  # absolute source path
    masks: dict  # finding -> absolute source mask path
    out_dir: str
    pre: Preprocess
    fp: str


def _record_path(out_dir: Path, image_id: str) -> Path:
    return out_dir / "records" / f"{image_id}.json"


def _gate_key(pre: Preprocess) -> list:
    """What decides whether a film passes the gate; part of each record's key, so a record made
    under another rule is checked again (the pixels, and so the fingerprint, do not change)."""
    return [GATE_VERSION, pre.min_side, pre.max_aspect, pre.max_megapixels]


# What preprocessing writes into a row; every other field comes from the input manifest (``view``
# from both: the manifest's, else the file header's).
_PIXEL_FIELDS = ("path", "masks", "source_sha256", "modality", "body_part", "photometric", "bits_stored",
                 "pixel_spacing_mm", "scope_flags")


def _process(job: _Job) -> tuple[str, dict | None, str | None]:
    """Worker: one image -> (image_id, output row or None, skip reason or None). Never raises."""
    image_id = job.row["image_id"]
    out = Path(job.out_dir)
    try:
        sha = sha256_file(job.source)
        rec_path = _record_path(out, image_id)
        key = [sha, job.fp, _gate_key(job.pre), sorted(job.masks)]
        if rec_path.is_file():  # resume: same source bytes and settings -> nothing to do
            rec = json.loads(rec_path.read_text())
            if rec.get("key") == key and (out / rec["row"]["path"]).is_file():
                # The pixels are the record's; the labels are the manifest's now (an adapter may
                # have corrected them since, e.g. a film it used to call normal).
                row = {**rec["row"], **{k: v for k, v in job.row.items() if k not in _PIXEL_FIELDS}}
                return image_id, {**row, "view": job.row.get("view") or rec["row"].get("view") or ""}, None
        rad = read_image(job.source, voi_lut=job.pre.voi_lut, max_megapixels=job.pre.max_megapixels)
        why = plausibility.check(rad.pixels, job.pre, rad.scope_flags)
        if why:
            return image_id, None, why
        img, geo = preprocess_pixels(rad.pixels, job.pre)
        rel_img = f"images/{image_id}.png"
        atomic_write_bytes(out / rel_img, encode_png(img))
        masks = {}
        for finding, mpath in job.masks.items():
            m = cv2.imdecode(np.fromfile(mpath, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise ValueError(f"mask for {finding} is not a readable image: {mpath}")
            rel = f"masks/{image_id}_{finding}.png"
            atomic_write_bytes(out / rel, encode_png(geo.apply_to_mask(m)))
            masks[finding] = rel
        from scxnn.data import format_masks

        row = dict(job.row)
        meta = rad.meta
        row.update(
            path=rel_img,
            masks=format_masks(masks),
            source_sha256=sha,
            view=row.get("view") or meta.get("view") or "",
            modality=meta.get("modality") or "",
            body_part=meta.get("body_part") or "",
            photometric=meta.get("photometric") or "",
            bits_stored=meta.get("bits_stored") or "",
            pixel_spacing_mm=geo.output_spacing_mm(meta.get("pixel_spacing_mm")) or "",
            scope_flags=";".join(rad.scope_flags),
        )
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        atomic_write_text(rec_path, json.dumps({"key": key, "row": row}, default=_json_default))
        return image_id, row, None
    except ImageReadError as e:
        return image_id, None, e.reason
    except OSError as e:
        return image_id, None, f"cannot read: {e.strerror or e}"
    except MemoryError:
        return image_id, None, "out of memory while preprocessing (lower preprocess.max_megapixels or data.workers)"
    except Exception as e:  # one bad file must never stop the batch
        return image_id, None, f"cannot preprocess ({type(e).__name__}: {e})"


@dataclass(frozen=True)
class ScreenJob:
    """One file for :func:`screening_pixels`: ``row["image_id"]`` is the caller's key."""

    row: dict
    source: str
    pre: Preprocess


def screening_pixels(job: ScreenJob) -> tuple[str, tuple[np.ndarray | None, tuple[str, ...]] | None, str | None]:
    """Worker of ``scxnn predict``'s decoding stage: read, gate (:mod:`scxnn.plausibility`) and
    preprocess one file -> (key, (uint8 film or None if the gate refused it, scope flags, a
    :func:`scxnn.pixels.preview` of a refused film that decoded, else None) or None if unreadable,
    rejection reason or None).
    Never raises; run it through :func:`run_isolated` so that a decoder that aborts its process
    costs one film, not the batch."""
    key, pre = job.row["image_id"], job.pre
    try:
        rad = read_image(job.source, voi_lut=pre.voi_lut, max_megapixels=pre.max_megapixels)
        why = plausibility.check(rad.pixels, pre, rad.scope_flags)
        if why:
            try:
                shown = preview(rad.pixels, side=max(pre.size, 256))  # for the full-size view: as large as a scored film
            except Exception:  # noqa: BLE001 -- a picture of a refused film is a courtesy, never a failure
                shown = None
            return key, (None, rad.scope_flags, shown), why
        return key, (preprocess_pixels(rad.pixels, pre)[0], rad.scope_flags, None), None
    except ImageReadError as e:
        return key, None, f"unreadable: {e.reason}"
    except OSError as e:
        return key, None, f"unreadable: {e.strerror or e}"
    except MemoryError:
        return key, None, "out of memory while reading this film (lower preprocess.max_megapixels)"
    except Exception as e:  # noqa: BLE001 -- one film must never end the batch
        return key, None, f"could not be screened ({type(e).__name__}: {e})"


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if v is pd.NA:
        return None
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _resolve(base: Path, p: str) -> str:
    q = Path(p)
    return str(q if q.is_absolute() else (base / q))


def jobs_from_manifest(df: pd.DataFrame, base: Path, out_dir: Path, pre: Preprocess) -> Iterator[_Job]:
    fp = fingerprint(pre)
    for row in df.to_dict("records"):
        masks = {k: _resolve(base, v) for k, v in parse_masks(row.get("masks")).items()}
        yield _Job(row=row, source=_resolve(base, row["path"]), masks=masks, out_dir=str(out_dir), pre=pre, fp=fp)


def jobs_from_paths(paths: Sequence[str | os.PathLike], out_dir: Path, pre: Preprocess, site: str = "external") -> tuple[list[_Job], list[dict]]:
    """Jobs for loose files and folders (searched recursively, :func:`scxnn.dicom.find_images`), and
    skipped rows for what could not be searched (unreadable folders, symbolic-link loops). Such
    images carry no labels: they are scored, not trained on. The image id hashes the file's path, so
    no file name (which may hold a patient's name) reaches the manifest; each image counts as its
    own patient."""
    fp = fingerprint(pre)
    files, problems = find_images(paths, strict=True)
    skipped = [{"image_id": "", "source": str(p), "reason": why} for p, why in problems]
    jobs = []
    for f in files:
        key = sha256_text(str(f.resolve()), 16)
        row = {"image_id": f"img-{key}", "patient_id": hash_patient(f"file:{key}"), "study_date": "", "site": site,
               "split": "test", "label_type": "weak", "masks": "", "view": "", "path": str(f.resolve()), "source_sha256": ""}
        jobs.append(_Job(row=row, source=str(f.resolve()), masks={}, out_dir=str(out_dir), pre=pre, fp=fp))
    return jobs, skipped


def run_isolated(jobs: Sequence, workers: int, fn=None,
                 crashed: str = "the decoder crashed its process (corrupt compressed data?)") -> Iterator[tuple[str, object, str | None]]:
    """Yield ``fn(job)`` results (default :func:`_process`), in any order, from a process pool; each
    job has ``row["image_id"]`` and ``fn`` returns ``(image_id, result, reason)``. Also the decoding
    stage of ``scxnn predict`` (:func:`screening_pixels`).

    A corrupt file can make a native decoder (gdcm, CharLS) abort its whole process, which no
    ``except`` catches and which makes ``multiprocessing.Pool`` wait forever. Here a dead worker
    breaks the pool; the images that were in flight are then retried one per fresh process, so the
    culprit alone becomes a skipped row and the batch goes on. At most ``4 x workers`` jobs are in
    flight, so memory stays flat however many images there are.
    """
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    fn = fn or _process
    ctx = mp.get_context("spawn")
    pool = functools.partial(ProcessPoolExecutor, mp_context=ctx, initializer=_exit_with_parent, initargs=(os.getpid(),))
    queue, suspects = deque(jobs), deque()
    while queue or suspects:
        if suspects:
            job = suspects.popleft()
            with pool(1) as ex:
                try:
                    yield ex.submit(fn, job).result()
                except BrokenProcessPool:
                    yield job.row["image_id"], None, crashed
            continue
        inflight: dict = {}
        ex = pool(workers)
        try:
            while queue or inflight:
                while queue and len(inflight) < 4 * workers:
                    job = queue.popleft()
                    try:
                        inflight[ex.submit(fn, job)] = job
                    except BrokenProcessPool:  # the pool broke since the last result: keep the job
                        queue.appendleft(job)
                        raise
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()  # raises BrokenProcessPool if a worker died
                    del inflight[fut]
                    yield result
        except BrokenProcessPool:
            suspects.extend(inflight.values())
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: exit when the parent goes. A ``kill -9`` of ``scxnn preprocess``
    otherwise left its workers running (nothing closes their job pipe for them while they decode)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_batch(
    jobs: Sequence[_Job],
    out_dir: str | os.PathLike,
    workers: int = 0,
    progress: bool = True,
    desc: str = "preprocess",
    skipped_before: Sequence[dict] = (),
) -> tuple[list[dict], pd.DataFrame]:
    """Run jobs with a progress bar; returns (output rows in input order, skipped rows).
    ``skipped_before``: rows (image_id, source, reason) for inputs that never became jobs.

    Each finished image leaves a record, so a rerun after a kill redoes only unfinished images.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "images", out / "masks", out / "records"):  # left by a kill -9 of an earlier run
        remove_stale_temporaries(folder)
    n = len(jobs)
    workers = min(workers or os.cpu_count() or 1, max(n, 1))
    by_id = {j.row["image_id"]: j for j in jobs}
    rows: dict[str, dict] = {}
    skipped: list[dict] = list(skipped_before)
    # OpenCV's own threads would fight the process pool for the same cores.
    cv2.setNumThreads(1 if workers > 1 else 0)
    # Always in worker processes, even for one: a native decoder's abort must end a worker, not the batch.
    results = run_isolated(jobs, workers)
    try:
        with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
            for image_id, row, reason in results:
                if row is not None:
                    rows[image_id] = row
                else:
                    skipped.append({"image_id": image_id, "source": by_id[image_id].source, "reason": reason})
                bar.update(1)
    finally:
        cv2.setNumThreads(0)
    ordered = [rows[j.row["image_id"]] for j in jobs if j.row["image_id"] in rows]
    skipped_df = pd.DataFrame(skipped, columns=["image_id", "source", "reason"])
    write_manifest(skipped_df, out / SKIPPED_NAME)
    if skipped:
        log.warning("%d of %d inputs skipped; reasons in %s", len(skipped), n + len(skipped_before), out / SKIPPED_NAME)
    return ordered, skipped_df


def preprocess_manifest(cfg: Config, manifest: pd.DataFrame, base: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Preprocess every row of a manifest into ``out_dir`` (PNG cache + manifest.csv + skipped.csv)."""
    out = Path(out_dir)
    jobs = list(jobs_from_manifest(manifest, Path(base), out, cfg.preprocess))
    t0 = time.perf_counter()
    rows, skipped = run_batch(jobs, out, workers=cfg.data.workers, progress=progress)
    df = new_manifest(rows, list(cfg.findings), list(cfg.unseen_findings))
    write_manifest(df, out / MANIFEST_NAME)
    save_resolved(cfg, out, extra={"step": "preprocess", "preprocess_fingerprint": fingerprint(cfg.preprocess), "images": len(df), "skipped": len(skipped)})
    log.info("preprocessed %d images (%d skipped) in %.1f s -> %s", len(df), len(skipped), time.perf_counter() - t0, out)
    return df, skipped


def preprocess_inputs(cfg: Config, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, site: str = "external", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``scxnn preprocess IN... --out DIR``: folders, files and manifests (``*.csv``) in one batch."""
    out = Path(out_dir)
    jobs: list[_Job] = []
    loose, skipped_before = [], []
    for item in map(Path, inputs):
        if item.is_file() and item.suffix.lower() == ".csv":
            df = read_manifest(item, list(cfg.findings), list(cfg.unseen_findings))
            jobs += jobs_from_manifest(df, item.parent, out, cfg.preprocess)
        else:
            loose.append(item)
    if loose:
        more, skipped_before = jobs_from_paths(loose, out, cfg.preprocess, site=site)
        jobs += more
    ids = [j.row["image_id"] for j in jobs]
    if len(ids) != len(set(ids)):
        raise ValueError("the inputs name the same image twice (duplicate image_id); give each file or manifest once")
    rows, skipped = run_batch(jobs, out, workers=cfg.data.workers, progress=progress, skipped_before=skipped_before)
    df = new_manifest(rows, list(cfg.findings), list(cfg.unseen_findings))
    write_manifest(df, out / MANIFEST_NAME)
    save_resolved(cfg, out, extra={"step": "preprocess", "preprocess_fingerprint": fingerprint(cfg.preprocess), "images": len(df), "skipped": len(skipped)})
    return df, skipped
