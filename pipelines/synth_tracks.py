"""`memstream data synth-tracks`: rendered multi-object tracking scenes in the MOTChallenge layout.

Built so that a tracker with long-term memory beats an IoU/Kalman tracker. Every sequence shows 5-9 (``--objects``)
pedestrian-like figures (head circle, body ellipse or rounded box, two swinging legs; about 2.2:1 tall, height
12-25 % of the image, larger lower in the image: mild perspective) walking on a textured ground with static clutter.
Look-alikes: each sequence draws 2-3 *looks* (body, leg and head colour, body shape, size, accent kind: hat, bag,
stripe or scarf) and gives each look to 2-3 objects, which then differ ONLY in the colour of their accent (a small
patch, about 10 % of the figure): coarse colour cannot tell them apart, a careful embedding can.

Motion: goal-driven walks with smoothly varying heading and speed (curves, speed changes, short stops), through
1-3 goals per visit, often behind the scenery. Per look group, one pair of look-alikes is made to cross (nearly
head-on, so a crossing lasts well under 1.5 s); no pair of objects overlaps (intersection > 20 % of the smaller box)
for 1.5 s or more. Objects walk out at the left/right edge and come back after a gap of ``--gap`` s (3-15),
at the same or the other edge; at least ``--reentries`` (2) objects per sequence do so, others enter for the first
time mid-sequence or leave for good. 1-3 scenery occluders (pillars, trees, crates) are drawn IN FRONT of the
objects, so an object walking behind one disappears for a while. Per-frame sensor noise and a slow brightness
drift. Objects are drawn in depth order of their foot point (farther, higher in the image, first).

Layout (``DIR``): ``<split>/<seq>/seqinfo.ini`` ([Sequence] name, imDir=img1, frameRate, seqLength, imWidth,
imHeight, imExt=.jpg), ``img1/000001.jpg ...`` (JPEG quality 90), ``gt/gt.txt``, ``det/det.txt``;
``seqmaps/<split>.txt`` (TrackEval seqmap), ``scenes.json`` and ``README.md``. Sequences are named
``synth-<split>-0003``; splits train, val, test use disjoint seeds: sequence ``i`` of train has seed
``seed*10**6 + i``, of val ``seed*10**6 + 500000 + i``, of test ``seed*10**6 + 900000 + i``. Output is
byte-for-byte deterministic given the options, for any ``--jobs``.

gt.txt (MOT17 style, 1-based frames): ``frame,id,x,y,w,h,1,cls,vis``, x,y top-left, the box clipped to the image;
a row for every object with any visible pixel in the image. ``vis`` = visible fraction of the object's full
(unclipped) silhouette: not outside the image, not behind scenery, not behind objects drawn in front of it.
cls = 1, or 8 ("distractor", ignored by TrackEval's MOT17 preprocessing) where vis < 0.2.
det.txt (public detections): ``frame,-1,x,y,w,h,score,-1,-1,-1``: true boxes with centre/size jitter (~4 %),
missed with probability 0.97 where vis < 0.3, else 4-16 % rising as vis drops; plus ~0.3 false positives per
frame (plausible person-sized boxes on clutter and scenery); scores 0.6-1.0 for true, 0.2-0.7 for false ones.
scenes.json: per sequence split, seed, frames, objects (id, look, colours as #rrggbb), occluders, crossings
(ids, frame) and ``reentries``: {"id", "exit_frame" (last visible frame), "return_frame" (first visible frame
after), "gap_frames"} wherever an object was fully out of view (outside the image or fully hidden) for
>= min(2 s, --gap MIN) and came back.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.interpolate import PchipInterpolator

VERSION = "memstream-synth-tracks-1"
SPLITS = (("train", "train", 0), ("val", "val", 500_000), ("test", "test", 900_000))
SEED_STRIDE = 1_000_000
DEFAULTS = {"objects": (5, 9), "gap": (3.0, 15.0), "speed": (0.5, 1.0), "reentries": 2}
BAND = (0.45, 0.97)      # foot y range (fraction of the image height) objects walk in
HEIGHT = (0.115, 0.235)  # object height / image height at the top and bottom of the band
ASPECT = 0.45            # box width / height
DT = 0.8                 # seconds between walk keyframes
OVERLAP = 0.2            # boxes "overlap" when their intersection exceeds this fraction of the smaller one
MAX_OVERLAP_S = 1.5      # no pair overlaps this long
ACCENTS = ("hat", "bag", "stripe", "scarf")
SHAPES = ("ellipse", "box")


@dataclass
class Look:
    body: tuple
    legs: tuple
    head: tuple
    shape: str
    accent: str
    scale: float
    side: int  # bag side (+1 right, -1 left)


@dataclass
class Obj:
    """One object: id, look index, accent colour; per frame (T,) present, foot x, foot y, height, leg phase."""

    id: int
    look: int
    accent: tuple
    present: np.ndarray
    x: np.ndarray
    y: np.ndarray
    h: np.ndarray
    phase: np.ndarray


@dataclass
class ScenePlan:
    """Everything about a sequence but its pixels. vis: (N, T) visible fraction, boxes: (N, T, 4) full x, y, w, h."""

    seed: int
    width: int
    height: int
    fps: float
    frames: int
    looks: list
    objects: list
    occluders: list
    clutter: list
    crossings: list
    vis: np.ndarray
    boxes: np.ndarray
    gain: np.ndarray
    noise: float
    reentries: list
    background: np.ndarray | None = None  # (H, W, 3) uint8
    scenery: np.ndarray | None = None     # (H, W, 3) uint8 occluder pixels, drawn where scenery_mask
    scenery_mask: np.ndarray | None = None  # (H, W) bool


def parse_size(text) -> tuple[int, int]:
    """'320x240' -> (320, 240); ValueError naming the value."""
    if isinstance(text, tuple | list):
        w, h = (int(v) for v in text)
    else:
        try:
            w, h = (int(v) for v in str(text).lower().split("x"))
        except ValueError:
            raise ValueError(f"--size {text}: expected WIDTHxHEIGHT, e.g. 320x240") from None
    if not (64 <= w <= 4096 and 48 <= h <= 4096):
        raise ValueError(f"--size {text if not isinstance(text, tuple | list) else f'{w}x{h}'}: "
                         "width 64-4096 and height 48-4096 px")
    return w, h


def check_options(frames=300, size=(320, 240), fps=10.0, objects=(5, 9), gap=(3.0, 15.0), speed=(0.5, 1.0),
                  reentries=2) -> dict:
    """Validated scene options; ValueError naming a bad value."""
    w, h = parse_size(size)
    fps, frames = float(fps), int(frames)
    if not (np.isfinite(fps) and 0 < fps <= 240):
        raise ValueError(f"--fps {fps:g}: must be within (0, 240]")
    if not 1 <= frames <= 1_000_000:
        raise ValueError(f"--frames {frames}: must be within 1-1000000")
    o_lo, o_hi = (int(v) for v in objects)
    if not 1 <= o_lo <= o_hi <= 60:
        raise ValueError(f"--objects {o_lo} {o_hi}: need 1 <= MIN <= MAX <= 60")
    g_lo, g_hi = (float(v) for v in gap)
    if not (np.isfinite(g_lo) and np.isfinite(g_hi) and 0 < g_lo <= g_hi):
        raise ValueError(f"--gap {g_lo:g} {g_hi:g}: need 0 < MIN <= MAX (seconds)")
    s_lo, s_hi = (float(v) for v in speed)
    if not (np.isfinite(s_lo) and np.isfinite(s_hi) and 0 < s_lo <= s_hi <= 10):
        raise ValueError(f"--speed {s_lo:g} {s_hi:g}: need 0 < MIN <= MAX <= 10 (object heights per second)")
    reentries = int(reentries)
    if not 0 <= reentries <= o_lo:
        raise ValueError(f"--reentries {reentries}: must be within 0-{o_lo} (the --objects minimum)")
    if reentries and frames / fps < g_lo + 3.0:
        raise ValueError(f"--frames {frames}: {frames / fps:g} s is too short for re-entries after a gap of "
                         f"--gap {g_lo:g} s (needs >= {g_lo + 3:g} s); use more frames, a shorter gap or --reentries 0")
    return {"frames": frames, "size": (w, h), "fps": fps, "objects": (o_lo, o_hi), "gap": (g_lo, g_hi),
            "speed": (s_lo, s_hi), "reentries": reentries}


def _colour(rng: np.random.Generator, hue=None, sat=(0.4, 0.9), val=(0.4, 0.9)) -> tuple:
    h = rng.uniform(0, 180) if hue is None else hue % 180
    hsv = np.array([[[h, rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _hex(bgr: tuple) -> str:
    return "#{:02x}{:02x}{:02x}".format(*reversed([int(c) for c in bgr]))


class _Ctx:
    """Scene geometry for walks: image size, band, occluders, speed scale."""

    def __init__(self, w: int, h: int, fps: float, occluders: list, max_speed: float = 1.0):
        self.w, self.h, self.fps, self.occluders, self.max_speed = w, h, fps, occluders, max_speed
        self.y0, self.y1 = BAND[0] * h, BAND[1] * h

    def height(self, y, scale=1.0):
        u = np.clip((np.asarray(y, float) / self.h - BAND[0]) / (BAND[1] - BAND[0]), -0.2, 1.2)
        return self.h * (HEIGHT[0] + (HEIGHT[1] - HEIGHT[0]) * u) * scale

    def goal(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """An interior goal (x, y, stop seconds): behind an occluder half of the time."""
        y = rng.uniform(self.y0 + 0.05 * self.h, self.y1 - 0.03 * self.h)
        if self.occluders and rng.random() < 0.5:
            occ = self.occluders[int(rng.integers(len(self.occluders)))]
            x = rng.uniform(occ["x0"] + 0.3 * (occ["x1"] - occ["x0"]), occ["x1"] - 0.3 * (occ["x1"] - occ["x0"]))
            if occ["kind"] == "crate":  # far enough to hide behind the crate
                y = rng.uniform(self.y0, max(self.y0, min(self.y1, occ["y0"] + 0.8 * self.height(occ["y0"]))))
            stop = rng.uniform(0.5, 3.5) if rng.random() < 0.5 else 0.0
        else:
            x = rng.uniform(0.1 * self.w, 0.9 * self.w)
            stop = rng.uniform(0.3, 2.0) if rng.random() < 0.25 else 0.0
        return float(x), float(y), float(stop)

    def outside(self, side: int, y: float, scale: float) -> tuple[float, float]:
        size = float(self.height(y, scale))  # fully out, even one frame's step (at 1.5x speed) inside the point
        half = 0.5 * ASPECT * size + 1.5 * self.max_speed * size / self.fps + 2
        return (-half if side < 0 else self.w + half), y


def _walk(rng, ctx: _Ctx, p0, head: float, goals: list, speed: float, scale: float, side: int) -> np.ndarray:
    """(K, 3) keyframes [t, x, y] from p0 at t = 0 through ``goals`` [(x, y, stop_s)], out at edge ``side``."""
    exit_y = float(np.clip((goals[-1][1] if goals else p0[1]) + rng.normal(0, 0.08 * ctx.h), ctx.y0, ctx.y1))
    targets = [*goals, (*ctx.outside(side, exit_y, scale), 0.0)]
    out, pos, t, n = [(0.0, float(p0[0]), float(p0[1]))], np.array(p0, float), 0.0, 0
    spd = speed * rng.uniform(0.8, 1.2)
    for gx, gy, stop in targets:
        goal = np.array([gx, gy])
        while True:
            n += 1
            px = spd * float(ctx.height(pos[1], scale))
            d = goal - pos
            dist = float(np.hypot(*d))
            if dist <= 1.5 * px * DT or n > 300:
                t += max(dist / px, 0.05)
                pos = goal.copy()
                out.append((t, *pos))
                break
            if n > 1:
                turn = np.angle(np.exp(1j * (np.arctan2(d[1], d[0]) - head)))
                limit = 0.5 if dist > 4 * px * DT else 1.6
                head += float(np.clip(turn, -limit, limit)) + rng.normal(0, 0.12)
            pos = pos + px * DT * np.array([np.cos(head), np.sin(head)])
            pos[1] = np.clip(pos[1], ctx.y0, ctx.y1)
            t += DT
            out.append((t, *pos))
            spd = float(np.clip(spd + rng.normal(0, 0.15 * speed), 0.4 * speed, 1.5 * speed))
        if stop > 0:
            t += stop
            out.append((t, *pos))
    return np.array(out)


def _visit(rng, ctx: _Ctx, t0: float, p0, head: float, speed: float, scale: float, goals_after: int,
           goals_before: int | None = None) -> np.ndarray:
    """Keyframes of one visit through (t0, p0), walking on with ``head``; with ``goals_before`` None p0 is an entry."""
    def side_of(h, x):
        return 1 if np.cos(h) > 0 else -1 if np.cos(h) < 0 else (1 if x > ctx.w / 2 else -1)

    ahead = [ctx.goal(rng) for _ in range(goals_after)]
    fwd = _walk(rng, ctx, p0, head, ahead, speed, scale,
                side_of(head, p0[0]) if not ahead else int(rng.choice([-1, 1])))
    fwd[:, 0] += t0
    if goals_before is None:
        return fwd
    back_goals = [ctx.goal(rng) for _ in range(goals_before)]
    back = _walk(rng, ctx, p0, head + np.pi, back_goals, speed, scale,
                 side_of(head + np.pi, p0[0]) if not back_goals else int(rng.choice([-1, 1])))
    back[:, 0] = t0 - back[:, 0]
    return np.concatenate([back[::-1][:-1], fwd])


def _entry(rng, ctx: _Ctx, t0: float, speed: float, scale: float) -> np.ndarray:
    """A visit entering at the left or right edge at time t0."""
    side = int(rng.choice([-1, 1]))
    p0 = ctx.outside(side, rng.uniform(ctx.y0, ctx.y1), scale)
    return _visit(rng, ctx, t0, p0, 0.0 if side < 0 else np.pi, speed, scale, int(rng.integers(1, 5)))


def _free_point(rng, ctx: _Ctx, lo=0.12, hi=0.88) -> tuple[float, float]:
    """A point inside the band, away from the occluders."""
    for _ in range(50):
        x, y = rng.uniform(lo * ctx.w, hi * ctx.w), rng.uniform(ctx.y0 + 0.05 * ctx.h, ctx.y1 - 0.05 * ctx.h)
        if all(not (o["x0"] - 0.15 * ctx.w < x < o["x1"] + 0.15 * ctx.w) for o in ctx.occluders):
            return float(x), float(y)
    return float(x), float(y)


def _schedule(rng, ctx: _Ctx, seconds: float, opts: dict, scale: float, anchor, returner: bool) -> list:
    """Visits (keyframe arrays) of one object over [0, seconds]."""
    speed = rng.uniform(*opts["speed"])
    g_lo, g_hi = opts["gap"]
    visits = []
    if anchor is not None:  # a designed crossing: (t, x, y, heading, speed)
        t_c, x, y, head, spd = anchor
        visits.append(_visit(rng, ctx, t_c, (x, y), head, spd, scale, int(rng.integers(1, 3)), int(rng.integers(1, 3))))
    elif returner:
        x, y = _free_point(rng, ctx, 0.2, 0.8)
        head = 0.0 if x > ctx.w / 2 else np.pi
        v = _visit(rng, ctx, rng.uniform(0.3, 0.2 * seconds), (x, y), head + rng.normal(0, 0.3), speed, scale, 0,
                   int(rng.integers(0, 2)))
        latest = seconds - g_lo - 1.5
        visits.append(v - [max(0.0, v[-1, 0] - latest), 0, 0])
        end = visits[-1][-1, 0]
        gap = rng.uniform(g_lo, max(g_lo, min(g_hi, seconds - end - 1.5)))
        visits.append(_entry(rng, ctx, end + gap, speed, scale))
    elif rng.random() < 0.7:  # in view from the start
        x, y = _free_point(rng, ctx, 0.05, 0.95)
        visits.append(_visit(rng, ctx, rng.uniform(0, 0.15 * seconds), (x, y), rng.uniform(0, 2 * np.pi), speed, scale,
                             int(rng.integers(1, 4)), int(rng.integers(0, 2))))
    else:  # enters for the first time mid-sequence
        visits.append(_entry(rng, ctx, rng.uniform(0.05, 0.6) * seconds, speed, scale))
    while rng.random() < 0.75:  # returns after a gap, or leaves for good
        start = visits[-1][-1, 0] + rng.uniform(g_lo, g_hi)
        if start > seconds - 1.0:
            break
        visits.append(_entry(rng, ctx, start, speed, scale))
    return visits


def _track(visits: list, ctx: _Ctx, frames: int, scale: float) -> tuple:
    """Per-frame (present, x, y, h, phase) from visits."""
    present, xy = np.zeros(frames, bool), np.zeros((frames, 2))
    for v in visits:
        f0 = max(0, int(np.ceil(v[0, 0] * ctx.fps - 1e-9)))
        f1 = min(frames - 1, int(np.floor(v[-1, 0] * ctx.fps + 1e-9)))
        if f1 < f0:
            continue
        f = np.arange(f0, f1 + 1)
        xy[f] = PchipInterpolator(v[:, 0], v[:, 1:], axis=0)(f / ctx.fps)
        present[f] = True
    h = ctx.height(xy[:, 1], scale)
    step = np.hypot(*np.diff(xy, axis=0, prepend=xy[:1]).T) * present
    phase = np.cumsum(2 * np.pi * step / (0.8 * h))
    return present, xy[:, 0], xy[:, 1], h, phase


def _boxes(o: Obj) -> np.ndarray:
    w = ASPECT * o.h
    return np.stack([o.x - w / 2, o.y - o.h, w, o.h], 1)


def _overlap_runs(a: Obj, b: Obj, width: int, height: int) -> int:
    """Longest run of frames in which a and b (both in the image) overlap."""
    ba, bb = _boxes(a), _boxes(b)
    ix = np.minimum(ba[:, 0] + ba[:, 2], bb[:, 0] + bb[:, 2]) - np.maximum(ba[:, 0], bb[:, 0])
    iy = np.minimum(ba[:, 1] + ba[:, 3], bb[:, 1] + bb[:, 3]) - np.maximum(ba[:, 1], bb[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    small = np.minimum(ba[:, 2] * ba[:, 3], bb[:, 2] * bb[:, 3])
    inside = ((ba[:, 0] < width) & (ba[:, 0] + ba[:, 2] > 0)) & ((bb[:, 0] < width) & (bb[:, 0] + bb[:, 2] > 0))
    hit = a.present & b.present & inside & (inter > OVERLAP * small)
    best = run = 0
    for v in hit:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def _runs_touching(present: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(T,) bool: the runs of ``present`` (whole visits) that share a frame with ``other``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], present.astype(np.int8), [0]])))
    out = np.zeros_like(present)
    for a, b in zip(edges[::2], edges[1::2]):
        out[a:b] = other[a:b].any()
    return out


def _figure(img, x: float, yf: float, h: float, look: Look, accent: tuple, phase: float, off: float = 0.0,
            label: int | None = None) -> None:
    """Draw one figure with its foot at (x, yf), height h; label: draw every part in that value, no anti-aliasing."""
    lt = cv2.LINE_8 if label is not None else cv2.LINE_AA

    def col(c):
        return (label,) if label is not None else c

    def p(u, v):
        return int(round((u + off) * 16)), int(round((v + off) * 16))

    w, top = ASPECT * h, yf - h
    r = 0.1 * h
    # legs
    lw = max(1, int(round(0.2 * w)))
    swing = 0.15 * w * np.sin(phase)
    for s in (-1, 1):
        cv2.line(img, p(x + s * 0.2 * w, top + 0.58 * h), p(x + s * 0.2 * w + s * swing, yf - lw / 2),
                 col(look.legs), lw, lt, 4)
    # body
    if look.shape == "ellipse":
        cv2.ellipse(img, p(x, top + 0.405 * h), (int(round(0.5 * w * 16)), int(round(0.215 * h * 16))), 0, 0, 360,
                    col(look.body), -1, lt, 4)
    else:
        c = 0.12 * w
        xs = [x - 0.5 * w + c, x + 0.5 * w - c, x + 0.5 * w, x + 0.5 * w, x + 0.5 * w - c, x - 0.5 * w + c,
              x - 0.5 * w, x - 0.5 * w]
        ys = [top + 0.19 * h, top + 0.19 * h, top + 0.19 * h + c, top + 0.62 * h - c, top + 0.62 * h,
              top + 0.62 * h, top + 0.62 * h - c, top + 0.19 * h + c]
        cv2.fillPoly(img, [np.array([p(u, v) for u, v in zip(xs, ys)], np.int32)], col(look.body), lt, 4)
    # head
    cv2.circle(img, p(x, top + r), int(round(r * 16)), col(look.head), -1, lt, 4)
    # accent: about 10 % of the figure
    a = col(accent)
    if look.accent == "hat":
        cv2.ellipse(img, p(x, top + 0.95 * r), (int(round(1.1 * r * 16)), int(round(0.95 * r * 16))), 0, 180, 360,
                    a, -1, lt, 4)
        cv2.rectangle(img, p(x - 1.3 * r, top + 0.75 * r), p(x + 1.3 * r, top + 1.05 * r), a, -1, lt, 4)
    elif look.accent == "bag":
        x0, x1 = sorted((x + look.side * 0.15 * w, x + look.side * 0.5 * w))
        cv2.rectangle(img, p(x0, top + 0.40 * h), p(x1, top + 0.60 * h), a, -1, lt, 4)
    elif look.accent == "stripe":
        cv2.rectangle(img, p(x - 0.46 * w, top + 0.36 * h), p(x + 0.46 * w, top + 0.45 * h), a, -1, lt, 4)
    else:  # scarf
        cv2.rectangle(img, p(x - 0.32 * w, top + 0.19 * h), p(x + 0.32 * w, top + 0.28 * h), a, -1, lt, 4)
        cv2.rectangle(img, p(x + 0.1 * w, top + 0.19 * h), p(x + 0.3 * w, top + 0.4 * h), a, -1, lt, 4)


def _looks(rng, n_objects: int) -> tuple[list[Look], list[int], list[tuple]]:
    """Looks, the look of every object and per-object accent colours (distinct hues within a look)."""
    ks = [k for k in (2, 3) if 2 * k <= n_objects <= 3 * k] or [max(1, int(np.ceil(n_objects / 3)))]
    k = int(rng.choice(ks))
    sizes = [n_objects // k + (i < n_objects % k) for i in range(k)]
    hues = rng.permutation(6)[:k] * 30 + rng.uniform(0, 30)
    looks = []
    for hue in hues:
        looks.append(Look(body=_colour(rng, hue, (0.35, 0.7), (0.35, 0.8)),
                          legs=_colour(rng, None, (0.1, 0.4), (0.15, 0.4)),
                          head=_colour(rng, rng.uniform(5, 20), (0.3, 0.6), (0.45, 0.85)),
                          shape=str(rng.choice(SHAPES)), accent=str(rng.choice(ACCENTS)),
                          scale=float(rng.uniform(0.94, 1.06)), side=int(rng.choice([-1, 1]))))
    groups, accents = [], []
    for g, size in enumerate(sizes):
        base = rng.uniform(0, 180)
        for j in range(size):
            groups.append(g)
            accents.append(_colour(rng, base + j * 180 / size + rng.uniform(-10, 10), (0.75, 1.0), (0.7, 1.0)))
    order = rng.permutation(n_objects)
    return looks, [groups[i] for i in order], [accents[i] for i in order]


def _scenery(rng, w: int, h: int) -> tuple[np.ndarray, list, np.ndarray, np.ndarray, list]:
    """Background (h, w, 3) with clutter, occluders [{kind, x0, y0, x1, y1}], occluder image and mask, clutter spots."""
    c1, c2, wall = _colour(rng, None, (0.1, 0.4), (0.3, 0.6)), _colour(rng, None, (0.1, 0.4), (0.3, 0.6)), \
        _colour(rng, None, (0.05, 0.3), (0.4, 0.75))
    k = int(rng.integers(3, 7))
    mix = np.clip(cv2.resize(rng.random((k, k)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)
    img = np.array(c1, np.float32) * (1 - mix[..., None]) + np.array(c2, np.float32) * mix[..., None]
    horizon = int(rng.uniform(0.25, 0.4) * h)
    img[:horizon] = np.array(wall, np.float32)
    grain = cv2.resize(rng.normal(0, 1, (h // 4, w // 4)).astype(np.float32), (w, h))
    img = np.clip(img + grain[..., None] * rng.uniform(6, 14), 0, 255).astype(np.uint8)
    spots = []
    for _ in range(int(rng.integers(2, 6))):  # windows / posters on the wall
        x0, y0 = rng.uniform(0, w - 0.1 * w), rng.uniform(0.05, 0.6) * horizon
        x1, y1 = x0 + rng.uniform(0.05, 0.15) * w, y0 + rng.uniform(0.15, 0.35) * horizon
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)),
                      _colour(rng, None, (0.1, 0.5), (0.2, 0.8)), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(4, 9))):  # ground clutter
        colour, cx, cy = _colour(rng, None, (0.15, 0.6), (0.25, 0.85)), rng.uniform(0, w), rng.uniform(horizon, h)
        sx, sy = rng.uniform(0.03, 0.12) * w, rng.uniform(0.03, 0.1) * h
        if rng.random() < 0.5:
            cv2.ellipse(img, (int(cx), int(cy)), (int(sx), int(sy)), float(rng.uniform(0, 180)), 0, 360, colour, -1,
                        cv2.LINE_AA)
        else:
            cv2.rectangle(img, (int(cx - sx), int(cy - sy)), (int(cx + sx), int(cy + sy)), colour, -1, cv2.LINE_AA)
        spots.append((float(cx), float(cy)))
    occ_img, mask, occluders = np.zeros_like(img), np.zeros((h, w), np.uint8), []
    n_occ, tries = int(rng.integers(1, 4)), 0
    while len(occluders) < n_occ and tries < 50:
        tries += 1
        kind = str(rng.choice(["pillar", "tree", "crate"]))
        width = rng.uniform(0.09, 0.14) * w if kind != "crate" else rng.uniform(0.15, 0.25) * w
        x0 = rng.uniform(0.08 * w, 0.92 * w - width)
        if any(x0 < o["x1"] + 0.08 * w and x0 + width > o["x0"] - 0.08 * w for o in occluders):
            continue
        x0, x1 = int(x0), int(x0 + width)
        base = np.array(_colour(rng, None, (0.05, 0.4), (0.3, 0.8)), np.float32)
        if kind == "pillar":
            y0 = 0
            cv2.rectangle(mask, (x0, 0), (x1, h), 255, -1)
            shade = 0.75 + 0.5 * np.sin(np.linspace(0.2, np.pi - 0.2, x1 - x0 + 1))
            occ_img[:, x0:x1 + 1] = np.clip(base * shade[None, :, None], 0, 255)
            occ_img[int(0.05 * h):int(0.08 * h), x0:x1 + 1] = np.clip(base * 0.6, 0, 255)
        elif kind == "tree":
            trunk = np.array(_colour(rng, rng.uniform(8, 20), (0.4, 0.7), (0.25, 0.45)), np.float32)
            cv2.rectangle(mask, (x0, int(0.2 * h)), (x1, h), 255, -1)
            occ_img[:, x0:x1 + 1] = trunk
            leaves = np.zeros_like(mask)
            for _ in range(4):
                centre = (int(rng.uniform(x0 - 0.5 * width, x1 + 0.5 * width)), int(rng.uniform(0.05, 0.25) * h))
                cv2.circle(leaves, centre,
                           int(rng.uniform(0.08, 0.15) * w), 255, -1, cv2.LINE_8)
            green = np.array(_colour(rng, rng.uniform(35, 75), (0.4, 0.8), (0.25, 0.6)), np.float32)
            tex = cv2.resize(rng.normal(0, 1, (h // 3, w // 3)).astype(np.float32), (w, h))
            occ_img[leaves > 0] = np.clip(green + 25 * tex[leaves > 0][:, None], 0, 255)
            mask |= leaves
            y0 = 0
        else:
            y0 = int(h * (1 - rng.uniform(0.3, 0.45)))
            cv2.rectangle(mask, (x0, y0), (x1, h), 255, -1)
            occ_img[y0:, x0:x1 + 1] = base
            cv2.rectangle(occ_img, (x0 + 2, y0 + 2), (x1 - 2, h - 2), tuple(float(c) * 0.6 for c in base), 2)
            cv2.line(occ_img, (x0 + 2, y0 + 2), (x1 - 2, h - 2), tuple(float(c) * 0.6 for c in base), 2)
        occluders.append({"kind": kind, "x0": x0, "y0": y0, "x1": x1, "y1": h})
        spots.append(((x0 + x1) / 2, float(rng.uniform(BAND[0], BAND[1]) * h)))
    grain = rng.normal(0, 4, occ_img.shape).astype(np.float32)
    occ_img = np.clip(occ_img + grain, 0, 255).astype(np.uint8)
    return img, occluders, occ_img, mask > 0, spots


def _visibility(objs: list, looks: list, mask: np.ndarray, w: int, h: int) -> np.ndarray:
    """(N, T) visible fraction of each object's full silhouette."""
    n, frames = len(objs), len(objs[0].present) if objs else 0
    pad = int(np.ceil(HEIGHT[1] * 1.3 * h)) + 4
    vis = np.zeros((n, frames))
    canvas = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    for f in range(frames):
        here = [k for k in range(n) if objs[k].present[f]]
        if not here:
            continue
        canvas[:] = 0
        full = np.zeros(n + 1)
        for k in sorted(here, key=lambda k: (objs[k].y[f], k)):
            o = objs[k]
            _figure(canvas, o.x[f], o.y[f], o.h[f], looks[o.look], o.accent, o.phase[f], pad, k + 1)
            bw, bh = int(np.ceil(ASPECT * o.h[f])) + 6, int(np.ceil(o.h[f])) + 6
            solo = np.zeros((bh, bw), np.uint8)
            x0, y0 = np.floor(o.x[f] - ASPECT * o.h[f] / 2), np.floor(o.y[f] - o.h[f])  # same raster, shifted
            _figure(solo, o.x[f] - x0 + 3, o.y[f] - y0 + 3, o.h[f], looks[o.look], o.accent, o.phase[f], 0.0, 1)
            full[k + 1] = max(1, np.count_nonzero(solo))
        view = canvas[pad:pad + h, pad:pad + w][~mask]
        counts = np.bincount(view, minlength=n + 1)[:n + 1]
        for k in here:
            vis[k, f] = min(1.0, counts[k + 1] / full[k + 1])
    return vis


