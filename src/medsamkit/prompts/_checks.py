from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import as_bool_mask
from ..errors import PromptError


def as_mask(mask: Any, ndim: int | None = None) -> np.ndarray:
    """A boolean numpy view of ``mask`` (numpy or torch; nonzero = foreground), checked for dimensionality."""
    m = as_bool_mask(mask)
    if ndim is not None and m.ndim != ndim:
        raise PromptError(f"expected a {ndim}D mask, got shape {m.shape}")
    return m
