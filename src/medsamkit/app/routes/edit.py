"""Editing the labels by hand: a brush or eraser edit replaces one label on one slice
(``PUT .../mask/{axis}/{index}``), ``undo`` takes back the last change (segment, propagate or edit) and ``redo``
makes it again, and labels are listed and named (``GET .../labels``, ``PUT .../labels/{value}``). Every change
answers the changed region's new values (``patch``, see :func:`.common.patch_payload`) and the label list, so the
page patches its copy in place.

A brush edit's mask is ``(rows, columns)`` of the slice in its (column, row) frame: a PNG (grey, RGB or RGBA;
any non-zero channel is foreground, its size checked from its header before decoding) or raw bytes in row order
(non-zero = foreground)."""

from __future__ import annotations

import base64
import binascii
import io
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from ...io.segments import check_term
from ...masks import fill_between_slices, fill_holes, keep_largest, remove_small, smooth
from ..schemas import SESSION_ERRORS, Axis, LabelName, MaskBody, MergeBody, SegmentSettings, ToolBody, error_responses, parse_body
from ..sessions import AppError, Session
from ..state import AppState, StateDep
from ..upload import content_type, read_body, read_json
from .common import change_summary, label_summary

router = APIRouter()

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_EDIT_BODY = {
    "parameters": [
        {"name": "label", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 255}}
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": MaskBody.model_json_schema()},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@router.put(
    "/api/sessions/{sid}/mask/{axis}/{index}",
    responses=error_responses(*SESSION_ERRORS, 409, 415),
    openapi_extra=_EDIT_BODY,
)
async def edit_slice(sid: str, axis: Axis, index: int, request: Request, state: StateDep) -> dict[str, Any]:
    """Replace a label on one slice (brush edits): JSON ``{"label", "png": base64}``, or an image/png or
    application/octet-stream body (``rows * columns`` bytes, non-zero = the label) with ``?label=``."""
    limits = state.limits
    s = state.store.get(sid)
    ctype = content_type(request)
    if ctype == "application/json":
        body = parse_body(MaskBody, await read_json(request, limits.max_edit_json_bytes))
        label, raw, kind = body.label, _b64(body.png), "png"
    elif ctype in ("image/png", "application/octet-stream"):
        label = _query_label(request)
        raw, kind = await read_body(request, limits.max_edit_bytes), ("png" if ctype == "image/png" else "raw")
    else:
        raise AppError(415, 'send JSON {"label", "png": base64}, or an image/png or application/octet-stream body with ?label=')
    return await run_in_threadpool(_edit, state, s, axis, index, label, raw, kind)


def _edit(state: AppState, s: Session, axis: str, index: int, label: int, raw: bytes, kind: str) -> dict[str, Any]:
    store = state.store
    with s.lock:
        vol = store.volume(s)
        h, w = vol.check_slice(axis, index)
        mask = decode_mask(raw, kind, h, w)
        region = store.set_slice_label(s, axis, index, label, mask, "edit")
        return {
            "label": label,
            "axis": axis,
            "slice": index,
            "pixels": int(mask.sum()),
            "changed": region is not None,
            **change_summary(s, vol, region),
        }


@router.post("/api/sessions/{sid}/undo", responses=error_responses(*SESSION_ERRORS, 409))
def undo(sid: str, state: StateDep) -> dict[str, Any]:
    """Take back the last change; answers the kind undone, the changed region's new values (``patch``), the
    labels and how many undo and redo steps remain."""
    return _history_step(sid, state, redo=False)


@router.post("/api/sessions/{sid}/redo", responses=error_responses(*SESSION_ERRORS, 409))
def redo(sid: str, state: StateDep) -> dict[str, Any]:
    """Make the last undone change again; answers like ``undo`` (``redone`` instead of ``undone``)."""
    return _history_step(sid, state, redo=True)


def _history_step(sid: str, state: AppState, redo: bool) -> dict[str, Any]:
    store = state.store
    s = store.get(sid)
    with s.lock:
        c = store.redo(s) if redo else store.undo(s)
        vol = store.volume(s)
        return {
            ("redone" if redo else "undone"): c.kind,
            "region_zyx": c.region_zyx(),
            "remaining": len(s.history.undo),
            "redo_steps": len(s.history.redo),
            **change_summary(s, vol, c.region),
        }


@router.get("/api/sessions/{sid}/labels", responses=error_responses(*SESSION_ERRORS, 409))
def labels(sid: str, state: StateDep) -> dict[str, Any]:
    store = state.store
    s = store.get(sid)
    with s.lock:
        return {"labels": label_summary(s, store.volume(s))}


@router.put("/api/sessions/{sid}/labels/{value}", responses=error_responses(*SESSION_ERRORS))
def name_label(sid: str, value: int, body: LabelName, state: StateDep) -> dict[str, Any]:
    store = state.store
    s = store.get(sid)
    _check_value(value)
    with s.lock:
        _set_name(s, value, body.name)
        store.save_meta(s)
        return {"value": value, "name": s.names.get(value)}


@router.put("/api/sessions/{sid}/segments/{value}", responses=error_responses(*SESSION_ERRORS, 409))
def segment_settings(sid: str, value: int, body: SegmentSettings, state: StateDep) -> dict[str, Any]:
    """Change a segment's name, colour, visibility, lock or reviewed status (only the fields given); answers the
    segment list. Settings travel with the session (``session.json``)."""
    store = state.store
    s = store.get(sid)
    _check_value(value)
    given = body.model_dump(exclude_unset=True)
    with s.lock:
        if "category" in given or "type" in given:
            current = s.segments.get(value, {})
            category, type_ = given.get("category", current.get("category")), given.get("type", current.get("type"))
            check_term(category, type_)  # both or neither; InputError: 422
        if "name" in given:
            _set_name(s, value, given.pop("name") or "")
        segments = dict(s.meta.get("segments", {}))
        seg = {**segments.get(str(value), {}), **given}
        segments[str(value)] = {k: v for k, v in seg.items() if v is not None}
        s.meta["segments"] = segments
        store.save_meta(s)
        return {"value": value, "labels": label_summary(s, store.volume(s))}


