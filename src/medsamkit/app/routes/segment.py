"""Segmenting: one slice from a box and/or points (``POST .../segment``, through
:func:`medsamkit.predict.segment_2d`; a request that adds clicks to the session's previous one gets that one's
mask fed back, see :mod:`medsamkit.app.refine`), a label propagated through a window of slices (``POST .../propagate``,
through :func:`medsamkit.predict.segment_volume`; merged by :meth:`SessionStore.merge_propagation`), the
propagation's progress (``GET .../progress``) and the background pre-encoding's (``GET``/``POST .../encoding``).

The model runs without the session's lock; its result is written only if the session still holds the same
volume (409 otherwise, nothing written)."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from fastapi import APIRouter

from ...errors import MedsamkitError, one_line
from ...predict import ObjectPrompt, segment_2d, segment_volume
from .. import refine
from ..limits import MiB
from ..refine import LastSegment, SegmentKey, feeds_back
from ..schemas import SESSION_ERRORS, EncodingFocus, PropagateBody, SegmentBody, error_responses
from ..sessions import AXES, AppError, Job, Session, slice_index
from ..state import StateDep
from .common import change_summary, png_bytes

router = APIRouter()


@router.post("/api/sessions/{sid}/segment", responses=error_responses(*SESSION_ERRORS, 409))
def segment(sid: str, body: SegmentBody, state: StateDep) -> dict[str, Any]:
    """Segment ``label`` on one slice from ALL the prompts of the object (box and/or clicks). When the request
    repeats the session's previous segment request (same slice, label and box) and adds clicks to its points,
    the previous result's low-res logits are fed back as SAM's mask prompt (``"refined": true``; switched by
    :data:`medsamkit.app.refine.FEED_BACK_MASK`)."""
    t0 = time.perf_counter()
    store = state.store
    s = store.get(sid)
    with s.lock:
        vol = store.volume(s)
        h, w = vol.check_slice(body.axis, body.slice)
        box, points = check_prompts(body, h, w, state.limits.max_points)
        store.check_unlocked(s, body.label)
        picture, volume_id = vol.picture(body.axis, body.slice), s.meta["volume_id"]
        key = SegmentKey.of(volume_id, body.axis, body.slice, body.label, box, points)
        last = s.last_segment
        mask_input = last.logits if refine.FEED_BACK_MASK and last is not None and feeds_back(last.key, key) else None
        state.preencoder.focus(s, body.axis, body.slice, start=False)  # pre-encode around where the annotator works
    with state.models.foreground():
        result = segment_2d(state.models.predictor(), picture, boxes=[box] if box else (), points=points, mask_input=mask_input)
    mask, score = result.masks[0], float(result.scores[0])
    with s.lock:
        same_volume(s, volume_id)
        region = store.set_slice_label(s, body.axis, body.slice, body.label, mask, "segment")  # drops s.last_segment
        s.last_segment = LastSegment(key, result.logits[0]) if result.logits is not None else None
        vol = store.volume(s)
        store.log_prompt(s, {"axis": body.axis, "slice": body.slice, "label": body.label, "box": box, "points": points})
        lab = vol.labels[slice_index(body.axis, body.slice)].copy()
        change = change_summary(s, vol, region)
    return {
        "label": body.label,
        "axis": body.axis,
        "slice": body.slice,
        "pixels": int(mask.sum()),
        "score": round(score, 4),
        "ms": round((time.perf_counter() - t0) * 1000, 1),
        "mask": mask_payload(lab),
        **change,
        "warnings": result.warnings,
        "refined": mask_input is not None,
    }


@router.post("/api/sessions/{sid}/propagate", responses=error_responses(*SESSION_ERRORS, 409))
def propagate(sid: str, body: PropagateBody, state: StateDep) -> dict[str, Any]:
    """Segment ``label`` through slices ``slices`` [first, last] of ``axis`` (default: all of them, at most
    ``max_propagate_slices``) from its pixels on ``slice``; the label is replaced inside that range only."""
    t0 = time.perf_counter()
    store = state.store
    s = store.get(sid)
    axis, k, label = body.axis, body.slice, body.label
    a = AXES.index(axis)
    with s.lock:
        vol = store.volume(s)
        vol.check_slice(axis, k)
        store.check_unlocked(s, label)
        n = vol.shape[a]
        if vol.is_2d or n < 2:
            raise AppError(422, f"nothing to propagate: the volume has one slice along {axis}")
        lo, hi = body.slices if body.slices is not None else (0, n - 1)
        if not 0 <= lo <= k <= hi < n:
            raise AppError(422, f"slices [{lo}, {hi}] must lie in 0..{n - 1} along {axis} and contain slice {k}")
        cap = state.limits.max_propagate_slices
        if hi - lo + 1 > cap:
            raise AppError(
                413,
                f"a propagation covers at most {cap} slices; [{lo}, {hi}] has {hi - lo + 1}: "
                f'give "slices": [first, last] around slice {k} (at most {cap})',
            )
        key = vol.labels[slice_index(axis, k)] == label
        if not key.any():
            raise AppError(422, f"label {label} has no pixels on slice {k} along {axis}: segment it there first")
        rows, cols = np.flatnonzero(key.any(axis=1)), np.flatnonzero(key.any(axis=0))
        box = [float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])]
        if s.job.running:
            raise AppError(409, "a propagation is already running in this session")
        job = s.job = Job("propagate", 0, hi - lo + 1, True, None, time.time())
        window = [slice(None)] * 3
        window[a] = slice(lo, hi + 1)
        display, volume_id = vol.display[tuple(window)], s.meta["volume_id"]

    def tick() -> None:
        job.done = min(job.total, job.done + 1)

    try:
        with state.models.foreground():  # background pre-encoding waits while this runs
            seg = segment_volume(
                display,
                [ObjectPrompt(label=label, box=box, slice_index=k - lo)],
                state.models.predictor(on_embed=tick),
                axis=axis,
                preset="passthrough",
                embedding_memory=8 * MiB,  # the shared cache keeps slice embeddings; this is segment_volume's own
            )
    except MedsamkitError as e:
        job.error = state.scrub(one_line(e))  # shown by /progress, like every error: no server paths
        raise
    except BaseException:
        job.error = "failed"
        raise
    finally:
        job.running = False
    handed = [seg.labels == label]  # the merge holds the only reference and frees it before committing
    del seg
    with s.lock:
        same_volume(s, volume_id)
        covered, voxels, region = store.merge_propagation(s, axis, k, lo, hi, label, handed.pop())
        vol = store.volume(s)
        change = change_summary(s, vol, region)
    job.done = job.total
    return {
        "label": label,
        "axis": axis,
        "slice": k,
        "slices": covered,
        "voxels": voxels,
        "ms": round((time.perf_counter() - t0) * 1000, 1),
        **change,
    }


@router.get("/api/sessions/{sid}/progress", responses=error_responses(*SESSION_ERRORS))
def progress(sid: str, state: StateDep) -> dict[str, Any]:
    return state.store.get(sid).job.as_dict()


@router.get("/api/sessions/{sid}/encoding", responses=error_responses(*SESSION_ERRORS))
def encoding(sid: str, state: StateDep) -> dict[str, Any]:
    """Background pre-encoding of the session's volume (:mod:`medsamkit.app.preencode`): ``axis``, ``focus``
    (the slice it works outwards from), ``done``/``total`` slices, ``running``, ``paused`` (volume unloaded),
    ``error``, ``enabled`` (off on this server when false)."""
    s = state.store.get(sid)
    return state.preencoder.status(s)


@router.post("/api/sessions/{sid}/encoding", responses=error_responses(*SESSION_ERRORS, 409))
def encoding_focus(sid: str, body: EncodingFocus, state: StateDep) -> dict[str, Any]:
    """Tell the pre-encoder where the annotator is: it takes the slices of ``axis`` nearest to ``slice`` first
    (another axis restarts it there). Answers like ``GET .../encoding``."""
    store = state.store
    s = store.get(sid)
    with s.lock:
        vol = store.volume(s)
        vol.check_slice(body.axis, body.slice)
        state.preencoder.focus(s, body.axis, body.slice)
    return state.preencoder.status(s)


def same_volume(s: Session, volume_id: Any) -> None:
    """409 when the session's volume is no longer the one with ``volume_id`` (replaced while the model ran)."""
    if s.meta.get("volume_id") != volume_id:
        raise AppError(409, "the session's volume was replaced during the request; nothing was written")