def _reentries(vis: np.ndarray, fps: float, min_s: float) -> list[dict]:
    out = []
    for k in range(len(vis)):
        seen = np.flatnonzero(vis[k] > 0)
        for a, b in zip(seen[:-1], seen[1:]):
            if b - a - 1 >= round(min_s * fps):
                out.append({"id": k + 1, "exit_frame": int(a) + 1, "return_frame": int(b) + 1,
                            "gap_frames": int(b - a - 1)})
    return sorted(out, key=lambda r: (r["exit_frame"], r["id"]))


def plan_scene(seed: int, **options) -> ScenePlan:
    """Looks, scenery, tracks, visibility and re-entries of sequence ``seed`` (options as in check_options)."""
    opts = check_options(**options)
    (w, h), fps, frames = opts["size"], opts["fps"], opts["frames"]
    seconds = frames / fps
    need = round(opts["gap"][0] * fps)
    for attempt in range(20):
        plan = _plan_attempt(seed, attempt, opts, w, h, fps, frames, seconds)
        if sum(r["gap_frames"] >= need for r in plan.reentries) >= opts["reentries"]:
            return plan
    raise RuntimeError(f"seed {seed}: no plan with {opts['reentries']} re-entries after --gap {opts['gap'][0]:g} s "
                       f"in {frames} frames; use more --frames or fewer --reentries")


