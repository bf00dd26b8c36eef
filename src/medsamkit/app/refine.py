"""Correction clicks with the previous mask fed back (SAM's mask prompt) in the app's ``POST .../segment``.

A click-trained decoder is trained SAM-style: each correction click comes with ALL earlier prompts of the object
and the previous prediction's low-res logits as ``mask_input``. The page sends the whole prompt of the object
being segmented (box + clicks) with every request; the server keeps, per session and in memory only, the last
segment request (:class:`LastSegment`, one per session, dropped by any other change of the labels, an undo or a
new volume) and, when the next request only adds clicks to it (:func:`feeds_back`), passes its logits to
:func:`medsamkit.predict.segment_2d` as ``mask_input``.

Whether the app does this at all is :data:`FEED_BACK_MASK` (this module is its one place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEED_BACK_MASK = True
"""Feed the previous low-res logits back as ``mask_input`` when a segment request adds clicks to the previous one."""


@dataclass(frozen=True)
class SegmentKey:
    """What a segment request prompts: slice ``slice`` along ``axis`` of the volume ``volume_id``, label ``label``,
    the box ``(x0, y0, x1, y1)`` (inclusive, slice (column, row) frame; None: no box) and the points
    ``(x, y, 1|0)`` in the order given."""

    volume_id: str | None
    axis: str
    slice: int
    label: int
    box: tuple[float, float, float, float] | None
    points: tuple[tuple[float, float, float], ...]

    @classmethod
    def of(
        cls, volume_id: str | None, axis: str, k: int, label: int, box: Sequence[float] | None, points: Sequence[Sequence[float]]
    ) -> SegmentKey:
        """The key of a request; points ``[x, y]`` count as ``[x, y, 1]``."""
        b = None if box is None else (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        pts = tuple((float(p[0]), float(p[1]), float(p[2]) if len(p) > 2 else 1.0) for p in points)
        return cls(volume_id, axis, int(k), int(label), b, pts)


@dataclass(frozen=True)
class LastSegment:
    """A session's last segment request (``key``) and the low-res logits of its result: ``(L, L)`` float32 in the
    model-input frame of that slice's picture (``Segmentation2D.logits[0]``)."""

    key: SegmentKey
    logits: np.ndarray


def feeds_back(previous: SegmentKey | None, request: SegmentKey) -> bool:
    """True when ``request`` continues ``previous``: the same volume, axis, slice, label and box, and its points are
    the previous points followed by at least one new point. Anything else (no previous request, another slice or
    label, a different box, clicks changed or taken back) starts afresh."""
    if previous is None:
        return False
    n = len(previous.points)
    return (
        previous.volume_id == request.volume_id
        and previous.axis == request.axis
        and previous.slice == request.slice
        and previous.label == request.label
        and previous.box == request.box
        and len(request.points) > n
        and request.points[:n] == previous.points
    )
