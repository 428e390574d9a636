"""A normal chest, built as 3-D structures and projected: the attenuation a PA (or AP) film records.

Each structure is a solid with a density; what the film sees is its chord, the length of the ray
through it, computed in closed form for the shapes used here (ellipsoids, superellipse slabs,
tubes around a centre line). A chord thins to zero at the edge of the solid, so every edge fades as
the structure runs out, and overlapping structures add up as on a real film. The attenuation map is
the sum of chord × density (Beer-Lambert in the log domain); :func:`scxnn.synth.sites.acquire`
turns it into a detector image.

Units. In-plane geometry lives in thorax-normalised coordinates: X in [-1, 1] across the thoracic
cage (negative = image left = the patient's right), Y in [0, 1] from the lung apices to the lateral
costophrenic angles. Chords are measured in half thoracic widths (about 15 cm); densities are
relative to water (soft tissue 1, aerated lung 0.25, bone up to 2.7). Working in these units lets one
parameter set describe the same patient at any image size or aspect, which is how follow-up images
of one patient keep their anatomy.

What is drawn: soft tissue of the neck, shoulders, arms, chest wall, breasts and abdomen; both lungs
with their depth, apices, lateral costophrenic angles and the posterior recesses behind the domes;
the heart (right atrium, left ventricle, the right ventricle between them), the upper mediastinum
with the superior vena cava, the aortic knob, the pulmonary trunk and the descending aorta; the
trachea and main bronchi; hila and pulmonary vessels that taper and branch towards the periphery
(larger in the lower zones, as on an upright film); ribs as hollow tubes (posterior ribs dense,
anterior ribs faint, ending at the unseen costal cartilage); vertebral bodies with pedicles and
spinous processes; clavicles; scapulae; humeral heads; the gastric bubble with its fluid level.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import cv2
import numpy as np

SIDES = (-1, 1)  # -1: image left (patient's right lung), +1: image right (patient's left lung)

# Densities relative to water (what one unit of chord adds to the log-domain attenuation).
AIR_IN_LUNG = 0.75  # aerated lung is ~0.25 g/ml: its air removes three quarters of the tissue
BONE = 1.7  # cortical bone adds ~1.7 water equivalents per unit of chord at diagnostic energies
TRABECULAR = 0.55


def sample_anatomy(rng: np.random.Generator) -> dict:
    """Patient-level parameters (stable across a patient's images)."""
    breast = rng.uniform(0.15, 0.45) if rng.random() < 0.45 else 0.0
    return {
        "width": rng.uniform(0.7, 0.9),  # thoracic cage width / image width (portrait reference)
        "height": rng.uniform(0.80, 1.04),  # lung height / thoracic width
        "top": rng.uniform(0.05, 0.17),  # apex row / image height
        "lat": {-1: rng.uniform(0.90, 0.97), 1: rng.uniform(0.90, 0.97)},
        "dome": {-1: rng.uniform(0.74, 0.82), 1: rng.uniform(0.79, 0.87)},  # right dome sits higher
        "ctr": float(np.clip(rng.normal(0.44, 0.03), 0.36, 0.50)),  # cardiothoracic ratio, normal
        "heart_cx": rng.uniform(-0.04, 0.04),  # horizontal offset of the heart
        "heart_tilt": rng.uniform(25, 45),  # long axis of the left ventricle, degrees
        "heart_ratio": rng.uniform(0.66, 0.78),
        "med_w": rng.uniform(0.11, 0.15),  # upper mediastinum half width
        "knob": rng.uniform(0.03, 0.055),  # aortic knob radius
        "body": rng.uniform(1.22, 1.42),  # soft-tissue half width (thorax units): build
        "ap": rng.uniform(0.52, 0.95),  # chest half depth: build
        "breast": breast,
        "arms": rng.uniform(0.1, 1.0),  # how far the arms project beside the chest
        "scapula": rng.uniform(0.0, 0.12),  # how far the scapulae overlap the lungs
        "rib_start": rng.uniform(-0.05, 0.0),
        "rib_gap": rng.uniform(0.086, 0.100),
        "rib_drop": rng.uniform(0.14, 0.24),
        "clav": rng.uniform(-0.07, 0.0),
        "scoliosis": rng.normal(0, 0.012),
        "hila": {-1: (rng.uniform(0.20, 0.26), rng.uniform(0.40, 0.46)), 1: (rng.uniform(0.18, 0.24), rng.uniform(0.35, 0.41))},
        "vessel_seed": int(rng.integers(2**31)),
        "texture_seed": int(rng.integers(2**31)),
        "density": rng.uniform(0.88, 1.15),  # soft-tissue attenuation: fat vs muscle
        "lung_depth": rng.uniform(0.6, 1.25),
        "gastric": rng.uniform(0.0, 1.0),
        # Lesion-driven edits (set by findings' ``pre`` hooks, absent in a normal chest)
        "apex_drop": {-1: 0.0, 1: 0.0},
        "volume_loss": {-1: 0.0, 1: 0.0},  # lift of a hemidiaphragm and shift of the mediastinum
        "fracture": None,
    }


def jitter(p: dict, rng: np.random.Generator) -> dict:
    """Per-image variation of the same patient: inspiration, rotation and positioning."""
    q = copy.deepcopy(p)
    insp = rng.normal(0, 0.035)
    q["dome"] = {s: v + insp for s, v in p["dome"].items()}
    q["shift"] = rng.normal(0, 0.04)
    q["top"] = p["top"] + rng.normal(0, 0.02)
    q["rot"] = rng.normal(0, 0.025)  # rotation about the long axis: anterior vs posterior structures
    q["tilt"] = rng.normal(0, 2.5)  # in-plane tilt, degrees
    return q


def sample_rendering(rng: np.random.Generator) -> dict:
    """Per-image domain randomisation (generator v4): how strongly the film shows each structure,
    drawn independently of the findings. A model trained on one fixed rendering learnt its crisp
    vessels and dark lungs; real films range from sharp to hazy. ``vessels``, ``texture`` and
    ``bone`` weigh those layers in :func:`compose`; ``aeration`` scales the lung's depth (a shallow
    breath, a heavy build: greyer lungs); ``scatter`` multiplies the site's scatter (no grid)."""
    return {
        "vessels": rng.uniform(0.025, 1.15),
        "texture": rng.uniform(1.0, 5.5),
        "bone": rng.uniform(0.4, 1.225),
        "aeration": rng.uniform(0.55, 1.0),
        "scatter": rng.uniform(1.0, 2.0),
    }


@dataclass
class Geometry:
    H: int
    W: int
    cx: float  # pixels
    y0: float
    tw: float  # thoracic width, pixels
    lh: float  # lung height, pixels
    X: np.ndarray  # (1, W)
    Y: np.ndarray  # (H, 1)
    spacing_mm: float
    p: dict
    layers: dict = field(default_factory=dict)

    @property
    def unit(self) -> float:
        """Pixels per X unit (half the thoracic width); also the pixel size of one chord unit."""
        return self.tw / 2

    def px(self, x: float, y: float) -> tuple[int, int]:
        return int(round(self.cx + x * self.tw / 2)), int(round(self.y0 + y * self.lh))

    def pxf(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        return self.cx + np.asarray(x) * self.tw / 2, self.y0 + np.asarray(y) * self.lh

    def dome(self, s: int, u: np.ndarray) -> np.ndarray:
        """Y of the top of the hemidiaphragm of side s at lateral coordinate u = s * X."""
        d, lat = self.p["dome"][s] - self.p["volume_loss"][s], self.p["lat"][s]
        lateral = d + (1.02 - d) * np.clip((u - 0.4) / (lat - 0.4), 0, None) ** 2
        return np.where(u > 0.4, lateral, d + 0.35 * (0.4 - u) ** 2)


def make_geometry(p: dict, H: int, W: int, spacing_mm: float) -> Geometry:
    # Fit the thorax inside the canvas whatever the aspect ratio (landscape films show more shoulder).
    tw = min(p["width"] * W, 0.78 * H / p["height"] / 1.05)
    lh = tw * p["height"]
    cx = W / 2 + p.get("shift", 0.0) * W
    y0 = p["top"] * H
    X = ((np.arange(W, dtype=np.float32) - cx) / (tw / 2))[None, :]
    Y = ((np.arange(H, dtype=np.float32) - y0) / lh)[:, None]
    return Geometry(H, W, cx, y0, tw, lh, X, Y, spacing_mm, p)


# --------------------------------------------------------------------------- primitives


def smooth_noise(rng: np.random.Generator, H: int, W: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise with about ``cells`` blobs across the longer side."""
    ch = max(2, int(round(cells * H / max(H, W))))
    cw = max(2, int(round(cells * W / max(H, W))))
    small = rng.standard_normal((ch + 2, cw + 2)).astype(np.float32)
    big = cv2.resize(small, (W + 2 * W // cw, H + 2 * H // ch), interpolation=cv2.INTER_CUBIC)
    oy, ox = H // ch, W // cw
    return big[oy : oy + H, ox : ox + W]


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return a
    return cv2.GaussianBlur(a, (0, 0), sigma)


def ellipsoid(g: Geometry, x: float, y: float, a: float, b: float, c: float, angle_deg: float = 0.0, k: float = 2.0, out: np.ndarray | None = None, op: str = "max") -> np.ndarray:
    """Chord of an ellipsoid (superellipsoid for k > 2) centred at (x, y) in thorax units.

    ``a``, ``b``: in-plane semi-axes in X units (isotropic pixels), ``c``: half depth in chord units;
    the chord is 2c (1 - r^k)^(1/k), computed over the bounding box only.
    """
    if out is None:
        out = np.zeros((g.H, g.W), np.float32)
    cx, cy = g.pxf(x, y)
    A, B = a * g.unit, b * g.unit
    R = max(A, B) + 1
    x0, x1 = int(max(0, np.floor(cx - R))), int(min(g.W, np.ceil(cx + R) + 1))
    y0, y1 = int(max(0, np.floor(cy - R))), int(min(g.H, np.ceil(cy + R) + 1))
    if x0 >= x1 or y0 >= y1 or A < 0.5 or B < 0.5:
        return out
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    t = np.deg2rad(angle_deg)
    u = (xs * np.cos(t) + ys * np.sin(t)) / A
    v = (-xs * np.sin(t) + ys * np.cos(t)) / B
    r = np.abs(u) ** k + np.abs(v) ** k
    chord = 2 * c * np.clip(1 - r, 0, None) ** (1 / k)
    region = out[y0:y1, x0:x1]
    if op == "max":
        np.maximum(region, chord, out=region)
    else:
        region += chord
    return out


def tubes(g: Geometry, polylines, radius: float, depth: float, shell: float = 0.0) -> np.ndarray:
    """Chord through tubes of ``radius`` px around centre lines (pixel coordinates).

    ``depth``: half thickness of the tube along the ray, in chord units; ``shell`` > 0 makes it
    hollow (cortical bone), with the inner radius ``(1 - shell) * radius``: the edges seen end-on
    are then brighter than the middle, as on a rib. Overlaps within one call count once.
    """
    out = np.zeros((g.H, g.W), np.float32)
    lines = [np.asarray(pts, np.float64) for pts in polylines if len(pts) >= 2]
    if not lines:
        return out
    r = max(radius, 0.6)
    # Work in the bounding box of the centre lines only: most tubes are small next to the film.
    allp = np.concatenate(lines)
    pad = r + 2
    x0, y0 = int(max(0, np.floor(allp[:, 0].min() - pad))), int(max(0, np.floor(allp[:, 1].min() - pad)))
    x1, y1 = int(min(g.W, np.ceil(allp[:, 0].max() + pad) + 1)), int(min(g.H, np.ceil(allp[:, 1].max() + pad) + 1))
    if x0 >= x1 or y0 >= y1:
        return out
    img = np.full((y1 - y0, x1 - x0), 255, np.uint8)
    for pts in lines:
        cv2.polylines(img, [np.round(pts - (x0, y0)).astype(np.int32)], False, 0, 1, cv2.LINE_8)
    if img.min() == 255:
        return out
    d = cv2.distanceTransform(img, cv2.DIST_L2, 5)
    chord = 2 * depth * np.sqrt(np.clip(1 - (d / r) ** 2, 0, None))
    if shell > 0:
        ri = r * (1 - shell)
        chord -= 2 * depth * (1 - shell) * 0.85 * np.sqrt(np.clip(1 - (d / ri) ** 2, 0, None))
    out[y0:y1, x0:x1] = chord
    return out


def smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------- structures


def body_chord(g: Geometry) -> np.ndarray:
    """Soft tissue of neck, shoulders, chest wall and abdomen: a boxy ellipse per row."""
    p = g.p
    Y = g.Y[:, 0]
    half = np.interp(Y, [-0.7, -0.25, -0.12, 0.0, 0.1, 0.4, 1.0, 2.0], [0.5, 0.58, 0.95, 1.40, 1.32, p["body"], p["body"] * 1.04, p["body"] * 1.02])[:, None]
    depth = p["ap"] * np.interp(Y, [-0.7, -0.2, 0.05, 0.5, 1.1, 2.0], [0.7, 0.82, 0.93, 1.0, 1.05, 1.05])[:, None]
    t = np.abs(g.X) / half
    k = 3.5
    out = 2 * depth * np.clip(1 - t**k, 0, None) ** (1 / k)
    # Shoulder muscles (trapezius, sternocleidomastoid) over the apices and the neck.
    for s in SIDES:
        ellipsoid(g, s * 0.45, -0.1, 0.6, 0.22, 0.12 * p["ap"], s * 8, k=2.0, out=out, op="add")
    # Arms held beside the chest: columns of soft tissue in the upper corners.
    for s in SIDES:
        ax = s * (p["body"] + 0.05 + 0.15 * p["arms"])
        ellipsoid(g, ax, 0.25, 0.3 + 0.1 * p["arms"], 1.1, 0.34, s * -4, k=2.0, out=out, op="add")
    return out.astype(np.float32)


def _lung_edges(g: Geometry, s: int) -> tuple[np.ndarray, np.ndarray]:
    p = g.p
    Y = g.Y
    lateral = p["lat"][s] * (0.66 + 0.34 * smoothstep(Y, -0.05, 0.7))
    medial = np.full_like(Y, -0.03 + 0.02 * s * p.get("rot", 0.0))
    return medial, lateral


def cavity_chord(g: Geometry, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Chord of the hemithorax of side s, before the heart and mediastinum, and where it lies
    below the top of the diaphragm (only the recesses behind and in front of the dome)."""
    p = g.p
    u = s * g.X
    Y = g.Y
    med, lat = _lung_edges(g, s)
    t = np.clip((u - med) / (lat - med), 0, 1)
    t = t**0.9  # the lung is deepest a little medial of its middle, and thins laterally
    k = 2.0
    prof = np.clip(1 - np.abs(2 * t - 1) ** k, 0, None) ** (1 / k)
    depth = 0.95 * p["lung_depth"] * p["ap"] / 0.72 * (0.5 + 0.5 * smoothstep(Y, -0.05, 0.5))
    apex = 0.28 * ((u - 0.45) / 0.5) ** 2 - 0.02 + p["apex_drop"][s]
    cap = np.sqrt(np.clip((Y - apex) / 0.09, 0, 1))
    # The diaphragm: the dome cuts the cavity; below its top, lung remains only in the posterior
    # recess (deep) and in front (shallow). The excluded z-interval grows as sqrt of the depth below
    # the dome, which gives the sharp dome outline and the fading recess beneath it.
    r = np.clip(Y - g.dome(s, np.clip(u, 0, None)), 0, None)
    z0 = -0.25
    wp = (1 - z0) * np.sqrt(r / 0.17)
    wa = (1 + z0) * np.sqrt(r / 0.035)
    frac = (np.clip(1 - (z0 + wp), 0, None) + np.clip((z0 - wa) + 1, 0, None)) / 2
    frac = frac * np.where(r > 0, 0.6, 1.0)  # the recesses are shallow: liver and spleen fill the dome
    inside = (u > med) & (u < lat)
    return (depth * prof * cap * frac * inside).astype(np.float32), r > 0


def _closed_spline(pts: np.ndarray, rounds: int = 4) -> np.ndarray:
    """A smooth closed curve through the corners of ``pts`` (Chaikin's corner cutting)."""
    for _ in range(rounds):
        nxt = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], 1).reshape(-1, 2)
    return pts


def solid_from_outline(g: Geometry, outline_px: np.ndarray, depth: float, edge: float) -> np.ndarray:
    """Chord through a solid whose silhouette is ``outline_px`` (closed, pixel coordinates):
    ``depth`` (chord units) in the middle, rounding off like a cylinder's over ``edge`` pixels at the
    border, so the border is sharp where the surface is tangent to the ray, as a heart border is."""
    mask = np.zeros((g.H, g.W), np.uint8)
    cv2.fillPoly(mask, [np.round(outline_px).astype(np.int32)], 1)
    if not mask.any():
        return np.zeros((g.H, g.W), np.float32)
    d = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    t = np.clip(d / max(edge, 1.0), 0, 1)
    return (depth * np.sqrt(1 - (1 - t) ** 2)).astype(np.float32)


def heart_outline(g: Geometry, ctr: float | None = None) -> np.ndarray:
    """The cardiac silhouette's outline (pixels): the right atrium's convex right border above the
    right dome, the left ventricle's long curve down to the apex on the left dome, and the concave
    waist (left atrial appendage) below the pulmonary trunk. Below the domes it merges with the
    liver, so its lower edge is drawn under them."""
    p = g.p
    ctr = p["ctr"] if ctr is None else ctr
    inner = p["lat"][-1] + p["lat"][1]
    wh = ctr * inner  # transverse diameter, X units
    off = p["heart_cx"] + p.get("rot", 0.0) + 0.5 * (p["volume_loss"][1] - p["volume_loss"][-1])
    xr = -0.34 * wh + off
    xl = xr + wh
    base_r = p["dome"][-1] - p["volume_loss"][-1]
    base_l = p["dome"][1] - p["volume_loss"][1]
    # Long axis tilt and the apex' height: a horizontal heart has its apex lower and further out.
    lean = (p["heart_tilt"] - 35) / 10  # -1 .. 1
    hh = wh * p["heart_ratio"] * 0.62  # height of the silhouette above the domes, Y units
    top = min(base_r, base_l) - hh
    pts = np.array([
        [off - 0.16, top - 0.06],  # superior vena cava joins the right atrium
        [xr + 0.05 * wh, top + 0.35 * hh],
        [xr, base_r - 0.30 * hh],  # right atrium: furthest right
        [xr + 0.06 * wh, base_r + 0.02],  # right cardiophrenic angle
        [off + 0.1 * wh, base_l + 0.12],
        [xl - 0.12 * wh, base_l + 0.10],
        [xl + 0.01, base_l - (0.10 + 0.04 * lean) * hh],  # apex
        [xl - 0.04 * wh, base_l - (0.55 - 0.1 * lean) * hh],  # left ventricle
        [off + 0.30 * wh, top + 0.12 * hh],  # left atrial appendage: the waist
        [off + 0.22, top - 0.06],  # under the pulmonary trunk
    ])
    x, y = g.pxf(pts[:, 0], pts[:, 1])
    return _closed_spline(np.stack([x, y], 1))


def heart_chord(g: Geometry, ctr: float | None = None) -> np.ndarray:
    """The cardiac silhouette (chord): one smooth solid in the front two thirds of the chest, so the
    lower lobes still hold air behind it (the retrocardiac lung)."""
    # Half as deep as the lungs beside it (~0.95 * lung_depth * ap / 0.72 in cavity_chord).
    depth = 0.66 * g.p["lung_depth"] * g.p["ap"]
    return solid_from_outline(g, heart_outline(g, ctr), depth, 0.12 * g.unit)


def mediastinum_chord(g: Geometry, med_w: float | None = None) -> np.ndarray:
    """Upper mediastinum (great vessels, trachea, oesophagus) as a slab, with the aortic knob and
    pulmonary trunk on the left and the superior vena cava forming the right border."""
    p = g.p
    med_w = p["med_w"] if med_w is None else med_w
    Y = g.Y
    shift = p.get("rot", 0.0) * 0.6 + 0.5 * (p["volume_loss"][1] - p["volume_loss"][-1])
    half = med_w * (0.92 + 0.6 * smoothstep(Y, 0.1, 0.55))
    t = np.abs(g.X - 0.01 - shift) / half
    k = 2.5
    slab = 0.6 * np.clip(1 - t**k, 0, None) ** (1 / k) * (1 - smoothstep(Y, 0.62, 0.8))
    out = slab.astype(np.float32)
    ellipsoid(g, med_w * 0.6 + shift, 0.21, p["knob"] * 1.2 + 0.05, p["knob"] + 0.03, 0.45, 0, out=out)  # aortic knob
    ellipsoid(g, med_w * 0.6 + shift, 0.35, 0.07, 0.05, 0.35, 0, out=out)  # pulmonary trunk
    ellipsoid(g, -med_w * 0.75 + shift, 0.30, 0.06, 0.17, 0.35, 0, k=2.4, out=out)  # SVC / ascending aorta
    # Descending aorta: a faint tube beside the spine, seen through the heart.
    floor = min(p["dome"].values())
    out = np.maximum(out, tubes(g, [np.stack(g.pxf([0.09 + shift, 0.07 + shift, 0.06], [0.22, 0.6, floor]), 1)], 0.05 * g.unit, 0.14))
    return out


def airway_chord(g: Geometry) -> np.ndarray:
    p = g.p
    shift = p.get("rot", 0.0) * 0.6
    carina = (0.0 + shift, 0.30)
    lines = [np.stack(g.pxf([-0.01 + shift, -0.01 + shift, carina[0]], [-0.7, 0.1, carina[1]]), 1)]
    trachea = tubes(g, lines, 0.06 * g.unit, 0.06)
    bron = []
    for s in SIDES:
        hx, hy = p["hila"][s]
        ex = s * hx * 0.85 + shift * 0.5
        bron.append(np.stack(g.pxf([carina[0], (carina[0] + ex) / 2, ex], [carina[1], carina[1] + 0.04 + (0.03 if s < 0 else 0.0), hy - 0.01]), 1))
    return np.maximum(trachea, tubes(g, bron, 0.035 * g.unit, 0.04))


def _rib_curve(g: Geometry, s: int, k: int, n: int = 32):
    """Centre lines (posterior, anterior) of rib k on side s, thorax units."""
    p = g.p
    t = np.linspace(0, 1, n)
    yk = p["rib_start"] + k * p["rib_gap"] - 0.015 * s * p.get("rot", 0.0)
    lat = p["lat"][s] * (0.80 + 0.22 * min(1.0, (yk + 0.1) / 0.6)) * 1.04
    u = 0.07 + t * (lat - 0.07)
    y = yk - 0.045 * np.sin(np.pi * t * 0.9) + (p["rib_drop"] + 0.004 * k) * t**2.4
    ta = np.linspace(0, 1, 20)
    ua = lat - ta * (lat - (0.28 + 0.02 * k)) + 0.01
    ya = y[-1] + 0.015 + (0.20 + 0.01 * k) * ta**1.15
    return (s * u, y), (s * ua, ya)


def _break_index(fr: dict, n: int) -> int:
    """The point of a rib's ``n``-point centre line where a drawn fracture (``p["fracture"]``) breaks it."""
    return int(fr["t"] * n)


def rib_break(g: Geometry) -> tuple[float, float]:
    """Where this film's fracture breaks its rib (thorax units): the middle of the gap ``ribs_chord``
    leaves (its proximal piece ends at point i - 2, the displaced distal one starts at point i), so
    that the fracture's mask is centred on the break that is drawn."""
    fr = g.p["fracture"]
    (x, y), _ = _rib_curve(g, fr["side"], fr["rib"])
    i = _break_index(fr, len(x)) - 1
    return float(x[i]), float(y[i])


def ribs_chord(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(posterior, anterior) rib chords; cortical tubes."""
    p = g.p
    post, ant = [], []
    for s in SIDES:
        for k in range(11):
            (x, y), (xa, ya) = _rib_curve(g, s, k)
            pts = np.stack(g.pxf(x, y), 1)
            fr = p["fracture"]
            if fr is not None and fr["side"] == s and fr["rib"] == k:
                i = _break_index(fr, len(x))
                step = fr["step"] * g.lh
                post += [pts[: i - 1], pts[i:] + np.array([fr["step"] * g.tw * 0.3 * s, step])]
            else:
                post.append(pts)
            if k < 9:
                ant.append(np.stack(g.pxf(xa, ya), 1))
    r = 0.018 * g.lh
    posterior = tubes(g, post, r, 0.026, shell=0.4)
    anterior = tubes(g, ant, r * 1.2, 0.007, shell=0.5)
    # The costal cartilage does not show: anterior ribs fade towards the sternum.
    anterior *= smoothstep(np.abs(g.X), 0.3, 0.75)
    # Near the spine the posterior ribs dip behind the mediastinum and the heart, where scatter
    # dominates the signal: on a real film they are faint there while the spine still shows.
    posterior *= 0.5 + 0.5 * smoothstep(np.abs(g.X), 0.12, 0.45)
    return posterior, anterior


def spine_chord(g: Geometry) -> np.ndarray:
    """Vertebral bodies (boxy, with end plates), pedicles and spinous processes, C7 to L2."""
    p = g.p
    out = np.zeros((g.H, g.W), np.float32)
    gap = p["rib_gap"]
    shift = -0.5 * p.get("rot", 0.0)
    # The column of vertebral bodies, continuous through the discs; the bodies add their end plates.
    col = np.clip(1 - (np.abs(g.X - shift) / (0.09 + 0.03 * np.clip(g.Y, 0, 1.5))) ** 3, 0, None) ** (1 / 3)
    out += (0.035 * TRABECULAR * col).astype(np.float32)
    # The lateral cortical margins of the bodies: two thin lines that run the whole column and stay
    # visible through the heart and the upper abdomen.
    ys = np.linspace(-0.3, (g.H - g.y0) / g.lh + 0.1, 40)
    margins = [np.stack(g.pxf(shift + sx * (0.085 + 0.03 * np.clip(ys, 0, 1.5)) + p["scoliosis"] * np.sin(np.pi * (ys + 0.1) / 1.2), ys), 1) for sx in (-1, 1)]
    out += tubes(g, margins, 0.012 * g.lh, 0.012)
    for k in range(-2, 16):
        yc = p["rib_start"] + (k + 0.15) * gap
        if yc > (g.H - g.y0) / g.lh + 0.1:
            break
        xc = shift + p["scoliosis"] * np.sin(np.pi * (yc + 0.1) / 1.2)
        w = 0.085 + 0.004 * k
        h = 0.5 * gap * g.lh / g.unit
        ellipsoid(g, xc, yc, w, h, 0.012 * TRABECULAR, 0, k=4.0, out=out, op="add")
        for sx in (-1, 1):  # pedicles: small cortical rings (the "eyes" of the vertebra)
            ellipsoid(g, xc + sx * 0.72 * w, yc - 0.12 * gap, 0.022, 0.03, 0.018, out=out, op="add")
            ellipsoid(g, xc + sx * 0.72 * w, yc - 0.12 * gap, 0.013, 0.019, -0.018, out=out, op="add")  # hollow
        ellipsoid(g, xc, yc + 0.35 * gap, 0.018, 0.045, 0.018, 0, out=out, op="add")  # spinous process
    return out


def shoulder_girdle_chord(g: Geometry) -> np.ndarray:
    """Clavicles, scapulae and humeral heads."""
    p = g.p
    rot = p.get("rot", 0.0)
    lines = []
    for s in SIDES:
        uu = np.array([0.10, 0.28, 0.5, 0.72, 0.92, 1.02])
        yy = np.array([0.13, 0.09, 0.05, 0.01, -0.04, -0.05]) + p["clav"]
        lines.append(np.stack(g.pxf(s * uu + rot * 1.2, yy), 1))
    out = tubes(g, lines, 0.032 * g.lh, 0.07, shell=0.3)
    for s in SIDES:
        # Scapula: a thin plate with a thick lateral border; on a good PA film it is rotated off the lung.
        ov = p["scapula"]
        poly = np.stack(g.pxf(s * np.array([0.98 - ov, 0.80 - ov, 0.95, 1.12, 1.15]), [-0.04, 0.50, 0.42, 0.05, -0.05]), 1)
        plate = np.zeros((g.H, g.W), np.float32)
        cv2.fillPoly(plate, [np.round(poly).astype(np.int32)], 0.02)
        out += blur(plate, 0.03 * g.unit)
        out += blur(tubes(g, [poly[2:4]], 0.02 * g.lh, 0.03, shell=0.3), 0.01 * g.unit)
        ellipsoid(g, s * 1.30, -0.08, 0.21, 0.21, 0.08, 0, out=out, op="add")  # humeral head
    return out


def vessel_tree(g: Geometry, lung: np.ndarray) -> np.ndarray:
    """Pulmonary arteries and veins: tapering, branching tubes from the hila towards the periphery.

    Radii fall by 2^(-1/3) per branching (Murray's law); lower-zone vessels are larger (gravity).
    Growth stops where the lung ends.
    """
    p = g.p
    rng = np.random.default_rng(p["vessel_seed"])
    n_gen = 6
    segs: list[list] = [[] for _ in range(n_gen)]
    H, W = lung.shape

    def inside(x, y):
        xi, yi = int(x), int(y)
        return 0 <= xi < W and 0 <= yi < H and lung[yi, xi] > 0.05

    def grow(x, y, ang, length, gen):
        if gen >= n_gen:
            return
        pts = [(x, y)]
        a = ang
        for _ in range(3):  # gently curving segment
            a += rng.normal(0, 0.08)
            x, y = x + np.cos(a) * length / 3, y + np.sin(a) * length / 3
            if gen > 0 and not inside(x, y):
                break
            pts.append((x, y))
        if len(pts) < 2:
            return
        segs[gen].append(np.array(pts))
        for sg in (-1, 1):
            grow(x, y, a + sg * rng.uniform(0.25, 0.55), length * rng.uniform(0.72, 0.86), gen + 1)

    for s in SIDES:
        hx, hy = g.pxf(s * p["hila"][s][0], p["hila"][s][1])
        for base in (-1.45, -0.95, -0.45, 0.05, 0.55, 0.95, 1.3):
            ab = base + rng.normal(0, 0.1)
            ang = ab if s == 1 else np.pi - ab
            grow(hx, hy, ang, 0.085 * g.tw * rng.uniform(0.8, 1.2), 0)
    Y = g.Y
    gravity = 0.85 + 0.3 * smoothstep(Y, 0.2, 0.9)
    out = np.zeros((g.H, g.W), np.float32)
    r0 = 0.026 * g.unit
    for gen in range(n_gen):
        r = r0 * 2 ** (-gen / 3)
        # Deeper than a single vessel: the tree stands for the many vessels along each ray.
        out = np.maximum(out, tubes(g, segs[gen], max(r, 0.7), 0.065 * 2 ** (-gen / 4)))
    return out * gravity


def render_layers(g: Geometry) -> dict:
    """The chords of every structure; :func:`compose` weighs them into attenuation."""
    p = g.p
    body = body_chord(g)
    cav = {s: cavity_chord(g, s) for s in SIDES}
    heart = heart_chord(g)
    med = mediastinum_chord(g)
    occupied = np.maximum(heart, med)
    # The heart and mediastinum sit above the diaphragm: the recesses below the dome keep their air.
    lung_s = {s: np.clip(cav[s][0] - occupied * ~cav[s][1], 0, None) for s in SIDES}
    lung = lung_s[-1] + lung_s[1]
    # Gastric bubble under the left dome: gas above a fluid level when upright.
    gas = np.zeros((g.H, g.W), np.float32)
    if p["gastric"] > 0.25:
        gx, gy = 0.42, p["dome"][1] + 0.075
        ellipsoid(g, gx, gy, 0.14 * p["gastric"] + 0.04, 0.07 * p["gastric"] + 0.03, 0.12 * p["gastric"], 0, out=gas)
        gas[g.Y[:, 0] > gy + 0.01] = 0
        gas = blur(gas, 0.6)
    # Bowel gas: the splenic flexure and loops beneath the left dome, a few small pockets elsewhere.
    grng = np.random.default_rng([p["texture_seed"], 5])
    for _ in range(int(grng.integers(0, 7))):
        side = 1 if grng.random() < 0.7 else -1
        x = side * grng.uniform(0.15, 0.85)
        y = p["dome"][side] + grng.uniform(0.12, 0.45)
        r = grng.uniform(0.04, 0.14)
        ellipsoid(g, x, y, r * grng.uniform(0.8, 1.8), r, grng.uniform(0.005, 0.03), grng.uniform(0, 180), out=gas, op="add")
    # Bowel contents: a fine mottle of gas and faeces over the upper abdomen, below the domes.
    below = smoothstep(g.Y - np.maximum(g.dome(-1, np.clip(-g.X, 0, None)), g.dome(1, np.clip(g.X, 0, None))), 0.04, 0.2)
    gas += 0.012 * np.clip(smooth_noise(grng, g.H, g.W, 28), 0, None) * below * (body > 0.3)
    post, ant = ribs_chord(g)
    lmax = float(lung.max()) or 1.0
    lung_soft = np.clip(lung / (0.12 * lmax), 0, 1)
    vessels = vessel_tree(g, lung_soft)
    tex_rng = np.random.default_rng(p["texture_seed"])
    texture = (0.6 * smooth_noise(tex_rng, g.H, g.W, 14) + 0.4 * smooth_noise(tex_rng, g.H, g.W, 60)) * lung
    breast = np.zeros((g.H, g.W), np.float32)
    if p["breast"] > 0:
        for s in SIDES:
            ellipsoid(g, s * 0.62, 0.80, 0.50, 0.30, 0.3 * p["breast"], s * 12, out=breast)
        breast *= (body > 0).astype(np.float32)
    thr = 0.2 * lmax  # where the lung holds enough air to be called lung
    return {
        "body": body,
        "cavity": {s: cav[s][0] for s in SIDES},
        "lung_chord": lung_s,
        "lung_bool": {s: lung_s[s] > thr for s in SIDES},
        "lung": lung_soft,
        "depth": np.clip(lung / lmax, 0, 1),
        "heart": heart,
        "heart_bool": heart > 0.05,
        "med": med,
        "med_bool": med > 0.05,
        "airway": airway_chord(g),
        "gas": gas,
        "ribs": post + ant,
        "ribs_post": post,
        "spine": spine_chord(g),
        "girdle": shoulder_girdle_chord(g),
        "breast": breast,
        "vessels": vessels * np.clip(lung / (0.4 * lmax), 0, 1),  # fewer vessels where little lung is left
        "texture": texture,
    }


def air(layers: dict) -> np.ndarray:
    """Attenuation the lung air removes; a lesion that fills the airspace adds (part of) this back."""
    return AIR_IN_LUNG * (layers["lung_chord"][-1] + layers["lung_chord"][1])


def lung_region(g: Geometry, s: int) -> np.ndarray:
    """The hemithorax air space of side s before the heart and mediastinum are taken out."""
    return cavity_chord(g, s)[0] > 0.02


def heart_mask(g: Geometry, ctr: float) -> np.ndarray:
    return heart_chord(g, ctr) > 0.05


def mediastinum_mask(g: Geometry, med_w: float) -> np.ndarray:
    return mediastinum_chord(g, med_w) > 0.05


def shown(p: dict, layer: str) -> float:
    """How strongly this film shows ``layer`` ("vessels", "texture" or "bone"): the per-film weight
    of :func:`sample_rendering`, 1 without one. A finding that takes a layer away (air beyond a
    pleural line, fluid) takes away what :func:`compose` put in, no more: with the layer's full
    weight removed from a faintly rendered film, the vessels beyond a pneumothorax' pleural line came
    out as dark branching lines, and with too little removed from a strongly textured one the lung
    markings stayed."""
    return p.get("render", {}).get(layer, 1.0)


def lung_markings(layers: dict, p: dict) -> np.ndarray:
    """The attenuation the lung markings (vessels and the lung's fine texture) add to this film."""
    return shown(p, "vessels") * AIR_IN_LUNG * layers["vessels"] + shown(p, "texture") * 0.012 * layers["texture"]


def compose(layers: dict, p: dict) -> np.ndarray:
    L = layers
    a = p["density"] * (L["body"] + L["breast"])
    a = a - air(L) - L["airway"] - L["gas"]
    a = a + shown(p, "bone") * BONE * (L["ribs"] + L["girdle"]) + L["spine"] * BONE
    a = a + lung_markings(L, p)
    return a.astype(np.float32)
