"""`memstream data synth-defects`: textures and objects with defects (MVTec AD layout) and a video set with events.

Images: one folder per category, in the MVTec AD layout: ``<category>/train/good/000.png`` (normal only),
``<category>/test/good/*.png``, ``<category>/test/<defect>/*.png`` and ``<category>/ground_truth/<defect>/
<stem>_mask.png`` (single channel, 0 or 255, the size of the image: exactly the pixels the defect changed).
Categories: ``weave`` (texture: woven threads over/under, random phase, rotation within a few degrees), ``grain``
(texture: warped wood/stone rings and streaks, random orientation), ``nut`` (object: hexagonal nut with chamfer,
thread and hole, random rotation and small shift) and ``board`` (object: a small circuit board with an IC,
capacitors, resistors, an LED, traces and mounting holes in fixed places, small rotation and shift). A category is
one product on one station: its colours are fixed up to a small jitter (``LOOK``; version 1 drew them from several
palettes per category, which made a category several products). Every image gets its own lighting (gain, a gradient
in a random direction) and sensor noise, so with the pose and pattern phase a pixel difference to a mean image does
not find the defects. Defects (contrast and size drawn per defect, from obvious to subtle): scratch (thin bright or
dark curve), hole (dark irregular blob with a rim), stain (soft-edged colour blob), crack (dark branching line),
missing (nut: a chipped-off corner; board: a component absent, its pads showing) and, for ``board``, misplaced (a
component moved to an empty spot or turned by 90 degrees: a logical anomaly that looks locally normal; the mask
holds both the empty place and the new one). Images are drawn at twice the size and reduced (area), so a mask pixel
is any pixel a defect touched.

Video (``video/<split>/<name>.mp4``, mp4v; ``video/labels.json``): one camera's scene with regular activity: boxes
riding a conveyor at constant speed and spacing, a light blinking with a fixed period, a swinging pendulum. The
layout and colours are the same in every video; speed, spacing, periods, swing and phases are each video's own, so
what is normal differs between streams. Train videos are normal. Test videos hold 2-4 events of 1-5 s (at least one
temporal): appearance events (``foreign_object``: an object unlike the boxes on the floor or riding the belt;
``stain``: a dark blob on the floor) and temporal events that look normal frame by frame but are wrong in time
(``belt_reverse``, ``belt_stop``, ``light_stuck``: the light stays on, ``pendulum_frozen``). labels.json, per video:
split, seed, fps, frames, size, file, ``frame_labels`` (0/1 per frame), ``intervals`` ([start_frame, end_frame],
0-based, inclusive) and ``events`` (type, kind appearance/temporal, start_frame, end_frame, description).

Seeds: image ``i`` of a split has seed ``seed*10**6 + i`` (train) or ``seed*10**6 + 900000 + i`` (test: good images
first, then each defect type in turn); the category (and the video set) select separate random streams of that seed;
video ``i`` the same per split. ``render_image(category, seed, size, defect)`` draws any image again; with
``defect=None`` it gives the clean twin (same lighting and noise) of a defect image. Output is byte-for-byte
deterministic given the options, for any ``--jobs``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from memstream.pipelines.synth_actions import write_video
from memstream.pipelines.synth_tracks import _Serial

VERSION = "memstream-synth-defects-3"  # 3: a stain changes the surface by at least contrast x 60 levels
SPLITS = (("train", 0), ("test", 900_000))
SEED_STRIDE = 1_000_000
CATEGORIES = {"weave": ("texture", ("scratch", "hole", "stain")),
              "grain": ("texture", ("scratch", "crack", "hole", "stain")),
              "nut": ("object", ("scratch", "crack", "stain", "missing")),
              "board": ("object", ("scratch", "stain", "missing", "misplaced"))}
CODES = {"weave": 1, "grain": 2, "nut": 3, "board": 4, "video": 100}
EVENTS = {"foreign_object": "appearance", "stain": "appearance", "belt_reverse": "temporal",
          "belt_stop": "temporal", "light_stuck": "temporal", "pendulum_frozen": "temporal"}
# A category is one product on one inspection station: its colours and background are fixed (each image varies
# them by about LOOK per channel), as in every MVTec AD category; pose, pattern phase, lighting and noise vary.
LOOK = 4.0
DEFAULTS = {"train": 60, "test_good": 20, "test_defect": 10, "size": 128, "video_train": 8, "video_test": 8,
            "video_seconds": 30.0, "fps": 8.0, "video_size": 128}


def _field(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """(n, n) smooth noise, about unit variance: ``cells`` x ``cells`` normal values resized (cubic)."""
    return cv2.resize(rng.standard_normal((cells, cells)).astype(np.float32), (n, n), interpolation=cv2.INTER_CUBIC)


def _tint(rng: np.random.Generator, base, spread=18.0) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, spread, 3), 0, 255).astype(np.float32)


# ---- normal renders at R = 2 * size: (R, R, 3) float32 BGR image, (R, R) bool object mask, background ----

def _weave(rng, r: int, change=None):
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32)
    theta = np.deg2rad(rng.normal(0, 3.0))
    period = r * rng.uniform(0.05, 0.065)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 2)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period + rng.uniform(0, 2)
    fu, fv = u - np.floor(u), v - np.floor(v)
    top_h = ((np.floor(u) + np.floor(v)) % 2) == 0
    prof_h = np.clip(1.25 * np.sin(np.pi * fv), 0, 1) * (0.65 + 0.35 * np.sin(np.pi * fu))
    prof_v = np.clip(1.25 * np.sin(np.pi * fu), 0, 1) * (0.65 + 0.35 * np.sin(np.pi * fv))
    base = _tint(rng, [70, 110, 150], LOOK)
    warp, weft = base, np.clip(base * rng.uniform(1.08, 1.14), 0, 255)
    height = np.where(top_h, prof_h, prof_v)
    colour = np.where(top_h[..., None], weft, warp)
    yarn = 1 + 0.06 * _field(rng, r, r // 6)
    img = colour * (0.3 + 0.7 * height * yarn)[..., None]
    return img.astype(np.float32), np.ones((r, r), bool), None


def _grain(rng, r: int, change=None):
    big = int(r * 1.5)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    warp = _field(rng, big, 5) * rng.uniform(0.04, 0.09) * r + _field(rng, big, 14) * 0.01 * r
    period = r * rng.uniform(0.06, 0.12)
    d = yy + warp + 0.3 * (xx - big / 2) ** 2 / big * rng.uniform(-1, 1)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * d / period)
    rings = rings ** rng.uniform(1.0, 3.0)
    streaks = cv2.resize(rng.standard_normal((big, 6)).astype(np.float32), (big, big))
    value = np.clip(0.75 * rings + 0.12 * streaks + 0.1 * _field(rng, big, big // 4), 0, 1)
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), float(rng.uniform(0, 180)), 1.0)
    rot[:, 2] -= (big - r) / 2
    value = cv2.warpAffine(value, rot, (r, r), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    dark, light = _tint(rng, [40, 70, 110], LOOK), _tint(rng, [110, 160, 210], LOOK)
    return (dark + (light - dark) * value[..., None]).astype(np.float32), np.ones((r, r), bool), None


def _surface(rng, r: int, base) -> np.ndarray:
    """A plain background surface with soft low-frequency variation: (r, r, 3) float32."""
    return np.clip(_tint(rng, base, LOOK) * (1 + 0.05 * _field(rng, r, 4))[..., None], 0, 255).astype(np.float32)


def _nut(rng, r: int, change=None):
    bg = _surface(rng, r, [70, 60, 50])
    cx, cy = r / 2 + rng.uniform(-0.04, 0.04, 2) * r
    rad = r * rng.uniform(0.29, 0.33)
    alpha = rng.uniform(0, np.pi / 3)
    corners = np.stack([cx + rad * np.cos(alpha + np.arange(6) * np.pi / 3),
                        cy + rad * np.sin(alpha + np.arange(6) * np.pi / 3)], 1)
    hexa = np.zeros((r, r), np.uint8)
    cv2.fillPoly(hexa, [np.round(corners * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32)
    dist = np.hypot(xx - cx, yy - cy)
    grey = rng.uniform(155, 170)
    light = 1 + 0.25 * ((xx - cx) * 0.7 - (yy - cy) * 0.7) / rad  # light from the top right
    img = bg.copy()
    metal = np.float32(grey) * _tint(rng, [1, 1, 1], 0.03)[None, None] * light[..., None]
    face = dist < 0.87 * rad * rng.uniform(0.93, 0.98)
    img[hexa > 0] = 0.7 * metal[hexa > 0]
    img[face & (hexa > 0)] = metal[face & (hexa > 0)]
    hole_r = rad * rng.uniform(0.38, 0.45)
    thread = (dist < hole_r * 1.18) & (dist >= hole_r)
    spiral = 0.55 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * 2 + dist / max(1.0, 0.03 * r) * 2 * np.pi)
    img[thread] = metal[thread] * spiral[thread, None]
    obj = (hexa > 0) & (dist >= hole_r)
    img[dist < hole_r] = bg[dist < hole_r]
    changed = np.zeros((r, r), bool)
    if change is not None:  # missing: a chipped-off corner
        k, depth = change["corner"], change["depth"]
        direction = np.array([np.cos(alpha + k * np.pi / 3), np.sin(alpha + k * np.pi / 3)])
        beyond = ((xx - cx) * direction[0] + (yy - cy) * direction[1]) > depth * rad
        changed = beyond & (hexa > 0)
        img[changed] = bg[changed]
        obj &= ~changed
    return img, obj, changed


def _box(c, w, h, angle=0.0) -> np.ndarray:
    """(4, 2) corners of a w x h rectangle centred at c, turned by ``angle`` radians (board units)."""
    ca, sa = np.cos(angle), np.sin(angle)
    pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return np.asarray(c) + pts @ np.array([[ca, sa], [-sa, ca]])


# Board layout in board units (the board is 1.0 x 0.7): name -> (kind, centre, size)
PARTS = {"ic": ("ic", (0.45, 0.36), (0.26, 0.22)),
         "cap1": ("cap", (0.76, 0.2), (0.075, 0.0)), "cap2": ("cap", (0.76, 0.5), (0.075, 0.0)),
         "r1": ("res", (0.13, 0.16), (0.15, 0.055)), "r2": ("res", (0.13, 0.35), (0.15, 0.055)),
         "r3": ("res", (0.13, 0.54), (0.15, 0.055)), "led": ("led", (0.92, 0.35), (0.04, 0.0))}
FREE_SPOTS = ((0.45, 0.61), (0.45, 0.09), (0.6, 0.61))
TRACES = (((0.21, 0.16), (0.3, 0.16), (0.3, 0.27)), ((0.21, 0.35), (0.32, 0.35)),
          ((0.21, 0.54), (0.3, 0.54), (0.3, 0.45)), ((0.58, 0.3), (0.69, 0.2)), ((0.58, 0.42), (0.69, 0.5)),
          ((0.83, 0.2), (0.92, 0.2), (0.92, 0.31)))


def _part(canvas, to_px, kind, centre, size, angle, colours, mask=False) -> None:
    """Draw one component (or its footprint with ``mask``: every pixel it draws set to 255) through ``to_px``."""
    def poly(pts, col):
        cv2.fillPoly(canvas, [to_px(pts)], 255 if mask else col.tolist(), cv2.LINE_8, 4)

    def circle(c, rad, col, thick=-1):
        p, s = to_px(np.array([c]))[0], int(round(to_px.scale * rad * 16))
        cv2.circle(canvas, (int(p[0]), int(p[1])), s, 255 if mask else col.tolist(), thick, cv2.LINE_8, 4)

    w, h = size
    if kind == "ic":
        for side in (-1, 1):
            for j in range(6):
                pin = np.asarray(centre) + np.array([(j - 2.5) * w / 6.5, side * h / 2])
                poly(_box(pin, w / 14, h / 4), colours["pin"])
        poly(_box(centre, w, h), colours["ic"])
        circle(np.asarray(centre) + [-w / 2.8, -h / 4], h / 12, colours["ic"] + 40)
    elif kind == "cap":
        circle(centre, w, colours["cap"])
        circle(centre, w * 0.7, colours["cap"] * 1.25, max(1, int(to_px.scale * w * 0.15)))
    elif kind == "led":
        circle(centre, w * 1.25, colours["pin"])
        circle(centre, w, colours["led"])
    else:  # resistor: body with three colour bands
        poly(_box(centre, w, h, angle), colours["res"])
        for j, band in enumerate(colours["bands"]):
            offset = (j - 1) * w * 0.22
            poly(_box(np.asarray(centre) + offset * np.array([np.cos(angle), np.sin(angle)]), w * 0.08, h, angle),
                 band)


def _board(rng, r: int, change=None):
    bg = _surface(rng, r, [160, 170, 180])
    scale = r * rng.uniform(0.72, 0.8)
    angle = rng.normal(0, np.deg2rad(3.0))
    origin = np.array([r / 2, r / 2]) + rng.uniform(-0.03, 0.03, 2) * r
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])

    def to_px(pts):
        return np.round(((np.asarray(pts, float) - [0.5, 0.35]) @ rot * scale + origin) * 16).astype(np.int32)
    to_px.scale = scale
    colours = {"board": _tint(rng, [60, 120, 30], LOOK), "trace": _tint(rng, [90, 170, 60], LOOK),
               "pad": _tint(rng, [170, 190, 200], LOOK), "pin": _tint(rng, [190, 190, 190], LOOK),
               "ic": _tint(rng, [30, 30, 30], LOOK), "cap": _tint(rng, [140, 80, 30], LOOK),
               "res": _tint(rng, [140, 190, 215], LOOK), "led": _tint(rng, [40, 40, 220], LOOK),
               "bands": [_tint(rng, c, LOOK) for c in ([30, 30, 160], [40, 40, 40], [30, 120, 200])]}
    img = bg.copy()
    obj = np.zeros((r, r), np.uint8)
    cv2.fillPoly(obj, [to_px(_box((0.5, 0.35), 1.0, 0.7))], 1, cv2.LINE_8, 4)
    cv2.fillPoly(img, [to_px(_box((0.5, 0.35), 1.0, 0.7))], colours["board"].tolist(), cv2.LINE_8, 4)
    for path in TRACES:
        cv2.polylines(img, [to_px(path)], False, colours["trace"].tolist(), max(1, int(0.018 * scale)), cv2.LINE_8, 4)
    for c in ((0.05, 0.06), (0.95, 0.06), (0.05, 0.64), (0.95, 0.64)):
        p = to_px([c])[0]
        cv2.circle(img, (int(p[0]), int(p[1])), int(0.035 * scale * 16), colours["pad"].tolist(), -1, cv2.LINE_8, 4)
        cv2.circle(img, (int(p[0]), int(p[1])), int(0.02 * scale * 16), (20, 20, 20), -1, cv2.LINE_8, 4)
    for kind, centre, size in PARTS.values():  # pads, visible where a part is missing
        if kind in ("res", "cap"):
            along = np.array([size[0] * 0.32, 0.0]) if kind == "res" else np.array([0.0, size[0] * 0.45])
            for side in (-1, 1):
                pad_size = (0.035, 0.035) if kind == "res" else (0.05, 0.035)
                cv2.fillPoly(img, [to_px(_box(np.asarray(centre) + side * along, *pad_size))],
                             colours["pad"].tolist(), cv2.LINE_8, 4)
    changed = np.zeros((r, r), np.uint8)
    for name, (kind, centre, size) in PARTS.items():
        place, turn = centre, 0.0
        if change is not None and change["part"] == name:
            _part(changed, to_px, kind, centre, size, 0.0, colours, mask=True)
            if change["kind"] == "missing":
                continue
            place, turn = change["place"], change["turn"]
            _part(changed, to_px, kind, place, size, turn, colours, mask=True)
        _part(img, to_px, kind, place, size, turn, colours)
    return img, obj > 0, changed > 0


RENDER = {"weave": _weave, "grain": _grain, "nut": _nut, "board": _board}


# ---- pixel defects at R: each returns the changed pixels (bool) and changes img in place ----

def _pick(rng, region: np.ndarray) -> np.ndarray:
    """A random pixel (x, y) of ``region``, as float."""
    ys, xs = np.nonzero(region)
    k = int(rng.integers(len(xs)))
    return np.array([xs[k], ys[k]], float)


def _curve(rng, r: int, start: np.ndarray) -> np.ndarray:
    """(K, 2) points of a smooth curve (quadratic Bezier) starting in ``start``, in pixels."""
    p0 = _pick(rng, start)
    length = r * rng.uniform(0.15, 0.45)
    heading = rng.uniform(0, 2 * np.pi)
    p2 = p0 + length * np.array([np.cos(heading), np.sin(heading)])
    p1 = (p0 + p2) / 2 + rng.normal(0, 0.25 * length, 2)
    t = np.linspace(0, 1, 40)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _scratch(rng, img, inside, start, contrast):
    r = img.shape[0]
    m = np.zeros(inside.shape, np.uint8)
    cv2.polylines(m, [np.round(_curve(rng, r, start) * 16).astype(np.int32)], False, 1,
                  int(rng.integers(2, 5)), cv2.LINE_8, 4)
    hit = (m > 0) & inside
    sign = 1 if rng.random() < 0.5 else -1
    img[hit] = np.clip(img[hit] + sign * contrast * rng.uniform(60, 120), 0, 255)
    return hit


def _crack(rng, img, inside, start, contrast):
    r = img.shape[0]
    m = np.zeros(inside.shape, np.uint8)
    walks = [(_pick(rng, start), rng.uniform(0, 2 * np.pi), int(rng.integers(14, 28)))]
    step = r / 45
    while walks:
        pos, heading, steps = walks.pop()
        pts = [pos.copy()]
        for _ in range(steps):
            heading += rng.normal(0, 0.45)
            pos = pos + step * np.array([np.cos(heading), np.sin(heading)])
            pts.append(pos.copy())
            if len(walks) < 3 and steps > 6 and rng.random() < 0.08:
                walks.append((pos.copy(), heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2), steps // 2))
        cv2.polylines(m, [np.round(np.array(pts) * 16).astype(np.int32)], False, 1, int(rng.integers(1, 4)),
                      cv2.LINE_8, 4)
    hit = (m > 0) & inside
    img[hit] *= 1 - 0.85 * contrast
    return hit


def _hole(rng, img, inside, start, contrast):
    r = img.shape[0]
    c = _pick(rng, start)
    rad = r * rng.uniform(0.025, 0.07)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
    radii = rad * (1 + 0.25 * rng.standard_normal(14)).clip(0.5, 1.6)
    pts = np.stack([c[0] + radii * np.cos(angles), c[1] + radii * np.sin(angles)], 1)
    blob = np.zeros(inside.shape, np.uint8)
    cv2.fillPoly(blob, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    rim_px = max(2, int(0.3 * rad))
    rim = cv2.dilate(blob, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_px + 1,) * 2)) > 0
    blob = blob > 0
    rim &= inside & ~blob
    blob &= inside
    img[blob] = img[blob] * (1 - 0.9 * contrast) + 10 * contrast
    img[rim] = np.clip(img[rim] * (1 + 0.5 * contrast), 0, 255)
    return blob | rim


STAIN_COLOURS = ([30, 60, 90], [20, 20, 20], [60, 140, 170], [120, 60, 120])  # BGR: brown, black, ochre, purple


def _stain(rng, img, inside, start, contrast):
    r = img.shape[0]
    centre = _pick(rng, start)
    m = np.zeros(inside.shape, np.float32)
    rad = r * rng.uniform(0.04, 0.1)
    for _ in range(int(rng.integers(2, 5))):
        c = centre + rng.normal(0, 0.5 * rad, 2)
        axes = (max(2, int(rad * rng.uniform(0.5, 1.0))), max(2, int(rad * rng.uniform(0.5, 1.0))))
        cv2.ellipse(m, (int(c[0]), int(c[1])), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    m = cv2.GaussianBlur(m, (0, 0), rad / 3)
    alpha = np.clip((m - 0.1) / 0.9, 0, 1) * inside * rng.uniform(0.5, 0.9) * contrast
    colour = _tint(rng, rng.choice(STAIN_COLOURS), 20)
    # A stain's visibility is its opacity times its colour's distance to the surface under it: a brown stain on
    # brown wood at a subtle opacity changed the pixels by less than the sensor noise (a label no method can
    # find). Like the other defects, its core changes the surface by at least contrast x 60 grey levels: the
    # farthest palette colour if the drawn one is too close, then a higher opacity (at most 0.95).
    if alpha.max() > 0:
        core = alpha >= 0.5 * alpha.max()
        surface, opacity, target = img[core].mean(0), alpha[core].mean(), contrast * 60.0
        if np.abs(colour - surface).max() * opacity < target:
            colour = max((np.asarray(c, np.float32) for c in STAIN_COLOURS), key=lambda c: np.abs(c - surface).max())
            change = np.abs(colour - surface).max() * opacity
            alpha = alpha * min(target / max(change, 1e-6), 0.95 / alpha.max())
    img[:] = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    return alpha > 0


PIXEL_DEFECTS = {"scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain}


def _structural(rng, category: str, defect: str) -> dict:
    if category == "nut":
        return {"corner": int(rng.integers(6)), "depth": float(rng.uniform(0.55, 0.8))}
    names = [n for n, (kind, _, _) in PARTS.items() if kind != "ic"] if defect == "misplaced" else list(PARTS)
    part = names[int(rng.integers(len(names)))]
    if defect == "missing":
        return {"kind": "missing", "part": part}
    if PARTS[part][0] == "res" and rng.random() < 0.5:  # turned in place
        return {"kind": "misplaced", "part": part, "place": PARTS[part][1], "turn": float(np.pi / 2)}
    spot = FREE_SPOTS[int(rng.integers(len(FREE_SPOTS)))]
    return {"kind": "misplaced", "part": part, "place": spot, "turn": float(rng.choice([0.0, np.pi / 2]))}


def render_image(category: str, seed: int, size: int = 128, defect: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image: ((size, size, 3) uint8 BGR, (size, size) uint8 mask 0/255); ``defect=None`` is the clean twin."""
    if category not in CATEGORIES:
        raise ValueError(f"category {category!r}: expected one of {', '.join(CATEGORIES)}")
    if defect is not None and defect not in CATEGORIES[category][1]:
        raise ValueError(f"defect {defect!r}: {category} has {', '.join(CATEGORIES[category][1])}")
    code = CODES[category]
    rng_plan, rng_defect, rng_light = (np.random.default_rng([seed, code, k]) for k in range(3))
    r = 2 * size
    change = _structural(rng_defect, category, defect) if defect in ("missing", "misplaced") else None
    img, inside, changed = RENDER[category](rng_plan, r, change)
    if defect in PIXEL_DEFECTS:
        # 2 in 3 defects clearly visible, 1 in 3 subtle
        contrast = float(rng_defect.uniform(0.5, 1.0) if rng_defect.random() < 0.67 else rng_defect.uniform(0.15, 0.4))
        margin = np.zeros_like(inside)
        margin[r // 8:-r // 8, r // 8:-r // 8] = True
        changed = PIXEL_DEFECTS[defect](rng_defect, img, inside, inside & margin, contrast)
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    mask = np.zeros((size, size), np.uint8)
    if defect is not None:
        mask = np.where(cv2.resize(changed.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0,
                        255, 0).astype(np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    psi = rng_light.uniform(0, 2 * np.pi)
    gain = rng_light.uniform(0.9, 1.08) * (1 + rng_light.uniform(0, 0.15) * (xx * np.cos(psi) + yy * np.sin(psi)))
    sigma = rng_light.uniform(2, 4)
    noisy = small * gain[..., None] + rng_light.standard_normal(small.shape).astype(np.float32) * sigma
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8), mask


# ---- video: a conveyor, a blinking light and a pendulum; events in test videos ----

def _video_events(rng, seconds: float, fps: float) -> list[dict]:
    """2-4 events of 1-5 s in equal slots after the first 1.5 s, at least one temporal; frames 0-based inclusive."""
    n = int(min(rng.integers(2, 5), max(1, (seconds - 2.0) // 1.5)))
    slot = (seconds - 2.0) / n
    kinds = [str(k) for k in rng.permutation(list(EVENTS))[:n]]
    if all(EVENTS[k] == "appearance" for k in kinds):
        kinds[-1] = ("belt_reverse", "belt_stop", "light_stuck", "pendulum_frozen")[int(rng.integers(4))]
    events = []
    for j, kind in enumerate(kinds):
        dur = min(rng.uniform(1.0, 5.0), slot - 0.5)
        start = 1.5 + j * slot + rng.uniform(0, slot - 0.5 - dur)
        f0, f1 = int(round(start * fps)), int(round((start + dur) * fps)) - 1
        events.append({"type": kind, "kind": EVENTS[kind], "start_frame": f0, "end_frame": max(f0, f1)})
    return events


def plan_video(seed: int, seconds: float, fps: float, size: int, anomalous: bool) -> dict:
    """Scene parameters, per-frame states and events of one video (everything but the pixels)."""
    rng = np.random.default_rng([seed, CODES["video"], 0])
    frames = int(round(seconds * fps))
    v = size
    # one camera on one scene: the layout and colours are fixed (up to LOOK); the activity's rates, spacing,
    # amplitude and phases are drawn per video, so "normal" differs between streams
    p = {"seed": seed, "frames": frames, "fps": fps, "size": v,
         "floor": _tint(rng, [120, 130, 135], LOOK), "belt_y": v * 0.59, "belt_h": v * 0.16, "box": v * 0.105,
         "spacing": v * rng.uniform(0.3, 0.42), "box_colour": _tint(rng, [40, 110, 180], LOOK),
         "speed": v * rng.uniform(0.1, 0.18),  # px per second
         "light_xy": (v * 0.16, v * 0.18), "light_colour": _tint(rng, [60, 220, 240], LOOK),
         "blink": rng.uniform(1.0, 2.0), "pivot": (v * 0.68, v * 0.06),
         "arm": v * 0.29, "swing": np.deg2rad(rng.uniform(25, 40)),
         "period": rng.uniform(2.0, 3.5), "noise": rng.uniform(1.5, 3.0)}
    events = _video_events(rng, seconds, fps) if anomalous else []
    belt, pend, blink, stuck = np.ones(frames), np.ones(frames), np.ones(frames), np.zeros(frames, bool)
    for e in events:
        span = slice(e["start_frame"], e["end_frame"] + 1)
        if e["type"] == "belt_reverse":
            belt[span] = -1
        elif e["type"] == "belt_stop":
            belt[span] = 0
        elif e["type"] == "pendulum_frozen":
            pend[span] = 0
        elif e["type"] == "light_stuck":
            blink[span], stuck[span] = 0, True
        else:
            e["xy"] = (rng.uniform(0.25, 0.85) * v, rng.uniform(0.82, 0.93) * v)
            e["on_belt"] = bool(e["type"] == "foreign_object" and rng.random() < 0.5)
            e["colour"] = _tint(rng, [200, 40, 200] if e["type"] == "foreign_object" else [35, 40, 45], 25)
            e["radius"] = v * rng.uniform(0.04, 0.07)
            if e["on_belt"]:
                travel = p["speed"] * (e["end_frame"] - e["start_frame"] + 1) / fps  # stays in view
                e["xy"] = (rng.uniform(0.1 * v, max(0.1 * v, 0.9 * v - travel)), p["belt_y"] + p["belt_h"] / 2)
    p["belt_pos"] = rng.uniform(0, p["spacing"]) + np.cumsum(belt) * p["speed"] / fps
    p["phase"] = rng.uniform(0, 2 * np.pi) + np.cumsum(pend) * 2 * np.pi / p["period"] / fps
    light_phase = rng.uniform(0, 1) + np.cumsum(blink) / p["blink"] / fps
    p["light_on"] = ((light_phase % 1.0) < 0.5) | stuck
    p["events"] = events
    for e in events:
        e["description"] = _describe(e)
    rng_bg = np.random.default_rng([seed, CODES["video"], 1])
    p["background"] = _surface(rng_bg, v, p["floor"])
    return p


def _describe(e: dict) -> str:
    return {"foreign_object": "a foreign object " + ("rides the belt" if e.get("on_belt") else "lies on the floor"),
            "stain": "a dark stain appears on the floor", "belt_reverse": "the conveyor runs backwards",
            "belt_stop": "the conveyor stops", "light_stuck": "the blinking light stays on",
            "pendulum_frozen": "the pendulum stops mid-swing"}[e["type"]]


def draw_video(p: dict) -> np.ndarray:
    """(T, H, W, 3) uint8 BGR frames of a planned video."""
    v, rng = p["size"], np.random.default_rng([p["seed"], CODES["video"], 2])
    base = p["background"].copy()
    y0, bh = int(p["belt_y"]), int(p["belt_h"])
    base[y0:y0 + bh] = 55
    cv2.rectangle(base, (int(p["light_xy"][0] - 0.09 * v), int(p["light_xy"][1] - 0.09 * v)),
                  (int(p["light_xy"][0] + 0.09 * v), int(p["light_xy"][1] + 0.09 * v)), (50, 50, 50), -1)
    out = np.empty((p["frames"], v, v, 3), np.uint8)
    for f in range(p["frames"]):
        img = base.copy()
        pos = p["belt_pos"][f]
        stripe = 0.08 * v
        for x in np.arange(pos % stripe - stripe, v + stripe, stripe):
            cv2.line(img, (int(x), y0 + 1), (int(x), y0 + bh - 2), (75, 75, 75), 1)
        box = p["box"]
        for x in np.arange(pos % p["spacing"] - p["spacing"], v + p["spacing"], p["spacing"]):
            top = y0 + bh / 2 - box / 2
            cv2.rectangle(img, (int(x), int(top)), (int(x + box), int(top + box)), p["box_colour"].tolist(), -1)
            cv2.rectangle(img, (int(x), int(top)), (int(x + box), int(top + box)), (30, 30, 30), 1)
        lx, ly = (int(c) for c in p["light_xy"])
        colour = p["light_colour"] if p["light_on"][f] else p["light_colour"] * 0.25
        cv2.circle(img, (lx, ly), int(0.06 * v), colour.tolist(), -1, cv2.LINE_AA)
        angle = p["swing"] * np.sin(p["phase"][f])
        px, py = p["pivot"]
        bx, by = px + p["arm"] * np.sin(angle), py + p["arm"] * np.cos(angle)
        cv2.line(img, (int(px), int(py)), (int(bx), int(by)), (40, 40, 40), max(1, v // 100), cv2.LINE_AA)
        cv2.circle(img, (int(bx), int(by)), int(0.05 * v), (90, 90, 200), -1, cv2.LINE_AA)
        for e in p["events"]:
            if e["kind"] != "appearance" or not e["start_frame"] <= f <= e["end_frame"]:
                continue
            x, y = e["xy"]
            if e["on_belt"]:
                x += pos - p["belt_pos"][e["start_frame"]]
            if e["type"] == "foreign_object":
                tri = np.array([[x, y - e["radius"]], [x - e["radius"], y + e["radius"]], [x + e["radius"],
                                                                                           y + e["radius"]]])
                cv2.fillPoly(img, [np.round(tri).astype(np.int32)], e["colour"].tolist(), cv2.LINE_AA)
            else:
                cv2.ellipse(img, (int(x), int(y)), (int(e["radius"] * 1.4), int(e["radius"])), 0, 0, 360,
                            e["colour"].tolist(), -1, cv2.LINE_AA)
        x = img.astype(np.float32) + rng.standard_normal(img.shape).astype(np.float32) * np.float32(p["noise"])
        out[f] = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    return out


def _video_entry(name: str, split: str, p: dict) -> dict:
    labels = np.zeros(p["frames"], int)
    for e in p["events"]:
        labels[e["start_frame"]:e["end_frame"] + 1] = 1
    events = [{k: e[k] for k in ("type", "kind", "start_frame", "end_frame", "description")} for e in p["events"]]
    return {"split": split, "seed": p["seed"], "fps": p["fps"], "frames": p["frames"], "size": [p["size"], p["size"]],
            "file": f"{split}/{name}.mp4", "frame_labels": labels.tolist(),
            "intervals": [[e["start_frame"], e["end_frame"]] for e in events], "events": events,
            "normal": {"blink_period_s": round(p["blink"], 3), "pendulum_period_s": round(p["period"], 3),
                       "belt_speed_px_s": round(p["speed"], 3), "box_spacing_px": round(p["spacing"], 3)}}


# ---- writing ----

def _write_image(task: tuple) -> tuple[str, str, int]:
    out, category, rel, seed, size, defect = task
    cv2.setNumThreads(1)
    img, mask = render_image(category, seed, size, defect)
    root = Path(out) / category
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / rel), img)
    if defect is not None:
        gt = root / "ground_truth" / defect / f"{Path(rel).stem}_mask.png"
        gt.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(gt), mask)
    return category, rel, seed


def _write_video(task: tuple) -> tuple[str, dict]:
    out, name, split, seed, opts = task
    cv2.setNumThreads(1)
    p = plan_video(seed, opts["video_seconds"], opts["fps"], opts["video_size"], split == "test")
    path = Path(out) / "video" / split / f"{name}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, draw_video(p), p["fps"])
    return name, _video_entry(name, split, p)


def _task(item):
    return _write_image(item[1]) if item[0] == "image" else _write_video(item[1])


def image_tasks(out, opts: dict) -> list[tuple]:
    """(out, category, relative path, seed, size, defect) for every image, in output order."""
    tasks, base = [], opts["seed"] * SEED_STRIDE
    for category in opts["categories"]:
        for i in range(opts["train"]):
            tasks.append((str(out), category, f"train/good/{i:03d}.png", base + i, opts["size"], None))
        i = 0
        for defect in (None, *CATEGORIES[category][1]):
            for j in range(opts["test_good"] if defect is None else opts["test_defect"]):
                tasks.append((str(out), category, f"test/{defect or 'good'}/{j:03d}.png", base + 900_000 + i,
                              opts["size"], defect))
                i += 1
    return tasks


def video_names(seed: int, train: int, test: int) -> list[tuple[str, str, int]]:
    """(name, split, seed) of every video; the splits' seed ranges are disjoint."""
    counts = {"train": train, "test": test}
    return [(f"{split}-{i:04d}", split, seed * SEED_STRIDE + base + i) for split, base in SPLITS
            for i in range(counts[split])]


def check_options(categories=None, images=True, video=True, seed=0, jobs=1, **options) -> dict:
    """Validated options; ValueError naming every bad value."""
    opts = {**DEFAULTS, **options}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options: {', '.join(sorted(unknown))}")
    cats = list(CATEGORIES) if categories is None else list(categories)
    bad = [f"--categories {c}: expected some of {', '.join(CATEGORIES)}" for c in cats if c not in CATEGORIES]
    bad += ["--categories: none given"] if not cats else []
    bad += [f"--categories {c}: given twice" for c in sorted(set(cats)) if cats.count(c) > 1]
    ints = {"train": (0, 100_000), "test_good": (0, 80_000), "test_defect": (0, 20_000), "size": (32, 2048),
            "video_train": (0, 100_000), "video_test": (0, 100_000), "video_size": (64, 2048),
            "seed": (0, 2 ** 32 // SEED_STRIDE - 1), "jobs": (1, 512)}
    values = {**opts, "seed": seed, "jobs": jobs}
    for key, (lo, hi) in ints.items():
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not lo <= v <= hi:
            bad.append(f"--{key.replace('_', '-')} {v}: must be an integer within {lo}-{hi}")
    for key, (lo, hi) in {"video_seconds": (5.0, 3600.0), "fps": (1.0, 120.0)}.items():
        v = opts[key]
        if not isinstance(v, int | float) or not np.isfinite(v) or not lo <= v <= hi:
            shown = f"{v:g}" if isinstance(v, int | float) else v
            bad.append(f"--{key.replace('_', '-')} {shown}: must be within {lo:g}-{hi:g}")
    if not images and not video:
        bad.append("--no-images --no-video: nothing to generate")
    if bad:
        raise ValueError("; ".join(bad))
    opts.update({"categories": cats, "images": bool(images), "video": bool(video), "seed": int(seed),
                 "jobs": int(jobs), "video_seconds": float(opts["video_seconds"]), "fps": float(opts["fps"])})
    return opts


def _readme(command: str, doc: dict) -> str:
    lines = [f"# Synthetic anomaly detection set ({VERSION})", "", f"Made by `{command}`.", ""]
    if doc["categories"]:
        lines += ["| category | kind | train/good | test/good | defects (test images each) |", "|" + " --- |" * 5]
        for c, info in doc["categories"].items():
            lines.append(f"| {c} | {info['kind']} | {info['counts']['train']} | {info['counts']['test_good']} | "
                         f"{', '.join(info['defects'])} ({info['counts']['test_defect']}) |")
        lines += ["", f"Images {doc['options']['size']}x{doc['options']['size']} px PNG."]
    if doc["video"]:
        vid = doc["video"]
        lines += ["", f"Video: {vid['train']} train and {vid['test']} test videos, {vid['seconds']:g} s at "
                      f"{vid['fps']:g} fps, {vid['size']}x{vid['size']} px; {vid['events']} events in test "
                      f"({', '.join(f'{k} {n}' for k, n in vid['event_types'].items())})."]
    return "\n".join([*lines, "", __doc__])


def generate(out: str | Path, categories=None, images: bool = True, video: bool = True, seed: int = 0, jobs: int = 1,
             command: str = "", **options) -> dict:
    """Write the data set into ``out`` (absent or an empty folder); returns the manifest (manifest.json).

    ``options``: train, test_good, test_defect, size, video_train, video_test, video_seconds, fps, video_size
    (see DEFAULTS and the module docstring).
    """
    opts = check_options(categories, images, video, seed, jobs, **options)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty folder; choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    tasks = [("image", t) for t in image_tasks(out, opts)] if images else []
    names = video_names(opts["seed"], opts["video_train"], opts["video_test"]) if video else []
    tasks += [("video", (str(out), name, split, s, opts)) for name, split, s in names]
    workers = min(opts["jobs"], max(1, len(tasks)))
    seeds: dict[str, dict] = {c: {} for c in (opts["categories"] if images else [])}
    videos: dict[str, dict] = {}
    with (multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial()) as pool:
        for kind, result in zip((t[0] for t in tasks), pool.imap(_task, tasks, 4) if workers > 1
                                else pool.imap(_task, tasks)):
            if kind == "image":
                seeds[result[0]][result[1]] = result[2]
            else:
                videos[result[0]] = result[1]
    cats = {c: {"kind": CATEGORIES[c][0], "defects": list(CATEGORIES[c][1]),
                "counts": {"train": opts["train"], "test_good": opts["test_good"], "test_defect": opts["test_defect"]},
                "seeds": seeds[c]} for c in seeds}
    summary = None
    if video:
        events = [e["type"] for v in videos.values() for e in v["events"]]
        summary = {"train": opts["video_train"], "test": opts["video_test"], "seconds": opts["video_seconds"],
                   "fps": opts["fps"], "size": opts["video_size"], "events": len(events),
                   "event_types": {k: events.count(k) for k in EVENTS}, "labels": "video/labels.json"}
        labels = {"version": VERSION, "fps": opts["fps"], "size": [opts["video_size"]] * 2, "videos": videos}
        (out / "video" / "labels.json").write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
    doc = {"version": VERSION, "options": {k: opts[k] for k in (*DEFAULTS, "categories", "images", "video", "seed")},
           "categories": cats, "video": summary}
    readme = _readme(command or "memstream.pipelines.synth_defects.generate", doc)
    for name, text in (("manifest.json", json.dumps(doc, indent=1) + "\n"), ("README.md", readme)):
        (out / name).write_text(text, encoding="utf-8")
    return json.loads(json.dumps(doc))


HELP = {"train": "normal training images per category", "test_good": "normal test images per category",
        "test_defect": "test images per defect type", "size": "image side in pixels",
        "video_train": "normal training videos", "video_test": "test videos with events",
        "video_seconds": "seconds per video", "fps": "video frame rate", "video_size": "video side in pixels"}


def cli_synth_defects(argv: list[str]) -> int:
    """The CLI; exit 2 with a message naming the value on bad options."""
    doc_head, doc_rest = __doc__.split("\n", 2)[0], __doc__.split("\n", 2)[2]
    p = argparse.ArgumentParser(prog="memstream data synth-defects", description=doc_head, epilog=doc_rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), metavar="NAME",
                   help=f"image categories (default all: {' '.join(CATEGORIES)})")
    extra = {"seed": (0, "base seed; each image's and video's seed is derived from it"),
             "jobs": (2, "parallel worker processes")}
    for key, (default, text) in {**{k: (DEFAULTS[k], t) for k, t in HELP.items()}, **extra}.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=type(default), default=default,
                       help=f"{text} (default {default:g})")
    p.add_argument("--no-images", action="store_true", help="skip the images")
    p.add_argument("--no-video", action="store_true", help="skip the videos")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        doc = generate(args.out, categories=args.categories, images=not args.no_images, video=not args.no_video,
                       seed=args.seed, jobs=args.jobs, command="memstream data synth-defects " + " ".join(argv),
                       **{k: getattr(args, k) for k in HELP})
    except ValueError as e:
        print(f"memstream: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "images": sum(len(c["seeds"]) for c in doc["categories"].values()),
                      "videos": 0 if doc["video"] is None else doc["video"]["train"] + doc["video"]["test"],
                      "wall_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0