def _plan_attempt(seed, attempt, opts, w, h, fps, frames, seconds) -> ScenePlan:
    rng_look, rng_scene, rng_walk, rng_style = (np.random.default_rng([seed, attempt, k]) for k in range(4))
    n = int(rng_look.integers(opts["objects"][0], opts["objects"][1] + 1))
    looks, look_of, accents = _looks(rng_look, n)
    bg, occluders, occ_img, mask, spots = _scenery(rng_scene, w, h)
    ctx = _Ctx(w, h, fps, occluders, 1.2 * opts["speed"][1])
    # Designed crossings: one look-alike pair per look group, nearly head-on.
    anchors, crossings = {}, []
    for g in range(len(looks)):
        members = [k for k in range(n) if look_of[k] == g]
        if len(members) < 2 or seconds < 4:
            continue
        a, b = (int(v) for v in rng_walk.choice(members, 2, replace=False))
        t_c = rng_walk.uniform(0.2, 0.8) * seconds
        x, y = _free_point(rng_walk, ctx, 0.25, 0.75)
        head = (0.0 if rng_walk.random() < 0.5 else np.pi) + rng_walk.normal(0, 0.3)
        spd = opts["speed"][1] * 1.2
        dy = 0.06 * float(ctx.height(y)) * rng_walk.choice([-1, 1])
        anchors[a] = (t_c, x, y, head, spd)
        anchors[b] = (t_c, x, float(np.clip(y + dy, ctx.y0, ctx.y1)), head + np.pi + rng_walk.normal(0, 0.35), spd)
        crossings.append({"ids": sorted([a + 1, b + 1]), "frame": int(round(t_c * fps)) + 1})
    free = [k for k in range(n) if k not in anchors] + [k for k in range(n) if k in anchors]
    returners = set(free[:opts["reentries"]])
    objs: list[Obj] = []
    for k in range(n):
        scale = looks[look_of[k]].scale
        best = None
        for _ in range(15):
            visits = _schedule(rng_walk, ctx, seconds, opts, scale, anchors.get(k), k in returners)
            o = Obj(k + 1, look_of[k], accents[k], *_track(visits, ctx, frames, scale))
            worst = max([_overlap_runs(o, p, w, h) for p in objs] or [0])
            if best is None or worst < best[0]:
                best = (worst, o)
            if worst / fps < MAX_OVERLAP_S:
                break
        o = best[1]
        for p in objs:  # could not avoid a long overlap: drop this object's visits that hold one
            if _overlap_runs(o, p, w, h) / fps >= MAX_OVERLAP_S:
                o.present &= ~_runs_touching(o.present, p.present)
        objs.append(o)
    vis = _visibility(objs, looks, mask, w, h)
    boxes = np.stack([_boxes(o) for o in objs]) if objs else np.zeros((0, frames, 4))
    t = np.arange(frames) / fps
    gain = 1 + rng_style.uniform(0.03, 0.08) * np.sin(2 * np.pi * t / rng_style.uniform(15, 45)
                                                       + rng_style.uniform(0, 2 * np.pi))
    return ScenePlan(seed, w, h, fps, frames, looks, objs, occluders, spots, crossings, vis, boxes, gain,
                     float(rng_style.uniform(2, 5)), _reentries(vis, fps, min(2.0, opts["gap"][0])), bg, occ_img, mask)


