"""`memstream data synth-actions`: synthetic videos for online temporal action localization, THUMOS-style JSON.

Each video shows one *actor* among distractors on a cluttered, textured background. The actor performs
actions separated by background gaps; the class of an action is in its MOTION only: the actor's shape and
colour are drawn per video, independently of its actions, and it is told from the distractors by a white
ring with a dark edge (only the actor has one). Every object (actor and distractors) is a filled shape
(circle, triangle, square, pentagon, hexagon, star) with a darker limb (a bar from its centre), rigid, so a
rotating limb rotates the body too. Motions, with parameters drawn per instance (``S`` = frame size):

- wave: horizontal sine oscillation (direction within 10 deg of horizontal), amplitude 0.08-0.16 S,
  period 0.8-1.6 s.
- bounce: vertical bouncing, up from a floor (``|sin|``), height 0.10-0.17 S, 0.8-1.5 s per bounce.
- circle: circular path, radius 0.08-0.14 S, period 1-2 s, either direction.
- spin: the body and limb rotate in place, 0.3-0.7 turns/s, either direction.
- pulse: the size oscillates by +-25-45 % in place, period 0.8-1.6 s.
- zigzag: traces a Z (across, diagonally back, across) and back along it at constant speed, corners sharp,
  0.18-0.30 S wide, 0.16-0.26 S high, 2-3.2 s per cycle, mirrored at random.
- figure8: a figure eight (Lissajous 1:2), 0.18-0.30 S wide, period 1.6-2.6 s.
- shake: random displacement every frame, 0.025-0.04 S standard deviation.

Motion fades in and out over 0.375 s at an instance's ends. Between actions the actor idles (slow drift of
about 0.025 S/s, jitter of 0.004 S, slow limb wobble). Distractors (2-4) random-walk smoothly and wobble; they
never perform a class motion. The background is a per-video random texture with static clutter shapes; each
frame gets Gaussian sensor noise (std 2-5) and a slow brightness drift (+-3-8 %, 15-45 s period).

Time line: a video starts with a gap half of the time; actions alternate with gaps (``--gap`` s). An action
is *short* (``--short`` s) with probability ``--short-fraction`` (0.35), else *long* (``--long`` s: 6-30 s
by default); the class is uniform over ``--classes``, so consecutive actions may share a class (a gap always
separates them). The model sees 2 s segments, so a long action (>= ``long_threshold`` = the ``--long``
minimum, 6 s) outlasts a segment plus twice any window: its start can only be recalled from memory. An
action cut by the video's end keeps the part inside.

Splits use disjoint seeds: video ``i`` of train has seed ``seed*10**6 + i``, of validation
``seed*10**6 + 500000 + i``, of test ``seed*10**6 + 900000 + i``. Layout: ``videos/<name>.mp4`` (mp4v),
``annotations.json`` (THUMOS/ActivityNet-like: per video subset, duration, fps, frames, seed, file and
annotations ``{"segment": [start_s, end_s], "label"}``; frame ``i`` covers ``[i/fps, (i+1)/fps)``),
``classes.txt`` and ``README.md``. Output is byte-for-byte deterministic given the options, for any ``--jobs``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

VERSION = "memstream-synth-actions-1"
CLASSES = ("wave", "bounce", "circle", "spin", "pulse", "zigzag", "figure8", "shake")
SHAPES = ("circle", "triangle", "square", "pentagon", "hexagon", "star")
SPLITS = (("train", "train", 0), ("validation", "val", 500_000), ("test", "test", 900_000))
SEED_STRIDE = 1_000_000
RAMP_S = 0.375       # motion fades in/out over this many seconds at an instance's ends
MARGIN = 0.30        # anchor stays within [MARGIN, 1 - MARGIN] * size: room for the largest excursion + ring
RING = 1.6           # ring radius / body radius (the body's vertices lie on the body radius)
LIMB = 1.35          # limb length / body radius
DEFAULTS = {"classes": 6, "fps": 8.0, "size": 128, "seconds": (60.0, 120.0), "gap": (1.0, 6.0),
            "short": (1.5, 4.0), "long": (6.0, 30.0), "short_fraction": 0.35, "distractors": (2, 4)}


@dataclass
class Track:
    """One drawn object: appearance and per-frame state. xy: (T, 2) pixels, scale: (T,), angle: (T,) radians."""

    shape: str
    colour: tuple
    radius: float
    xy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray


@dataclass
class VideoPlan:
    """Everything about one video but its pixels. labels: (T,) class index per frame, -1 = background."""

    seed: int
    fps: float
    size: int
    classes: list[str]
    labels: np.ndarray
    annotations: list[dict]
    instances: list[dict]          # {"start": f0, "end": f1 (inclusive), "label": name, "params": {...}}
    actor: Track
    distractors: list[Track] = field(default_factory=list)
    gain: np.ndarray | None = None  # (T,) brightness factor
    noise: float = 0.0              # sensor noise std (grey levels)

    @property
    def frames(self) -> int:
        return len(self.labels)


def _pair(name: str, value, positive_min: bool = True) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi or lo < 0 or (positive_min and lo == 0):
        raise ValueError(f"--{name} {lo:g} {hi:g}: need {'0 <' if positive_min else '0 <='} MIN <= MAX")
    return lo, hi


def check_options(classes=6, fps=8.0, size=128, seconds=(60.0, 120.0), gap=(1.0, 6.0), short=(1.5, 4.0),
                  long=(6.0, 30.0), short_fraction=0.35, distractors=(2, 4)) -> dict:
    """Validated rendering options (names of the classes in ``classes``); ValueError naming a bad value."""
    if isinstance(classes, int | np.integer):
        if not 1 <= classes <= len(CLASSES):
            raise ValueError(f"--classes {classes}: choose 1-{len(CLASSES)} (defined: {', '.join(CLASSES)})")
        names = list(CLASSES[:classes])
    else:
        names = list(classes)
        unknown = [c for c in names if c not in CLASSES]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"classes {names}: need distinct names among {', '.join(CLASSES)}")
    fps, size = float(fps), int(size)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"--fps {fps:g}: must be > 0")
    if size < 32 or size > 2048 or size % 2:
        raise ValueError(f"--size {size}: must be even and within 32-2048")
    seconds = _pair("seconds", seconds)
    if round(seconds[0] * fps) < 1:
        raise ValueError(f"--seconds {seconds[0]:g}: shorter than one frame at {fps:g} fps")
    if not 0 <= float(short_fraction) <= 1:
        raise ValueError(f"--short-fraction {short_fraction}: must be within 0-1")
    d_lo, d_hi = (int(v) for v in distractors)
    if not 0 <= d_lo <= d_hi <= 16:
        raise ValueError(f"--distractors {d_lo} {d_hi}: need 0 <= MIN <= MAX <= 16")
    return {"classes": names, "fps": fps, "size": size, "seconds": seconds, "gap": _pair("gap", gap, False),
            "short": _pair("short", short), "long": _pair("long", long), "short_fraction": float(short_fraction),
            "distractors": (d_lo, d_hi)}


def _colour(rng: np.random.Generator, sat: tuple, val: tuple) -> tuple:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.float32)
    return tuple(float(c) for c in cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0])


def _envelope(n: int, fps: float) -> np.ndarray:
    k = np.arange(n)
    return np.clip(np.minimum(k + 1, n - k) / max(1.0, RAMP_S * fps), 0.0, 1.0)


def _triangle(u: np.ndarray) -> np.ndarray:
    """Triangle wave of period 1 in [-1, 1]."""
    return 4 * np.abs(u - np.floor(u + 0.5)) - 1


def _motion(name: str, n: int, fps: float, S: int, rng: np.random.Generator) -> tuple:
    """One instance: (offset (n, 2) px, scale factor (n,), extra rotation per frame (n,) rad, params)."""
    t, e = np.arange(n) / fps, _envelope(n, fps)
    off, scale, spin = np.zeros((n, 2)), np.ones(n), np.zeros(n)
    phase, sign = rng.uniform(0, 2 * np.pi), float(rng.choice([-1.0, 1.0]))
    if name == "wave":
        amp, period, tilt = rng.uniform(0.08, 0.16) * S, rng.uniform(0.8, 1.6), np.deg2rad(rng.uniform(-10, 10))
        s = e * amp * np.sin(2 * np.pi * t / period + phase)
        off[:, 0], off[:, 1] = s * np.cos(tilt), s * np.sin(tilt)
        params = {"amplitude": amp, "period": period, "tilt": tilt}
    elif name == "bounce":
        amp, period = rng.uniform(0.10, 0.17) * S, rng.uniform(0.8, 1.5)
        off[:, 1] = -e * amp * np.abs(np.sin(np.pi * t / period + phase))
        params = {"amplitude": amp, "period": period}
    elif name == "circle":
        amp, period = rng.uniform(0.08, 0.14) * S, rng.uniform(1.0, 2.0)
        theta = phase + sign * 2 * np.pi * t / period
        off[:, 0], off[:, 1] = e * amp * np.cos(theta), e * amp * np.sin(theta)
        params = {"radius": amp, "period": period, "direction": sign}
    elif name == "spin":
        rate = sign * rng.uniform(0.3, 0.7) * 2 * np.pi
        spin = e * rate / fps
        params = {"turns_per_s": rate / (2 * np.pi)}
    elif name == "pulse":
        amp, period = rng.uniform(0.25, 0.45), rng.uniform(0.8, 1.6)
        scale = 1 + e * amp * np.sin(2 * np.pi * t / period + phase)
        params = {"amplitude": amp, "period": period}
    elif name == "zigzag":
        half_w, half_h, period = rng.uniform(0.09, 0.15) * S, rng.uniform(0.08, 0.13) * S, rng.uniform(2.0, 3.2)
        fx, fy = sign * half_w, float(rng.choice([-1.0, 1.0])) * half_h
        corners = np.array([[-fx, -fy], [fx, -fy], [-fx, fy], [fx, fy], [-fx, fy], [fx, -fy], [-fx, -fy]])
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(corners, axis=0), axis=1))])
        u = ((t / period + phase / (2 * np.pi)) % 1.0) * arc[-1]
        off[:, 0], off[:, 1] = e * np.interp(u, arc, corners[:, 0]), e * np.interp(u, arc, corners[:, 1])
        params = {"half_width": half_w, "half_height": half_h, "period": period}
    elif name == "figure8":
        amp_x, amp_y, period = rng.uniform(0.09, 0.15) * S, rng.uniform(0.05, 0.09) * S, rng.uniform(1.6, 2.6)
        theta = phase + sign * 2 * np.pi * t / period
        off[:, 0], off[:, 1] = e * amp_x * np.sin(theta), e * amp_y * np.sin(2 * theta)
        params = {"amplitude_x": amp_x, "amplitude_y": amp_y, "period": period}
    elif name == "shake":
        sigma = rng.uniform(0.025, 0.04) * S
        off = e[:, None] * np.clip(rng.normal(0, sigma, (n, 2)), -2.5 * sigma, 2.5 * sigma)
        params = {"sigma": sigma}
    else:
        raise ValueError(f"unknown class {name!r}")
    return off, scale, spin, params


def _walk(rng: np.random.Generator, n: int, start: np.ndarray, lo: float, hi: float, speed: float, tau: float,
          fps: float) -> np.ndarray:
    """(n, len(start)) smooth random walk: AR(1) velocity of std ``speed``/s, time constant ``tau`` s, reflected
    at [lo, hi] (pass lo=-inf for an unbounded walk, e.g. an angle)."""
    rho = np.exp(-1.0 / (tau * fps))
    step = speed / fps
    noise = rng.normal(0.0, step * np.sqrt(1 - rho ** 2), (n, len(start)))
    out, pos, vel = np.empty((n, len(start))), np.array(start, float), np.zeros(len(start))
    for i in range(n):
        vel = np.clip(rho * vel + noise[i], -2 * step, 2 * step)
        pos = pos + vel
        if np.isfinite(lo):
            for k in range(len(pos)):
                if pos[k] < lo or pos[k] > hi:
                    pos[k] = float(np.clip(2 * (lo if pos[k] < lo else hi) - pos[k], lo, hi))
                    vel[k] = -vel[k]
        out[i] = pos
    return out


def _timeline(rng: np.random.Generator, n: int, opts: dict) -> list[tuple[int, int, str]]:
    """Actions as (first frame, last frame inclusive, class), separated by gaps of at least one frame."""
    fps, spans = opts["fps"], []
    gap = lambda: max(1, round(rng.uniform(*opts["gap"]) * fps))  # noqa: E731
    f = gap() if rng.random() < 0.5 else 0
    while f < n:
        kind = "short" if rng.random() < opts["short_fraction"] else "long"
        length = max(1, round(rng.uniform(*opts[kind]) * fps))
        label = str(rng.choice(opts["classes"]))
        end = min(f + length, n) - 1
        if end - f + 1 < min(length, max(1, round(fps))):  # a stub under 1 s left at the video's end: gap instead
            break
        spans.append((f, end, label))
        f = end + 1 + gap()
    return spans


def plan_video(seed: int, **options) -> VideoPlan:
    """The time line, motions and per-frame object states of video ``seed`` (options as in check_options)."""
    opts = check_options(**options)
    fps, S = opts["fps"], opts["size"]
    look, timing, motion, others, style = (np.random.default_rng([seed, k]) for k in range(1, 6))
    n = max(1, round(look.uniform(*opts["seconds"]) * fps))
    labels = np.full(n, -1, np.int64)
    # Actor: appearance from `look` only, so it cannot depend on the classes (drawn from `timing`).
    shape, colour = str(look.choice(SHAPES)), _colour(look, (0.45, 1.0), (0.55, 0.95))
    radius = look.uniform(0.055, 0.08) * S
    anchor = _walk(motion, n, motion.uniform(MARGIN * S, (1 - MARGIN) * S, 2), MARGIN * S, (1 - MARGIN) * S,
                   0.025 * S, 1.5, fps)
    offset = motion.normal(0.0, 0.004 * S, (n, 2))
    wobble = _walk(motion, n, [motion.uniform(0, 2 * np.pi)], -np.inf, np.inf, np.deg2rad(15), 1.0, fps)[:, 0]
    turn = np.diff(wobble, prepend=wobble[0])  # idle limb wobble, rad per frame; spins add to it
    scale, instances, annotations = np.ones(n), [], []
    for f0, f1, label in _timeline(timing, n, opts):
        off, sc, spin, params = _motion(label, f1 - f0 + 1, fps, S, motion)
        offset[f0:f1 + 1] += off
        scale[f0:f1 + 1] *= sc
        turn[f0:f1 + 1] += spin
        labels[f0:f1 + 1] = opts["classes"].index(label)
        instances.append({"start": f0, "end": f1, "label": label, "params": params})
        annotations.append({"segment": [round(f0 / fps, 4), round((f1 + 1) / fps, 4)], "label": label})
    angle = wobble[0] + np.cumsum(turn)
    actor = Track(shape, colour, radius, anchor + offset, scale, angle)
    distractors = []
    for _ in range(int(others.integers(opts["distractors"][0], opts["distractors"][1] + 1))):
        r = others.uniform(0.055, 0.08) * S
        xy = _walk(others, n, others.uniform(1.5 * r, S - 1.5 * r, 2), 1.5 * r, S - 1.5 * r, 0.07 * S, 1.0, fps)
        ang = _walk(others, n, [others.uniform(0, 2 * np.pi)], -np.inf, np.inf, np.deg2rad(25), 1.0, fps)[:, 0]
        distractors.append(Track(str(others.choice(SHAPES)), _colour(others, (0.45, 1.0), (0.55, 0.95)), r, xy,
                                 np.ones(n), ang))
    t = np.arange(n) / fps
    gain = 1 + style.uniform(0.03, 0.08) * np.sin(2 * np.pi * t / style.uniform(15, 45) + style.uniform(0, 2 * np.pi))
    return VideoPlan(seed, fps, S, opts["classes"], labels, annotations, instances, actor, distractors, gain,
                     float(style.uniform(2, 5)))


def _background(seed: int, S: int) -> np.ndarray:
    """(S, S, 3) uint8 BGR: two-colour low-frequency texture, fine grain, optional grating, static clutter."""
    rng = np.random.default_rng([seed, 6])
    c1, c2 = (np.array(_colour(rng, (0.1, 0.5), (0.3, 0.7)), np.float32) for _ in range(2))
    k = int(rng.integers(3, 7))
    mix = np.clip(cv2.resize(rng.random((k, k)).astype(np.float32), (S, S), interpolation=cv2.INTER_CUBIC), 0, 1)
    img = c1 * (1 - mix[..., None]) + c2 * mix[..., None]
    grain = cv2.resize(rng.normal(0, 1, (S // 4, S // 4)).astype(np.float32), (S, S), interpolation=cv2.INTER_LINEAR)
    img += grain[..., None] * rng.uniform(6, 18)
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        a, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.3) * S
        img += (rng.uniform(5, 12) * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period))[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 10))):
        layer, colour = img.copy(), _colour(rng, (0.15, 0.6), (0.25, 0.85))
        p, q = rng.uniform(0, S, 2), rng.uniform(0.05, 0.3, 2) * S
        kind = int(rng.integers(4))
        if kind == 0:
            cv2.rectangle(layer, tuple(int(v) for v in p), tuple(int(v) for v in p + q), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.ellipse(layer, tuple(int(v) for v in p), tuple(int(v) for v in q / 2), float(rng.uniform(0, 180)),
                        0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(layer, tuple(int(v) for v in p), tuple(int(v) for v in rng.uniform(0, S, 2)), colour,
                     max(1, int(rng.uniform(0.01, 0.04) * S)), cv2.LINE_AA)
        else:
            pts = (p + rng.uniform(-0.15, 0.15, (3, 2)) * S).astype(np.int32)
            cv2.fillPoly(layer, [pts], colour, cv2.LINE_AA)
        alpha = float(rng.uniform(0.35, 0.8))
        img = cv2.addWeighted(layer, alpha, img, 1 - alpha, 0)
    return img


def _draw(img: np.ndarray, track: Track, i: int, ring: bool) -> None:
    """Draw ``track`` at frame ``i`` (sub-pixel: coordinates in 1/16 px)."""
    x, y = track.xy[i]
    r, a = track.radius * track.scale[i], track.angle[i]
    centre = (int(round(x * 16)), int(round(y * 16)))
    if track.shape == "circle":
        cv2.circle(img, centre, int(round(r * 16)), track.colour, -1, cv2.LINE_AA, 4)
    else:
        corners = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "star": 10}[track.shape]
        rad = np.where(np.arange(corners) % 2, 0.45, 1.0) * r if track.shape == "star" else np.full(corners, r)
        th = a + 2 * np.pi * np.arange(corners) / corners
        pts = np.stack([x + rad * np.cos(th), y + rad * np.sin(th)], 1)
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], track.colour, cv2.LINE_AA, 4)
    tip = (int(round((x + LIMB * r * np.cos(a)) * 16)), int(round((y + LIMB * r * np.sin(a)) * 16)))
    cv2.line(img, centre, tip, tuple(0.3 * c for c in track.colour), max(1, int(round(0.3 * r))), cv2.LINE_AA, 4)
    if ring:
        thick = max(1, round(img.shape[0] / 80))
        cv2.circle(img, centre, int(round(RING * r * 16)), (20, 20, 20), thick + 2, cv2.LINE_AA, 4)
        cv2.circle(img, centre, int(round(RING * r * 16)), (255, 255, 255), thick, cv2.LINE_AA, 4)


def draw_plan(plan: VideoPlan) -> np.ndarray:
    """Pixels of a plan: (T, S, S, 3) uint8 BGR."""
    S, bg = plan.size, _background(plan.seed, plan.size)
    rng = np.random.default_rng([plan.seed, 7])
    out = np.empty((plan.frames, S, S, 3), np.uint8)
    for i in range(plan.frames):
        img = bg.copy()
        for d in plan.distractors:
            _draw(img, d, i, ring=False)
        _draw(img, plan.actor, i, ring=True)
        f = img.astype(np.float32) * np.float32(plan.gain[i])
        f += rng.standard_normal((S, S, 3), dtype=np.float32) * np.float32(plan.noise) + np.float32(0.5)
        out[i] = np.clip(f, 0, 255)
    return out


def render_video(seed: int, **options) -> tuple[np.ndarray, list[dict]]:
    """Video ``seed``: frames (T, size, size, 3) uint8 BGR and its annotations [{"segment": [s, e], "label"}].

    Options (check_options): classes (count or names), fps, size, seconds, gap, short, long (MIN, MAX pairs
    in seconds), short_fraction, distractors (MIN, MAX count).
    """
    plan = plan_video(seed, **options)
    return draw_plan(plan), plan.annotations


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write (T, H, W, 3) uint8 BGR frames as mp4 (mp4v) and check that they read back: count and size."""
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: cv2.VideoWriter cannot write mp4v (OpenCV built without FFmpeg?)")
    for frame in frames:
        writer.write(frame)
    writer.release()
    cap, count = cv2.VideoCapture(str(path)), 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if frame.shape != frames.shape[1:]:
            raise RuntimeError(f"{path}: frame {count} reads back as {frame.shape}, wrote {frames.shape[1:]}")
        count += 1
    cap.release()
    if count != len(frames):
        raise RuntimeError(f"{path}: {count} frames read back, {len(frames)} written")


