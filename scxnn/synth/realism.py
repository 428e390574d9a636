"""``scxnn bench realism``: how separable are synthetic normal films from real normal adult films?

A fixed-recipe discriminator at 64 px. The number it reports is the cross-validated AUC of a simple
classifier told to tell synthetic normals from real NIH ChestX-ray14 "No Finding" films: 0.5 means it
cannot (the synthetic films pass as real at this resolution), 1.0 means it always can. The recipe is
fixed so that numbers from before and after a change of the generator are comparable; change it only
with a note beside the numbers it invalidates.

Recipe
------
1. **Synthetic normals.** The jobs of :func:`scxnn.synth.build.plan` with no finding and no unseen
   finding (``findings == []`` and ``unseen == []``), in plan order, all sites; the first ``n``
   (default 500; fewer when the profile plans fewer, and the count is reported). Each is rendered
   with ``render(job, cfg.data.synth_difficulty)`` (a spawn process pool of ``cfg.data.workers``
   or all cores), quantised to uint8 like the 8-bit NIH PNGs, and squashed to 64x64 ignoring the
   aspect ratio with ``cv2.INTER_AREA`` (NIH's 1024 px PNGs were squashed square, and the 64 px set
   was downsampled from those).
2. **Real normals.** The rows of ``labels.csv`` of the NIH mini set with ``no_finding == 1`` under
   ``images/nih1000_64px/`` (499 films, adults aged 24-94), in file order, read as greyscale.
3. **The same preprocessing for both** (:func:`to_study_64`): the study's own
   :func:`scxnn.pixels.preprocess_pixels` with the profile's ``preprocess`` settings at
   ``size=64`` (percentile clip, min-max, pad, CLAHE), as float32 in [0, 1].
4. **Balanced classes**: the first ``min(n_synth, n_real)`` films of each set.
5. **Feature sets**, each judged by its own classifier; the score is its ``decision_function``:

   * ``pixels`` (the headline): the 4096 pixels -> StandardScaler -> PCA(32) -> SVC(rbf, C=1,
     gamma="scale");
   * ``histogram``: 32-bin intensity histogram on [0, 1] (a density) -> StandardScaler ->
     LogisticRegression(C=1, max_iter=2000);
   * ``spectrum``: radially averaged log power spectrum of the mean-subtracted image, 16 equal
     radial bins over (0, 0.5] cycles/px (DC and the corners beyond Nyquist left out) -> the same
     logistic regression;
   * ``edges``: Sobel gradient magnitude (3x3 Sobel / 8, i.e. intensity change per pixel): mean,
     std, and the share of pixels above 0.05, 0.1, 0.2 and 0.4 -> the same logistic regression.

6. **Evaluation**: StratifiedKFold(5, shuffle, ``seed``); the AUC (``roc_auc_score``) of the
   pooled out-of-fold scores, synthetic = positive class; a 95% percentile bootstrap interval over
   the pooled scores (1000 resamples, stratified: each class resampled within itself, seeded),
   widened if need be to contain the estimate.
7. **Named baseline** (a control in the same run): the same recipe on real vs real, the NIH normals
   split into two random halves (seeded). Its AUC should be near 0.5; the excess of the synthetic
   AUC over it is what the generator is judged by.

The rendering time is printed because it is informative; it is not the benchmark.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from pathlib import Path

import cv2
import numpy as np

from scxnn.metrics import fmt_ci

SIZE = 64
FEATURE_SETS = ("pixels", "histogram", "spectrum", "edges")
HEADLINE = "pixels"
BASELINE = "real_vs_real"
N_DEFAULT = 500
FOLDS = 5
BOOTSTRAP = 1000
PCA_COMPONENTS = 32
HIST_BINS = 32
SPECTRUM_BINS = 16
EDGE_THRESHOLDS = (0.05, 0.1, 0.2, 0.4)
REAL_SUBDIR = "images/nih1000_64px/"
REAL_RELPATH = Path("realdata") / "nih_cxr14_mini"


def default_realdata() -> Path:
    """``<repo root>/../shared/realdata``, the repo root being the package's parent."""
    import scxnn

    return Path(scxnn.__file__).resolve().parents[1].parent / "shared" / "realdata"