@router.delete("/api/sessions/{sid}/segments/{value}", responses=error_responses(*SESSION_ERRORS, 409))
def delete_segment(sid: str, value: int, state: StateDep) -> dict[str, Any]:
    """Erase a segment's voxels and forget its name and settings (one undo step ``delete``: undo brings both back)."""
    store = state.store
    s = store.get(sid)
    _check_value(value)
    with s.lock:
        region = store.recolor(s, value, 0, "delete")
        return {"deleted": value, **change_summary(s, store.volume(s), region)}


@router.post("/api/sessions/{sid}/segments/{value}/merge", responses=error_responses(*SESSION_ERRORS, 409))
def merge_segment(sid: str, value: int, body: MergeBody, state: StateDep) -> dict[str, Any]:
    """Merge segment ``value`` into segment ``into`` (its voxels take that value; one undo step ``merge``); the
    merged segment's name and settings are dropped."""
    store = state.store
    s = store.get(sid)
    _check_value(value)
    if body.into == value:
        raise AppError(422, "a segment cannot be merged into itself")
    with s.lock:
        region = store.recolor(s, value, body.into, "merge")
        return {"merged": value, "into": body.into, **change_summary(s, store.volume(s), region)}


@router.post("/api/sessions/{sid}/segments/{value}/tool", responses=error_responses(*SESSION_ERRORS, 409))
def segment_tool(sid: str, value: int, body: ToolBody, state: StateDep) -> dict[str, Any]:
    """Apply a slice tool of :mod:`medsamkit.masks` to segment ``value`` (one undo step named after the tool);
    answers the changed box (``patch``), the segments and the history like every change."""
    store = state.store
    s = store.get(sid)
    _check_value(value)
    with s.lock:
        vol = store.volume(s)
        if body.slice is not None and body.tool not in ("fill_holes", "smooth"):
            raise AppError(422, f"{body.tool} works on the whole segment: leave out slice")
        if body.tool == "fill_between" and vol.is_2d:
            raise AppError(422, "a 2D image has no slices to fill between")
        spacing = tuple(float(v) for v in vol.geom3d.spacing[::-1])  # (x, y, z) mm -> the array's (z, y, x)
        tools = {
            "fill_between": lambda m: fill_between_slices(m, spacing),  # type: ignore[arg-type]
            "fill_holes": fill_holes,
            "keep_largest": keep_largest,
            "remove_small": lambda m: remove_small(m, body.min_voxels),
            "smooth": lambda m: smooth(m, body.radius),
        }
        region = store.reshape_segment(s, value, tools[body.tool], body.tool, body.slice)
        return {"tool": body.tool, "changed": region is not None, **change_summary(s, vol, region)}


def _check_value(value: int) -> None:
    if not 1 <= value <= 255:
        raise AppError(422, "label values are 1..255")


def _set_name(s: Session, value: int, name: str) -> None:
    name = name.strip()
    if not name.isprintable():
        raise AppError(422, "the name contains control characters")
    names = dict(s.meta.get("names", {}))
    if name:
        names[str(value)] = name
    else:
        names.pop(str(value), None)
    s.meta["names"] = names


def _query_label(request: Request) -> int:
    v = request.query_params.get("label", "")
    if not v.isdigit() or not 1 <= int(v) <= 255:
        raise AppError(422, "label: give ?label= a value in 1..255")
    return int(v)


def _b64(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AppError(422, "png: not valid base64") from None


def png_size(raw: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding anything; 422 when it is not a PNG."""
    if len(raw) < 24 or raw[:8] != _PNG_MAGIC or raw[12:16] != b"IHDR":
        raise AppError(422, "the mask must be a PNG")
    w, h = struct.unpack(">II", raw[16:24])
    return int(w), int(h)


def decode_mask(raw: bytes, kind: str, h: int, w: int) -> np.ndarray:
    """An edited slice mask -> ``(h, w)`` bool: a PNG (grey, RGB or RGBA; any non-zero channel is foreground)
    or raw ``h * w`` bytes in row order (non-zero = foreground). A PNG's size is checked from its header
    against the slice before it is decoded (no decompression bomb is ever expanded)."""
    if kind == "raw":
        if len(raw) != h * w:
            raise AppError(422, f"raw mask has {len(raw)} bytes; the {w}x{h} slice needs {h * w}")
        return np.frombuffer(raw, np.uint8).reshape(h, w) > 0
    pw, ph = png_size(raw)
    if (pw, ph) != (w, h):
        raise AppError(422, f"mask is {pw}x{ph} pixels, the slice is {w}x{h}")
    from PIL import Image, UnidentifiedImageError

    try:  # decoding the client's bytes: these are the ways PIL reports a broken PNG (ValueError: an oversized
        # text chunk, "Decompressed data too large"); nothing but PIL runs inside
        with Image.open(io.BytesIO(raw)) as im:
            if im.format != "PNG" or im.size != (w, h):
                raise AppError(422, "the mask must be a PNG of the slice's size")
            im.load()
            arr = np.asarray(im.convert("RGBA") if im.mode in ("P", "PA", "LA") else im)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, EOFError, ValueError):
        raise AppError(422, "png: cannot decode the mask image") from None
    return np.asarray(arr > 0) if arr.ndim == 2 else np.asarray(arr.any(axis=-1))
