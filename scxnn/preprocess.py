"""The thesis' preprocessing (§3.2) and the batch step that builds the PNG cache and its manifest.

Per image, in the thesis' order:

1. clip intensities at the 0.5 / 99.5 percentiles (``preprocess.clip_percentiles``);
2. min-max normalise to 0-255;
3. zero-pad to a square, centred, keeping the aspect ratio;
4. CLAHE (``preprocess.contrast``: ``clahe``, or ``histeq`` / ``none`` for the Table 6 ablation);
5. resize to ``preprocess.size`` (1024 in the thesis profile) with area interpolation;
6. write PNG.

Lesion masks take the same pad and resize (:meth:`Geometry.apply_to_mask`) and are stored
undilated. The thesis' morphological dilation (:func:`dilate_mask`, kernel in mm or as a fraction of
the image side) is applied when training targets are built, so the "no dilation" ablation reuses the
same cache.

Everything runs on OpenCV: a histogram gives the percentiles in one pass instead of a sort, and
CLAHE and INTER_AREA resizing are native. ``scxnn bench preprocess`` measures this against a
straightforward scikit-image version of the same steps (:func:`reference_pipeline`).
"""

from __future__ import annotations

import functools
import hashlib
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

from scxnn.config import Config, Preprocess
from scxnn.utils import atomic_write_bytes, atomic_write_text, log, remove_stale_temporaries, sha256_file

# Bump when the pixels this module produces change for the same settings: it invalidates caches.
PREPROCESS_VERSION = 1
SKIPPED_NAME = "skipped.csv"
_HIST_BINS = 65536


# --------------------------------------------------------------------------- single image


def fingerprint(p: Preprocess) -> str:
    """Hash of everything that changes the cached PNGs (dilation is applied later, so it is not in)."""
    key = {
        "version": PREPROCESS_VERSION,
        "clip_percentiles": list(p.clip_percentiles),
        "contrast": p.contrast,
        "clahe_clip_limit": p.clahe_clip_limit if p.contrast == "clahe" else None,
        "clahe_tiles": p.clahe_tiles if p.contrast == "clahe" else None,
        "size": p.size,
        "voi_lut": p.voi_lut,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Geometry:
    """How a source image maps onto the square output: padding offsets, then a uniform scale."""

    height: int
    width: int
    size: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def offset(self) -> tuple[int, int]:  # (top, left) of the source inside the padded square
        return (self.side - self.height) // 2, (self.side - self.width) // 2

    def pad(self, img: np.ndarray) -> np.ndarray:
        top, left = self.offset
        bottom, right = self.side - self.height - top, self.side - self.width - left
        return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)

    def resize(self, img: np.ndarray) -> np.ndarray:
        if img.shape[0] == self.size:
            return img
        interp = cv2.INTER_AREA if img.shape[0] > self.size else cv2.INTER_LINEAR
        return cv2.resize(img, (self.size, self.size), interpolation=interp)

    def apply_to_mask(self, mask: np.ndarray) -> np.ndarray:
        """Pad and resize a source-geometry mask; returns uint8 0/255.

        Area averaging then a 0.5 threshold keeps small lesions from vanishing or growing, which
        nearest-neighbour sampling of a heavily downscaled mask would do.
        """
        if mask.shape[:2] != (self.height, self.width):
            raise ValueError(f"mask shape {mask.shape[:2]} differs from the image's {(self.height, self.width)}")
        m = self.resize(self.pad((mask > 0).astype(np.float32)))
        return np.where(m >= 0.5, 255, 0).astype(np.uint8)

    def output_spacing_mm(self, source_spacing_mm: float | None) -> float | None:
        return None if source_spacing_mm is None else source_spacing_mm * self.side / self.size


