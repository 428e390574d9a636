"""Lesions: each finding adds attenuation to a rendered chest and returns its binary mask.

A finding may have a ``pre`` hook that edits the patient's anatomy before rendering (an enlarged
heart, a widened mediastinum, a broken rib, upper-lobe volume loss) and a ``post`` hook that draws on
the rendered layers. ``severity`` in (0, 1] scales size and contrast; small values are the subtle
cases a real reader misses.
"""

from __future__ import annotations

import cv2
import numpy as np

from scxnn.synth.anatomy import SIDES, Geometry, air, blur, heart_mask, mediastinum_mask, smooth_noise


def sample_severity(rng: np.random.Generator, difficulty: float) -> float:
    u = rng.beta(2.2, 1.6)
    if rng.random() < 0.2:  # the subtle tail: small, faint lesions
        u *= rng.uniform(0.2, 0.55)
    return float(np.clip(u**difficulty, 0.04, 1.0))


# --------------------------------------------------------------------------- helpers


def _pick_in(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty region")
    i = rng.integers(len(xs))
    return int(xs[i]), int(ys[i])


def _zone(g: Geometry, layers: dict, s: int | None, y_lo: float, y_hi: float, depth_min: float = 0.0) -> np.ndarray:
    sides = SIDES if s is None else (s,)
    m = np.zeros((g.H, g.W), bool)
    for t in sides:
        m |= layers["lung_bool"][t]
    m &= (g.Y >= y_lo) & (g.Y <= y_hi)
    if depth_min > 0:
        deep = m & (layers["depth"] > depth_min)
        if deep.any():
            return deep
    return m if m.any() else (layers["lung_bool"][-1] | layers["lung_bool"][1])


def _blob(g: Geometry, rng, center, radius: float, rough: float = 0.35, elong: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """A soft irregular blob (values 0..1) of about ``radius`` px around ``center``."""
    cx, cy = center
    xs = np.arange(g.W, dtype=np.float32)[None, :] - cx
    ys = np.arange(g.H, dtype=np.float32)[:, None] - cy
    c, s = np.cos(angle), np.sin(angle)
    d = np.sqrt(((xs * c + ys * s) / elong) ** 2 + (-xs * s + ys * c) ** 2) / max(radius, 1.0)
    n = smooth_noise(rng, g.H, g.W, max(4, int(3 * max(g.H, g.W) / max(radius, 2))))
    return np.clip((1.0 - d + rough * n) / 0.3, 0, 1)


def _line_layer(g: Geometry, polylines, thickness: int) -> np.ndarray:
    img = np.zeros((g.H, g.W), np.uint8)
    for pts in polylines:
        cv2.polylines(img, [np.round(np.asarray(pts)).astype(np.int32)], False, 255, max(1, int(thickness)), cv2.LINE_AA)
    return img.astype(np.float32) / 255.0


def _branches(g: Geometry, rng, start, ang, length, depth) -> list:
    out = []

    def rec(x, y, a, ln, d):
        x2, y2 = x + np.cos(a) * ln, y + np.sin(a) * ln
        out.append([(x, y), (x2, y2)])
        if d > 0:
            for sg in (-1, 1):
                rec(x2, y2, a + sg * rng.uniform(0.2, 0.5), ln * 0.75, d - 1)

    rec(*start, ang, length, depth)
    return out


# --------------------------------------------------------------------------- the 13 findings


def pneumothorax(g, L, rng, sev):
    s = int(rng.choice(SIDES))
    u = s * g.X
    from scxnn.synth.anatomy import lung_region

    region = lung_region(g, s)
    wall = (~region) & (u > 0.3) & (g.Y < 0.8) & (g.Y > -0.3)
    dist = cv2.distanceTransform((~wall).astype(np.uint8), cv2.DIST_L2, 3)
    rim = (0.012 + 0.20 * sev**1.3) * g.tw * np.clip(1.15 - 0.9 * np.clip(g.Y, 0, 1), 0.15, 1)
    mask = L["lung_bool"][s] & (dist < rim)
    if not mask.any():
        mask = L["lung_bool"][s] & (dist < rim + 3)
    line = (np.abs(dist - rim) < max(0.8, 0.003 * g.tw)) & L["lung_bool"][s] & ~mask
    m = blur(mask.astype(np.float32), 0.6)
    # Air without lung: no vessels, no texture, a little extra lucency; the collapsed lung is denser.
    delta = -m * (0.15 * L["vessels"] + 0.025 * L["texture"] + 0.08 + 0.06 * sev)
    delta += blur(line.astype(np.float32), 0.5) * (0.05 + 0.12 * sev)
    delta += 0.04 * sev * L["lung_bool"][s] * (1 - m)
    return delta, mask


def pneumoperitoneum(g, L, rng, sev):
    s = -1 if rng.random() < 0.7 else 1
    u = s * g.X
    dome = g.dome(s, np.clip(u, 0, None))
    gap = 0.012 * (1 + 0.5 * rng.random())  # diaphragm muscle between lung and free air
    thick = (0.01 + 0.06 * sev) * np.clip(1 - ((u - 0.5) / 0.38) ** 2, 0, None)
    mask = (u > 0.15) & (g.Y > dome + gap) & (g.Y < dome + gap + thick) & (L["body"] > 0.3)
    if not mask.any():
        mask = (u > 0.3) & (u < 0.7) & (g.Y > dome + gap) & (g.Y < dome + gap + 0.02)
    delta = -blur(mask.astype(np.float32), 0.7) * (0.2 + 0.35 * sev)
    return delta, mask


def mediastinal_widening_pre(p, rng, sev):
    p["_med_w0"] = p["med_w"]
    p["med_w"] = p["med_w"] * (1.25 + 0.7 * sev)


def mediastinal_widening(g, L, rng, sev):
    normal = mediastinum_mask(g, g.p["_med_w0"])
    mask = L["med_bool"] & ~normal & (g.Y < 0.55) & (g.Y > -0.1)
    return 0.05 * blur(mask.astype(np.float32), 1.0), mask


def pleural_effusion(g, L, rng, sev):
    s = int(rng.choice(SIDES))
    u = s * g.X
    h = 0.06 + 0.42 * sev**1.2
    lat = g.p["lat"][s]
    # Meniscus: fluid climbs the lateral chest wall.
    level = 1.02 - h - 0.10 * h * np.clip(u / lat, 0, 1) ** 3 + 0.25 * h * (1 - np.clip(u / lat, 0, 1))
    mask = L["lung_bool"][s] & (g.Y > level)
    if not mask.any():
        mask = L["lung_bool"][s] & (g.Y > 0.85) & (u > 0.6)
    m = blur(mask.astype(np.float32), 0.01 * g.tw)
    fill = 0.55 + 0.45 * sev
    delta = m * (fill * air(L) + 0.06) - m * fill * 0.2 * L["vessels"]  # fluid hides the vessels
    return delta, mask


def nodule(g, L, rng, sev):
    cx, cy = _pick_in(_zone(g, L, None, 0.1, 0.85, 0.3), rng)
    r_mm = 4 + 14 * sev**1.2 + rng.uniform(0, 3)
    r = max(1.3, r_mm / g.spacing_mm)
    contrast = 0.04 + 0.30 * sev**1.1
    xs = np.arange(g.W, dtype=np.float32)[None, :] - cx
    ys = np.arange(g.H, dtype=np.float32)[:, None] - cy
    d2 = (xs**2 + ys**2) / r**2
    delta = contrast * np.sqrt(np.clip(1 - d2, 0, 1))
    delta = blur(delta.astype(np.float32), 0.15 * r)
    mask = d2 <= 1.0
    return delta, mask


def consolidation(g, L, rng, sev):
    s = int(rng.choice(SIDES))
    cx, cy = _pick_in(_zone(g, L, s, 0.3, 0.9, 0.3), rng)
    r = (0.06 + 0.16 * sev) * g.tw
    blob = _blob(g, rng, (cx, cy), r, rough=0.5, elong=rng.uniform(0.7, 1.4), angle=rng.uniform(0, np.pi))
    blob = blob * L["lung_bool"][s]
    mask = blob > 0.5
    if not mask.any():
        mask = _blob(g, rng, (cx, cy), max(r, 3), rough=0.0) > 0.2
    fill = 0.35 + 0.55 * sev
    # Air bronchograms: dark branching tubes inside the opacity, pointing away from the hilum.
    hx, hy = g.px(s * g.p["hila"][s][0], g.p["hila"][s][1])
    ang = np.arctan2(cy - hy, cx - hx)
    br = _line_layer(g, _branches(g, rng, (cx - np.cos(ang) * r * 0.5, cy - np.sin(ang) * r * 0.5), ang, r * 0.5, 2), max(1, int(0.008 * g.tw)))
    delta = blur(blob, 0.01 * g.tw) * fill * air(L) * (1 - 0.7 * br) + 0.03 * blob
    return delta, mask


def active_tuberculosis(g, L, rng, sev):
    s = int(rng.choice(SIDES))
    zone = _zone(g, L, s, 0.0, 0.42, 0.15)
    total = np.zeros((g.H, g.W), np.float32)
    n = 2 + int(rng.integers(2, 6))
    c0 = _pick_in(zone, rng)
    for _ in range(n):
        c = (c0[0] + rng.normal(0, 0.06 * g.tw), c0[1] + rng.normal(0, 0.05 * g.tw))
        total = np.maximum(total, _blob(g, rng, c, (0.015 + 0.04 * sev) * g.tw, rough=0.5))
    total *= L["lung_bool"][s]
    mask = total > 0.5
    if not mask.any():
        mask = _blob(g, rng, c0, max(3, 0.03 * g.tw), rough=0) > 0.2
    delta = total * (0.3 + 0.5 * sev) * air(L) + 0.04 * total
    if rng.random() < 0.35 and sev > 0.3:  # cavity: a lucent centre with a thick wall
        r = (0.02 + 0.025 * sev) * g.tw
        xs = np.arange(g.W, dtype=np.float32)[None, :] - c0[0]
        ys = np.arange(g.H, dtype=np.float32)[:, None] - c0[1]
        d = np.sqrt(xs**2 + ys**2) / r
        wall = np.clip(1 - np.abs(d - 1) / 0.4, 0, 1)
        delta += 0.25 * wall - 0.2 * (d < 0.7) * delta
        mask |= d < 1.4
    return delta, mask


def advanced_tuberculosis_pre(p, rng, sev):
    s = int(rng.choice(SIDES))
    p["_tb_side"] = s
    p["apex_drop"] = dict(p["apex_drop"])
    p["apex_drop"][s] = 0.04 + 0.10 * sev  # volume loss pulls the apex down
    hx, hy = p["hila"][s]
    p["hila"] = dict(p["hila"])
    p["hila"][s] = (hx, hy - 0.04 - 0.06 * sev)  # and the hilum up


def advanced_tuberculosis(g, L, rng, sev):
    s = g.p["_tb_side"]
    zone = _zone(g, L, s, 0.0, 0.35, 0.1)
    c = _pick_in(zone, rng)
    big = _blob(g, rng, c, (0.08 + 0.12 * sev) * g.tw, rough=0.6, elong=1.5, angle=0.0) * L["lung_bool"][s]
    hx, hy = g.px(s * g.p["hila"][s][0], g.p["hila"][s][1])
    streaks = _line_layer(g, [[(c[0] + rng.normal(0, 0.05 * g.tw), c[1] + rng.normal(0, 0.04 * g.tw)), (hx, hy)] for _ in range(5)], max(1, int(0.006 * g.tw)))
    streaks *= L["lung_bool"][s]
    calc = np.zeros((g.H, g.W), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        q = (int(c[0] + rng.normal(0, 0.04 * g.tw)), int(c[1] + rng.normal(0, 0.03 * g.tw)))
        cv2.circle(calc, q, max(1, int(0.007 * g.tw)), 1.0, -1)
    calc *= big > 0.3
    delta = big * (0.4 + 0.5 * sev) * air(L) + 0.12 * streaks + 0.35 * blur(calc, 0.5) + 0.05 * big
    mask = (big > 0.4) | (streaks > 0.5) & (g.Y < 0.5)
    if not mask.any():
        mask = _blob(g, rng, c, max(3, 0.05 * g.tw), rough=0) > 0.2
    return delta, mask


def atelectasis(g, L, rng, sev):
    s = int(rng.choice(SIDES))
    if rng.random() < 0.6:  # plate-like (discoid) band in a lower zone
        cx, cy = _pick_in(_zone(g, L, s, 0.55, 0.85, 0.4), rng)
        ln = (0.10 + 0.2 * sev) * g.tw
        a = rng.normal(0, 0.25)
        pts = [(cx - np.cos(a) * ln / 2, cy - np.sin(a) * ln / 2), (cx, cy + rng.normal(0, 0.01 * g.tw)), (cx + np.cos(a) * ln / 2, cy + np.sin(a) * ln / 2)]
        shape = _line_layer(g, [pts], max(1, int((0.01 + 0.03 * sev) * g.tw)))
    else:  # wedge towards the hilum from the base
        hx, hy = g.px(s * g.p["hila"][s][0], g.p["hila"][s][1])
        bx, by = _pick_in(_zone(g, L, s, 0.75, 0.95), rng)
        w = (0.03 + 0.08 * sev) * g.tw
        poly = np.array([(hx, hy), (bx - w, by), (bx + w, by)], np.int32)
        shape = np.zeros((g.H, g.W), np.float32)
        cv2.fillPoly(shape, [poly], 1.0)
    shape = blur(shape, 0.004 * g.tw) * L["lung_bool"][s]
    mask = shape > 0.5
    if not mask.any():
        mask = shape > 0.05
    delta = shape * (0.45 + 0.5 * sev) * air(L) + 0.03 * shape
    return delta, mask


def support_device(g, L, rng, sev):
    kinds = ["ett", "cvc", "pacer", "ngt"]
    n = 1 + (rng.random() < 0.45) + (rng.random() < 0.15)
    chosen = list(rng.choice(kinds, size=n, replace=False))
    layer = np.zeros((g.H, g.W), np.float32)
    w = max(1, int(0.006 * g.tw))
    for k in chosen:
        if k == "ett":
            tip = rng.uniform(0.10, 0.26)
            pts = [g.px(-0.01, -0.5), g.px(-0.01, tip)]
            layer = np.maximum(layer, 0.8 * _line_layer(g, [pts], w + 1))
        elif k == "cvc":
            s = int(rng.choice(SIDES))
            pts = [g.px(s * 0.65, -0.08), g.px(s * 0.35, 0.0), g.px(s * 0.12, 0.08), g.px(-0.07, 0.25), g.px(-0.07, rng.uniform(0.40, 0.55))]
            layer = np.maximum(layer, 0.7 * _line_layer(g, [pts], w))
        elif k == "pacer":
            bx, by = g.px(0.6 + rng.normal(0, 0.05), 0.02 + rng.normal(0, 0.02))
            bw, bh = int(0.07 * g.tw), int(0.05 * g.tw)
            box = np.zeros((g.H, g.W), np.float32)
            cv2.rectangle(box, (bx - bw, by - bh), (bx + bw, by + bh), 1.0, -1)
            lead = [(bx, by), g.px(0.25, 0.05), g.px(-0.05, 0.3), g.px(0.05, 0.55), g.px(0.25, 0.70)]
            layer = np.maximum(layer, np.maximum(1.6 * box, 0.9 * _line_layer(g, [lead], w)))
        else:
            pts = [g.px(0.0, -0.5), g.px(0.02, 0.3), g.px(0.05, 0.8), g.px(0.35, g.p["dome"][1] + 0.12)]
            layer = np.maximum(layer, 0.6 * _line_layer(g, [pts], w))
    layer = layer * (0.5 + 0.5 * max(sev, 0.3))
    mask = cv2.dilate((layer > 0.15).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return blur(layer, 0.4), mask


def pleural_calcification(g, L, rng, sev):
    total = np.zeros((g.H, g.W), np.float32)
    n = int(rng.integers(1, 3 + int(4 * sev)))
    for _ in range(n):
        s = int(rng.choice(SIDES))
        if rng.random() < 0.7:  # lateral chest wall
            y = rng.uniform(0.3, 0.85)
            u = g.p["lat"][s] * (0.80 + 0.2 * min(y / 0.5, 1)) - 0.02
            ang = np.pi / 2 + rng.normal(0, 0.2)
        else:  # diaphragm
            u = rng.uniform(0.35, 0.75)
            y = float(g.dome(s, np.array([u]))[0]) - 0.01
            ang = rng.normal(0, 0.2)
        c = g.px(s * u, y)
        r = (0.015 + 0.035 * sev) * g.tw
        plaque = _blob(g, rng, c, r, rough=0.35, elong=2.5 + 2 * rng.random(), angle=ang)
        total = np.maximum(total, plaque)
    mask = total > 0.5
    if not mask.any():
        mask = total > 0.05
    delta = (0.35 + 0.7 * sev) * blur((total > 0.5).astype(np.float32) * (0.6 + 0.4 * total), 0.4)
    return delta, mask


def interstitial_opacity(g, L, rng, sev):
    zone_top = rng.uniform(0.45, 0.65)
    lungs = L["lung_bool"][-1] | L["lung_bool"][1]
    zone = lungs & (g.Y > zone_top)
    fine = smooth_noise(rng, g.H, g.W, int(0.5 * max(g.H, g.W) / max(2.0, 0.012 * g.tw)) + 8)
    net = np.exp(-((fine / 0.35) ** 2))  # ridge lines of band-limited noise form a reticular mesh
    ramp = np.clip((g.Y - zone_top) / 0.2, 0, 1)
    delta = (0.05 + 0.15 * sev) * net * ramp * lungs * L["depth"] + (0.04 + 0.1 * sev) * air(L) * ramp * zone
    return delta.astype(np.float32), zone


def cardiomegaly_pre(p, rng, sev):
    p["_ctr0"] = p["ctr"]
    p["ctr"] = max(p["ctr"] + 0.04, 0.505 + 0.17 * sev)


def cardiomegaly(g, L, rng, sev):
    normal = heart_mask(g, g.p["_ctr0"])
    above = g.Y < max(g.p["dome"].values()) + 0.02
    mask = L["heart_bool"] & ~normal & above
    return np.zeros((g.H, g.W), np.float32), mask


# --------------------------------------------------------------------------- unseen findings


def pneumonia(g, L, rng, sev):
    total = np.zeros((g.H, g.W), np.float32)
    for s in SIDES:
        for _ in range(int(rng.integers(1, 4))):
            c = _pick_in(_zone(g, L, s, 0.35, 0.95, 0.2), rng)
            total = np.maximum(total, _blob(g, rng, c, (0.04 + 0.08 * sev) * g.tw, rough=0.7))
    total = blur(total * (L["lung"] > 0.5), 0.02 * g.tw)  # ill-defined: no sharp border, no bronchograms
    return total * (0.3 + 0.4 * sev) * air(L), total > 0.5


def edema(g, L, rng, sev):
    haze = np.zeros((g.H, g.W), np.float32)
    for s in SIDES:
        hx, hy = g.px(s * g.p["hila"][s][0], g.p["hila"][s][1])
        cv2.ellipse(haze, (hx, hy), (int(0.22 * g.tw), int(0.18 * g.tw)), 0, 0, 360, 1.0, -1)
    haze = blur(haze, 0.06 * g.tw) * L["lung"]
    kerley = []
    for s in SIDES:
        for _ in range(int(4 + 6 * sev)):
            y = rng.uniform(0.7, 0.95)
            u = g.p["lat"][s] - 0.01
            kerley.append([g.px(s * u, y), g.px(s * (u - rng.uniform(0.06, 0.12)), y)])
    lines = _line_layer(g, kerley, 1) * L["lung"]
    delta = haze * (0.25 + 0.35 * sev) * air(L) + 0.12 * lines
    return delta, (haze > 0.4) | (lines > 0.5)


def fracture_pre(p, rng, sev):
    p["fracture"] = {"side": int(rng.choice(SIDES)), "rib": int(rng.integers(3, 9)), "t": rng.uniform(0.55, 0.9), "step": 0.004 + 0.012 * sev}


def fracture(g, L, rng, sev):
    fr = g.p["fracture"]
    s = fr["side"]
    yk = g.p["rib_start"] + fr["rib"] * g.p["rib_gap"]
    t = fr["t"]
    u = 0.06 + t * (g.p["lat"][s] * 1.03 - 0.06)
    y = yk - 0.05 * np.sin(np.pi * t) + (g.p["rib_drop"] + 0.004 * fr["rib"]) * t**2.5
    cx, cy = g.px(s * u, y)
    r = max(2, int(0.03 * g.tw))
    mask = np.zeros((g.H, g.W), np.uint8)
    cv2.circle(mask, (cx, cy), r, 1, -1)
    return np.zeros((g.H, g.W), np.float32), mask > 0


FINDINGS = {
    "pneumothorax": (None, pneumothorax),
    "pneumoperitoneum": (None, pneumoperitoneum),
    "mediastinal_widening": (mediastinal_widening_pre, mediastinal_widening),
    "pleural_effusion": (None, pleural_effusion),
    "nodule": (None, nodule),
    "consolidation": (None, consolidation),
    "active_tuberculosis": (None, active_tuberculosis),
    "advanced_tuberculosis": (advanced_tuberculosis_pre, advanced_tuberculosis),
    "atelectasis": (None, atelectasis),
    "support_device": (None, support_device),
    "pleural_calcification": (None, pleural_calcification),
    "interstitial_opacity": (None, interstitial_opacity),
    "cardiomegaly": (cardiomegaly_pre, cardiomegaly),
    "pneumonia": (None, pneumonia),
    "edema": (None, edema),
    "fracture": (fracture_pre, fracture),
}
