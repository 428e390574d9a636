"""Lesions: each finding adds attenuation to a rendered chest and returns its binary mask.

Findings act on the projected anatomy of :mod:`scxnn.synth.anatomy`: a lesion that fills the
airspace adds back (part of) the attenuation the lung air removed there (``air``), so its edges fade
where the lung thins, and an opacity that reaches the heart or the diaphragm erases that border (the
silhouette sign) by itself. Air outside the lung removes the lung tissue and its vessels.

A finding may have a ``pre`` hook that edits the patient's anatomy before rendering (an enlarged
heart, a widened mediastinum, a broken rib, volume loss that lifts a hemidiaphragm, shifts the
mediastinum or pulls a hilum) and a ``post`` hook that draws on the rendered layers. ``severity`` in
(0, 1] scales size and contrast; small values are the subtle cases a real reader misses. Each
function's docstring names the radiological signs it draws; the mask is the region a radiologist
would outline.
"""

from __future__ import annotations

import cv2
import numpy as np

from scxnn.synth.anatomy import AIR_IN_LUNG, SIDES, Geometry, air, blur, heart_mask, lung_markings, lung_region, mediastinum_mask, rib_break, shown, smooth_noise, tubes


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
    """Signs: the visceral pleural line (a thin white line parallel to the chest wall), no lung
    markings beyond it, a more lucent rim of pleural air, a denser collapsing lung; on AP (supine)
    films the air collects in front and low: a deep, lucent lateral costophrenic sulcus."""
    s = int(rng.choice(SIDES))
    u = s * g.X
    region = lung_region(g, s)
    wall = (~region) & (u > 0.3) & (g.Y < 0.85) & (g.Y > -0.3)
    dist = cv2.distanceTransform((~wall).astype(np.uint8), cv2.DIST_L2, 3)
    rim = (0.012 + 0.22 * sev**1.3) * g.tw * np.clip(1.15 - 0.9 * np.clip(g.Y, 0, 1), 0.15, 1)
    lung = L["lung_bool"][s] | (region & (L["cavity"][s] > 0.05))
    mask = lung & (dist < rim)
    if g.p.get("view") == "AP":  # deep sulcus: air in the anterior costophrenic recess
        sulcus = region & (u > 0.55) & (g.Y > g.p["dome"][s] - 0.05)
        mask |= sulcus & (dist < rim + 0.06 * g.tw)
    if not mask.any():
        mask = lung & (dist < rim + 3)
    m = blur(mask.astype(np.float32), 0.6)
    line = (np.abs(dist - rim) < max(0.8, 0.0025 * g.tw)) & lung & ~mask
    # Air without lung: its vessels, texture and tissue (a quarter of the lung's density) are gone.
    delta = -m * (lung_markings(L, g.p) + (1 - AIR_IN_LUNG) * L["cavity"][s] * 0.8)
    delta += blur(line.astype(np.float32), 0.5) * (0.02 + 0.03 * sev)
    delta += 0.1 * sev * air(L) * L["lung_bool"][s] * (1 - m)  # the collapsing lung is denser
    return delta, mask


def pneumoperitoneum(g, L, rng, sev):
    """Signs: free air under the diaphragm: a lucent crescent between the dome (a thin line of
    muscle) and the liver or stomach, more often on the right."""
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
    """Signs: the upper mediastinum wider than normal on both sides above the heart (its lateral
    borders displaced into the lungs); the mask is the added width."""
    normal = mediastinum_mask(g, g.p["_med_w0"])
    mask = L["med_bool"] & ~normal & (g.Y < 0.55) & (g.Y > -0.1)
    return 0.05 * blur(mask.astype(np.float32), 1.0), mask


