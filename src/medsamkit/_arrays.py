"""Small array helpers shared across subpackages (numpy or torch in, numpy out)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (subclasses such as MONAI's MetaTensor live in other modules, so the
    whole MRO is checked); torch itself is never imported here."""
    return any(c.__module__.startswith("torch") for c in type(x).__mro__)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device; dtypes numpy lacks, such as bfloat16,
    become float32) or array-like."""
    if is_torch(x):
        t = x.detach().cpu()
        try:
            return t.numpy()
        except TypeError:
            return t.float().numpy()
    return np.asarray(x)


def as_bool_mask(x: Any, name: str = "mask") -> np.ndarray:
    """A numpy array or torch tensor of any numeric dtype -> bool array of the same shape (nonzero =
    foreground). Raises ``InputError`` (a ``ValueError``) for 0-d input, NaN values (neither foreground nor background) and
    non-numeric dtypes."""
    a = to_numpy(x)
    if a.ndim == 0:
        raise InputError(f"{name} must have at least one dimension, got a scalar")
    if a.dtype == bool:
        return a
    if a.dtype.kind in "fc":
        n_nan = int(np.count_nonzero(np.isnan(a)))
        if n_nan:
            raise InputError(f"{name} contains {n_nan} NaN values")
    elif a.dtype.kind not in "iub":
        raise InputError(f"{name} has dtype {a.dtype}; expected a bool or numeric array")
    return a != 0
