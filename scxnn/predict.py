"""``scxnn predict``: screen a folder of radiographs with a trained study run.

Every input becomes one row of ``predictions.csv`` with a decision:

* ``definite_normal``: in scope, plausible, in distribution, in a batch that looks like the
  population the threshold was certified on, at a site whose monitor raised no alarm (the stream
  of films across calls: :mod:`scxnn.monitor`), and the SVM score is below a *certified* threshold:
  the site's own (``--certificate``, from ``scxnn certify``), or, without one, the run's ``strict``
  threshold when its validation set certifies the sensitivity target (exact lower bound);
* ``likely_normal``: everything above holds except the certification: the score is below the
  threshold in use, but no certificate covers this site and the run's validation set cannot
  vouch for the target at that score (see ``reason``). A radiologist still reads these films;
* ``needs_review``: the SVM calls it abnormal, the film is out of distribution for the models (its
  encoder features lie beyond what the validation films showed; see :mod:`scxnn.ood`), or the
  whole batch is (too many films flagged: :func:`scxnn.ood.batch_shift`);
* ``rejected``: the file could not be read as a trustworthy radiograph, fails the plausibility
  gate (:mod:`scxnn.plausibility`, the same rule as preprocessing), or is out of the study's scope
  (not a chest film, a lateral view, not CR/DX). Anything that goes wrong with one film, down to
  an exception inside the models, rejects that film with the reason; the batch goes on.

So a film is never ``definite_normal`` when any safety check fails; the ``reason`` column says which.
Wherever ``definite_normal`` can be issued, each call appends its scored films (hashed ids, flags and
scores) to the site monitor; once its stream rule fires, every film's reason names the alarm and none
is normal until the site is re-certified or a person clears it (``scxnn monitor clear``).
The batch-level check needs the whole batch, so while a run is in progress the films that would be
normal are written as ``pending``; the decisions are final once the run ends. Films that need
review get a Grad-CAM overlay of their most likely finding, and ``report.html`` shows everything,
with the certificate and the batch check in use, in one self-contained page.

The fast path is the one ``scxnn bench predict`` measures: the decoder is skipped, the encoder runs
once per model in channels_last under ``inference_mode``, with bf16 autocast where the hardware has
native bf16 (auto-detected), one film at a time on a CPU. Runs are resumable: finished rows are kept
(keyed by the file's path and content hash) and a rerun scores only what is new or changed.

File names can hold a patient's name. ``report.html``, the page meant to be shared, names films by
``film_id`` (from the file's content hash) unless ``names_in_report``; overlays, thumbnails and films/ are
named by hashes; with ``anonymise_names`` the ``file`` column of ``predictions.csv`` holds the
``film_id`` too, so no input name is written anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from scxnn import __version__, ensemble, html_report, ood
from scxnn.batch import ScreenJob, run_isolated, screening_pixels
from scxnn.cam import gradcam, overlay, with_colour_scale
from scxnn.checkpoints import BEST_NAME, STEP, RunIncomplete, load_run_models
from scxnn.config import Config
from scxnn.dicom import find_images
from scxnn.hardware import use_bf16 as resolve_bf16
from scxnn.metrics import fmt_num
from scxnn.monitor import Monitor, Status, binding_of, design_rule, locate
from scxnn.pixels import encode_png, read_png
from scxnn.trained_run import CERTIFICATE_NAME, SITE_SCORES_NAME, load_certificate, load_run_config, run_id
from scxnn.utils import atomic_write_bytes, atomic_write_text, log, remove_stale_temporaries, sha256_file, sha256_text

DECISIONS = ("definite_normal", "likely_normal", "needs_review", "rejected")
PENDING = "pending"  # a would-be-normal film before the batch-level check (only while a run is in progress)
PREDICTIONS_NAME = "predictions.csv"
REPORT_NAME = "report.html"
WRITE_EVERY = 8  # rows between atomic rewrites of predictions.csv (resumability vs I/O)


# --------------------------------------------------------------------------- the trained run


@dataclass
class Screener:
    """A trained run, loaded once: 13 models, the SVM, its threshold and the OOD model."""

    cfg: Config
    models: dict  # finding -> scxnn.checkpoints.LoadedModel, in cfg.findings order
    svm: object
    threshold: float  # normal below, needs_review at or above
    threshold_name: str
    ood: object | None
    device: torch.device
    bf16: bool
    ort: object | None = None  # scxnn.ort.OrtEnsemble when the ONNX Runtime backend is used
    thresholds: object | None = None  # scxnn.ensemble.Thresholds of the run
    certificate: object | None = None  # scxnn.certify.Certificate of the site, when given
    monitor: Monitor | None = None  # the site monitor (scxnn.monitor): on wherever definite_normal can be issued

    @property
    def certified_below(self) -> float:
        """Scores below this are definite_normal (given every other check): the site certificate's
        threshold, else the run's strict threshold when its validation set certifies the target."""
        if self.certificate is not None:
            return float(self.certificate.threshold)
        th = self.thresholds
        return float(th.strict) if th is not None and th.certified else float("-inf")

    def batch_reference(self) -> tuple[float, int]:
        """(flagged share, films) of the population the batch is compared with: the site sample of
        the certificate, else the validation films the gate's threshold was set on."""
        if self.certificate is not None:
            return float(self.certificate.ood_flagged_share), int(self.certificate.films)
        return 1.0 - float(self.ood.quantile), int(self.ood.n_val)

    def certification(self) -> str:
        """One line for the report: what makes a normal film definite here."""
        if self.certificate is not None:
            return self.certificate.describe()
        th = self.thresholds
        if th is not None and th.certified:
            return (f"the run's own population: validation certifies sensitivity >= {th.target:.0%} below {th.strict:.4f} "
                    f"(no site certificate: other populations need `scxnn certify`)")
        why = th.describe() if th is not None else "no thresholds"
        return f"none: films below the threshold are likely_normal (uncertified site). Validation: {why}"

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, threshold: str = "point", device: str = "auto", bf16: str = "auto",
                 backend: str = "torch", onnx_dir: str | os.PathLike | None = None,
                 certificate: str | os.PathLike | None = None, monitor: str | os.PathLike | None = None) -> "Screener":
        """Load ``runs/<profile>`` (the folder holding ``02_train_disease_model`` and ``03_svm_ensemble``).
        ``backend="onnx"``: score with ONNX Runtime (CPU, fp32), the graphs exported once into
        ``onnx_dir`` (default ``<run>/onnx``). ``certificate``: a site certificate of this run
        (``scxnn certify``); its threshold then replaces ``threshold``. ``monitor``: where the site
        monitor lives (default: ``monitor.jsonl`` in the certificate's folder, or in the run folder
        when the run's own validation certifies); it is on wherever definite_normal can be issued,
        and given explicitly it records an uncertified site too."""
        run = Path(run_dir)
        step3 = run / "03_svm_ensemble"
        cfg = load_run_config(run)
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        models = load_run_models(run, cfg, dev)
        svm, th = ensemble.load(step3)
        if threshold not in ("point", "strict"):
            raise ValueError(f"threshold must be 'point' or 'strict', got {threshold!r}")
        cert = None
        if certificate is not None:
            cert = load_certificate(certificate, run)
        ood_path = step3 / ensemble.OOD_NAME
        if not ood_path.is_file():
            raise RunIncomplete(f"{run}: no out-of-distribution model ({ood_path}); rerun `make ensemble` with this scxnn version")
        use_bf16 = resolve_bf16(bf16, dev)
        engine = None
        if backend == "onnx":
            from scxnn.ort import OrtEnsemble  # onnxruntime: heavy, and only for --backend onnx

            if dev.type != "cpu":
                raise ValueError("the ONNX Runtime backend runs on the CPU; pass --device cpu or --backend torch")
            ckpts = {f: run / STEP / f / BEST_NAME for f in models}
            engine = OrtEnsemble({f: lm.model for f, lm in models.items()}, ckpts, onnx_dir or run / "onnx")
            use_bf16 = False
        elif backend != "torch":
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        limit, name = (cert.threshold, f"certificate ({cert.site})") if cert is not None else (getattr(th, threshold), threshold)
        screener = cls(cfg, models, svm, float(limit), name, ood.load(ood_path), dev, use_bf16, engine, th, cert)
        if cert is not None or th.certified or monitor is not None:
            screener.monitor = site_monitor(screener, run, certificate, monitor)
        return screener

    @property
    def findings(self) -> list[str]:
        return list(self.models)

    @torch.inference_mode()
    def score(self, img8: np.ndarray) -> dict:
        """One preprocessed film (uint8, S x S): per-finding probabilities, the SVM score and the OOD score."""
        x = torch.from_numpy(np.ascontiguousarray(img8, dtype=np.float32) / 255.0)[None, None]
        if self.ort is not None:
            lg_all, feats = self.ort.run(x.numpy())
            lg, feats = lg_all[:, 0, :], feats.astype(np.float64)
        else:
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)
            amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
            logits, pooled = [], []
            with amp:
                for lm in self.models.values():
                    f = lm.model.forward_features(x)
                    logits.append(lm.model.forward_head(f).float())
                    pooled.append(lm.model.forward_head(f, pre_logits=True))
            lg = torch.cat(logits).cpu().numpy()  # (13, C)
            feats = torch.cat(pooled, dim=1).cpu().numpy().astype(np.float64)
        probs = torch.softmax(torch.from_numpy(lg), dim=1).numpy()
        cols = ensemble.logit_columns(self.findings, lg.shape[1])
        svm_score = float(self.svm.decision_function(lg.reshape(1, -1).astype(float))[0])
        ood_score = float(self.ood.score(feats)[0])
        return {"logits": dict(zip(cols, lg.reshape(-1).tolist())), "p_target": dict(zip(self.findings, probs[:, 1].tolist())),
                "score": svm_score, "ood_score": ood_score, "ood_flag": bool(not ood_score <= self.ood.threshold)}


