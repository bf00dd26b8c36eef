"""Helpers more than one router uses (each written once)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..sessions import Session, Volume


def png_bytes(arr: np.ndarray) -> bytes:
    """``(H, W)`` or ``(H, W, 3)`` uint8 (a slice in its (column, row) frame) as PNG bytes (fast compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def label_summary(s: Session, vol: Volume) -> list[dict[str, Any]]:
    """The session's labels, ascending: every value present in ``vol.labels`` and every named one, each as
    ``{"value", "name" (None if unnamed), "voxels"}`` (call with ``s.lock`` held)."""
    counts = np.bincount(vol.labels.ravel(), minlength=256)
    names = s.names
    values = sorted({int(v) for v in np.flatnonzero(counts[1:]) + 1} | set(names))
    return [{"value": v, "name": names.get(v), "voxels": int(counts[v])} for v in values]