def default_real_root() -> Path:
    """``<repo root>/../shared/realdata/nih_cxr14_mini``: the NIH films the benchmark compares with."""
    return default_realdata().parent / REAL_RELPATH


# --------------------------------------------------------------------------- images


def squash_64(img8: np.ndarray) -> np.ndarray:
    """A 2-D uint8 image squashed to 64x64, ignoring the aspect ratio (area averaging)."""
    if img8.shape == (SIZE, SIZE):
        return img8
    return cv2.resize(img8, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def to_study_64(img8: np.ndarray, cfg) -> np.ndarray:
    """The one home of the 64 px conversion: squash to 64x64, then the study's preprocessing at
    64 px (the profile's ``preprocess`` settings with ``size=64``); float32 in [0, 1]."""
    if img8.ndim != 2 or img8.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 greyscale image, got {img8.dtype} {img8.shape}")
    from scxnn.pixels import preprocess_pixels

    p = dataclasses.replace(cfg.preprocess, size=SIZE)
    out, _ = preprocess_pixels(squash_64(img8), p)
    return out.astype(np.float32) / np.float32(255.0)


def real_normal_paths(root: str | os.PathLike) -> list[Path]:
    """The NIH "No Finding" films of the 64 px set, in ``labels.csv`` order."""
    import pandas as pd

    root = Path(root)
    labels = root / "labels.csv"
    if not root.is_dir():
        raise FileNotFoundError(f"real-data folder not found: {root} (give the NIH ChestX-ray14 mini folder, which holds labels.csv, with --real PATH)")
    if not labels.is_file():
        raise FileNotFoundError(f"no labels.csv in {root}: not the NIH ChestX-ray14 mini folder (give it with --real PATH)")
    df = pd.read_csv(labels)
    missing = {"path", "no_finding"} - set(df.columns)
    if missing:
        raise ValueError(f"{labels}: no column {', '.join(sorted(missing))}; not the NIH ChestX-ray14 mini labels (give the folder with --real PATH)")
    rows = df[(df["no_finding"] == 1) & df["path"].astype(str).str.startswith(REAL_SUBDIR)]
    if rows.empty:
        raise ValueError(f"{labels}: no 'No Finding' film under {REAL_SUBDIR} (give the NIH ChestX-ray14 mini folder with --real PATH)")
    return [root / p for p in rows["path"]]


def read_real_normals(root: str | os.PathLike | None = None) -> np.ndarray:
    """The real normal films as stored (64 px), read as greyscale: (n, 64, 64) uint8."""
    out = []
    for path in real_normal_paths(default_real_root() if root is None else root):
        img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)  # RGB(A) -> grey
        if img is None:
            raise ValueError(f"{path}: not a readable image")
        out.append(squash_64(img))
    return np.stack(out)


def real_normals(root: str | os.PathLike | None, cfg) -> np.ndarray:
    """The real normal films through :func:`to_study_64`: (n, 64, 64) float32 in [0, 1]."""
    return np.stack([to_study_64(img, cfg) for img in read_real_normals(root)])


def normal_jobs(cfg) -> list[dict]:
    """The planned jobs without any finding, seen or unseen, in plan order (all sites)."""
    from scxnn.synth.build import plan

    return [j for j in plan(cfg) if j["findings"] == [] and j["unseen"] == []]


def _init_worker() -> None:
    cv2.setNumThreads(1)  # OpenCV's own threads would fight the process pool for the same cores


