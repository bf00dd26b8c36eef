"""Overlay of label masks, boxes and points on an image, for a quick look."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..errors import InputError
from ..preprocess.image2d import to_rgb_uint8

_PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
    ],
    dtype=np.uint8,
)


def label_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours for labels 1..n (a fixed, distinguishable palette, then random)."""
    if n <= len(_PALETTE):
        return _PALETTE[:n].copy()
    rng = np.random.default_rng(0)
    return np.concatenate([_PALETTE, rng.integers(40, 256, size=(n - len(_PALETTE), 3), dtype=np.uint8)])


def overlay_masks(
    image: np.ndarray,
    labels: np.ndarray,
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] = (),
    alpha: float = 0.45,
) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` picture: ``image`` with each label of ``labels`` (``(H, W)`` ints, 0 =
    background) tinted and outlined in its colour, boxes ``(x0, y0, x1, y1)`` drawn in the colour of their
    label (box i has label i+1) and points ``(x, y[, label])`` as green (1) or red (0) dots."""
    rgb = to_rgb_uint8(image).copy()
    lab = np.asarray(labels)
    if lab.shape != rgb.shape[:2]:
        raise InputError(f"labels shape {lab.shape} does not match image {rgb.shape[:2]}")
    values = [int(v) for v in np.unique(lab) if v != 0]
    colors = label_colors(max(values + [len(boxes), 1]))
    out = rgb.astype(np.float32)
    for v in values:
        m = lab == v
        out[m] = (1 - alpha) * out[m] + alpha * colors[v - 1]
    out = np.clip(out, 0, 255).astype(np.uint8)
    thick = max(1, round(max(rgb.shape[:2]) / 400))
    for v in values:
        contours, _ = cv2.findContours((lab == v).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[v - 1]), thick)
    for i, b in enumerate(boxes):
        x0, y0, x1, y1 = (int(round(c)) for c in b[:4])
        cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in colors[i % len(colors)]), thick)
    for pt in points:
        x, y = int(round(pt[0])), int(round(pt[1]))
        positive = len(pt) < 3 or int(pt[2]) == 1
        color = (0, 220, 0) if positive else (230, 0, 0)
        cv2.circle(out, (x, y), 3 * thick + 2, color, -1)
        cv2.circle(out, (x, y), 3 * thick + 2, (255, 255, 255), 1)
    return out