def site_monitor(screener: Screener, run: Path, certificate: str | os.PathLike | None,
                 monitor: str | os.PathLike | None = None) -> Monitor:
    """The site's monitor (:mod:`scxnn.monitor`): its file (``monitor`` if given, a folder meaning
    the ``monitor.jsonl`` inside it; else in the certificate's folder, or the run's), what it is bound
    to (the certificate file, or the run) and its rule, from the certificate's sample
    (``site_scores.csv``) or else the run's validation films (``val_scores.csv``)."""
    ev, cert = screener.cfg.evaluate, screener.certificate
    if cert is not None:
        folder = locate(certificate=certificate).parent
        normals = _normals_below(folder / SITE_SCORES_NAME, screener.certified_below)
        bound, site = f"certificate:{sha256_file(folder / CERTIFICATE_NAME)}", cert.site
    else:
        normals = _normals_below(run / "03_svm_ensemble" / ensemble.VAL_SCORES_NAME, screener.certified_below)
        bound, site = f"run:{run_id(run)}", f"{screener.cfg.profile} (the run's own population)"
    share, n_ref = screener.batch_reference()
    rule = design_rule(share, n_ref, *normals, max_share=ev.batch_ood_share, alpha=ev.batch_alpha,
                       shift_share=ev.monitor_shift_share, arl=ev.monitor_arl)
    path = locate(monitor, certificate if cert is not None else None, run)
    return Monitor(path, binding_of(bound, json.dumps(rule.to_dict(), sort_keys=True)), rule, site)


