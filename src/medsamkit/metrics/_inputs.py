"""Input handling shared by the metrics: masks (numpy or torch) -> bool arrays, spacing -> per-axis floats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._arrays import as_bool_mask, is_torch
from ..errors import InputError

SpacingLike = float | Sequence[float] | None


def as_mask(x: Any, name: str = "mask") -> np.ndarray:
    """A numpy array or torch tensor of any dtype -> bool array of the same shape (nonzero = foreground).

    Raises ``InputError`` (a ``ValueError``) for 0-d input or NaN values (a NaN is neither foreground nor background)."""
    return as_bool_mask(x, name)


def as_mask_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays; raises ``InputError`` (a ``ValueError``) when their shapes differ."""
    p, g = as_mask(pred, "pred"), as_mask(gt, "gt")
    if p.shape != g.shape:
        raise InputError(f"pred and gt must have the same shape, got pred {p.shape} and gt {g.shape}")
    return p, g


def as_spacing(spacing: SpacingLike, ndim: int) -> tuple[float, ...]:
    """None -> 1.0 per axis; a scalar is broadcast; a sequence must have ``ndim`` entries (array-axis order).
    Every entry must be finite and > 0."""
    if spacing is None:
        return (1.0,) * ndim
    if is_torch(spacing):
        tensor: Any = spacing  # a torch tensor (torch is not imported here, so it has no static type)
        s = tensor.detach().cpu().double().numpy()
    else:
        s = np.asarray(spacing, dtype=np.float64)
    if s.ndim == 0:
        s = np.full(ndim, float(s))
    elif s.ndim != 1 or s.shape[0] != ndim:
        raise InputError(f"spacing {list(np.ravel(s))} must have one entry per array axis ({ndim}), got {s.size}")
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise InputError(f"spacing must be finite and > 0 on every axis, got {s.tolist()}")
    return tuple(float(v) for v in s)