def check_prompts(body: SegmentBody, h: int, w: int, max_points: int) -> tuple[list[float] | None, list[list[float]]]:
    """Validate prompts against an ``h`` x ``w`` slice before any model work (the Predictor checks again):
    one box at most, at most ``max_points`` points (413 above). Returns the box ``[x0, y0, x1, y1]`` (or None)
    and the points as ``[x, y, 1|0]``."""
    if body.box is None and not body.points:
        raise AppError(422, "give a box and/or points")
    if body.points and len(body.points) > max_points:
        raise AppError(413, f"{len(body.points)} points: this server takes at most {max_points} points per request")
    limits = f"x must be in 0..{w - 1}, y in 0..{h - 1}"
    box = None
    if body.box is not None:
        x0, y0, x1, y1 = body.box
        if x0 > x1 or y0 > y1:
            raise AppError(422, f"box {list(body.box)}: need x0 <= x1 and y0 <= y1")
        if min(x0, y0) < 0 or x1 > w - 1 or y1 > h - 1:
            raise AppError(422, f"box {list(body.box)} lies outside the {w}x{h} slice ({limits})")
        box = list(body.box)
    points = []
    for p in body.points or []:
        if len(p) not in (2, 3) or (len(p) == 3 and p[2] not in (0, 1)):
            raise AppError(422, f"point {p}: expected [x, y] or [x, y, 1|0]")
        if not (0 <= p[0] <= w - 1 and 0 <= p[1] <= h - 1):
            raise AppError(422, f"point {p} lies outside the {w}x{h} slice ({limits})")
        points.append([p[0], p[1], p[2] if len(p) == 3 else 1.0])
    if body.box is None and points and not any(p[2] == 1 for p in points):
        raise AppError(422, "points only: give at least one foreground point (label 1)")
    return box, points


def mask_payload(lab: np.ndarray) -> dict[str, Any]:
    """A slice's label values (``(H, W)`` uint8, slice frame) as a base64 PNG."""
    return {"encoding": "png-base64", "shape": list(lab.shape), "data": base64.b64encode(png_bytes(lab)).decode()}