def pleural_effusion(g, L, rng, sev):
    """Signs, upright (PA): a homogeneous basal opacity with a meniscus that climbs the lateral
    chest wall, a blunted costophrenic angle and a lost hemidiaphragm outline; supine (AP): fluid
    layers behind the lung, a veil of haze over the hemithorax that thickens towards the base, with
    the vessels still seen through it."""
    s = int(rng.choice(SIDES))
    u = s * g.X
    lat = g.p["lat"][s]
    region = lung_region(g, s) & (g.Y > -0.05)
    if g.p.get("view") == "AP":
        top = 0.15 + 0.45 * (1 - sev)
        ramp = np.clip((g.Y - top) / (1.0 - top), 0, 1) ** 1.2 * region
        fill = 0.35 + 0.5 * sev
        mask = ramp * fill > 0.25
        if not mask.any():
            mask = region & (g.Y > 0.85)
        delta = blur(ramp, 0.02 * g.tw) * fill * air(L) + 0.05 * ramp
        return delta.astype(np.float32), mask
    h = 0.06 + 0.42 * sev**1.2
    # Meniscus: the fluid climbs the lateral chest wall.
    level = 1.02 - h - 0.45 * h * np.clip(u / lat, 0, 1) ** 2.5 + 0.25 * h * (1 - np.clip(u / lat, 0, 1))
    mask = region & (g.Y > level)
    if not mask.any():
        mask = region & (g.Y > 0.85) & (u > 0.6)
    m = blur(mask.astype(np.float32), 0.006 * g.tw)
    # Fluid replaces all the air (the recess behind the dome too) and the lung markings vanish in it.
    delta = m * (air(L) + 0.08 - lung_markings(L, g.p))
    return delta, mask


def nodule(g, L, rng, sev):
    """Signs: a round soft-tissue sphere (its chord fades at the rim), sometimes spiculated (thin
    strands radiating from it) and sometimes partly hidden behind a rib, the heart or a dome."""
    zone = _zone(g, L, None, 0.05, 0.95, 0.25)
    if rng.random() < 0.2:  # behind the heart or a dome: the classic missed nodule
        hidden = L["heart_bool"] & (g.Y < 0.95)
        zone = hidden if hidden.any() else zone
    cx, cy = _pick_in(zone, rng)
    r_mm = 4 + 14 * sev**1.2 + rng.uniform(0, 3)
    r = max(1.3, r_mm / g.spacing_mm)
    contrast = 0.8 + 0.6 * sev  # soft tissue where there was air; the denser end of real nodules
    xs = np.arange(g.W, dtype=np.float32)[None, :] - cx
    ys = np.arange(g.H, dtype=np.float32)[:, None] - cy
    d2 = (xs**2 + ys**2) / r**2
    delta = contrast * 2 * r / g.unit * np.sqrt(np.clip(1 - d2, 0, 1))
    if rng.random() < 0.35:  # spiculation
        spikes = []
        for a in rng.uniform(0, 2 * np.pi, int(rng.integers(5, 12))):
            ln = r * rng.uniform(1.3, 2.2)
            spikes.append([(cx + np.cos(a) * r * 0.8, cy + np.sin(a) * r * 0.8), (cx + np.cos(a) * ln, cy + np.sin(a) * ln)])
        delta = delta + 0.5 * tubes(g, spikes, max(0.7, 0.15 * r), contrast * 0.02)
    delta = blur(delta.astype(np.float32), 0.1 * r)
    mask = d2 <= 1.0
    return delta, mask


def _lobe(g, L, rng, s, lobe):
    """Region of a lobe or segment on the projected lung, with the fissure as a sharp border."""
    lung = L["lung_bool"][s]
    hy = g.p["hila"][s][1]
    if lobe == "upper":  # bounded below by the horizontal (minor) fissure on the right
        return lung & (g.Y < hy + rng.uniform(-0.02, 0.04))
    if lobe == "middle":  # middle lobe / lingula: against the heart border
        near = cv2.dilate(L["heart_bool"].astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(0.35 * g.tw) | 1,) * 2)) > 0
        return lung & near & (g.Y > hy)
    return lung & (g.Y > hy + 0.12)  # lower lobe: the base, against the dome