def _make(task: tuple) -> tuple[str, dict]:
    """Render and write one video; returns (name, its annotations.json entry)."""
    name, subset, seed, out, opts = task
    cv2.setNumThreads(1)
    plan = plan_video(seed, **opts)
    write_video(Path(out) / "videos" / f"{name}.mp4", draw_plan(plan), plan.fps)
    return name, {"subset": subset, "duration": round(plan.frames / plan.fps, 4), "fps": plan.fps,
                  "frames": plan.frames, "seed": seed, "file": f"videos/{name}.mp4", "annotations": plan.annotations}


def video_seeds(seed: int, train: int, val: int, test: int) -> list[tuple[str, str, int]]:
    """(name, subset, seed) of every video; the splits' seed ranges are disjoint (see the module docstring)."""
    counts = {"train": train, "val": val, "test": test}
    return [(f"{subset}_{i:04d}", subset, seed * SEED_STRIDE + base + i)
            for subset, key, base in SPLITS for i in range(counts[key])]


def _readme(command: str, opts: dict, summary: dict) -> str:
    lines = [f"# Synthetic action localization set ({VERSION})", "", f"Made by `{command}`.", "",
             "| split | videos | hours | instances |", "| --- | --- | --- | --- |"]
    lines += [f"| {s} | {summary['videos'][s]} | {summary['hours'][s]:.3f} | {summary['instances'][s]} |"
              for s, _, _ in SPLITS]
    lines += ["", f"Classes: {', '.join(opts['classes'])}. {opts['size']}x{opts['size']} px at {opts['fps']:g} fps, "
              f"videos of {opts['seconds'][0]:g}-{opts['seconds'][1]:g} s. Long actions (>= long_threshold = "
              f"{opts['long'][0]:g} s): {summary['long_fraction']:.0%} of the instances, "
              f"{summary['long_time_fraction']:.0%} of the action time.", "", __doc__]
    return "\n".join(lines)