def draw_frame(plan: ScenePlan, f: int, rng: np.random.Generator) -> np.ndarray:
    """Pixels of frame ``f`` (0-based): (H, W, 3) uint8 BGR; ``rng`` draws the sensor noise."""
    img = plan.background.copy()
    here = [k for k, o in enumerate(plan.objects) if o.present[f]]
    for k in sorted(here, key=lambda k: (plan.objects[k].y[f], k)):
        o = plan.objects[k]
        _figure(img, o.x[f], o.y[f], o.h[f], plan.looks[o.look], o.accent, o.phase[f])
    img[plan.scenery_mask] = plan.scenery[plan.scenery_mask]
    x = img.astype(np.float32) * np.float32(plan.gain[f])
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(plan.noise) + np.float32(0.5)
    return np.clip(x, 0, 255).astype(np.uint8)


def _clip_box(b: np.ndarray, w: int, h: int) -> np.ndarray:
    """x, y, w, h clipped to the image, at least 1 px wide and high (a box that shows any pixel)."""
    x0, y0 = np.clip(b[..., 0], 0, w - 1), np.clip(b[..., 1], 0, h - 1)
    x1, y1 = np.clip(b[..., 0] + b[..., 2], x0 + 1, w), np.clip(b[..., 1] + b[..., 3], y0 + 1, h)
    return np.stack([x0, y0, x1 - x0, y1 - y0], -1)