def consolidation(g, L, rng, sev):
    """Signs: airspace opacity confined to a lobe or segment, sharply bounded by the fissure and
    fluffy elsewhere, with air bronchograms (dark branching tubes inside it); next to the heart or a
    dome it erases that border (silhouette sign: middle lobe / lingula, lower lobe)."""
    s = int(rng.choice(SIDES))
    lobe = str(rng.choice(["upper", "middle", "lower"], p=[0.3, 0.3, 0.4]))
    region = _lobe(g, L, rng, s, lobe)
    if not region.any():
        region = L["lung_bool"][s]
    cx, cy = _pick_in(region, rng)
    r = (0.08 + 0.22 * sev) * g.tw
    blob = _blob(g, rng, (cx, cy), r, rough=0.5, elong=rng.uniform(0.8, 1.4), angle=rng.uniform(0, np.pi))
    blob = blob * region  # the fissure cuts it sharply
    mask = blob > 0.5
    if not mask.any():
        mask = (_blob(g, rng, (cx, cy), max(r, 3), rough=0.0) > 0.2) & region
        mask = mask if mask.any() else _blob(g, rng, (cx, cy), max(r, 3), rough=0.0) > 0.2
    fill = 0.55 + 0.45 * sev
    hx, hy = g.px(s * g.p["hila"][s][0], g.p["hila"][s][1])
    ang = np.arctan2(cy - hy, cx - hx)
    br = _line_layer(g, _branches(g, rng, (cx - np.cos(ang) * r * 0.6, cy - np.sin(ang) * r * 0.6), ang, r * 0.45, 3), max(1, int(0.007 * g.tw)))
    soft = blur(blob, 0.006 * g.tw)
    # Filled airspace: tissue replaces the air, so the vessels and the lung's texture no longer show in it.
    delta = soft * fill * (air(L) - lung_markings(L, g.p)) * (1 - 0.55 * br) + 0.03 * soft
    return delta, mask


def active_tuberculosis(g, L, rng, sev):
    """Signs: upper-zone nodular and patchy airspace opacity in clusters, sometimes a thick-walled
    cavity with a lucent centre."""
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
    """Signs: fibrotic upper-lobe opacity with volume loss (the apex pulled down, the hilum
    pulled up), fibrotic strands running to the hilum (traction) and dense calcified foci."""
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


def atelectasis_pre(p, rng, sev):
    s = int(rng.choice(SIDES))
    p["_atel_side"] = s
    p["volume_loss"] = dict(p["volume_loss"])
    p["volume_loss"][s] = 0.01 + 0.06 * sev  # the hemidiaphragm rises, the mediastinum shifts over
    hx, hy = p["hila"][s]
    p["hila"] = dict(p["hila"])
    p["hila"][s] = (hx, hy + 0.01 + 0.04 * sev)  # lower-lobe collapse pulls the hilum down


def atelectasis(g, L, rng, sev):
    """Signs: a plate-like (discoid) band or a collapsed lower lobe (a wedge against the spine and
    the dome), denser than consolidation, with volume loss: the hemidiaphragm raised, the
    mediastinum shifted towards it, the hilum pulled down."""
    s = g.p["_atel_side"]
    if rng.random() < 0.55:  # plate-like (discoid) band in a lower zone
        cx, cy = _pick_in(_zone(g, L, s, 0.55, 0.85, 0.4), rng)
        ln = (0.12 + 0.2 * sev) * g.tw
        a = rng.normal(0, 0.2)
        pts = [(cx - np.cos(a) * ln / 2, cy - np.sin(a) * ln / 2), (cx, cy + rng.normal(0, 0.01 * g.tw)), (cx + np.cos(a) * ln / 2, cy + np.sin(a) * ln / 2)]
        shape = _line_layer(g, [pts], max(1, int((0.012 + 0.03 * sev) * g.tw)))
    else:  # lower-lobe collapse: a triangle from the hilum to the medial dome
        hx, hy = g.px(s * g.p["hila"][s][0], g.p["hila"][s][1])
        w = (0.06 + 0.12 * sev)
        poly = np.array([(hx, hy), g.px(s * 0.08, g.p["dome"][s] + 0.02), g.px(s * (0.08 + w), g.p["dome"][s] + 0.02)], np.int32)
        shape = np.zeros((g.H, g.W), np.float32)
        cv2.fillPoly(shape, [poly], 1.0)
    shape = blur(shape, 0.004 * g.tw) * L["lung_bool"][s]
    mask = shape > 0.5
    if not mask.any():
        mask = shape > 0.05
    delta = shape * (0.6 + 0.4 * sev) * (air(L) - lung_markings(L, g.p)) + 0.04 * shape
    return delta, mask


