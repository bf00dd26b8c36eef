"""Sessions: create (``POST /api/sessions``), describe (``GET``) and delete (``DELETE /api/sessions/{sid}``), and
open a volume in one (``POST /api/sessions/{sid}/volume``: an upload, or a path under the data folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from ...io.segments import TYPES
from ..schemas import SESSION_ERRORS, MaskPath, OpenOptions, OpenPath, WindowBody, error_responses, parse_body
from ..sessions import MASK_UPLOAD_SUFFIXES, UPLOAD_SUFFIXES, AppError, Session, Volume, check_upload, grid3d
from ..state import AppState, StateDep
from ..upload import content_type, read_json, receive_upload
from .common import label_summary

router = APIRouter()


def _file_or_json(suffixes: tuple[str, ...], json_model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """OpenAPI request body of a route taking a multipart upload (field ``file``, one of ``suffixes``, plus form
    ``fields``) or a JSON ``json_model``."""
    file = {"type": "string", "format": "binary", "description": f"one of {', '.join(suffixes)}"}
    multipart = {"type": "object", "required": ["file"], "properties": {"file": file, **fields}}
    content = {"multipart/form-data": {"schema": multipart}, "application/json": {"schema": json_model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}


_UPLOAD_BODY = _file_or_json(
    UPLOAD_SUFFIXES,
    OpenPath,
    preset={"type": "string"},
    window={"type": "string", "description": "LEVEL,WIDTH"},
    modality={"type": "string"},
    resample={"type": "string", "enum": ["true", "false"]},
)
_MASK_BODY = _file_or_json(MASK_UPLOAD_SUFFIXES, MaskPath)


@router.post("/api/sessions", responses=error_responses(503))
def create_session(state: StateDep) -> dict[str, Any]:
    return {"session": state.store.create().sid}


@router.get("/api/sessions/{sid}", responses=error_responses(*SESSION_ERRORS, 409))
def session_info(sid: str, state: StateDep) -> dict[str, Any]:
    store, limits = state.store, state.limits
    s = store.get(sid)
    with s.lock:
        if not s.meta.get("source"):
            return {"session": sid, "volume": None, "limits": limits.describe()}
        vol = store.volume(s)
        state.preencoder.ensure(s)  # a session restored after a restart: pre-encode its volume again
        return {"session": sid, "volume": volume_info(state, s, vol), "undo_steps": len(s.undo), "limits": limits.describe()}


@router.delete("/api/sessions/{sid}", responses=error_responses(*SESSION_ERRORS, 409))
def delete_session(sid: str, state: StateDep) -> dict[str, Any]:
    state.store.delete(sid)
    state.preencoder.cancel(sid)
    return {"deleted": sid}


@router.post(
    "/api/sessions/{sid}/volume",
    responses=error_responses(*SESSION_ERRORS, 403, 409, 415, 507),
    openapi_extra=_UPLOAD_BODY,
)
async def open_volume(sid: str, request: Request, state: StateDep) -> dict[str, Any]:
    """Open a volume: upload it (multipart, field ``file``, options as form fields) or name a path under
    the data folder (JSON ``{"path", "preset"?, "window"?, "modality"?, "resample"?}``)."""
    store, limits = state.store, state.limits
    s = store.get(sid)
    state.preencoder.cancel(sid)  # opening another volume stops the old one's pre-encoding (even if this one fails)
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        room = await run_in_threadpool(store.upload_room, s)
        path, name, fields = await receive_upload(request, s.folder, room, limits.max_upload_bytes)
        try:
            opts = parse_body(OpenOptions, fields)
            return await run_in_threadpool(_open_upload, state, s, path, name, opts)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    if ctype == "application/json":
        body = parse_body(OpenPath, await read_json(request, limits.max_json_bytes))
        return await run_in_threadpool(_open_data, state, s, body)
    raise AppError(415, "send the volume as multipart/form-data (field 'file') or JSON {\"path\": ...}")


@router.post("/api/sessions/{sid}/window", responses=error_responses(*SESSION_ERRORS, 409))
def set_window(sid: str, body: WindowBody, state: StateDep) -> dict[str, Any]:
    """Map the open volume with another intensity ``preset`` or ``window`` [level, width] without reopening it:
    the viewer and the model see the new picture, labels and undo/redo stay. Answers like opening a volume; the
    page then reloads ``volume.nii.gz``. Background pre-encoding starts again for the new picture."""
    store = state.store
    s = store.get(sid)
    state.preencoder.cancel(sid)
    with s.lock:
        vol = store.remap(s, body.preset, (body.window[0], body.window[1]) if body.window else None)
        state.preencoder.start(s)
        return volume_info(state, s, vol)


def _open_upload(state: AppState, s: Session, path: Path, name: str, opts: OpenOptions) -> dict[str, Any]:
    check_upload(path)
    options = opts.model_dump()
    loaded = state.store.load(path, options, name)
    with s.lock:
        vol = state.store.install(s, loaded, {"kind": "upload", "file": path.name, "name": name}, options)
        state.preencoder.start(s)
        return volume_info(state, s, vol)


def _open_data(state: AppState, s: Session, body: OpenPath) -> dict[str, Any]:
    store = state.store
    path = store.resolve_data_path(body.path)
    mask = store.resolve_data_path(body.mask) if body.mask else None
    options = body.model_dump(exclude={"path", "mask"})
    rel = path.relative_to(store.data_dir).as_posix()  # type: ignore[arg-type]
    loaded = store.load(path, options, rel)
    review = None
    if mask is not None:  # checked against the new volume before anything of the session changes
        review = store.read_mask(loaded[0], grid3d(loaded[0], loaded[1]), mask, body.mask or "")
    with s.lock:
        vol = store.install(s, loaded, {"kind": "data", "path": rel, "name": rel}, options)
        if review is not None:
            store.apply_mask(s, *review, body.mask or "")
        state.preencoder.start(s)
        return volume_info(state, s, vol)


@router.post(
    "/api/sessions/{sid}/mask",
    responses=error_responses(*SESSION_ERRORS, 403, 409, 415, 507),
    openapi_extra=_MASK_BODY,
)
async def load_mask(sid: str, request: Request, state: StateDep) -> dict[str, Any]:
    """Load an existing label mask over the open volume to review and correct it: an upload (field ``file``) or
    ``{"path"}`` under the data folder; NIfTI, NRRD, MHA, PNG (2D) or a DICOM-SEG of the series, on exactly the
    volume's grid (422 naming what differs). Its segments' names, colours and codes come with it. One undo step;
    answers the volume info."""
    store, limits = state.store, state.limits
    s = store.get(sid)
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        room = await run_in_threadpool(store.upload_room, s)
        path, name, _ = await receive_upload(request, s.folder, room, limits.max_upload_bytes, MASK_UPLOAD_SUFFIXES, "mask")
        try:
            check_upload(path)
            return await run_in_threadpool(_load_mask, state, s, path, name)
        finally:
            path.unlink(missing_ok=True)  # its labels are the session's now (or it was refused)
    if ctype == "application/json":
        body = parse_body(MaskPath, await read_json(request, limits.max_json_bytes))
        path = await run_in_threadpool(store.resolve_data_path, body.path)
        return await run_in_threadpool(_load_mask, state, s, path, body.path)
    raise AppError(415, "send the mask as multipart/form-data (field 'file') or JSON {\"path\": ...}")


def _load_mask(state: AppState, s: Session, path: Path, name: str) -> dict[str, Any]:
    with s.lock:
        state.store.load_mask(s, path, name)
        return volume_info(state, s, state.store.volume(s))


def volume_info(state: AppState, s: Session, vol: Volume) -> dict[str, Any]:
    """What the client needs about the session's open volume: its source's name, :meth:`Volume.info` (shape
    ``z,y,x``, spacing ``x,y,z`` in mm, slice frames, intensity preset...), its labels and the server's limits
    (call with ``s.lock`` held)."""
    src, limits = s.meta["source"], state.limits.describe()
    return {
        "session": s.sid,
        "source": src.get("name"),
        **vol.info(),
        "labels": label_summary(s, vol),
        "undo_steps": len(s.history.undo),
        "redo_steps": len(s.history.redo),
        "mask_source": s.meta.get("mask_source"),
        "segment_terms": {category: list(types) for category, types in TYPES.items()},  # what a segment may be
        "unsaved": s.unsaved,
        "limits": limits,
        "encoding": state.preencoder.status(s),
    }