def gt_rows(plan: ScenePlan) -> list[tuple]:
    """(frame 1-based, id, x, y, w, h, 1, cls, vis) for every visible object, frame-major."""
    rows = []
    for f in range(plan.frames):
        for k in range(len(plan.objects)):
            v = plan.vis[k, f]
            if v > 0:
                x, y, bw, bh = _clip_box(plan.boxes[k, f], plan.width, plan.height)
                rows.append((f + 1, k + 1, x, y, bw, bh, 1, 1 if v >= 0.2 else 8, v))
    return rows


def det_rows(plan: ScenePlan) -> list[tuple]:
    """(frame 1-based, -1, x, y, w, h, score, -1, -1, -1): noisy true boxes, misses, false positives."""
    rng = np.random.default_rng([plan.seed, 99])
    w, h, rows = plan.width, plan.height, []
    ctx = _Ctx(w, h, plan.fps, plan.occluders)
    for f in range(plan.frames):
        found = []
        for k in range(len(plan.objects)):
            v = plan.vis[k, f]
            if v <= 0:
                continue
            miss = 0.97 if v < 0.3 else 0.04 + 0.12 * (1 - v) / 0.7
            jitter = rng.normal(0, 0.04, 4)
            if rng.random() < miss:
                continue
            bx, by, bw, bh = plan.boxes[k, f]
            cx, cy = bx + bw / 2 + jitter[0] * bw, by + bh / 2 + jitter[1] * bh
            bw, bh = bw * np.exp(jitter[2]), bh * np.exp(jitter[3])
            score = float(np.clip(0.55 + 0.4 * v + rng.normal(0, 0.05), 0.6, 1.0))
            found.append((cx - bw / 2, cy - bh / 2, bw, bh, score))
        for _ in range(int(rng.poisson(0.3))):
            sx, sy = plan.clutter[int(rng.integers(len(plan.clutter)))] if plan.clutter else (w / 2, h / 2)
            yf = float(np.clip(sy + rng.normal(0, 0.05 * h), ctx.y0, ctx.y1))
            bh = float(ctx.height(yf)) * rng.uniform(0.8, 1.2)
            bw = ASPECT * bh * rng.uniform(0.8, 1.2)
            cx = sx + rng.normal(0, 0.3 * bw)
            found.append((cx - bw / 2, yf - bh, bw, bh, float(rng.uniform(0.2, 0.7))))
        for bx, by, bw, bh, score in found:
            x, y, cw, ch = _clip_box(np.array([bx, by, bw, bh]), w, h)
            if cw >= 2 and ch >= 2:
                rows.append((f + 1, -1, x, y, cw, ch, score, -1, -1, -1))
    return rows


