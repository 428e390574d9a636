"""Visual checks of the generator: the figures of notebook 01 (``reports/figures/<profile>/``).

``plot_gallery``: every finding beside the same patient's film without it (the "normal twin" that
:func:`scxnn.synth.build.render` gives for the job without findings), lesion mask outlined, so one
sees what the labels say and how subtle a sign is. ``plot_real_comparison``: synthetic normals next
to real normal films (NIH ChestX-ray14, Kermany) at the same size, when ``../shared/realdata`` is
there. ``before_after_figure``: source films above their preprocessed PNGs (``source_examples``
picks them).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from scxnn.config import Config
from scxnn.data import read_manifest
from scxnn.pixels import cache_dir, percentiles, read_png
from scxnn.sources import source_manifest_path
from scxnn.synth.build import plan, render
from scxnn.synth.realism import default_realdata, normal_jobs, squash_64
from scxnn.utils import atomic_write_bytes

PANEL_IN = 2.3  # inches per gallery panel
DPI = 130
PAIRS_PER_ROW = 4
TITLE_IN = 0.45  # room for a panel's two-line title
CONTOUR = dict(colors="yellow", linewidths=0.6, alpha=0.7)
REAL_NOTE = "real films not present (../shared/realdata)"


def display_norm(a: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Display-ready float32 in [0, 1]: percentile clip 0.5 / 99.5 (of ``ref`` when given, so two
    panels share one grey scale), then min-max."""

    def prep(x):
        x = np.asarray(x)
        return x if x.dtype == np.float32 or np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)

    lo, hi = percentiles(prep(a if ref is None else ref), 0.5, 99.5)
    return np.clip((np.asarray(a, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def read_image(path) -> np.ndarray:
    """Display-ready float image in [0, 1], dense = bright, through the project's reader."""
    from scxnn.dicom import read_image as read_radiograph

    return display_norm(read_radiograph(path).pixels)


def _save(fig, out_path, dpi: int) -> Path:
    out_path = Path(out_path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(out_path, buf.getvalue())
    if not out_path.is_file():
        raise OSError(f"figure not written: {out_path}")
    return out_path


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


# --------------------------------------------------------------------------- gallery


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _example_id(manifest: pd.DataFrame, finding: str, findings: list, unseen: list) -> str | None:
    """The image_id of a clean example of ``finding``: a hard-labelled internal film with that one
    finding (an unseen finding: an evaluation-site film with it alone); failing that, a hard-labelled
    film with it alone, any film with it alone, any film with it. The middle candidate, so the choice
    is deterministic."""
    if finding not in manifest:
        return None
    cols = [c for c in [*findings, *unseen] if c in manifest]
    has = manifest[finding].fillna(0).astype(int) == 1
    alone = has & (manifest[cols].fillna(0).astype(int).sum(axis=1) == 1)
    hard = manifest["label_type"] == "hard"
    where = manifest["site"] != "internal" if finding in unseen else manifest["site"] == "internal"
    for rows in (manifest[alone & hard & where], manifest[alone & hard], manifest[alone], manifest[has]):
        if len(rows):
            return str(rows["image_id"].iloc[len(rows) // 2])
    return None


def _plan_manifest(jobs: list[dict], findings: list, unseen: list) -> pd.DataFrame:
    """The columns :func:`_example_id` needs, straight from the plan."""
    return pd.DataFrame(
        [dict(image_id=j["image_id"], site=j["site"], label_type=j["label_type"],
              **{f: int(f in j["findings"]) for f in findings}, **{f: int(f in j["unseen"]) for f in unseen})
         for j in jobs],
        columns=["image_id", "site", "label_type", *findings, *unseen],
    )


def gallery_examples(cfg, manifest: pd.DataFrame | None = None) -> list[tuple[str, dict | None]]:
    """``[(finding, job or None)]`` for every target and unseen finding: the planned job the gallery
    shows (None when ``manifest`` has no example, or its example is not a film of this plan)."""
    findings, unseen = list(cfg.findings), list(cfg.unseen_findings)
    jobs = plan(cfg)
    if manifest is None:
        manifest = _plan_manifest(jobs, findings, unseen)
    by_id = {j["image_id"]: j for j in jobs}
    out = []
    for f in findings + unseen:
        job = by_id.get(_example_id(manifest, f, findings, unseen))
        # A manifest from another source (an adapter's real films) shares no films with the plan.
        if job is not None and f not in job["findings"] + job["unseen"]:
            job = None
        out.append((f, job))
    return out


def _drawable(job: dict) -> bool:
    from scxnn.synth.findings import FINDINGS as DRAWN

    return all(f in DRAWN for f in job["findings"] + job["unseen"])


def _placeholder(axes, name: str, text: str) -> None:
    for ax, title in zip(axes, ("normal (same patient)", name)):
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)
        ax.set_title(title, fontsize=8)


def plot_gallery(cfg, manifest: pd.DataFrame | None, out_path) -> Path | None:
    """Every finding (targets, then unseen ones) beside the same patient's normal film: 4 pairs a
    row, left the normal twin, right the film with the finding and its lesion mask outlined.

    ``manifest`` only chooses the examples (by image_id; None: choose from ``plan(cfg)``); the films
    are rendered from the plan with ``cfg.data.synth_difficulty``. Returns ``out_path`` (PNG), or
    None, writing nothing (and removing an earlier, empty one), when the generator can draw none of
    the profile's findings (a real dataset's profile): a canvas of placeholders says nothing.
    """
    from matplotlib.figure import Figure

    examples = gallery_examples(cfg, manifest)
    if not any(job is not None and _drawable(job) for _, job in examples):
        Path(out_path).unlink(missing_ok=True)
        return None
    unseen = set(cfg.unseen_findings)
    difficulty = cfg.data.synth_difficulty
    cols = 2 * PAIRS_PER_ROW
    rows = max(1, int(np.ceil(len(examples) / PAIRS_PER_ROW)))
    fig = Figure(figsize=(cols * PANEL_IN, rows * (PANEL_IN + TITLE_IN)))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for k, (f, job) in enumerate(examples):
        a_twin, a_find = axes[k // PAIRS_PER_ROW, 2 * (k % PAIRS_PER_ROW)], axes[k // PAIRS_PER_ROW, 2 * (k % PAIRS_PER_ROW) + 1]
        name = _pretty(f) + (" (unseen)" if f in unseen else "")
        if job is None:
            _placeholder((a_twin, a_find), name, "(no example)")
            continue
        try:
            img, masks = render(job, difficulty)
        except KeyError:  # a finding the generator does not draw (an adapter profile's label)
            _placeholder((a_twin, a_find), name, "(not drawn by the generator)")
            continue
        twin, _ = render(dict(job, findings=[], unseen=[]), difficulty)
        a_twin.imshow(display_norm(twin), cmap="gray", vmin=0, vmax=1)
        a_twin.set_title(f"normal (same patient)\n{job['image_id']}", fontsize=8)
        a_find.imshow(display_norm(img, ref=twin), cmap="gray", vmin=0, vmax=1)  # one grey scale per pair
        m = masks.get(f)
        if m is not None and np.any(m):
            a_find.contour(np.asarray(m, dtype=np.float32), levels=[0.5], **CONTOUR)
        a_find.set_title(f"{name}\n{job['site']}", fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (rows * (PANEL_IN + TITLE_IN)), wspace=0.04, hspace=0.25)
    return _save(fig, out_path, DPI)


# --------------------------------------------------------------------------- synthetic vs real




def _grey(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # RGB -> grey
    return img if img is not None and img.size else None


def _long_side(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)




def _read_labels(folder: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(folder / "labels.csv")
    except (OSError, ValueError):
        return None


def _load_all(folder: Path, rels) -> list[np.ndarray]:
    out = []
    for rel in rels:
        img = _grey(folder / rel)
        if img is not None:
            out.append(img)
    return out


def real_normals(realdata, n: int = 6, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Real normal films as uint8 grey arrays, as read: ``nih_64`` (n NIH "No Finding" 64-px films),
    ``nih_full`` (the NIH full-resolution normals), ``kermany`` (n Kermany normals); a key is absent
    when its folder or labels are."""
    root = Path(realdata)
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    nih = _read_labels(root / "nih_cxr14_mini")
    if nih is not None and {"path", "no_finding"} <= set(nih.columns):
        normal = nih[nih["no_finding"] == 1]
        small = normal[normal["path"].astype(str).str.startswith("images/nih1000_64px/")]["path"].tolist()
        if small:
            pick = sorted(rng.choice(len(small), size=min(n, len(small)), replace=False))
            out["nih_64"] = _load_all(root / "nih_cxr14_mini", [small[i] for i in pick])
        full = normal[normal["path"].astype(str).str.startswith("images/full_res/")]["path"].tolist()
        out["nih_full"] = _load_all(root / "nih_cxr14_mini", sorted(full))
    ker = _read_labels(root / "kermany_dev")
    if ker is not None and {"path", "normal"} <= set(ker.columns):
        normal = ker[ker["normal"] == 1]["path"].tolist()
        if normal:
            pick = sorted(rng.choice(len(normal), size=min(n, len(normal)), replace=False))
            out["kermany"] = _load_all(root / "kermany_dev", [normal[i] for i in pick])
    return {k: v for k, v in out.items() if v}


def synthetic_normals(cfg, n: int = 6) -> list[np.ndarray]:
    """The first ``n`` normal films of ``plan(cfg)`` (no target or unseen finding), rendered and
    quantised to uint8."""
    jobs = normal_jobs(cfg)[:n]
    return [np.round(render(j, cfg.data.synth_difficulty)[0] * 255).clip(0, 255).astype(np.uint8) for j in jobs]


def plot_real_comparison(cfg, out_path, realdata=None, n: int = 6, seed: int = 0) -> Path:
    """Synthetic normals next to real normals at the same size: a "64 px" block (every film resized
    to 64x64, shown nearest-neighbour) and a "full size" block (long side 512 px). Rows: synthetic
    (the plan's first ``n`` normals), NIH ChestX-ray14 "No Finding" and Kermany normals (``n`` each,
    chosen with ``seed``) from ``realdata`` (None: ``<repo>/../shared/realdata``). Without the real
    folders only the synthetic rows are drawn, with a note. Returns ``out_path`` (PNG)."""
    from matplotlib.figure import Figure

    folder = default_realdata() if realdata is None else Path(realdata)
    n_full = min(n, 4)
    synth = synthetic_normals(cfg, n)
    real = real_normals(folder, n, seed)
    small = [("synthetic\nnormals", [squash_64(a) for a in synth])]
    full = [("synthetic\nnormals", [_long_side(a, 512) for a in synth[:n_full]])]
    if "nih_64" in real:
        small.append(("NIH ChestX-ray14\nNo Finding", [squash_64(a) for a in real["nih_64"]]))
    if "nih_full" in real:
        full.append(("NIH ChestX-ray14\nNo Finding", [_long_side(a, 512) for a in real["nih_full"][:n_full]]))
    if "kermany" in real:
        small.append(("Kermany pediatric\nAP, normal", [squash_64(a) for a in real["kermany"]]))
        full.append(("Kermany pediatric\nAP, normal", [_long_side(a, 512) for a in real["kermany"][:n_full]]))
    absent = [name for key, name in (("nih_64", "NIH"), ("kermany", "Kermany")) if key not in real]
    blocks = [("64 px: every film resized to 64 x 64 (nearest-neighbour display)", small, 1.5, "nearest"),
              ("full size: long side 512 px", full, 2.6, "antialiased")]
    ncols = [max(1, max(len(r) for _, r in rows)) for _, rows, _, _ in blocks]
    width = max(c * p for c, (_, _, p, _) in zip(ncols, blocks)) + 1.0
    heights = [len(rows) * p + 0.5 for _, rows, p, _ in blocks]
    if absent:
        heights.append(0.35)
    fig = Figure(figsize=(width, sum(heights)))
    subs = np.atleast_1d(fig.subfigures(len(heights), 1, height_ratios=heights))
    for sub, h, (title, rows, _, interp), nc in zip(subs, heights, blocks, ncols):
        sub.suptitle(title, fontsize=10, x=0.01, ha="left")
        axes = np.asarray(sub.subplots(len(rows), nc, squeeze=False))
        for r, (label, imgs) in enumerate(rows):
            for c in range(nc):
                ax = axes[r, c]
                if c >= len(imgs):
                    ax.axis("off")
                    continue
                _blank(ax)
                ax.imshow(display_norm(imgs[c]), cmap="gray", vmin=0, vmax=1, interpolation=interp)
                if c == 0:
                    ax.set_ylabel(f"{label}\n(n={len(imgs)})", fontsize=7)
        sub.subplots_adjust(left=1.0 / width, right=0.99, bottom=0.02, top=1 - 0.4 / h, wspace=0.05, hspace=0.08)
    if absent:
        where = "../shared/realdata" if realdata is None else str(folder)
        note = REAL_NOTE if len(absent) == 2 and realdata is None else f"real films not present ({where}): {', '.join(absent)}"
        subs[-1].text(0.01, 0.5, note, fontsize=9, color="firebrick", ha="left", va="center")
    return _save(fig, out_path, 110)


# --------------------------------------------------------------------------- before and after preprocessing


def source_examples(cfg: Config, manifest: pd.DataFrame, n: int) -> dict[str, list[str]]:
    """Up to ``n`` images, one per site first, with their source file and their cached PNG."""
    src_manifest = source_manifest_path(cfg)
    src = read_manifest(src_manifest, list(cfg.findings), list(cfg.unseen_findings)).set_index("image_id")
    picks = manifest.groupby("site", sort=False).head(1)
    picks = pd.concat([picks, manifest.drop(picks.index)]).head(n)
    out: dict[str, list[str]] = {"source": [], "png": [], "title": []}
    for r in picks.itertuples():
        sp = Path(src.loc[r.image_id, "path"])
        out["source"].append(str(sp if sp.is_absolute() else src_manifest.parent / sp))
        out["png"].append(str(cache_dir(cfg) / r.path))
        out["title"].append(f"{r.site} {r.image_id}")
    return out


def before_after_figure(raw_paths: Sequence[str], processed_paths: Sequence[str], titles: Sequence[str]):
    """Source radiographs (as read, MONOCHROME2 sense) above their preprocessed PNGs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from scxnn.dicom import read_image

    n = len(raw_paths)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    for i, (src, dst, title) in enumerate(zip(raw_paths, processed_paths, titles)):
        rad = read_image(src)
        axes[0, i].imshow(rad.pixels, cmap="gray")
        axes[0, i].set_title(f"{title}\n{rad.meta.get('photometric') or rad.meta.get('format')} {rad.pixels.shape[1]}x{rad.pixels.shape[0]}", fontsize=8)
        axes[1, i].imshow(read_png(dst), cmap="gray", vmin=0, vmax=255)
        axes[1, i].set_title("preprocessed", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training