def _render_8bit_64(job: dict, difficulty: float) -> np.ndarray:
    """Render one job, quantise to uint8 (the NIH PNGs are 8-bit) and squash to 64x64."""
    from scxnn.synth.build import render

    img, _ = render(job, difficulty)
    img8 = np.clip(np.rint(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return squash_64(img8)


def _render_star(args: tuple[dict, float]) -> np.ndarray:
    return _render_8bit_64(*args)


def render_normals(cfg, n: int = N_DEFAULT, progress: bool = True) -> tuple[np.ndarray, dict]:
    """The first ``n`` planned normal films, rendered, quantised to uint8 and squashed to 64 px:
    ((m, 64, 64) uint8, facts) with m = min(n, planned normals); facts: n_available, render_s, workers."""
    from tqdm import tqdm

    jobs = normal_jobs(cfg)
    available = len(jobs)
    jobs = jobs[:n]
    if not jobs:
        raise ValueError(f"profile {cfg.profile} plans no normal film to render")
    workers = max(1, min(cfg.data.workers or os.cpu_count() or 1, len(jobs)))
    tasks = [(j, cfg.data.synth_difficulty) for j in jobs]
    t0 = time.perf_counter()
    imgs: list[np.ndarray] = []
    with tqdm(total=len(jobs), desc="realism: render", unit="img", disable=not progress) as bar:
        if workers == 1:
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                for t in tasks:
                    imgs.append(_render_star(t))
                    bar.update()
            finally:
                cv2.setNumThreads(threads)
        else:
            # spawn, not fork: forking a process that already runs torch or OpenCV threads can deadlock.
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for img in pool.imap(_render_star, tasks, chunksize=max(1, len(tasks) // (workers * 16))):
                    imgs.append(img)
                    bar.update()
    return np.stack(imgs), {"n_available": available, "render_s": time.perf_counter() - t0, "workers": workers}


def synthetic_normals(cfg, n: int = N_DEFAULT, progress: bool = True) -> np.ndarray:
    """The first ``n`` planned normal films through :func:`to_study_64`: (m, 64, 64) float32 in [0, 1]."""
    return np.stack([to_study_64(img, cfg) for img in render_normals(cfg, n, progress)[0]])


# --------------------------------------------------------------------------- features


def _stack(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        return x[None], True
    if x.ndim != 3:
        raise ValueError(f"expected an image (H, W) or a stack (n, H, W), got shape {x.shape}")
    return x, False


def histogram_features(x: np.ndarray) -> np.ndarray:
    """32-bin intensity histogram on [0, 1], as a density (it integrates to 1): (n, 32), or (32,) for one image."""
    xs, single = _stack(x)
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    f = np.stack([np.histogram(np.clip(im, 0.0, 1.0), bins=edges, density=True)[0] for im in xs]).astype(np.float32)
    return f[0] if single else f


def _radial_bins(h: int, w: int) -> np.ndarray:
    """Radial bin (0..15) of every frequency of an h x w FFT; -1 for DC and beyond Nyquist."""
    r = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    b = np.ceil(r / 0.5 * SPECTRUM_BINS).astype(int) - 1  # (0, 1/32] -> 0, ..., (15/32, 1/2] -> 15
    b[(r == 0) | (r > 0.5)] = -1
    return b


def spectrum_features(x: np.ndarray) -> np.ndarray:
    """Radially averaged log power spectrum of the mean-subtracted image: 16 radial bins over
    (0, 0.5] cycles/px, DC excluded; low to high frequency. (n, 16), or (16,) for one image."""
    xs, single = _stack(x)
    xs = xs.astype(np.float64)
    power = np.abs(np.fft.fft2(xs - xs.mean(axis=(1, 2), keepdims=True))) ** 2 / (xs.shape[1] * xs.shape[2])
    bins = _radial_bins(xs.shape[1], xs.shape[2]).ravel()
    keep = bins >= 0
    flat = power.reshape(len(xs), -1)[:, keep]
    sums = np.stack([np.bincount(bins[keep], weights=row, minlength=SPECTRUM_BINS) for row in flat])
    counts = np.bincount(bins[keep], minlength=SPECTRUM_BINS)
    f = np.log(sums / counts + 1e-12).astype(np.float32)
    return f[0] if single else f


def edge_features(x: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude (3x3 Sobel / 8: intensity change per pixel): mean, std, and the share
    of pixels above 0.05, 0.1, 0.2, 0.4. (n, 6), or (6,) for one image."""
    xs, single = _stack(x)
    out = []
    for im in xs:
        gx = cv2.Sobel(im, cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(im, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        g = np.hypot(gx, gy)
        out.append([g.mean(), g.std(), *((g > t).mean() for t in EDGE_THRESHOLDS)])
    f = np.asarray(out, dtype=np.float32)
    return f[0] if single else f


def features(x: np.ndarray, feature_set: str) -> np.ndarray:
    """The (n, k) features of one named feature set for a stack of 64 px films."""
    xs, _ = _stack(x)
    if feature_set == "pixels":
        return xs.reshape(len(xs), -1)
    if feature_set == "histogram":
        return histogram_features(xs)
    if feature_set == "spectrum":
        return spectrum_features(xs)
    if feature_set == "edges":
        return edge_features(xs)
    raise ValueError(f"unknown feature set {feature_set!r}; one of {', '.join(FEATURE_SETS)}")


def classifier(feature_set: str, seed: int = 0, n_train: int | None = None):
    """The fixed classifier of a feature set (PCA capped at the training-fold size when that is smaller)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if feature_set == "pixels":
        k = PCA_COMPONENTS if n_train is None else min(PCA_COMPONENTS, n_train)
        return make_pipeline(StandardScaler(), PCA(k, random_state=seed), SVC(kernel="rbf", C=1.0, gamma="scale"))
    if feature_set in FEATURE_SETS:
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    raise ValueError(f"unknown feature set {feature_set!r}; one of {', '.join(FEATURE_SETS)}")


# --------------------------------------------------------------------------- evaluation


def _auc_rows(scores: np.ndarray, n_pos: int) -> np.ndarray:
    """AUC of each row of ``scores`` whose first ``n_pos`` columns are the positives (Mann-Whitney, ties 1/2)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_neg = scores.shape[1] - n_pos
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def bootstrap_interval(scores: np.ndarray, y: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile interval of the AUC, each class resampled with replacement within itself."""
    rng = np.random.default_rng([seed, 303])
    pos, neg = scores[y == 1], scores[y == 0]
    s = np.concatenate([pos[rng.integers(0, len(pos), (resamples, len(pos)))],
                        neg[rng.integers(0, len(neg), (resamples, len(neg)))]], axis=1)
    lo, hi = np.percentile(_auc_rows(s, len(pos)), [2.5, 97.5])
    return float(lo), float(hi)


def oof_scores(a: np.ndarray, b: np.ndarray, feature_set: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pooled out-of-fold decision scores of ``a`` (label 1) vs ``b`` (label 0), balanced to the
    first min(len(a), len(b)) films of each; returns (scores, labels)."""
    from sklearn.model_selection import StratifiedKFold

    m = min(len(a), len(b))
    if m < FOLDS:
        raise ValueError(f"need at least {FOLDS} films per class for {FOLDS}-fold cross-validation, got {m}")
    x = np.concatenate([features(a[:m], feature_set), features(b[:m], feature_set)]).astype(np.float32)  # float32: PCA 5x faster
    y = np.r_[np.ones(m, int), np.zeros(m, int)]
    scores = np.zeros(len(y))
    for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(x, y):
        clf = classifier(feature_set, seed, n_train=len(train)).fit(x[train], y[train])
        scores[test] = clf.decision_function(x[test])
    return scores, y


def separability(a: np.ndarray, b: np.ndarray, feature_set: str = HEADLINE, seed: int = 0) -> tuple[float, float, float]:
    """(auc, lo, hi): how well the feature set's classifier tells ``a`` from ``b`` (stacks of 64 px
    films in [0, 1]); AUC of the pooled out-of-fold scores with its 95% bootstrap interval."""
    from sklearn.metrics import roc_auc_score

    from scxnn.metrics import separation_auc_ci

    scores, y = oof_scores(a, b, feature_set, seed)
    auc = float(roc_auc_score(y, scores))
    lo, hi = bootstrap_interval(scores, y, seed)
    # A bootstrap of a perfectly separated sample collapses to [1, 1]; the exact bound does not.
    if min(auc, 1 - auc) < 1e-3:  # (nearly) perfect separation: also the exact bound
        slo, shi = separation_auc_ci(int(y.sum()), int((1 - y).sum()), round(auc))
        lo, hi = min(lo, slo), max(hi, shi)
    return auc, min(lo, auc), max(hi, auc)


def split_halves(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two random halves of a set (seeded): the real-vs-real control."""
    order = np.random.default_rng([seed, 404]).permutation(len(x))
    h = len(x) // 2
    return x[order[:h]], x[order[h:]]


def bench_realism(cfg, n: int = N_DEFAULT, real: str | os.PathLike | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Run the recipe of this module; a JSON-serialisable dict (see :func:`format_bench_realism`)."""
    from scxnn.synth.build import GENERATOR_VERSION

    if n < 1:
        raise ValueError(f"--images must be >= 1, got {n}")
    real_root = Path(default_real_root() if real is None else real)
    xr = real_normals(real_root, cfg)  # first: a missing folder fails before minutes of rendering
    raw, facts = render_normals(cfg, n, progress)
    xs = np.stack([to_study_64(img, cfg) for img in raw])
    m = min(len(xs), len(xr))
    ha, hb = split_halves(xr, seed)
    mc = min(len(ha), len(hb))
    per_set = {}
    for fs in FEATURE_SETS:
        auc, lo, hi = separability(xs, xr, fs, seed)
        c_auc, c_lo, c_hi = separability(ha, hb, fs, seed)
        per_set[fs] = {"auc": auc, "lo": lo, "hi": hi, "control_auc": c_auc, "control_lo": c_lo, "control_hi": c_hi,
                       "excess": auc - c_auc}
    return {
        "benchmark": "realism",
        "profile": cfg.profile,
        "synth_size": int(cfg.data.synth_size),
        "synth_difficulty": float(cfg.data.synth_difficulty),
        "generator_version": str(GENERATOR_VERSION),
        "size": SIZE,
        "seed": int(seed),
        "n_requested": int(n),
        "n_synth_available": int(facts["n_available"]),
        "n_synth": int(len(xs)),
        "n_real": int(len(xr)),
        "n_per_class": int(m),
        "n_control_per_class": int(mc),
        "real": str(real_root),
        "render_s": float(facts["render_s"]),
        "workers": int(facts["workers"]),
        "headline": HEADLINE,
        "baseline": BASELINE,
        "feature_sets": per_set,
    }


def format_bench_realism(r: dict) -> str:
    lines = [
        f"scxnn bench realism: synthetic normals (profile {r['profile']}, synth_size {r['synth_size']}, generator v{r['generator_version']}) "
        f"vs NIH ChestX-ray14 'No Finding' films, {r['size']} px, the study's preprocessing",
        f"  n per class {r['n_per_class']} (synthetic: first {r['n_synth']} of {r['n_synth_available']} planned normals; "
        f"real: {r['n_real']}); baseline {r['baseline']}: NIH halves, {r['n_control_per_class']} per class",
        f"  AUC of pooled {FOLDS}-fold out-of-fold scores [95% stratified bootstrap, {BOOTSTRAP}]; 0.5 = indistinguishable, 1 = always told apart",
        f"  {'feature set':<12} {'synthetic vs real':<24} {'real vs real':>12} {'excess':>8}",
    ]
    for fs, v in r["feature_sets"].items():
        name = fs + (" *" if fs == r["headline"] else "")
        lines.append(f"  {name:<12} {fmt_ci(v['auc'], v['lo'], v['hi']):<24} {v['control_auc']:>12.3f} {v['excess']:>+8.3f}")
    h = r["feature_sets"][r["headline"]]
    lines.append(f"  headline (* {r['headline']}: PCA(32) + RBF SVM): AUC {h['auc']:.3f} vs {h['control_auc']:.3f} for the "
                 f"{r['baseline']} baseline, excess {h['excess']:+.3f} (lower is more realistic)")
    lines.append(f"  rendering: {r['n_synth']} films in {r['render_s']:.1f} s wall on {r['workers']} worker(s) (informative; not the benchmark)")
    return "\n".join(lines)
