from __future__ import annotations

from typing import Any

import numpy as np


def as_mask(mask: Any, ndim: int | None = None) -> np.ndarray:
    """A boolean numpy view of ``mask`` (numpy or torch; nonzero = foreground), checked for dimensionality."""
    if type(mask).__module__.startswith("torch"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if ndim is not None and m.ndim != ndim:
        raise ValueError(f"expected a {ndim}D mask, got shape {m.shape}")
    if m.dtype != bool:
        if m.dtype.kind == "f" and np.isnan(m).any():
            raise ValueError("mask contains NaN values")
        m = m != 0
    return m
