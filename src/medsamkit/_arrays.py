"""Small array helpers shared across subpackages (numpy or torch in, numpy out)."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device) or array-like."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_bool_mask(mask: Any) -> np.ndarray:
    """Boolean mask (nonzero = foreground) from numpy/torch input; ``ValueError`` for NaN values."""
    m = to_numpy(mask)
    if m.dtype == bool:
        return m
    if m.dtype.kind == "f" and np.isnan(m).any():
        raise ValueError("mask contains NaN values")
    return m != 0