def support_device(g, L, rng, sev):
    """Signs: radio-opaque tubes and leads on their usual paths: an endotracheal tube with its tip
    above the carina, a central venous catheter from a subclavian vein to the superior vena cava, a
    pacemaker box with a lead to the right ventricle, a nasogastric tube down the oesophagus into
    the stomach."""
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
    """Signs: dense, irregular, plate-like calcified pleural plaques along the lateral chest wall
    (seen edge-on as lines) and on the domes."""
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
    """Signs: a reticular (net-like) and reticulonodular pattern, basal and peripheral, over a faint
    ground-glass haze; the vessels stay visible through it."""
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
    """Signs: a cardiothoracic ratio above 0.5 (the heart is redrawn larger by ``cardiomegaly_pre``);
    the mask is the heart outside its normal outline."""
    normal = heart_mask(g, g.p["_ctr0"])
    above = g.Y < max(g.p["dome"].values()) + 0.02
    mask = L["heart_bool"] & ~normal & above
    return np.zeros((g.H, g.W), np.float32), mask


# --------------------------------------------------------------------------- unseen findings


def pneumonia(g, L, rng, sev):
    """Signs (unseen finding): multifocal, ill-defined patchy airspace opacity in the lower and mid
    zones of both lungs, without a sharp border or a lobar limit."""
    total = np.zeros((g.H, g.W), np.float32)
    for s in SIDES:
        for _ in range(int(rng.integers(1, 4))):
            c = _pick_in(_zone(g, L, s, 0.35, 0.95, 0.2), rng)
            total = np.maximum(total, _blob(g, rng, c, (0.04 + 0.08 * sev) * g.tw, rough=0.7))
    total = blur(total * (L["lung"] > 0.5), 0.02 * g.tw)  # ill-defined: no sharp border, no bronchograms
    return total * (0.3 + 0.4 * sev) * air(L), total > 0.5


def edema(g, L, rng, sev):
    """Signs (unseen finding): upper-lobe vessels as large as the lower ones (cephalisation), a
    perihilar bat-wing haze, and Kerley B lines: short horizontal lines at the lung bases that reach
    the lateral pleura."""
    haze = np.zeros((g.H, g.W), np.float32)
    for s in SIDES:
        hx, hy = g.px(s * g.p["hila"][s][0], g.p["hila"][s][1])
        cv2.ellipse(haze, (hx, hy), (int(0.22 * g.tw), int(0.18 * g.tw)), 0, 0, 360, 1.0, -1)
    haze = blur(haze, 0.06 * g.tw) * L["lung"]
    kerley = []
    for s in SIDES:
        for _ in range(int(4 + 6 * sev)):
            y = rng.uniform(0.68, 0.9)
            u = float(g.p["lat"][s]) * 0.97
            kerley.append([g.px(s * u, y), g.px(s * (u - rng.uniform(0.05, 0.1)), y)])
    lines = _line_layer(g, kerley, 1) * (L["lung"] > 0.5)
    upper = np.clip((0.5 - g.Y) / 0.4, 0, 1)  # cephalisation: upper-zone vessels distend
    delta = haze * (0.25 + 0.35 * sev) * air(L) + 0.06 * lines + (0.6 + 0.8 * sev) * shown(g.p, "vessels") * AIR_IN_LUNG * L["vessels"] * upper
    return delta, (haze > 0.4) | (lines > 0.5)


def fracture_pre(p, rng, sev):
    p["fracture"] = {"side": int(rng.choice(SIDES)), "rib": int(rng.integers(3, 9)), "t": rng.uniform(0.55, 0.9), "step": 0.004 + 0.012 * sev}


def fracture(g, L, rng, sev):
    """Signs (unseen finding): a break in the cortex of a rib with a step (drawn by ``fracture_pre``
    through the rib geometry); the mask is the fracture site."""
    cx, cy = g.px(*rib_break(g))
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
    "atelectasis": (atelectasis_pre, atelectasis),
    "support_device": (None, support_device),
    "pleural_calcification": (None, pleural_calcification),
    "interstitial_opacity": (None, interstitial_opacity),
    "cardiomegaly": (cardiomegaly_pre, cardiomegaly),
    "pneumonia": (None, pneumonia),
    "edema": (None, edema),
    "fracture": (fracture_pre, fracture),
}
