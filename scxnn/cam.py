"""Grad-CAM for the finding models (thesis Figure 5) and for arbitrary image files.

* :func:`gradcam`: class-activation maps of an :class:`scxnn.models.SCXNN` with pytorch-grad-cam, on
  the layer the model names (:meth:`~scxnn.models.SCXNN.gradcam_target_layer`). The model is left as
  it was found: train/eval flags, ``requires_grad`` flags and ``.grad`` are restored, and the hooks
  are removed (the CAM object lives in a ``with`` block).
* :func:`figure5`: one positive film per finding (or a few, a row each), its target-class CAM with
  the lesion outline, and the decoder's reconstruction beside it.
* :func:`cam_for_files`: overlays for arbitrary PNG / JPEG / DICOM files, preprocessed as the models'
  training images were.

Models are given as ``{finding: run folder or best.pt}`` (:func:`find_model_dirs` builds that from a
``02_train_disease_model`` folder) or as already loaded :class:`LoadedModel` values
(:func:`load_models`), so one notebook loads the 13 models once for the figure and the table.

How well these maps localise lesions (the pointing game, IoU, the localisation table) is measured
in :mod:`scxnn.localisation`, with :func:`gradcam_and_probs` on the films of :func:`positive_films`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from scxnn.checkpoints import LoadedModel, check_fingerprint, load_models
from scxnn.config import Config
from scxnn.data import MANIFEST_NAME, parse_masks, read_manifest
from scxnn.dataset import RadiographDataset
from scxnn.dicom import ImageReadError, read_image
from scxnn.pixels import cache_dir, fingerprint, preprocess_pixels, read_png
from scxnn.utils import atomic_write_bytes, sha256_text

log = logging.getLogger("scxnn")

METHODS = ("gradcam", "gradcam++")


# --------------------------------------------------------------------------- Grad-CAM


class LogitsOnly(nn.Module):
    """An SCXNN seen as ``x -> logits``: pytorch-grad-cam expects a model returning one tensor, and
    skipping the decoder (``decode=False``) also halves the cost of each CAM."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, decode=False)[0]


def _cam_class(method: str):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    key = method.lower().replace("_", "").replace("-", "")
    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "gradcampp": GradCAMPlusPlus, "gradcamplusplus": GradCAMPlusPlus}
    if key not in classes:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    return classes[key]


def _has_inference_tensors(model: nn.Module) -> bool:
    return any(t.is_inference() for t in (*model.parameters(), *model.buffers()))


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the conv weights are stored channels_last (``model.to(memory_format=...)``), judged on
    a weight with several input channels and a spatial kernel: for the others both layouts coincide."""
    w = next((p for p in model.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1), None)
    return w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)


@contextmanager
def _grad_ready(model: nn.Module) -> Iterator[None]:
    """Eval mode with autograd on, for the duration of the block only.

    Parameters are frozen inside: Grad-CAM needs gradients with respect to the target layer's
    activations, which flow from an input that requires grad; weight gradients would only cost time
    and overwrite whatever ``.grad`` a caller keeps. pytorch-grad-cam calls ``model.eval()`` and
    ``model.zero_grad()`` itself, so every module's mode and every ``.grad`` are put back afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p, _, _ in params:
            p.requires_grad_(False)
        model.eval()
        # inference_mode(False) / enable_grad: callers often hold the model under inference_mode or
        # no_grad (notebooks, predict()); Grad-CAM cannot work without a graph.
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def gradcam_and_probs(model: nn.Module, images: torch.Tensor, target_class: int = 1, method: str = "gradcam", batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(CAMs (N, H, W) in [0, 1], softmax probabilities (N, C)) from one forward/backward per batch."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_cls = _cam_class(method)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images of shape (N, 1, H, W) or (1, H, W), got {tuple(images.shape)}")
    num_classes = int(getattr(model, "num_classes", 3))
    if not 0 <= target_class < num_classes:
        raise ValueError(f"target_class {target_class} out of range for a {num_classes}-class model")
    n, _, h, w = images.shape
    if n == 0:
        return np.zeros((0, h, w), np.float32), np.zeros((0, num_classes), np.float32)
    # Parameters created under inference_mode cannot take part in autograd at all, and converting
    # them in place would change the caller's model: work on a private copy instead.
    net = copy.deepcopy(model) if _has_inference_tensors(model) else model
    first = next(net.parameters())
    fmt = torch.channels_last if _is_channels_last(net) else torch.contiguous_format
    cams, probs = [], []
    with _grad_ready(net):
        for i in range(0, n, batch_size):
            # clone(): a fresh, normal tensor even if the caller's was made under inference_mode.
            x = images[i : i + batch_size].detach().clone().to(first.device, first.dtype)
            x = x.contiguous(memory_format=fmt).requires_grad_(True)
            targets = [ClassifierOutputTarget(target_class)] * len(x)
            maps = None
            # The with block removes the hooks even on error. Its __exit__ swallows an IndexError
            # (printing it), hence the check below instead of a NameError further on.
            with cam_cls(model=LogitsOnly(net), target_layers=[net.gradcam_target_layer()]) as cam:
                maps = cam(input_tensor=x, targets=targets)
                logits = cam.outputs.detach().float()
            if maps is None:
                raise RuntimeError("Grad-CAM failed inside pytorch-grad-cam (an IndexError it printed and swallowed)")
            cams.append(np.asarray(maps, np.float32).reshape(len(x), h, w))
            probs.append(torch.softmax(logits, 1).cpu().numpy())
    # pytorch-grad-cam min-max scales each map (to [0, 1 - 1e-7]); clip guards float rounding.
    return np.clip(np.concatenate(cams), 0.0, 1.0), np.concatenate(probs)


