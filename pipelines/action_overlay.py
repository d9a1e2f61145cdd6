"""The action overlay: the frame enlarged, its class and score on top, a timeline strip of emitted events.

The strip shows the last ``window`` seconds up to the current frame; each emitted event is a bar from its
start to its end in its class colour, labelled when it is wide enough; a tick marks where each event was
emitted (its detection latency is the gap between the bar's end and the tick).
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

STRIP = 44  # pixels of the timeline strip
BANNER = 26


def class_colour(index: int, count: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class (hues spread evenly)."""
    r, g, b = colorsys.hsv_to_rgb((index / max(count, 1)) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_action_overlay(frame: np.ndarray, frames_event: dict | None, index: int, timeline: list[dict],
                        classes: list[str], fps: float, width: int = 384, window: float = 60.0) -> np.ndarray:
    """frame: (H, W, 3) uint8 RGB; frames_event: the segment's ``frames`` event (per-frame labels and scores);
    index: the frame's index in its segment; timeline: emitted ``action`` events -> (H', width, 3) uint8 RGB."""
    h, w = frame.shape[:2]
    height = max(1, round(h * width / w))
    image = cv2.resize(frame, (width, height), interpolation=cv2.INTER_NEAREST if w < width else cv2.INTER_AREA)
    canvas = np.zeros((BANNER + height + STRIP, width, 3), np.uint8)
    canvas[BANNER:BANNER + height] = image
    now = 0.0
    if frames_event is not None:
        now = float(frames_event["time"]) + index / fps
        labels, scores = frames_event.get("frame_labels", []), frames_event.get("frame_scores", [])
        if index < len(labels):
            k = labels[index]
            name = "background" if k == 0 else classes[k - 1]
            colour = (160, 160, 160) if k == 0 else class_colour(k - 1, len(classes))
            cv2.rectangle(canvas, (0, 0), (width, BANNER), colour if k else (40, 40, 40), -1)
            text = f"{name} {scores[index]:.2f}" if index < len(scores) else name
            cv2.putText(canvas, text, (6, BANNER - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                        (0, 0, 0) if k else (230, 230, 230), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"{now:7.2f} s", (width - 90, BANNER - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    top = BANNER + height
    cv2.rectangle(canvas, (0, top), (width, top + STRIP), (25, 25, 25), -1)

    def x_of(t: float) -> int:
        return int(round((t - (now - window)) / window * (width - 1)))

    for event in timeline:
        if event["end"] < now - window or event["emitted"] > now + 1e-6:
            continue
        c = class_colour(event["class_index"], len(classes))
        x0, x1 = max(0, x_of(event["start"])), min(width - 1, x_of(event["end"]))
        cv2.rectangle(canvas, (x0, top + 6), (max(x0 + 1, x1), top + STRIP - 14), c, -1)
        xe = min(width - 1, x_of(event["emitted"]))
        cv2.line(canvas, (xe, top + STRIP - 12), (xe, top + STRIP - 4), c, 1)
        if x1 - x0 > 40:
            cv2.putText(canvas, event["label"][:12], (x0 + 2, top + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0),
                        1, cv2.LINE_AA)
    cv2.line(canvas, (width - 1, top), (width - 1, top + STRIP), (255, 255, 255), 1)
    return canvas