def percentiles(img: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The lo / hi percentiles of ``img`` from one 16-bit histogram pass (no sort).

    Exact for integer-valued data spanning fewer than 65536 values, which covers every DICOM up to
    16 bits stored; otherwise within 1/65535 of the intensity range. The image is offset to a uint16
    view first because OpenCV's histogram is ten times faster on uint16 than on float32.
    """
    mn, mx = (float(v) for v in cv2.minMaxLoc(img if img.dtype != np.int32 else img.astype(np.float32))[:2])
    if mx <= mn:
        return mn, mx
    span = mx - mn
    sample = img.ravel()[:: max(1, img.size // 4096)]
    integral = np.issubdtype(img.dtype, np.integer) or bool(np.all(np.modf(sample)[0] == 0))
    scale = 1.0 if integral and span < _HIST_BINS else (_HIST_BINS - 1) / span
    f32 = img.astype(np.float32, copy=False)
    if scale < 1e30:
        u16 = ((f32 - mn) * scale).astype(np.uint16)
    else:  # a tiny span (a header rescaling by 1e-38): scale itself overflows float32, so divide first
        u16 = ((f32 - np.float32(mn)) / np.float32(span) * np.float32(_HIST_BINS - 1)).astype(np.uint16)
    nbins = int(span * scale) + 1
    cdf = np.cumsum(cv2.calcHist([u16], [0], None, [nbins], [0, nbins]).ravel())

    def at(q: float) -> float:
        return mn + int(np.searchsorted(cdf, q / 100.0 * cdf[-1], side="left")) / scale

    return at(lo), at(hi)


def clip_and_normalise(img: np.ndarray, p: Preprocess) -> np.ndarray:
    """Steps 1-2: percentile clip, then min-max to uint8 0-255."""
    lo, hi = percentiles(img, *p.clip_percentiles)
    f32 = img.astype(np.float32, copy=False)
    clipped = np.clip(f32, lo, hi)
    mn, mx = float(clipped.min()), float(clipped.max())
    if mx <= mn:
        raise ValueError(f"no contrast left after the {p.clip_percentiles[0]:g}-{p.clip_percentiles[1]:g} percentile clip "
                         "(almost every pixel has the same value)")
    alpha = 255.0 / (mx - mn)
    return cv2.convertScaleAbs(clipped, alpha=alpha, beta=-mn * alpha)


def enhance(img8: np.ndarray, p: Preprocess) -> np.ndarray:
    """Step 4: CLAHE (thesis), histogram equalisation or nothing (Table 6 ablation)."""
    if p.contrast == "clahe":
        return cv2.createCLAHE(clipLimit=p.clahe_clip_limit, tileGridSize=(p.clahe_tiles, p.clahe_tiles)).apply(img8)
    if p.contrast == "histeq":
        return cv2.equalizeHist(img8)
    return img8


def preprocess_pixels(img: np.ndarray, p: Preprocess) -> tuple[np.ndarray, Geometry]:
    """Steps 1-5 on a 2-D image (any dtype, MONOCHROME2 sense); returns the uint8 square and its geometry."""
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale image, got shape {img.shape}")
    geo = Geometry(img.shape[0], img.shape[1], p.size)
    out = clip_and_normalise(img, p)
    out = geo.pad(out)
    out = enhance(out, p)
    return geo.resize(out), geo


def dilate_mask(mask: np.ndarray, p: Preprocess, spacing_mm: float | None = None) -> np.ndarray:
    """The thesis' morphological dilation of a (preprocessed) lesion mask, with an elliptical kernel.

    ``preprocess.dilation`` is a fraction of the image side, or millimetres when ``dilation_unit`` is
    ``mm`` (which needs the output pixel spacing, ``pixel_spacing_mm`` in the manifest).
    """
    if p.dilation <= 0:
        return mask
    if p.dilation_unit == "mm":
        if not spacing_mm:
            raise ValueError("dilation in mm needs the pixel spacing; this image has none (use dilation_unit: fraction)")
        radius = p.dilation / spacing_mm
    else:
        radius = p.dilation * mask.shape[0]
    k = 2 * max(1, int(round(radius))) + 1
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def read_png(path: str | os.PathLike) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable PNG")
    return img


# --------------------------------------------------------------------------- reference (benchmark)


def reference_pipeline(img: np.ndarray, p: Preprocess) -> np.ndarray:
    """The same steps written the obvious way with NumPy and scikit-image; the benchmark's baseline."""
    from skimage import exposure, transform

    lo, hi = np.percentile(img, p.clip_percentiles)
    x = np.clip(img.astype(np.float64), lo, hi)
    x = (x - x.min()) / (x.max() - x.min())
    h, w = x.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    x = np.pad(x, ((top, side - h - top), (left, side - w - left)))
    if p.contrast == "clahe":
        x = exposure.equalize_adapthist(x, kernel_size=max(1, side // p.clahe_tiles), clip_limit=0.01)
    elif p.contrast == "histeq":
        x = exposure.equalize_hist(x)
    x = transform.resize(x, (p.size, p.size), anti_aliasing=True)
    return (x * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------- batch step


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
    from scxnn.plausibility import GATE_VERSION

    return [GATE_VERSION, pre.min_side, pre.max_aspect, pre.max_megapixels]


def _process(job: _Job) -> tuple[str, dict | None, str | None]:
    """Worker: one image -> (image_id, output row or None, skip reason or None). Never raises."""
    from scxnn import plausibility
    from scxnn.dicom import ImageReadError, read_image

    image_id = job.row["image_id"]
    out = Path(job.out_dir)
    try:
        sha = sha256_file(job.source)
        rec_path = _record_path(out, image_id)
        key = [sha, job.fp, _gate_key(job.pre)]
        if rec_path.is_file():  # resume: same source bytes and settings -> nothing to do
            rec = json.loads(rec_path.read_text())
            if rec.get("key") == key and (out / rec["row"]["path"]).is_file():
                return image_id, rec["row"], None
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
    preprocess one file -> (key, (uint8 film or None if the gate refused it, scope flags) or None if
    unreadable, rejection reason or None).
    Never raises; run it through :func:`run_isolated` so that a decoder that aborts its process
    costs one film, not the batch."""
    from scxnn import plausibility
    from scxnn.dicom import ImageReadError, read_image

    key, pre = job.row["image_id"], job.pre
    try:
        rad = read_image(job.source, voi_lut=pre.voi_lut, max_megapixels=pre.max_megapixels)
        why = plausibility.check(rad.pixels, pre, rad.scope_flags)
        if why:
            return key, (None, rad.scope_flags), why
        return key, (preprocess_pixels(rad.pixels, pre)[0], rad.scope_flags), None
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
    from scxnn.data import parse_masks

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
    from scxnn.data import hash_patient
    from scxnn.dicom import find_images

    fp = fingerprint(pre)
    files, problems = find_images(paths)
    missing = [str(p) for p, why in problems if str(p) in map(str, paths)]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    skipped = [{"image_id": "", "source": str(p), "reason": why} for p, why in problems]
    jobs = []
    for f in files:
        key = hashlib.sha256(str(f.resolve()).encode()).hexdigest()[:16]
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
    from tqdm.auto import tqdm

    from scxnn.data import write_manifest

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
    from scxnn.config import save_resolved
    from scxnn.data import MANIFEST_NAME, new_manifest, write_manifest

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
    from scxnn.config import save_resolved
    from scxnn.data import MANIFEST_NAME, new_manifest, read_manifest, write_manifest

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


def cache_dir(cfg: Config) -> Path:
    """The PNG cache for the profile's settings; other settings (e.g. the histeq ablation) get their own."""
    p = cfg.preprocess
    return cfg.path("data") / f"png{p.size}-{p.contrast}-{fingerprint(p)}"


def source_manifest_path(cfg: Config) -> Path:
    """The manifest of the profile's source images: the generator's, the adapter's, or ``data.manifest``."""
    from scxnn.data import MANIFEST_NAME

    if cfg.data.source in ("synth", "adapter"):
        return cfg.path("data") / "raw" / MANIFEST_NAME
    p = Path(cfg.data.manifest).expanduser()
    return p if p.is_absolute() else cfg.root / p


def build_study_cache(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The profile's data step: the raw images (synthetic by default, or ``data.manifest``) through the
    preprocessing into the PNG cache. Returns (preprocessed manifest, skipped)."""
    from scxnn.data import MANIFEST_NAME, read_manifest

    mpath = source_manifest_path(cfg)
    if cfg.data.source == "synth":
        from scxnn import synth

        raw = synth.generate(cfg, mpath.parent, progress=progress)
    elif cfg.data.source == "adapter":
        from scxnn.adapters import build_manifest

        root = Path(cfg.data.root).expanduser()
        root = root if root.is_absolute() else cfg.root / root
        raw = build_manifest(cfg.data.adapter, root, mpath.parent, list(cfg.findings), list(cfg.unseen_findings),
                             seed=cfg.seed, split=cfg.data.split)
        n_skip = len(raw.attrs.get("skipped", []))
        log.info("%s: %d images from %s%s", cfg.data.adapter, len(raw), root, f", {n_skip} skipped (see {mpath.parent / 'skipped.csv'})" if n_skip else "")
    else:
        raw = read_manifest(mpath, list(cfg.findings), list(cfg.unseen_findings))
    out = cache_dir(cfg)
    df, skipped = preprocess_manifest(cfg, raw, mpath.parent, out, progress=progress)
    assert (out / MANIFEST_NAME).is_file()
    return df, skipped


# --------------------------------------------------------------------------- benchmark


def bench(size_hw: tuple[int, int] = (3000, 2500), bits: int = 12, repeats: int = 3, p: Preprocess | None = None, seed: int = 0) -> dict:
    """Time :func:`preprocess_pixels` against :func:`reference_pipeline` on one core, same image.

    The input is a smooth 12-bit radiograph-like field with noise (structure matters little to these
    steps' cost, but CLAHE and the percentiles see a realistic histogram). Returns per-step seconds.
    """
    if p is None:
        from scxnn.config import load_config

        p = load_config("thesis").preprocess
    rng = np.random.default_rng(seed)
    h, w = size_hw
    small = cv2.GaussianBlur(rng.random((h // 16, w // 16)).astype(np.float32), (0, 0), 3)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / (img.max() - img.min()) * 0.8 + 0.1 + rng.normal(0, 0.01, (h, w)).astype(np.float32)
    img = np.clip(img * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        def timed(fn) -> float:
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            return best

        geo = Geometry(h, w, p.size)
        img8 = clip_and_normalise(img, p)
        sq = geo.pad(img8)
        eq = enhance(sq, p)
        out = geo.resize(eq)
        steps = {
            "percentiles": timed(lambda: percentiles(img, *p.clip_percentiles)),
            "clip+minmax": timed(lambda: clip_and_normalise(img, p)),
            "pad": timed(lambda: geo.pad(img8)),
            "contrast": timed(lambda: enhance(sq, p)),
            "resize": timed(lambda: geo.resize(eq)),
            "png": timed(lambda: encode_png(out)),
        }
        ours = timed(lambda: encode_png(preprocess_pixels(img, p)[0]))
        ref = timed(lambda: encode_png(reference_pipeline(img, p)))
    finally:
        cv2.setNumThreads(threads)
    return {"shape": (h, w), "bits": bits, "size": p.size, "contrast": p.contrast, "steps_s": steps, "ours_s": ours, "reference_s": ref, "ratio": ref / ours}