def gradcam(model: nn.Module, images: torch.Tensor, target_class: int = 1, method: str = "gradcam", batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps of ``target_class`` (0 normal, 1 target, 2 others) for ``images`` (N, 1, H, W).

    Returns float32 (N, H, W) in [0, 1], each map min-max scaled and resized to the input's H x W
    (an all-zero map where the class gets no positive evidence). ``method``: ``gradcam`` or
    ``gradcam++``. Runs on the model's device; the model's state is left as it was.
    """
    return gradcam_and_probs(model, images, target_class, method, batch_size)[0]


# --------------------------------------------------------------------------- models


def study_order(cfg: Config | None, findings: Sequence[str]) -> list[str]:
    """The study's finding order (Table 1) first, then any others as given."""
    known = [f for f in (cfg.findings if cfg is not None else ()) if f in findings]
    return known + [f for f in findings if f not in known]


# --------------------------------------------------------------------------- positive films


def study_cache(cfg: Config) -> tuple[pd.DataFrame, Path]:
    """(manifest, cache folder) of the profile's preprocessed PNG cache."""
    return _cache(cfg, cache_dir(cfg))


def _cache(cfg: Config, base: Path) -> tuple[pd.DataFrame, Path]:
    path = base / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no preprocessed cache for profile {cfg.profile!r} at {path}; run the preprocessing step first")
    return read_manifest(path, list(cfg.findings), list(cfg.unseen_findings)), base


def _split_order(split: str) -> list[str]:
    return [split] + [s for s in ("val", "train", "test") if s != split]


@dataclass
class Films:
    """A finding's positive films (:func:`positive_films`)."""

    images: torch.Tensor  # (N, 1, H, W) in [0, 1]
    masks: np.ndarray  # (N, H, W) bool, the undilated lesion masks
    image_ids: list[str]
    split: str | None  # the split they come from
    note: str  # "" or why another split was used


def positive_films(df: pd.DataFrame, base: Path, finding: str, cfg: Config, split: str, limit: int,
                   weak_ok: bool = False) -> Films:
    """Up to ``limit`` hard-labelled films positive for ``finding`` with a non-empty lesion mask, from
    ``split`` or, when it has none, from the next split that does (the note says so). With
    ``weak_ok``, a dataset without any lesion mask (e.g. Kermany) gives image-level positives
    instead, with empty masks: a CAM to look at, nothing to measure it against.

    Masks are the cache's undilated ones: the lesion itself, not the training target's margin.
    """
    if finding not in df:
        return Films(torch.zeros(0, 1, 1, 1), np.zeros((0, 1, 1), bool), [], None, f"{finding} is not a manifest column")
    positive = (df[finding].fillna(0).astype(int) == 1) & (df["label_type"] == "hard")
    positive &= df["masks"].map(lambda v: bool(parse_masks(v).get(finding)))
    for s in _split_order(split):
        rows = df[positive & (df["split"] == s)].sort_values("image_id").reset_index(drop=True)
        if rows.empty:
            continue
        # The dataset reads images exactly as training did (bit depth, channels).
        ds = RadiographDataset(rows, base, finding, np.ones(len(rows), np.int64), cfg)
        images, masks, ids = [], [], []
        for i in range(len(rows)):
            if ds.mask_paths[i] is None or not ds.mask_paths[i][0].is_file():
                continue
            mp = ds.mask_paths[i][0]
            m = read_png(mp)
            m = (m[..., 0] if m.ndim == 3 else m) > 0
            if not m.any():  # the lesion vanished when the mask was downsized: nothing to localise
                continue
            images.append(ds[i]["image"])
            masks.append(m)
            ids.append(rows.at[i, "image_id"])
            if len(ids) >= limit:
                break
        if ids:
            note = "" if s == split else f"no positive {split} film with a lesion mask; {s} films used"
            return Films(torch.stack(images), np.stack(masks), ids, s, note)
    if weak_ok:
        weak = df[finding].fillna(0).astype(int) == 1
        for s in _split_order(split):
            rows = df[weak & (df["split"] == s)].sort_values("image_id").reset_index(drop=True).head(limit)
            if rows.empty:
                continue
            ds = RadiographDataset(rows, base, finding, np.ones(len(rows), np.int64), cfg)
            images = torch.stack([ds[i]["image"] for i in range(len(rows))])
            return Films(images, np.zeros((len(rows), *images.shape[-2:]), bool), list(rows["image_id"]), s,
                          "no lesion masks: image-level positive, CAM only")
    return Films(torch.zeros(0, 1, 1, 1), np.zeros((0, 1, 1), bool), [], None, "no positive film with a lesion mask in any split")


# --------------------------------------------------------------------------- figure 5


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The CAM as a jet heat map over a greyscale image; RGB uint8 (H, W, 3).

    ``image``: (H, W) uint8, or float in [0, 1]. ``cam``: (H, W) in [0, 1], resized to the image if
    its size differs.
    """
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale image, got shape {img.shape}")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else np.clip(img.astype(np.float32), 0.0, 1.0)
    cam = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    if cam.shape != img.shape:
        cam = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(img[..., None], 3, axis=2)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=image_weight)


def with_colour_scale(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` (an :func:`overlay`) with the jet scale it uses beside it: a bar from "high" (top,
    the CAM's maximum) to "low", on a white margin, so a reader of a single overlay knows which colour
    means what. RGB uint8, the same height, wider."""
    import cv2

    h, w = rgb.shape[:2]
    bar_w, margin = max(6, w // 24), max(4, w // 64)
    font = max(0.25, h / 600)
    label_w = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] for t in ("high", "low")) + margin
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(bar_w, axis=1)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = np.full((h, w + margin + bar_w + margin + label_w, 3), 255, np.uint8)
    out[:, :w] = rgb
    out[:, w + margin:w + margin + bar_w] = bar
    x = w + 2 * margin + bar_w
    th = cv2.getTextSize("high", cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][1]
    cv2.putText(out, "high", (x, th + 2), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(out, "low", (x, h - 3), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def figure5(
    cfg: Config,
    model_dirs: Mapping[str, str | os.PathLike | LoadedModel] | str | os.PathLike,
    split: str = "test",
    method: str = "gradcam",
    pairs_per_row: int = 3,
    device: str | torch.device = "cpu",
    cache: str | os.PathLike | None = None,
    films_per_finding: int = 1,
    films_label: str | None = None,
):
    """Thesis Figure 5: per finding, a positive film with its target-class CAM and lesion outline,
    and the decoder's reconstruction beside it. Returns a :class:`matplotlib.figure.Figure`
    (not registered with pyplot, so nothing leaks between calls) with two axes per film.
    ``cache``: another PNG cache folder than the profile's (e.g. real films scored by step 08).

    The films are the first ``films_per_finding`` (by image id, so none is picked for how it looks)
    hard-labelled positives of ``split`` with a lesion mask; the title says when another split had
    to be used, and a finding without any shows an empty panel. With more than one film per finding
    each finding gets a row of its own. When no model has a decoder (classification only) there is
    no reconstruction column: one panel per film, not a column of "no decoder" placeholders.
    ``films_label`` names the films in the title (default: "<split> films").
    """
    if films_per_finding < 1:
        raise ValueError(f"films_per_finding must be at least 1, got {films_per_finding}")
    from matplotlib.figure import Figure

    models = load_models(model_dirs, device)
    df, base = study_cache(cfg) if cache is None else _cache(cfg, Path(cache))
    expected = fingerprint(cfg.preprocess)
    findings = study_order(cfg, list(models))
    decoders = any(_has_decoder(models[f].model) for f in findings)
    per = 2 if decoders else 1  # panels per film
    if films_per_finding > 1:  # a row per finding, its films side by side
        pairs_per_row = films_per_finding
    elif not decoders:
        pairs_per_row *= 2
    slots = len(findings) * films_per_finding
    nrows = max(1, math.ceil(slots / pairs_per_row))
    ncols = per * pairs_per_row
    fig = Figure(figsize=(2.0 * ncols, 2.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for k, finding in enumerate(findings):
        lm = models[finding]
        check_fingerprint(lm, expected)
        films = positive_films(df, base, finding, cfg, split, films_per_finding, weak_ok=True)
        first = per * k * films_per_finding
        if not films.image_ids:
            axes[first].set_title(f"{finding}\nno positive film", fontsize=7)
            if decoders:
                axes[first + 1].set_title("-", fontsize=7)
            continue
        cams, probs = gradcam_and_probs(lm.model, films.images, 1, method)
        where = "" if films.split == split else f" ({films.split} film)"
        for j in range(len(films.image_ids)):
            nth = f" {j + 1}/{films_per_finding}" if films_per_finding > 1 else ""
            _film_panels(axes[first + per * j : first + per * (j + 1)], lm.model, films.images[j : j + 1], films.masks[j],
                         cams[j], f"{finding}{nth}{where}\nP(target)={probs[j, 1]:.2f}")
    # Its panels per film, no empty trailing cells.
    for ax in axes[per * slots :]:
        fig.delaxes(ax)
    fig.suptitle(f"Grad-CAM ({method}) of the target class{' and the decoder output' if decoders else ''}, "
                 f"{films_label or f'{split} films'}", fontsize=9)
    return fig


def _film_panels(axes, model: nn.Module, x: torch.Tensor, mask: np.ndarray, cam: np.ndarray, title: str) -> None:
    """One film's panels of :func:`figure5`: its CAM with the lesion outline, then (with a second
    axis) the decoder's output."""
    ax_cam = axes[0]
    ax_cam.imshow(overlay(x[0, 0].numpy(), cam))
    # The lesion outline, at the pixel boundary of the (undilated) mask.
    if mask.any():
        ax_cam.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
    ax_cam.set_title(title, fontsize=7)
    if len(axes) < 2:
        return
    ax_rec = axes[1]
    recon = _reconstruction(model, x)
    if recon is None:
        ax_rec.text(0.5, 0.5, "no decoder", ha="center", va="center", fontsize=8, transform=ax_rec.transAxes)
        ax_rec.set_title("reconstruction", fontsize=7)
    else:
        ax_rec.imshow(recon, cmap="gray", vmin=0, vmax=1)
        ax_rec.set_title("segmentation" if getattr(model, "decoder_kind", "") == "segmentation" else "reconstruction", fontsize=7)


def _has_decoder(model: nn.Module) -> bool:
    return getattr(model, "decoder", None) is not None


def _reconstruction(model: nn.Module, x: torch.Tensor) -> np.ndarray | None:
    if getattr(model, "decoder", None) is None:
        return None
    with torch.inference_mode():
        recon = model(x.to(next(model.parameters()).device), decode=True)[1]
    return None if recon is None else recon[0, 0].float().cpu().numpy()


# --------------------------------------------------------------------------- arbitrary files


def _overlay_name(path: Path, finding: str, used: set[tuple[str, str]]) -> str:
    """``<stem>__<finding>.png``; a stem met before in this batch (same name, other folder) gets a
    short hash of its path so one overlay never overwrites another."""
    stem = path.stem
    if (stem, finding) in used:
        stem = f"{stem}-{sha256_text(str(path.resolve()), 8)}"
    used.add((stem, finding))
    return f"{stem}__{finding}.png"


def cam_for_files(
    model_dirs: Mapping[str, str | os.PathLike | LoadedModel] | str | os.PathLike,
    image_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    finding: str | None = None,
    method: str = "gradcam",
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Grad-CAM overlays of every model (or just ``finding``'s) for arbitrary image files.

    Each file (PNG / JPEG / DICOM) goes through the preprocessing each model was trained with (its
    checkpoint's ``preprocess`` settings, which also set the size), then the model; the target-class
    overlay (on the preprocessed, padded square film) is written to ``out_dir/<stem>__<finding>.png``.
    Returns one row per (file, finding): ``file, finding, p_normal, p_target, p_others, overlay,
    scope_flags, error`` (``p_others`` NaN for 2-class models; ``scope_flags`` as in the preprocessing
    step, e.g. ``lateral``: such films are outside what the models were trained on, but still scored).
    A file that cannot be read or processed becomes a single row with ``error`` set, and the batch
    goes on.

    Raises :class:`PreprocessMismatch` (before touching any file) when a checkpoint's preprocessing
    fingerprint differs from what this code produces for its settings.
    """
    import cv2

    models = load_models(model_dirs, device)
    if finding is not None:
        if finding not in models:
            raise KeyError(f"no model for {finding!r}; models: {', '.join(models)}")
        models = {finding: models[finding]}
    for lm in models.values():
        check_fingerprint(lm)
    out = Path(out_dir)
    used: set[tuple[str, str]] = set()
    rows = []
    for path in map(Path, image_paths):
        try:
            pixels: dict[str, np.ndarray] = {}  # preprocessed image per fingerprint: read and preprocess once each
            flags: tuple[str, ...] = ()
            file_rows = []
            for f, lm in models.items():
                p = lm.cfg.preprocess
                fp = fingerprint(p)
                if fp not in pixels:
                    rad = read_image(path, voi_lut=p.voi_lut, max_megapixels=p.max_megapixels)
                    flags = rad.scope_flags
                    pixels[fp] = preprocess_pixels(rad.pixels, p)[0]
                img = pixels[fp]
                x = torch.from_numpy(img.astype(np.float32) / 255.0)[None, None]
                cams, probs = gradcam_and_probs(lm.model, x, 1, method)
                rgb = overlay(img, cams[0])
                ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise ValueError("PNG encoding of the overlay failed")
                dst = out / _overlay_name(path, f, used)
                atomic_write_bytes(dst, buf.tobytes())
                pr = probs[0]
                file_rows.append({"file": str(path), "finding": f, "p_normal": float(pr[0]), "p_target": float(pr[1]),
                                  "p_others": float(pr[2]) if len(pr) > 2 else math.nan, "overlay": str(dst), "scope_flags": ";".join(flags), "error": ""})
            rows += file_rows
        except ImageReadError as e:
            log.warning("cam: %s skipped: %s", path, e.reason)
            rows.append({"file": str(path), "error": e.reason})
        except Exception as e:  # one bad file must not stop the batch
            log.warning("cam: %s skipped: %s: %s", path, type(e).__name__, e)
            rows.append({"file": str(path), "error": f"{type(e).__name__}: {e}"})
    cols = ["file", "finding", "p_normal", "p_target", "p_others", "overlay", "scope_flags", "error"]
    return pd.DataFrame(rows, columns=cols)