def _normals_below(scores_csv: Path, threshold: float) -> tuple[int, int]:
    """(below, of): the reference's unflagged normal films and how many score below ``threshold``."""
    if not scores_csv.is_file():
        log.warning("no %s: the site monitor watches the flagged share only", scores_csv)
        return 0, 0
    t = pd.read_csv(scores_csv)
    ok = t["abnormal"].eq(0).to_numpy().copy()
    if "ood_flag" in t:
        ok &= ~t["ood_flag"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    return int((t["score"].to_numpy(float)[ok] < threshold).sum()), int(ok.sum())


# --------------------------------------------------------------------------- inputs


def film_id(path: str | os.PathLike, digest: str) -> str:
    """A film's name where its file name must not appear: from the content hash (a name-derived
    hash could be reversed by guessing names), or the path's for a file that could not be read."""
    return "film-" + (digest[:12] if digest else sha256_text(f"unreadable\0{path}", 12))


# --------------------------------------------------------------------------- screening


def _row(path: Path, digest: str, screener: Screener) -> dict:
    row = {"file": str(path), "film_id": film_id(path, digest), "sha256": digest, "decision": "", "reason": "", "score": np.nan,
           "threshold": screener.threshold, "top_finding": "", "top_probability": np.nan,
           "scope_flags": "", "ood_score": np.nan, "ood_flag": False}
    row.update({f"p_{f}": np.nan for f in screener.findings})
    return row


def screen_file(path: Path, screener: Screener, digest: str = "") -> tuple[dict, np.ndarray | None]:
    """(row, preprocessed film or None) for one file, all in this process; never raises for a bad
    file. :func:`predict` does the reading in a worker process instead (a decoder may abort)."""
    _, pixels, why = screening_pixels(ScreenJob({"image_id": str(path)}, str(path), screener.cfg.preprocess))
    return score_film(_row(path, digest, screener), pixels, why, screener)


def score_film(row: dict, pixels: tuple | None, why: str | None, screener: Screener) -> tuple[dict, np.ndarray | None]:
    """Fill ``row`` from the decoding stage's result (:func:`scxnn.batch.screening_pixels`) and
    the models: rejected with ``why``, or scored and decided. Any failure while scoring (a
    MemoryError, a bug) rejects this film with the reason; the batch goes on. Returns the row and
    the picture to show: the preprocessed film, or for a film the gate refused after decoding (a
    hip, a tibia) its preview, so the reader can check the refusal; None when nothing decoded."""
    img8, flags, shown = pixels if pixels is not None else (None, (), None)
    if img8 is None:
        row.update(decision="rejected", reason=why or "unreadable", scope_flags=";".join(flags))
        return row, shown
    try:
        s = screener.score(img8)
        top = max(s["p_target"], key=s["p_target"].get)
        row.update({f"p_{f}": p for f, p in s["p_target"].items()})
        row.update(score=s["score"], top_finding=top, top_probability=s["p_target"][top], ood_score=s["ood_score"], ood_flag=s["ood_flag"])
        row.update(zip(("decision", "reason"), decide(row, screener)))
    except MemoryError:
        row.update(decision="rejected", reason="out of memory while scoring this film")
        return row, None
    except Exception as e:  # noqa: BLE001 -- one film must never end the batch
        log.debug("scoring %s failed", row["film_id"], exc_info=True)
        row.update(decision="rejected", reason=f"could not be screened ({type(e).__name__}: {e})")
        return row, None
    return row, img8


def decide(row: dict, screener: Screener, batch=None, watch: Status | None = None) -> tuple[str, str]:
    """(decision, reason) of a scored film: the one home of the rule in the module docstring.
    ``batch`` is the :class:`scxnn.ood.BatchShift` of the whole batch; without it (the run still
    in progress) a would-be-normal film is ``pending``. ``watch``: the site monitor's status with
    this batch in it; under its alarm no film is normal, and every film's reason names it."""
    decision, reason = _decide(row, screener, batch)
    if watch is None or watch.alarm is None or decision == PENDING:
        return decision, reason
    return "needs_review", f"{watch.alarm_reason()}; {reason}"


def _decide(row: dict, screener: Screener, batch=None) -> tuple[str, str]:
    score, t = float(row["score"]), screener.threshold
    th = screener.thresholds
    reasons = []
    if not score < t and screener.threshold_name == "strict" and th is not None and not th.certified:
        reasons.append(f"the run's strict threshold calls nothing normal: its validation set cannot certify "
                       f"{th.target:.0%} (most likely {row['top_finding']}, p={float(row['top_probability']):.2f})")
    elif not score < t:
        reasons.append(f"abnormal: SVM score {score:.3f} >= threshold {t:.3f} (most likely {row['top_finding']}, "
                       f"p={float(row['top_probability']):.2f})")
    if bool(row["ood_flag"]):
        reasons.append(f"out of distribution: OOD score {float(row['ood_score']):.2f} > {screener.ood.threshold:.2f} (set on validation films)")
    if reasons:
        return "needs_review", "; ".join(reasons)
    if batch is None:
        return PENDING, f"SVM score {score:.3f} < threshold {t:.3f}; in scope, in distribution; awaiting the batch-level check"
    if batch.shifted:
        return "needs_review", f"{batch.describe()}: no film of this batch is auto-reported (SVM score {score:.3f} < threshold {t:.3f})"
    certified = screener.certified_below
    if score < certified:
        source = f"certificate of site {screener.certificate.site}" if screener.certificate is not None else "the run's validation set"
        return "definite_normal", (f"SVM score {score:.3f} < certified threshold {certified:.3f} ({source}); in scope, in distribution, "
                                   f"{batch.describe()}")
    if np.isfinite(certified):
        return "likely_normal", (f"not certified: SVM score {score:.3f} lies between the certified threshold {certified:.3f} and the "
                                 f"threshold in use {t:.3f}; in scope, in distribution, {batch.describe()}")
    vouched = f"the run's validation certifies sensitivity >= {fmt_num(th.point_sensitivity_lo, rounding='down')} at its point threshold" if th is not None else ""
    return "likely_normal", (f"uncertified site: SVM score {score:.3f} < threshold {t:.3f}, but no certified threshold covers it "
                             f"(target {screener.cfg.ensemble.sensitivity_target:.0%}; {vouched}); certify this site with `scxnn certify`")


def finalize(table: pd.DataFrame, screener: Screener):
    """Apply the batch-level shift check (:func:`scxnn.ood.batch_shift`) to the scored films of the
    whole batch, record them in the site monitor (when on; its status is ``table.attrs["monitor"]``)
    and settle every scored film's decision (:func:`decide`). Returns (table, verdict)."""
    out = table.copy()
    scored = out["decision"].isin([*DECISIONS[:3], PENDING]).to_numpy() & out["score"].notna().to_numpy()
    flags = out.loc[scored, "ood_flag"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    share, n_ref = screener.batch_reference()
    batch = ood.batch_shift(flags, share, n_ref, screener.cfg.evaluate.batch_ood_share, screener.cfg.evaluate.batch_alpha)
    watch = None
    if screener.monitor is not None:  # the stream, this batch included, in input order
        scores = out.loc[scored, "score"].to_numpy(float)
        watch = screener.monitor.observe([{"film": f, "flag": fl, "score": sc, "below": sc < screener.certified_below}
                                          for f, fl, sc in zip(out.loc[scored, "film_id"], flags, scores)])
    dec_col, why_col = out.columns.get_loc("decision"), out.columns.get_loc("reason")
    for i, flag in zip(np.flatnonzero(scored), flags):
        row = out.iloc[i].to_dict()
        row["ood_flag"] = bool(flag)
        out.iloc[i, dec_col], out.iloc[i, why_col] = decide(row, screener, batch, watch)
    if watch is not None:
        out["monitor_alarm"] = pd.Series(np.where(scored, watch.alarm is not None, None), index=out.index, dtype=object)
    out.attrs["monitor"] = watch
    return out, batch


def _overlay(screener: Screener, img8: np.ndarray, finding: str) -> bytes:
    x = torch.from_numpy(img8.astype(np.float32) / 255.0)[None, None].to(screener.device)
    cam = gradcam(screener.models[finding].model, x, target_class=1)[0]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(with_colour_scale(overlay(img8, cam)), cv2.COLOR_RGB2BGR))
    return buf.tobytes()


def _key(path: Path, digest: str) -> str:
    return sha256_text(f"{path}\0{digest}", 16)


# The columns that mark a predictions.csv as this tool's: resuming reads them, and a folder holding
# another tool's file of that name is refused rather than overwritten.
_OWN_COLUMNS = ("file", "film_id", "sha256", "decision", "reason", "score", "threshold")


class OutputFolderInUse(FileExistsError):
    """``--out`` holds files that ``scxnn predict`` did not write; they are never overwritten."""


def previous_predictions(out: Path) -> pd.DataFrame | None:
    """The predictions of an earlier run into ``out`` (to resume), None for a folder without them.
    A ``predictions.csv`` or ``report.html`` that is not this tool's is an :class:`OutputFolderInUse`."""
    pred, report = out / PREDICTIONS_NAME, out / REPORT_NAME
    if not pred.is_file():
        if report.is_file():
            raise OutputFolderInUse(f"{out} already holds a {REPORT_NAME} without the {PREDICTIONS_NAME} that scxnn predict "
                                    f"writes beside it; it is not overwritten. Choose another --out, or move {report} away")
        return None
    try:
        old = pd.read_csv(pred, dtype={"sha256": str, "file": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        old, why = None, f"it cannot be read as a table ({type(e).__name__})"
    else:
        missing = [c for c in _OWN_COLUMNS if c not in old]
        why = f"it lacks the columns {', '.join(missing)}" if missing else ""
    if old is None or why:
        raise OutputFolderInUse(f"{pred} was not written by scxnn predict ({why}); it is not overwritten. "
                                "Choose another --out, or move that file away")
    return old


def predict(run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            threshold: str = "point", device: str = "auto", bf16: str = "auto", overlays: bool = True,
            progress: bool = True, screener: Screener | None = None, backend: str = "torch",
            certificate: str | os.PathLike | None = None, anonymise_names: bool = False,
            names_in_report: bool = False, full_size: bool = True, monitor: str | os.PathLike | None = None) -> pd.DataFrame:
    """Screen ``inputs`` with the run in ``run_dir``; writes predictions.csv, overlays/, thumbnails/,
    films/ (each film as the models saw it, at ``preprocess.size``, unless not ``full_size``) and
    report.html into ``out_dir``. Returns the predictions (one row per input, input order), with
    the decisions settled by the batch-level check (:func:`finalize`); ``table.attrs["batch"]`` is
    its verdict. ``certificate``: a site certificate from ``scxnn certify``. ``anonymise_names``:
    no input name in any output (``file`` holds the ``film_id``); ``names_in_report``: show the
    file names in report.html (default: film ids only, as the page is meant to be shared).
    ``monitor``: the site monitor's file or folder (:func:`scxnn.monitor.locate`); its status
    after this batch is ``table.attrs["monitor"]`` (None where it is off)."""
    out = Path(out_dir)
    # What the person typed is checked before the models load (tens of seconds): a mistyped path, an
    # empty folder, an --out that holds another tool's files.
    if anonymise_names and names_in_report:
        raise ValueError("--anonymise-names and --names-in-report contradict each other; pick one")
    files, problems = find_images(inputs, strict=True)
    old = previous_predictions(out)
    # ONNX graphs go beside the predictions: the run folder may be read-only (a shared model store).
    screener = screener or Screener.from_run(run_dir, threshold, device, bf16, backend=backend, onnx_dir=out / "onnx",
                                             certificate=certificate, monitor=monitor)
    (out / "thumbnails").mkdir(parents=True, exist_ok=True)
    if full_size:
        (out / "films").mkdir(exist_ok=True)
    for folder in (out, out / "thumbnails", out / "overlays", out / "films"):  # left by a kill -9 of an earlier run
        remove_stale_temporaries(folder)
    rows, ranks, todo = _sort_inputs(files, problems, _finished(old, screener, out), screener, anonymise_names)
    order = {str(p): i for i, p in enumerate(files)}

    def flush() -> None:
        atomic_write_text(out / PREDICTIONS_NAME, pd.DataFrame(rows).to_csv(index=False))

    # Decoding runs in a worker process (scxnn.batch.run_isolated): a native decoder that
    # aborts on a corrupt file (gdcm does, found by the fuzz test) costs that film, not the batch.
    jobs = [ScreenJob({"image_id": key}, str(path), screener.cfg.preprocess) for key, (path, _) in todo.items()]
    new = 0
    results = run_isolated(jobs, workers=1, fn=screening_pixels,
                           crashed="unreadable: the decoder crashed its process (corrupt compressed data?)")
    for key, pixels, why in tqdm(results, total=len(jobs), desc="screening", unit="film", disable=not progress):
        path, digest = todo.pop(key)
        row, img8 = score_film(_row(path, digest, screener), pixels, why, screener)
        if img8 is not None:
            _write_pictures(row, img8, key, out, screener, overlays, full_size)
        rows.append(_named(row, anonymise_names))
        ranks.append(order[str(path)])
        new += 1
        if new % WRITE_EVERY == 0:
            flush()
    flush()
    rows = [r for _, r in sorted(zip(ranks, rows), key=lambda x: x[0])]  # finished in any order; reported in input order
    table, batch = finalize(pd.DataFrame(rows), screener)
    atomic_write_text(out / PREDICTIONS_NAME, table.to_csv(index=False))
    _write_report(table, out, screener, batch, names_in_report)
    table.attrs["batch"] = batch
    if table.attrs.get("monitor") is not None:
        log.info("%s", table.attrs["monitor"].describe())
    log.info("%d film(s): %s (%d scored now, %d kept from an earlier run); %s", len(table),
             ", ".join(f"{d} {int((table['decision'] == d).sum())}" for d in DECISIONS), new, len(table) - new, batch.describe())
    return table


def _finished(old: pd.DataFrame | None, screener: Screener, out: Path) -> dict[tuple[str, str], dict]:
    """The rows of an earlier run into ``out`` to keep, by (file, sha256): none when it used another threshold."""
    if old is None:
        return {}
    if "threshold" in old and len(old) and not np.allclose(old["threshold"].astype(float), screener.threshold):
        log.info("%s was made with another threshold; rescoring everything", out / PREDICTIONS_NAME)
        return {}
    return {(r["file"], r["sha256"]): r for r in old.to_dict("records")}


def _named(row: dict, anonymise_names: bool) -> dict:
    if anonymise_names:
        row["file"] = row["film_id"]
    return row


def _sort_inputs(files: list[Path], problems: list, done: dict, screener: Screener, anonymise_names: bool):
    """(rows, their input ranks, the films to screen now by key -> (path, digest)): a row for each
    input that could not even be searched, the kept rows of films an earlier run finished (same
    name and content), and the rest to screen."""
    rows: list[dict] = []
    ranks: list[int] = []  # each row's place in the input order
    for path, why in problems:  # inputs that could not even be searched still get their row
        row = _row(path, "", screener)
        row.update(decision="rejected", reason=f"unreadable: {why}")
        rows.append(_named(row, anonymise_names))
        ranks.append(-1)
    todo: dict[str, tuple[Path, str]] = {}
    for rank, path in enumerate(files):
        try:
            digest = sha256_file(path)
        except OSError:
            digest = ""
        name = film_id(path, digest) if anonymise_names else str(path)
        if (name, digest) in done and digest:
            rows.append(done[(name, digest)])
            ranks.append(rank)
        else:
            todo[_key(path, digest)] = (path, digest)
    return rows, ranks, todo


def _write_pictures(row: dict, img8: np.ndarray, key: str, out: Path, screener: Screener, overlays: bool, full_size: bool) -> None:
    """The thumbnail, the full-size film and, for a film that needs review, the Grad-CAM overlay of its
    top finding, named by hashes (a file name may hold a patient's name); ``row`` gets their paths."""
    atomic_write_bytes(out / "thumbnails" / f"{key}.png", html_report.thumbnail_png(img8))
    if full_size:  # the film at the models' resolution, for the report's "full size" link
        atomic_write_bytes(out / "films" / f"{key}.png", encode_png(img8))
        row["image"] = f"films/{key}.png"
    if overlays and row["decision"] == "needs_review" and row["top_finding"]:  # scored: img8 is the film
        overlay = f"overlays/{key}__{row['top_finding']}.png"
        try:
            atomic_write_bytes(out / overlay, _overlay(screener, img8, row["top_finding"]))
            row["overlay"] = overlay
        except Exception as e:  # noqa: BLE001 -- a missing picture must not end the batch
            log.warning("no Grad-CAM overlay for %s: %s: %s", row["film_id"], type(e).__name__, e)


def _write_report(table: pd.DataFrame, out: Path, screener: Screener, batch, names_in_report: bool = False) -> Path:
    thumbs, overlays, full = {}, {}, {}
    shown = table.copy()
    if not names_in_report:
        shown["file"] = shown["film_id"]

    def beside(rel) -> str | None:  # a picture file of this run's, relative to the report
        return rel if isinstance(rel, str) and rel and (out / rel).is_file() else None

    for r, name in zip(table.to_dict("records"), shown["file"]):
        t = out / "thumbnails" / f"{_key(Path(r['file']), r['sha256'] if isinstance(r['sha256'], str) else '')}.png"
        if t.is_file():
            thumbs[name] = t.read_bytes()
        overlay = beside(r.get("overlay"))
        if overlay:  # inline as a thumbnail; the full-resolution overlay is a link
            overlays[name] = html_report.thumbnail_png(read_png(out / overlay))
        full[name] = (beside(r.get("image")), overlay)
    meta = {
        "models": f"profile {screener.cfg.profile}, {len(screener.models)} finding models + SVM",
        "threshold": f"{screener.threshold_name} = {screener.threshold:.4f} (sensitivity target "
                     f"{(screener.certificate.target if screener.certificate is not None else screener.cfg.ensemble.sensitivity_target):.0%})",
        "certification": screener.certification(),
        "batch check": batch.describe(),
        "inference": f"{screener.device.type}, {'bf16' if screener.bf16 else 'fp32'}, channels_last, decoder off",
        "scxnn": __version__,
    }
    watch, panel = table.attrs.get("monitor"), None
    if watch is not None and watch.rule is not None:
        meta["site monitor"] = watch.describe()
        flags, s_flag, _ = zip(*watch.series) if watch.series else ((), (), ())
        panel = (f"{watch.describe()}. Rule: {watch.rule.describe()}.",
                 html_report.stream_chart(list(flags), list(s_flag), watch.rule.flagged.h, watch.rule.flagged.p0, watch.marks))
    return html_report.write_report(shown, out / REPORT_NAME, thumbnails=thumbs, overlays=overlays, meta=meta, full_size=full,
                                    monitor=panel)

