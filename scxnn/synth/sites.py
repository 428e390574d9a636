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

# Imaging chain per site. ``n0``: photons per pixel (quantum noise), ``gamma``: tone curve,
# ``usm``: unsharp-mask gain of the vendor's processing, ``scale``: resolution relative to
# synth_size, ``aspect``: (H/W range, landscape probability), ``ap``: share of AP films,
# ``device_boost``: multiplier on support-device prevalence (ICU-heavy sources).
STYLES = {
    "internal": dict(n0=(1500, 4000), gamma=(0.85, 1.15), usm=(0.2, 0.6), mtf=(0.6, 0.9), scale=1.0, aspect=((1.0, 1.25), 0.15), ap=0.05, device_boost=1.0),
    "temporal": dict(n0=(500, 1100), gamma=(1.25, 1.5), usm=(0.9, 1.3), mtf=(0.3, 0.5), scale=1.0, aspect=((0.95, 1.1), 0.3), ap=0.1, device_boost=1.0),
    "external1": dict(n0=(800, 2000), gamma=(0.9, 1.1), usm=(0.3, 0.7), mtf=(0.6, 1.0), scale=1.0, aspect=((1.0, 1.22), 0.35), ap=0.5, device_boost=2.0),
    "external2": dict(n0=(700, 1800), gamma=(0.8, 1.2), usm=(0.1, 0.4), mtf=(0.9, 1.3), scale=0.625, aspect=((1.0, 1.25), 0.2), ap=0.6, device_boost=4.0),
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


def acquire(att: np.ndarray, site: str, rng: np.random.Generator, tw: float) -> np.ndarray:
    """Attenuation -> processed detector image in [0, 1] (MONOCHROME2 sense: dense = bright)."""
    st = STYLES[site]
    mu = rng.uniform(1.6, 2.4)  # beam hardness / exposure latitude
    n0 = rng.uniform(*st["n0"]) * (tw / 400.0) ** -0.5  # bigger pixels at low resolution collect more photons
    t = np.exp(-mu * att) * n0
    counts = t + np.sqrt(t) * rng.standard_normal(att.shape).astype(np.float32)
    sig = -np.log(np.maximum(counts, 1.0) / n0) / mu
    sig = blur(sig.astype(np.float32), rng.uniform(*st["mtf"]) * tw / 500)
    lo, hi = np.percentile(sig, [rng.uniform(0.5, 3), rng.uniform(99.0, 99.9)])
    v = np.clip((sig - lo) / max(hi - lo, 1e-6), 0, 1)
    v = v ** rng.uniform(*st["gamma"])
    usm = rng.uniform(*st["usm"])
    v = v + usm * (v - blur(v, 0.03 * tw))
    # Exposure / heel effect: a gentle vertical gradient.
    v = v * (1 + rng.normal(0, 0.04) * np.linspace(-1, 1, v.shape[0], dtype=np.float32)[:, None])
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
