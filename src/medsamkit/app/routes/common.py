"""Helpers more than one router uses (each written once)."""

from __future__ import annotations

import base64
import io
import zlib
from typing import Any

import numpy as np

from ..sessions import Session, Volume


def png_bytes(arr: np.ndarray) -> bytes:
    """``(H, W)`` or ``(H, W, 3)`` uint8 (a slice in its (column, row) frame) as PNG bytes (fast compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def patch_payload(vol: Volume, region: tuple[slice, slice, slice] | None) -> dict[str, Any] | None:
    """The label values of ``region`` after a change, for the page to patch its copy in place: ``region_zyx``
    (inclusive ``[[z0, z1], [y0, y1], [x0, x1]]``), ``shape`` (the region's ``(Z, Y, X)``) and ``data`` (uint8 in
    C order, z slowest, zlib-compressed, base64). None when nothing changed."""
    if region is None:
        return None
    block = np.ascontiguousarray(vol.labels[region])
    return {
        "region_zyx": [[int(r.start), int(r.stop) - 1] for r in region],
        "shape": list(block.shape),
        "encoding": "zlib-base64",
        "data": base64.b64encode(zlib.compress(block.tobytes(), 1)).decode(),
    }


def label_summary(s: Session, vol: Volume) -> list[dict[str, Any]]:
    """The session's segments, ascending by label value: every value present in ``vol.labels`` and every one
    with a name or settings, each as ``{"value", "name" (None if unnamed), "voxels", "ml" (voxels times the voxel
    volume, mL; None for a 2D image), "slices" (the z slices holding it, ascending), "color" ([r, g, b] or None
    for the default), "visible", "locked", "reviewed", "category", "type" (None: tissue)}`` (call with ``s.lock``
    held). Counts
    are kept up to date by every change (:attr:`Volume.slice_counts`): no pass over the volume."""
    zc = vol.slice_counts
    counts = zc.sum(axis=0)
    names, settings = s.names, s.segments
    values = sorted({int(v) for v in np.flatnonzero(counts[1:]) + 1} | set(names) | set(settings))
    out = []
    for v in values:
        seg = settings.get(v, {})
        out.append(
            {
                "value": v,
                "name": names.get(v),
                "voxels": int(counts[v]),
                "ml": None if vol.is_2d else round(float(counts[v]) * vol.voxel_mm3 / 1000.0, 4),
                "slices": [int(k) for k in np.flatnonzero(zc[:, v])],
                "color": seg.get("color"),
                "visible": bool(seg.get("visible", True)),
                "locked": bool(seg.get("locked", False)),
                "reviewed": bool(seg.get("reviewed", False)),
                "category": seg.get("category"),
                "type": seg.get("type"),
            }
        )
    return out


def change_summary(s: Session, vol: Volume, region: tuple[slice, slice, slice] | None) -> dict[str, Any]:
    """What every change answers (call with ``s.lock`` held): the changed box's new values (``patch``, None when
    nothing changed), the segments (:func:`label_summary`) and the history (``undo``/``redo`` steps, ``unsaved``)."""
    return {
        "patch": patch_payload(vol, region),
        "labels": label_summary(s, vol),
        "history": {"undo": len(s.history.undo), "redo": len(s.history.redo), "unsaved": s.unsaved},
    }
