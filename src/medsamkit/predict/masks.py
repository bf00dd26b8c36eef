"""Mask utilities of everything mode: stability score, mask boxes, box NMS (plain PyTorch), run-length encoding,
small-region cleanup.

Boxes here are ``(x0, y0, x1, y1)`` with **inclusive** pixel corners (x = column, y = row), like prompts; an
empty mask has the box (0, 0, 0, 0). Records written to JSON use COCO's XYWH (x0, y0, width, height) with
width = x1 - x0 + 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError


def stability_score(logits: np.ndarray | torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> np.ndarray:
    """SAM's stability score of mask logits ``(..., H, W)``: the IoU between the masks thresholded at
    ``threshold + offset`` and at ``threshold - offset`` (the first is inside the second, so IoU = area ratio).
    Returns ``(...)`` float32; a mask empty at the lower threshold scores 0."""
    x = torch.as_tensor(logits)
    hi = (x > threshold + offset).sum(dim=(-1, -2), dtype=torch.int64)
    lo = (x > threshold - offset).sum(dim=(-1, -2), dtype=torch.int64)
    out = torch.where(lo > 0, hi.double() / lo.clamp(min=1).double(), torch.zeros_like(hi, dtype=torch.float64))
    return out.float().numpy()


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Inclusive boxes ``(N, 4)`` float64 of boolean masks ``(N, H, W)``; (0, 0, 0, 0) for an empty mask."""
    m = np.asarray(masks, dtype=bool)
    n = m.shape[0]
    rows: np.ndarray = np.any(m, axis=2)  # (N, H): rows holding a pixel
    cols: np.ndarray = np.any(m, axis=1)  # (N, W)
    out = np.zeros((n, 4), dtype=np.float64)
    has = rows.any(axis=1)
    h, w = m.shape[1:]
    out[has, 0] = np.argmax(cols[has], axis=1)
    out[has, 1] = np.argmax(rows[has], axis=1)
    out[has, 2] = w - 1 - np.argmax(cols[has][:, ::-1], axis=1)
    out[has, 3] = h - 1 - np.argmax(rows[has][:, ::-1], axis=1)
    return out


def box_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``(N, M)`` of inclusive pixel boxes ``(N, 4)`` and ``(M, 4)`` (areas count pixels: width x1 - x0 + 1)."""
    a = a.double()
    b = b.double()
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def box_nms(boxes: Any, scores: Any, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: visit boxes by decreasing score (ties: lower index first) and drop every
    box whose IoU with an already kept box is above ``iou_threshold``. Returns the kept indices in visiting
    order (int64). Plain PyTorch (no torchvision)."""
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64))
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if b.numel() == 0:
        return np.zeros(0, dtype=np.int64)
    order = torch.as_tensor(np.lexsort((np.arange(len(s)), -s.numpy())))
    iou = box_iou_matrix(b[order], b[order])
    n = len(order)
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long)].numpy().astype(np.int64)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed run-length encoding of a 2D boolean mask: ``{"size": [H, W], "counts": [...]}``, runs
    in column-major (Fortran) order starting with a run of zeros (possibly of length 0)."""
    m = np.asarray(mask, dtype=bool)
    flat = m.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: ``(H, W)`` bool."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise InputError(f"RLE counts sum to {int(counts.sum())}, expected {h}x{w} = {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


def remove_small_regions(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Remove connected regions smaller than ``area`` pixels: ``mode="islands"`` drops small foreground
    components, ``"holes"`` fills small background components (8-connected). Returns (mask, changed)."""
    if mode not in ("islands", "holes"):
        raise InputError("mode must be 'islands' or 'holes'")
    m = np.asarray(mask, dtype=bool)
    target = ~m if mode == "holes" else m
    lab, n = ndimage.label(target, structure=np.ones((3, 3), bool))
    if n == 0:
        return m, False
    sizes = np.bincount(lab.ravel())[1:]
    small = np.flatnonzero(sizes < area) + 1
    if small.size == 0:
        return m, False
    if mode == "holes":
        return m | np.isin(lab, small), True
    keep = np.setdiff1d(np.arange(1, n + 1), small)
    if keep.size == 0:  # keep the largest island rather than nothing
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(lab, keep), True
