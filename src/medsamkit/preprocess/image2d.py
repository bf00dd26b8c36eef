"""Turning a user's 2D image array into the 3-channel uint8 picture SAM-family pipelines expect."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Return an ``(H, W, 3)`` uint8 copy-or-view of ``image``.

    Accepts ``(H, W)``, ``(H, W, 1)`` (grey, repeated to 3 channels), ``(H, W, 3)`` (RGB) and ``(H, W, 4)``
    (RGBA; alpha is dropped). uint8 values are kept; any other numeric dtype is linearly rescaled from its
    min..max over the whole image to 0..255 (a constant image becomes 0). NaN/inf, empty arrays, bool and
    complex data are rejected with ``ValueError``.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise InputError(f"image is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        pass
    elif arr.ndim != 2:
        raise InputError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    if arr.dtype == bool or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"image dtype {arr.dtype} is not a real numeric type")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        f = arr.astype(np.float64)
        if not np.isfinite(f).all():
            raise InputError("image contains NaN or infinite values")
        lo, hi = float(f.min()), float(f.max())
        f = (f - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(f)
        arr = np.rint(f).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)
