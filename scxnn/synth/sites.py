"""Sites (datasets) of the synthetic study: how many images, which devices, how they are stored.

The counts are facts from the thesis (Kim 2024), embedded so that generation never needs
``../shared``:
- Table 1: images per finding with a hard label (lesion mask) / a weak label (image level), and
  10,137 normal images (internal set, AMC 2011-2018).
- Table 2: the temporal (AMC Jan-Mar 2021) and external (MIMIC-CXR-JPG, CheXpert) evaluation sets;
  sizes and normal counts are the column sums of the Table 2 confusion matrices.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from scxnn.synth.anatomy import blur

# Thesis Table 1: finding -> (hard, weak).
TABLE1 = {
    "pneumothorax": (331, 1669),
    "pneumoperitoneum": (100, 3959),
    "mediastinal_widening": (98, 223),
    "pleural_effusion": (1364, 636),
    "nodule": (914, 1546),
    "consolidation": (1540, 0),
    "active_tuberculosis": (582, 0),
    "advanced_tuberculosis": (324, 0),
    "atelectasis": (98, 4175),
    "support_device": (585, 0),
    "pleural_calcification": (100, 4146),
    "interstitial_opacity": (280, 1732),
    "cardiomegaly": (312, 0),
}
TABLE1_NORMAL = 10137
# Thesis Table 2: site -> (images, normal images).
EVAL_SETS = {"temporal": (525, 225), "external1": (234, 106), "external2": (716, 71)}
SITE_PREFIX = {"internal": "int", "temporal": "tmp", "external1": "ex1", "external2": "ex2"}
SITE_DATES = {"internal": ("2011-01-01", "2018-12-31"), "temporal": ("2021-01-01", "2021-03-31"), "external1": ("2011-01-01", "2016-12-31"), "external2": ("2002-10-01", "2017-07-31")}

# Acquisition devices. Bit depth, photometric interpretation and rescale differ so that every reader
# path (MONOCHROME1 inversion, modality LUT, 10..16-bit, JPEG) is exercised.
DEVICES = {
    "internal": [
        dict(weight=0.45, fmt="dcm", modality="DX", photometric="MONOCHROME2", bits=12, slope=None, window=True),
        dict(weight=0.30, fmt="dcm", modality="CR", photometric="MONOCHROME1", bits=10, slope=(2.0, -512.0), window=False),
        dict(weight=0.25, fmt="dcm", modality="DX", photometric="MONOCHROME2", bits=14, slope=(1.0, -1024.0), window=True),
    ],
    "temporal": [
        dict(weight=0.8, fmt="dcm", modality="DX", photometric="MONOCHROME2", bits=16, slope=None, window=True),
        dict(weight=0.2, fmt="dcm", modality="DX", photometric="MONOCHROME1", bits=12, slope=(1.0, 0.0), window=True),
    ],
    "external1": [dict(weight=1.0, fmt="jpg", modality="", photometric="MONOCHROME2", bits=8, slope=None, window=False)],
    "external2": [
        dict(weight=0.6, fmt="dcm", modality="CR", photometric="MONOCHROME1", bits=12, slope=None, window=False),
        dict(weight=0.4, fmt="dcm", modality="DX", photometric="MONOCHROME2", bits=10, slope=None, window=True),
    ],
}

# Imaging chain per site. ``n0``: photons per pixel at 400 px thoracic width (quantum noise),
# ``scatter``: scatter-to-primary ratio (no grid on bedside AP films: more), ``eq``: the vendor's
# dynamic-range equalisation, ``usm``: unsharp-mask gain, ``tone``: slope of the sigmoid tone curve,
# ``gradation``: weight of the histogram-based LUT, ``mtf``: detector blur, ``collimate``: share of films with visible collimation (white or black
# shutters), ``marker``: share with a lead side marker, ``scale``: resolution relative to
# synth_size, ``aspect``: (H/W range, landscape probability), ``ap``: share of AP films,
# ``device_boost``: multiplier on support-device prevalence (ICU-heavy sources).
STYLES = {
    "internal": dict(n0=(15000, 40000), scatter=(0.6, 1.0), eq=(0.2, 0.35), usm=(0.3, 0.6), tone=(4.0, 5.5), mtf=(0.5, 0.8), gradation=(0.2, 0.95), collimate=0.15, shutter="white", marker=0.7, scale=1.0, aspect=((1.0, 1.25), 0.15), ap=0.05, device_boost=1.0),
    "temporal": dict(n0=(15000, 30000), scatter=(0.7, 1.2), eq=(0.3, 0.45), usm=(0.5, 0.8), tone=(5.5, 7.0), mtf=(0.3, 0.5), gradation=(0.3, 0.6), collimate=0.3, shutter="black", marker=0.9, scale=1.0, aspect=((0.95, 1.1), 0.3), ap=0.1, device_boost=1.0),
    "external1": dict(n0=(10000, 25000), scatter=(0.7, 1.4), eq=(0.15, 0.3), usm=(0.3, 0.7), tone=(3.5, 5.0), mtf=(0.6, 1.0), gradation=(0.2, 0.95), collimate=0.3, shutter="white", marker=0.8, scale=1.0, aspect=((1.0, 1.22), 0.35), ap=0.5, device_boost=2.0),
    "external2": dict(n0=(8000, 20000), scatter=(0.8, 1.6), eq=(0.1, 0.25), usm=(0.1, 0.4), tone=(3.0, 4.5), mtf=(0.9, 1.3), gradation=(0.4, 0.8), collimate=0.25, shutter="white", marker=0.6, scale=0.625, aspect=((1.0, 1.25), 0.2), ap=0.6, device_boost=4.0),
}

CR_SOP = "1.2.840.10008.5.1.4.1.1.1"
DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def internal_counts(findings, scale: float, min_per_finding: int) -> tuple[dict, dict, int]:
    """Hard and weak counts per finding and the normal count, scaled from Table 1."""
    hard, weak = {}, {}
    for f in findings:
        h, w = TABLE1.get(f, (0, 0))
        hard[f] = max(int(round(h * scale)), min_per_finding)
        weak[f] = 0 if w == 0 else max(1, int(round(w * scale)))
    return hard, weak, max(int(round(TABLE1_NORMAL * scale)), 2)


def eval_counts(site: str, eval_scale: float) -> tuple[int, int]:
    """(normal, abnormal) images for an evaluation site, with Table 2's ratio; at least a handful."""
    n, normal = EVAL_SETS[site]
    total = max(int(round(n * eval_scale)), 6)
    n_norm = int(np.clip(round(total * normal / n), 1, total - 2))
    return n_norm, total - n_norm