def generate(out: str | Path, *, train: int = 120, val: int = 10, test: int = 30, seed: int = 0, jobs: int = 1,
             command: str = "", **options) -> dict:
    """Write the data set into ``out`` (absent or an empty folder); returns the summary (see the module docstring).

    ``options``: as check_options (classes, fps, size, seconds, gap, short, long, short_fraction, distractors).
    """
    opts = check_options(**{**DEFAULTS, **options})
    for flag, n, cap in (("train", train, 500_000), ("val", val, 400_000), ("test", test, 100_000)):
        if not 0 <= int(n) <= cap:
            raise ValueError(f"--{flag} {n}: must be within 0-{cap}")
    if train + val + test == 0:
        raise ValueError("--train 0 --val 0 --test 0: nothing to generate")
    if not 0 <= int(seed) < 2 ** 32 // SEED_STRIDE:
        raise ValueError(f"--seed {seed}: must be within 0-{2 ** 32 // SEED_STRIDE - 1}")
    if int(jobs) < 1:
        raise ValueError(f"--jobs {jobs}: must be >= 1")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty folder; choose a new one")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tasks = [(name, subset, s, str(out), opts) for name, subset, s in video_seeds(seed, train, val, test)]
    database: dict[str, dict] = {}
    pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks))) if jobs > 1 else None
    try:
        last = start
        for name, entry in (pool.imap_unordered(_make, tasks) if pool else map(_make, tasks)):
            database[name] = entry
            if time.perf_counter() - last > 15:
                last = time.perf_counter()
                print(f"synth-actions: {len(database)}/{len(tasks)} videos, {last - start:.0f} s", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    database = {name: database[name] for name, _, _ in video_seeds(seed, train, val, test)}
    doc = {"version": VERSION, "classes": opts["classes"], "fps": opts["fps"], "size": opts["size"],
           "long_threshold": opts["long"][0], "database": database}
    (out / "annotations.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "classes.txt").write_text("\n".join(opts["classes"]) + "\n", encoding="utf-8")
    lengths = [a["segment"][1] - a["segment"][0] for v in database.values() for a in v["annotations"]]
    long = [x for x in lengths if x >= opts["long"][0] - 1e-6]
    splits = [subset for subset, _, _ in SPLITS]
    summary = {
        "videos": {s: sum(v["subset"] == s for v in database.values()) for s in splits},
        "hours": {s: round(sum(v["duration"] for v in database.values() if v["subset"] == s) / 3600, 4)
                  for s in splits},
        "instances": {s: sum(len(v["annotations"]) for v in database.values() if v["subset"] == s) for s in splits},
        "long_fraction": round(len(long) / max(1, len(lengths)), 4),
        "long_time_fraction": round(sum(long) / max(1e-9, sum(lengths)), 4),
        "action_time_fraction": round(sum(lengths) / max(1e-9, sum(v["duration"] for v in database.values())), 4),
        "classes": opts["classes"], "out": str(out), "wall_seconds": round(time.perf_counter() - start, 1),
    }
    summary["hours"]["total"] = round(sum(summary["hours"][s] for s in splits), 4)
    readme = _readme(command or "memstream.pipelines.synth_actions.generate", opts, summary)
    (out / "README.md").write_text(readme, encoding="utf-8")
    return summary


def cli_synth_actions(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream data synth-actions", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--train", type=int, default=120, help="training videos")
    p.add_argument("--val", type=int, default=10, help="validation videos")
    p.add_argument("--test", type=int, default=30, help="test videos")
    p.add_argument("--seed", type=int, default=0, help="base seed; every video has its own seed derived from it")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    p.add_argument("--classes", type=int, default=DEFAULTS["classes"],
                   help=f"number of classes, the first of: {', '.join(CLASSES)}")
    p.add_argument("--fps", type=float, default=DEFAULTS["fps"])
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="frame width and height (px)")
    for name, helptext in (("seconds", "video length"), ("gap", "gap between actions"),
                           ("short", "short action length"), ("long", "long action length")):
        p.add_argument(f"--{name}", type=float, nargs=2, default=DEFAULTS[name], metavar=("MIN", "MAX"),
                       help=f"{helptext} (s), uniform")
    p.add_argument("--short-fraction", type=float, default=DEFAULTS["short_fraction"],
                   help="probability that an action is short")
    p.add_argument("--distractors", type=int, nargs=2, default=DEFAULTS["distractors"], metavar=("MIN", "MAX"),
                   help="distractor objects per video")
    args = p.parse_args(argv)
    options = {k: getattr(args, k) for k in DEFAULTS}
    summary = generate(args.out, train=args.train, val=args.val, test=args.test, seed=args.seed, jobs=args.jobs,
                       command="memstream data synth-actions " + " ".join(argv), **options)
    print(json.dumps(summary), flush=True)
    return 0