def _write_sequence(task: tuple) -> tuple[str, dict]:
    """Plan, render and write one sequence; returns (name, its scenes.json entry)."""
    name, split, seed, out, opts = task
    cv2.setNumThreads(1)
    plan = plan_scene(seed, **opts)
    root = Path(out) / split / name
    (root / "img1").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(exist_ok=True)
    (root / "det").mkdir(exist_ok=True)
    fps = int(plan.fps) if float(plan.fps).is_integer() else plan.fps
    (root / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate={fps}\nseqLength={plan.frames}\nimWidth={plan.width}\n"
        f"imHeight={plan.height}\nimExt=.jpg\n", encoding="utf-8")
    rng = np.random.default_rng([seed, 98])
    for f in range(plan.frames):
        ok, buf = cv2.imencode(".jpg", draw_frame(plan, f, rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError(f"{root}: JPEG encoding failed at frame {f + 1}")
        (root / "img1" / f"{f + 1:06d}.jpg").write_bytes(buf.tobytes())
    (root / "gt" / "gt.txt").write_text("".join(
        f"{f},{i},{x:.2f},{y:.2f},{bw:.2f},{bh:.2f},{c},{cls},{v:.3f}\n"
        for f, i, x, y, bw, bh, c, cls, v in gt_rows(plan)),
        encoding="utf-8")
    (root / "det" / "det.txt").write_text("".join(
        f"{f},-1,{x:.2f},{y:.2f},{bw:.2f},{bh:.2f},{s:.3f},-1,-1,-1\n" for f, _, x, y, bw, bh, s, *_ in det_rows(plan)),
        encoding="utf-8")
    looks = plan.looks
    entry = {"split": split, "seed": seed, "frames": plan.frames, "path": f"{split}/{name}",
             "objects": [{"id": o.id, "look": o.look, "body": _hex(looks[o.look].body),
                          "legs": _hex(looks[o.look].legs),
                          "head": _hex(looks[o.look].head), "shape": looks[o.look].shape,
                          "accent": looks[o.look].accent, "accent_colour": _hex(o.accent),
                          "visible_frames": int((plan.vis[o.id - 1] > 0).sum())} for o in plan.objects],
             "occluders": plan.occluders, "crossings": plan.crossings, "reentries": plan.reentries}
    return name, entry


class _Serial:
    """A one-process stand-in for multiprocessing.Pool (imap in order)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, items):
        return map(fn, items)


def sequence_seeds(seed: int, train: int, val: int, test: int) -> list[tuple[str, str, int]]:
    """(name, split, seed) of every sequence; the splits' seed ranges are disjoint (see the module docstring)."""
    counts = {"train": train, "val": val, "test": test}
    return [(f"synth-{split}-{i:04d}", split, seed * SEED_STRIDE + base + i)
            for split, key, base in SPLITS for i in range(counts[key])]


def _readme(command: str, doc: dict) -> str:
    seqs = doc["sequences"].values()
    lines = [f"# Synthetic multi-object tracking set ({VERSION})", "", f"Made by `{command}`.", "",
             "| split | sequences | frames | objects | re-entries | crossings |", "|" + " --- |" * 6]
    for split, _, _ in SPLITS:
        mine = [s for s in seqs if s["split"] == split]
        lines.append(f"| {split} | {len(mine)} | {sum(s['frames'] for s in mine)} | "
                     f"{sum(len(s['objects']) for s in mine)} | {sum(len(s['reentries']) for s in mine)} | "
                     f"{sum(len(s['crossings']) for s in mine)} |")
    w, h = doc["size"]
    lines += ["", f"{w}x{h} px at {doc['fps']:g} fps, {doc['frames']} frames per sequence.", "", __doc__]
    return "\n".join(lines)


def generate(out: str | Path, train: int = 40, val: int = 4, test: int = 12, frames: int = 300, size=(320, 240),
             fps: float = 10.0, seed: int = 0, jobs: int = 1, command: str = "", **options) -> dict:
    """Write the data set into ``out`` (absent or an empty folder); returns the content of scenes.json.

    ``options``: objects (MIN, MAX), gap (MIN, MAX s), speed (MIN, MAX object heights/s), reentries (see
    check_options).
    """
    opts = check_options(frames=frames, size=size, fps=fps, **{**DEFAULTS, **options})
    limits = {"train": (train, 500_000), "val": (val, 400_000), "test": (test, 100_000),
              "seed": (seed, 2 ** 32 // SEED_STRIDE - 1)}
    bad = [f"--{k} {v}: must be within 0-{cap}" for k, (v, cap) in limits.items() if not 0 <= int(v) <= cap]
    bad += ["--train 0 --val 0 --test 0: nothing to generate"] if train + val + test == 0 else []
    bad += [f"--jobs {jobs}: must be >= 1"] if int(jobs) < 1 else []
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        bad.append(f"--out {out}: exists and is not an empty folder; choose a new one")
    if bad:
        raise ValueError("; ".join(bad))
    out.mkdir(parents=True, exist_ok=True)
    names = sequence_seeds(seed, train, val, test)
    tasks = [(name, split, s, str(out), opts) for name, split, s in names]
    workers = min(int(jobs), len(tasks))
    sequences: dict[str, dict] = {}
    with (multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial()) as pool:
        t0 = time.perf_counter()
        for name, entry in pool.imap(_write_sequence, tasks):  # in task order: output independent of --jobs
            sequences[name] = entry
            if len(sequences) % 10 == 0:
                print(f"synth-tracks: {len(sequences)}/{len(tasks)} sequences, {time.perf_counter() - t0:.0f} s",
                      flush=True)
    doc = {"version": VERSION, "fps": opts["fps"], "size": list(opts["size"]), "frames": opts["frames"],
           "options": {k: opts[k] for k in DEFAULTS}, "sequences": {name: sequences[name] for name, _, _ in names}}
    (out / "scenes.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "seqmaps").mkdir(exist_ok=True)
    for split, _, _ in SPLITS:
        mine = [name for name, s, _ in names if s == split]
        if mine:
            (out / "seqmaps" / f"{split}.txt").write_text("name\n" + "".join(f"{m}\n" for m in mine), encoding="utf-8")
    (out / "README.md").write_text(_readme(command or "memstream.pipelines.synth_tracks.generate", doc),
                                   encoding="utf-8")
    return json.loads(json.dumps(doc))


def cli_synth_tracks(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream data synth-tracks", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--size", default="320x240", help="WIDTHxHEIGHT in pixels")
    for flag, kind, default, text in (
            ("train", int, 40, "training sequences"), ("val", int, 4, "validation sequences"),
            ("test", int, 12, "test sequences"), ("frames", int, 300, "frames per sequence"),
            ("fps", float, 10.0, "frame rate"), ("seed", int, 0, "base seed; each sequence's seed is derived from it"),
            ("jobs", int, 2, "parallel worker processes")):
        p.add_argument(f"--{flag}", type=kind, default=default, help=f"{text} (default {default})")
    for flag, kind, text in (("objects", int, "objects per sequence"), ("gap", float, "seconds out of view before a "
                             "re-entry"), ("speed", float, "walking speed in object heights per second")):
        p.add_argument(f"--{flag}", type=kind, nargs=2, default=DEFAULTS[flag], metavar=("MIN", "MAX"),
                       help=f"{text} (default {DEFAULTS[flag][0]:g} {DEFAULTS[flag][1]:g})")
    p.add_argument("--reentries", type=int, default=DEFAULTS["reentries"],
                   help="at least this many re-entries after >= --gap MIN seconds per sequence")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    doc = generate(args.out, train=args.train, val=args.val, test=args.test, frames=args.frames, size=args.size,
                   fps=args.fps, seed=args.seed, jobs=args.jobs,
                   command="memstream data synth-tracks " + " ".join(argv),
                   objects=args.objects, gap=args.gap, speed=args.speed, reentries=args.reentries)
    seqs = doc["sequences"].values()
    print(json.dumps({"out": args.out, "sequences": {s: sum(q["split"] == s for q in seqs) for s, _, _ in SPLITS},
                      "frames": sum(q["frames"] for q in seqs), "reentries": sum(len(q["reentries"]) for q in seqs),
                      "wall_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0