def image_shape(site: str, size: int, rng: np.random.Generator) -> tuple[int, int]:
    st = STYLES[site]
    side = max(64, int(round(size * st["scale"])))
    ratio = rng.uniform(*st["aspect"][0])
    short = int(round(side / ratio))
    return (short, side) if rng.random() < st["aspect"][1] else (side, short)


def _low_pass(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a large sigma, computed on a reduced copy (scatter, equalisation)."""
    f = max(1, int(sigma // 4))
    small = cv2.resize(a, (max(1, a.shape[1] // f), max(1, a.shape[0] // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    return cv2.resize(small, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)


def _marker(shape, rng: np.random.Generator, tw: float) -> np.ndarray:
    """A lead side marker ("L" or "R") near an upper corner: dense metal, so bright on the film."""
    H, W = shape
    img = np.zeros(shape, np.uint8)
    scale = max(0.3, tw / 400 * rng.uniform(0.8, 1.3))
    x = int(rng.uniform(0.03, 0.12) * W) if rng.random() < 0.5 else int(rng.uniform(0.80, 0.9) * W)
    y = int(rng.uniform(0.06, 0.16) * H)
    cv2.putText(img, "L" if rng.random() < 0.6 else "R", (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, int(2 * scale)), cv2.LINE_AA)
    return img.astype(np.float32) / 255.0


def acquire(att: np.ndarray, site: str, rng: np.random.Generator, tw: float, scatter_gain: float = 1.0) -> np.ndarray:
    """Attenuation -> processed detector image in [0, 1] (MONOCHROME2 sense: dense = bright).

    The chain: markers on the cassette; primary transmission exp(-mu * att); scatter (a broad
    blur of the transmitted field, which lifts the dense regions and flattens contrast behind the
    heart; ``scatter_gain`` multiplies the site's ratio); quantum noise for the site's dose;
    detector blur; the log; the vendor's processing (dynamic-range equalisation, unsharp masking,
    a sigmoid tone curve) and collimation shutters.
    """
    st = STYLES[site]
    H, W = att.shape
    if rng.random() < st["marker"]:
        att = att + 4.0 * _marker(att.shape, rng, tw)
    collimated = np.zeros(att.shape, bool)
    if rng.random() < st["collimate"]:
        m = rng.uniform(0.0, 0.05, 4) * (rng.random(4) < 0.5)  # not every blade shows
        top, bottom, left, right = int(m[0] * H), int(m[1] * H), int(m[2] * W), int(m[3] * W)
        collimated[:top] = True
        collimated[H - bottom :] = True
        collimated[:, :left] = True
        collimated[:, W - right :] = True
    mu = rng.uniform(2.6, 3.3)  # effective attenuation per unit chord: beam quality
    primary = np.exp(-mu * att).astype(np.float32)
    primary[collimated] = 0.0
    scatter = scatter_gain * rng.uniform(*st["scatter"]) * _low_pass(primary, 0.12 * tw)
    n0 = rng.uniform(*st["n0"]) * (tw / 400.0) ** -1.0  # bigger pixels at low resolution collect more photons
    mean = n0 * (primary + scatter)
    counts = mean + np.sqrt(mean) * rng.standard_normal(att.shape).astype(np.float32)
    sig = -np.log(np.maximum(counts, 0.5) / n0)
    sig = blur(sig.astype(np.float32), rng.uniform(*st["mtf"]) * tw / 500)
    # Vendor processing: compress the large-scale range (lungs vs abdomen), sharpen the detail.
    eq = rng.uniform(*st["eq"])
    sig = sig - eq * _low_pass(sig, 0.07 * tw)
    usm = rng.uniform(*st["usm"])
    sig = sig + usm * (sig - blur(sig, 0.012 * tw))
    # The window comes from the anatomy's histogram: direct exposure beside the body is left black.
    exposed = ~collimated
    top = np.percentile(sig[::2, ::2][exposed[::2, ::2]], 99.5)  # every 4th pixel: as good, 4x faster
    anatomy = exposed & (sig > 0.3 * top)
    ref = anatomy if anatomy.sum() > 100 else exposed
    lo, hi = np.percentile(sig[::2, ::2][ref[::2, ::2]], [rng.uniform(0.5, 4.0), rng.uniform(99.0, 99.8)])
    lo -= rng.uniform(0.0, 0.3) * (hi - lo)  # some LUTs leave the direct exposure dark grey, not black
    v = np.clip((sig - lo) / max(hi - lo, 1e-6), 0, 1)
    tone = rng.uniform(*st["tone"])
    mid = rng.uniform(0.3, 0.6)
    s = 1 / (1 + np.exp(-tone * (v - mid)))
    s0, s1 = 1 / (1 + np.exp(tone * mid)), 1 / (1 + np.exp(-tone * (1 - mid)))
    v = (s - s0) / (s1 - s0)
    # Histogram-based gradation (as vendors' "auto LUT" processing does): the anatomy's grey levels
    # are pulled towards a target distribution that puts the lungs mid-dark and the soft tissue and
    # bone bright. The target is a Beta distribution; its shape varies by device.
    hist_w = rng.uniform(*st["gradation"])
    if hist_w > 0:
        from scipy.stats import beta as beta_dist

        qs = np.linspace(0, 100, 65)
        src = np.percentile(v[::2, ::2][ref[::2, ::2]], qs)
        a_, b_ = rng.uniform(1.2, 2.2), rng.uniform(0.9, 1.4)
        dst = beta_dist.ppf(qs / 100, a_, b_)
        src, keep = np.unique(src, return_index=True)
        mapped = np.interp(v, src, dst[keep]).astype(np.float32)
        v = (1 - hist_w) * v + hist_w * mapped
    v = v * (1 + rng.normal(0, 0.03) * np.linspace(-1, 1, H, dtype=np.float32)[:, None])  # heel effect
    if collimated.any():
        v[collimated] = 1.0 if st["shutter"] == "white" else 0.0
    return np.clip(v, 0, 1).astype(np.float32)


def pick_device(site: str, rng: np.random.Generator) -> dict:
    devs = DEVICES[site]
    w = np.array([d["weight"] for d in devs])
    return dict(devs[int(rng.choice(len(devs), p=w / w.sum()))])


def stored_pixels(v: np.ndarray, dev: dict) -> np.ndarray:
    maxval = (1 << dev["bits"]) - 1
    q = np.round(v * maxval).astype(np.int64)
    if dev["photometric"] == "MONOCHROME1":  # inverted: high stored value = dark
        q = maxval - q
    return q.astype(np.uint16 if dev["bits"] > 8 else np.uint8)


def encode(v: np.ndarray, dev: dict, meta: dict) -> bytes:
    px = stored_pixels(v, dev)
    if dev["fmt"] == "jpg":
        ok, buf = cv2.imencode(".jpg", px, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        return buf.tobytes()
    return dicom_bytes(px, dev, meta)


def dicom_bytes(px: np.ndarray, dev: dict, meta: dict) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["scxnn-synth", str(meta["seed"]), kind, meta["uid_key"]])

    sop_class = CR_SOP if dev["modality"] == "CR" else DX_SOP
    sop_uid = uid("sop")
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.PatientName = "ANON"
    ds.PatientID = meta["patient_id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = meta["study_date"].replace("-", "")
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = dev["modality"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = meta["view"]
    ds.PatientOrientation = ["L", "F"] if meta["view"] == "AP" else ["R", "F"]
    ds.Manufacturer = "SCXNN-SYNTH"
    if dev["modality"] == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [f"{meta['spacing']:.4f}"] * 2
    ds.PixelSpacing = [f"{meta['spacing']:.4f}"] * 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = dev["photometric"]
    ds.Rows, ds.Columns = int(px.shape[0]), int(px.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = dev["bits"]
    ds.HighBit = dev["bits"] - 1
    ds.PixelRepresentation = 0
    slope, intercept = dev["slope"] or (1.0, 0.0)
    if dev["slope"] is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if dev["window"]:
        lo, hi = np.percentile(px, [1, 99]) * slope + intercept
        ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
        ds.WindowWidth = f"{max(hi - lo, 1):.1f}"
    ds.PixelData = px.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
