"""A normal PA chest, rendered as an attenuation map (higher = denser = brighter in MONOCHROME2).

Geometry lives in thorax-normalised coordinates: X in [-1, 1] across the thoracic cage (negative =
image left = patient's right), Y in [0, 1] from the lung apices to the lateral costophrenic angles.
Working in these units lets one parameter set describe the same patient at any image size or aspect,
which is how follow-up images of one patient keep their anatomy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import cv2
import numpy as np

SIDES = (-1, 1)  # -1: image left (patient's right lung), +1: image right (patient's left lung)


def sample_anatomy(rng: np.random.Generator) -> dict:
    """Patient-level parameters (stable across a patient's images)."""
    return {
        "width": rng.uniform(0.74, 0.84),  # thoracic cage width / image width (portrait reference)
        "height": rng.uniform(0.85, 0.98),  # lung height / thoracic width
        "top": rng.uniform(0.08, 0.13),  # apex row / image height
        "lat": {-1: rng.uniform(0.90, 0.97), 1: rng.uniform(0.90, 0.97)},
        "dome": {-1: rng.uniform(0.76, 0.82), 1: rng.uniform(0.80, 0.87)},  # right dome sits higher
        "ctr": float(np.clip(rng.normal(0.44, 0.03), 0.36, 0.50)),  # cardiothoracic ratio, normal
        "heart_cx": rng.uniform(0.12, 0.20),
        "heart_tilt": rng.uniform(30, 50),
        "heart_ratio": rng.uniform(0.70, 0.80),
        "med_w": rng.uniform(0.12, 0.16),  # upper mediastinum half width
        "knob": rng.uniform(0.04, 0.08),  # aortic knob radius
        "body": rng.uniform(1.10, 1.25),  # soft-tissue half width (thorax units)
        "breast": rng.uniform(0.0, 0.35) if rng.random() < 0.5 else 0.0,
        "rib_start": rng.uniform(-0.04, 0.01),
        "rib_gap": rng.uniform(0.088, 0.102),
        "rib_drop": rng.uniform(0.08, 0.14),
        "clav": rng.uniform(-0.06, 0.0),
        "hila": {-1: (rng.uniform(0.20, 0.26), rng.uniform(0.40, 0.46)), 1: (rng.uniform(0.18, 0.24), rng.uniform(0.36, 0.42))},
        "vessel_seed": int(rng.integers(2**31)),
        "texture_seed": int(rng.integers(2**31)),
        "density": rng.uniform(0.9, 1.15),  # body habitus: soft-tissue attenuation
        "gastric": rng.uniform(0.0, 1.0),
        # Lesion-driven edits (set by findings' ``pre`` hooks, absent in a normal chest)
        "apex_drop": {-1: 0.0, 1: 0.0},
        "fracture": None,
    }


def jitter(p: dict, rng: np.random.Generator) -> dict:
    """Per-image variation of the same patient: inspiration depth and positioning."""
    q = copy.deepcopy(p)
    insp = rng.normal(0, 0.015)
    q["dome"] = {s: v + insp for s, v in p["dome"].items()}
    q["shift"] = rng.normal(0, 0.015)
    q["top"] = p["top"] + rng.normal(0, 0.008)
    return q


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

    def px(self, x: float, y: float) -> tuple[int, int]:
        return int(round(self.cx + x * self.tw / 2)), int(round(self.y0 + y * self.lh))

    def dome(self, s: int, u: np.ndarray) -> np.ndarray:
        """Y of the lung base of side s at lateral coordinate u = s * X."""
        d, lat = self.p["dome"][s], self.p["lat"][s]
        lateral = d + (1.02 - d) * np.clip((u - 0.4) / (lat - 0.4), 0, None) ** 2
        return np.where(u > 0.4, lateral, d + 0.4 * (0.4 - u) ** 2)


def make_geometry(p: dict, H: int, W: int, spacing_mm: float) -> Geometry:
    # Fit the thorax inside the canvas whatever the aspect ratio (landscape films show more shoulder).
    tw = min(p["width"] * W, 0.80 * H / p["height"] / 1.05)
    lh = tw * p["height"]
    cx = W / 2 + p.get("shift", 0.0) * W
    y0 = p["top"] * H
    X = ((np.arange(W, dtype=np.float32) - cx) / (tw / 2))[None, :]
    Y = ((np.arange(H, dtype=np.float32) - y0) / lh)[:, None]
    return Geometry(H, W, cx, y0, tw, lh, X, Y, spacing_mm, p)


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


def heart_mask(g: Geometry, ctr: float) -> np.ndarray:
    p = g.p
    hw = ctr * (p["lat"][-1] + p["lat"][1]) / 2 * g.tw / 2  # half the transverse heart diameter, px
    th = np.deg2rad(p["heart_tilt"])
    r = p["heart_ratio"]
    a = hw / np.sqrt(np.cos(th) ** 2 + (r * np.sin(th)) ** 2)
    b = a * r
    hcx = g.cx + p["heart_cx"] * g.tw / 2
    hcy = g.y0 + (min(p["dome"].values()) - 0.10) * g.lh
    xs = np.arange(g.W, dtype=np.float32)[None, :] - hcx
    ys = np.arange(g.H, dtype=np.float32)[:, None] - hcy
    xr = xs * np.cos(th) + ys * np.sin(th)
    yr = -xs * np.sin(th) + ys * np.cos(th)
    return (xr / a) ** 2 + (yr / b) ** 2 <= 1.0


def mediastinum_mask(g: Geometry, med_w: float) -> np.ndarray:
    p = g.p
    Y = g.Y
    # Slight upward taper, an aortic knob on the patient's left.
    half = med_w * (0.9 + 0.15 * np.clip(Y / 0.6, 0, 1))
    band = np.abs(g.X) < half
    kx, ky = med_w + 0.01, 0.22
    knob = ((g.X - kx) * g.tw / 2) ** 2 + ((Y - ky) * g.lh) ** 2 < (p["knob"] * g.tw / 2) ** 2
    return (band | knob) & (Y < 0.9)


def lung_region(g: Geometry, s: int) -> np.ndarray:
    """The hemithorax air space of side s before the heart and mediastinum are cut out."""
    p = g.p
    u = s * g.X
    Y = g.Y
    apex = 0.3 * ((u - 0.45) / 0.5) ** 2 + p["apex_drop"][s]
    lateral = p["lat"][s] * (0.80 + 0.20 * np.clip(Y / 0.5, 0, 1))
    return (Y > apex) & (u < lateral) & (u > 0.06) & (Y < g.dome(s, u))


def _draw(shape, polylines, thickness: int, value: int = 255) -> np.ndarray:
    img = np.zeros(shape, np.uint8)
    for pts in polylines:
        cv2.polylines(img, [np.round(pts).astype(np.int32)], False, value, max(1, thickness), cv2.LINE_AA)
    return img.astype(np.float32) / 255.0


def _ribs(g: Geometry) -> np.ndarray:
    p = g.p
    post, ant = [], []
    t = np.linspace(0, 1, 28)
    for s in SIDES:
        lat = p["lat"][s] * 1.03
        for k in range(10):
            yk = p["rib_start"] + k * p["rib_gap"]
            u = 0.06 + t * (lat - 0.06)
            y = yk - 0.05 * np.sin(np.pi * t) + (p["rib_drop"] + 0.004 * k) * t**2.5
            pts = np.stack([g.cx + s * u * g.tw / 2, g.y0 + y * g.lh], 1)
            fr = p["fracture"]
            if fr is not None and fr["side"] == s and fr["rib"] == k:
                i = int(fr["t"] * len(t))
                step = fr["step"] * g.tw
                a, b = pts[: i - 1], pts[i:] + np.array([0.0, step])
                post += [a, b]
            else:
                post.append(pts)
            # Anterior rib: from the lateral end back down towards the sternum, fading medially.
            ua = lat - t[:20] * (lat - 0.3)
            ya = y[-1] + 0.02 + 0.24 * t[:20] ** 1.2
            ant.append(np.stack([g.cx + s * ua * g.tw / 2, g.y0 + ya * g.lh], 1))
    w = max(1, int(round(0.026 * g.lh)))
    shape = (g.H, g.W)
    cortex = _draw(shape, post, w) - 0.55 * _draw(shape, post, max(1, w - 2 * max(1, w // 4)))
    anterior = _draw(shape, ant, max(1, int(w * 0.8)))
    return cortex + 0.45 * anterior


def _clavicles(g: Geometry) -> np.ndarray:
    p = g.p
    lines = []
    for s in SIDES:
        uu = np.array([0.07, 0.25, 0.5, 0.75, 0.95])
        yy = np.array([0.02, -0.02, -0.03, -0.07, -0.05]) + p["clav"]
        lines.append(np.stack([g.cx + s * uu * g.tw / 2, g.y0 + yy * g.lh], 1))
    return _draw((g.H, g.W), lines, max(1, int(round(0.035 * g.lh))))


def _vessels(g: Geometry) -> np.ndarray:
    rng = np.random.default_rng(g.p["vessel_seed"])
    img = np.zeros((g.H, g.W), np.uint8)
    t0 = 0.014 * g.tw
    segs = []

    def branch(x, y, ang, length, thick, depth):
        x2, y2 = x + np.cos(ang) * length, y + np.sin(ang) * length
        segs.append((x, y, x2, y2, thick))
        if depth == 0:
            return
        for sgn in (-1, 1):
            branch(x2, y2, ang + sgn * rng.uniform(0.25, 0.6), length * rng.uniform(0.68, 0.82), thick * 0.72, depth - 1)

    for s in SIDES:
        hx, hy = g.px(s * g.p["hila"][s][0], g.p["hila"][s][1])
        # Angles in image space; 0 = towards +x. Mirror for the right lung.
        for base in (-1.35, -0.75, -0.1, 0.55, 1.05):
            a = base + rng.normal(0, 0.12)
            ang = a if s == 1 else np.pi - a
            branch(hx, hy, ang, 0.10 * g.tw * rng.uniform(0.8, 1.2), t0, 5)
    for x, y, x2, y2, th in segs:
        val = int(np.clip(90 + 165 * th / t0, 0, 255))
        cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), val, max(1, int(round(th))), cv2.LINE_AA)
    return blur(img.astype(np.float32) / 255.0, 0.0025 * g.tw)


def render_layers(g: Geometry) -> dict:
    """Anatomical layers as float32 arrays; :func:`compose` sums them into attenuation."""
    p = g.p
    H, W = g.H, g.W
    X, Y = g.X, g.Y
    soft_sigma = 0.006 * g.tw
    # Body outline: neck, shoulders, chest wall, abdomen.
    half = np.interp(Y[:, 0], [-0.6, -0.17, -0.04, 0.06, 0.4, 1.0, 2.0], [0.32, 0.36, 1.45, 1.3, p["body"], p["body"] * 1.03, p["body"]])[:, None]
    body = np.sqrt(np.clip(1 - (X / half) ** 2, 0, 1)).astype(np.float32)
    body = blur(body, soft_sigma)

    heart = heart_mask(g, p["ctr"])
    med = mediastinum_mask(g, p["med_w"])
    lungs = {}
    for s in SIDES:
        lungs[s] = lung_region(g, s) & ~heart & ~med
    lung = (lungs[-1] | lungs[1]).astype(np.uint8)
    dist = cv2.distanceTransform(lung, cv2.DIST_L2, 3)
    depth = np.sqrt(np.clip(dist / (0.10 * g.tw), 0, 1)).astype(np.float32)
    depth = blur(depth, soft_sigma)
    lung_soft = blur(lung.astype(np.float32), soft_sigma)

    below = np.zeros((H, W), bool)
    for s in SIDES:
        u = s * X
        side = u >= 0
        below |= side & (Y > g.dome(s, u))
    abdomen = blur((below & (body > 0)).astype(np.float32), soft_sigma * 1.5)

    # Gastric bubble under the left hemidiaphragm (not every patient shows one).
    gx, gy = g.px(0.45, p["dome"][1] + 0.09)
    gr = g.tw * 0.06 * p["gastric"]
    gas = np.zeros((H, W), np.float32)
    if gr > 2:
        cv2.ellipse(gas, (gx, gy), (int(gr * 1.3), int(gr * 0.8)), 0, 180, 360, 1.0, -1)
        cv2.ellipse(gas, (gx, gy), (int(gr * 1.3), int(gr * 0.3)), 0, 0, 180, 1.0, -1)
        gas = blur(gas, soft_sigma)

    spine = (np.abs(X) < 0.075).astype(np.float32)
    discs = 1 - 0.2 * np.cos(np.pi * (Y - p["rib_start"]) / p["rib_gap"]) ** 8
    spine = blur(spine * discs, soft_sigma)
    trachea = ((np.abs(X + 0.01) < 0.045) & (Y < 0.30)).astype(np.float32)
    bronchi = _draw((H, W), [np.array([g.px(0, 0.30), g.px(s * p["hila"][s][0] * 0.8, p["hila"][s][1] - 0.03)], float) for s in SIDES], max(1, int(0.04 * g.tw)))
    airway = blur(np.maximum(trachea, bronchi), soft_sigma)

    hila = np.zeros((H, W), np.float32)
    for s in SIDES:
        hx, hy = g.px(s * p["hila"][s][0], p["hila"][s][1])
        cv2.circle(hila, (hx, hy), max(1, int(0.05 * g.tw)), 1.0, -1)
    hila = blur(hila, 0.025 * g.tw)

    breast = np.zeros((H, W), np.float32)
    if p["breast"] > 0:
        for s in SIDES:
            bx, by = g.px(s * 0.62, 0.92)
            cv2.ellipse(breast, (bx, by), (int(0.45 * g.tw / 2), int(0.22 * g.lh)), 0, 0, 360, 1.0, -1)
        breast = blur(breast, 0.04 * g.tw) * p["breast"]

    tex_rng = np.random.default_rng(p["texture_seed"])
    texture = 0.6 * smooth_noise(tex_rng, H, W, 10) + 0.4 * smooth_noise(tex_rng, H, W, 40)

    return {
        "body": body,
        "lung": lung_soft,
        "lung_bool": lungs,
        "depth": depth,
        "heart": blur(heart.astype(np.float32), soft_sigma) * (1 - abdomen),
        "heart_bool": heart,
        "med": blur(med.astype(np.float32), soft_sigma) * (1 - abdomen),
        "med_bool": med,
        "abdomen": abdomen,
        "gas": gas,
        "spine": spine,
        "airway": airway * (body > 0.2),
        "hila": hila * lung_soft,
        "breast": breast,
        "ribs": blur(_ribs(g), 0.002 * g.tw),
        "clavicles": blur(_clavicles(g), 0.002 * g.tw),
        "vessels": _vessels(g) * lung_soft,
        "texture": texture * lung_soft,
    }


def air(layers: dict) -> np.ndarray:
    """Attenuation the lung air removes; a lesion that fills the airspace adds (part of) this back."""
    return 0.65 * layers["depth"] * layers["lung"]


def compose(layers: dict, p: dict) -> np.ndarray:
    L = layers
    a = p["density"] * (1.0 * L["body"] + 0.25 * L["abdomen"] + 0.35 * L["breast"])
    a = a - air(L) + 0.22 * L["heart"] + 0.2 * L["med"] - 0.25 * L["airway"] - 0.5 * L["gas"] * L["abdomen"]
    # The spine and ribs are barely seen through the heart and the upper abdomen on a PA film.
    a = a + (0.12 * L["spine"] + 0.13 * L["ribs"]) * (1 - 0.6 * np.maximum(L["heart"], L["abdomen"])) + 0.22 * L["clavicles"]
    a = a + 0.15 * L["vessels"] + 0.15 * L["hila"] + 0.03 * L["texture"]
    return a.astype(np.float32)
