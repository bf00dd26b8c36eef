"""The annotation web app's HTTP API (FastAPI): a thin layer over :mod:`medsamkit.io` and
:mod:`medsamkit.predict`; it has no segmentation logic of its own.

Every route but ``POST /api/sessions`` takes an unguessable session id in its path. Volumes are ``(Z, Y, X)``;
a slice along ``axis`` z, y, x has (column, row) pixel coordinates (x, y), (x, z), (y, z); boxes
``[x0, y0, x1, y1]`` are inclusive, points are ``[x, y, 1|0]`` (1 = foreground).

Errors are ``{"error": message}``, mapped in one place: a :class:`~medsamkit.errors.MedsamkitError` (the
library's input errors, :class:`~medsamkit.app.sessions.AppError` for the app's own) gives its ``status``
(422 input, 413 over a limit, 4xx for sessions and paths) and its one-line message with server folders and
temporary names removed; anything else is a bug: 500 "internal server error", the traceback in the server log.
Limits (:class:`~medsamkit.app.limits.Limits`), the ``Host`` check and the security headers are enforced before
any route runs (:mod:`medsamkit.app.guard`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import secrets
import struct
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._files import atomic_write_bytes
from ..errors import MedsamkitError, one_line
from ..io import write_mask
from ..io.formats import by_name, split_suffix
from ..predict import ObjectPrompt, Predictor, segment_2d, segment_volume
from .guard import LOOPBACK_NAMES, Guard, HostRule
from .limits import Limits, MiB
from .model import ModelService
from .sessions import (
    AXES,
    SAVE_FORMATS,
    UPLOAD_SUFFIXES,
    AppError,
    Job,
    Session,
    SessionStore,
    Volume,
    check_upload,
    private,
    slice_index,
)

log = logging.getLogger("medsamkit.app")
STATIC = Path(__file__).resolve().parent / "static"
# The page's viewer, NiiVue, comes from npm (`npm ci --prefix src/medsamkit/app/web`); never from a CDN.
NIIVUE_DIST = Path(__file__).resolve().parent / "web" / "node_modules" / "@niivue" / "niivue" / "dist"
_FIELD_LIMIT = 4096
_MEDIA = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".map": "application/json"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Num = Annotated[float, Strict()]
Axis = Literal["z", "y", "x"]
Label = Annotated[StrictInt, Field(ge=1, le=255)]
Point = Annotated[list[Num], Field(min_length=2, max_length=3)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorBody(BaseModel):
    """Every error response: one line for the user."""

    error: str


class OpenOptions(_Body):
    """How to map intensities: ``preset`` (auto, soft_tissue, lung, bone, brain, percentile, passthrough),
    ``window`` [level, width] with width > 0 (overrides preset), ``modality`` (overrides the file's);
    ``resample``: put a DICOM series with unevenly spaced slices on a uniform grid (otherwise it is refused)."""

    preset: str = "auto"
    window: tuple[Num, Num] | None = None
    modality: str | None = None
    resample: StrictBool = False

    @field_validator("window")
    @classmethod
    def _positive_width(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[1] > 0:
            raise ValueError(f"the width must be positive, got {v[1]:g}")
        return v


class OpenPath(OpenOptions):
    path: str


class SegmentBody(_Body):
    """One prompt on one slice: a box and/or points (at most ``Limits.max_points``, default 64)."""

    axis: Axis = "z"
    slice: StrictInt
    label: Label = 1
    box: tuple[Num, Num, Num, Num] | None = None
    points: list[Point] | None = None


class PropagateBody(_Body):
    """Propagate ``label`` from ``slice`` through ``slices`` [first, last] (inclusive; default the whole axis,
    at most ``Limits.max_propagate_slices``)."""

    axis: Axis = "z"
    slice: StrictInt
    label: Label
    slices: tuple[StrictInt, StrictInt] | None = None


class MaskBody(_Body):
    label: Label
    png: str


class LabelName(_Body):
    name: Annotated[str, Field(max_length=64)]


class SaveBody(_Body):
    format: Literal["nii.gz", "nrrd", "mha", "dcm", "png"] = "nii.gz"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses (every route can also answer 400, 413, 421 and 500)."""
    why = {
        400: "malformed request (invalid JSON or multipart)",
        403: "path outside the data folder, or no data folder",
        404: "unknown session or file",
        409: "conflict with the session's state (no volume, a running propagation, nothing to undo)",
        413: "over a limit (body bytes, volume memory, points, propagation slices)",
        415: "unsupported content type or file type",
        421: "the Host header is not one this server answers for",
        422: "invalid input (prompt, image, option)",
        500: "internal server error (a bug; details in the server log)",
        503: "too many sessions",
        507: "over the session's or the server's disk quota",
    }
    return {c: {"model": ErrorBody, "description": why[c]} for c in sorted({400, 413, 421, 422, 500, *codes})}


_SID = (404,)
_PNG = {200: {"content": {"image/png": {}}, "description": "a PNG"}}
_GZ = {200: {"content": {"application/gzip": {}}, "description": "a .nii.gz file"}}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": f"one of {', '.join(UPLOAD_SUFFIXES)}"},
                        "preset": {"type": "string"},
                        "window": {"type": "string", "description": "LEVEL,WIDTH"},
                        "modality": {"type": "string"},
                        "resample": {"type": "string", "enum": ["true", "false"]},
                    },
                }
            },
            "application/json": {"schema": OpenPath.model_json_schema()},
        },
    }
}
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


def create_app(
    data_dir: Path | None,
    *,
    state_dir: Path,
    limits: Limits | None = None,
    max_upload_bytes: int | None = None,
    embedding_memory: int = 1 << 30,
    model: str = "litemedsam",
    predictor: Predictor | None = None,
    max_loaded: int = 8,
    allowed_hosts: Iterable[str] = (),
    port: int | None = None,
) -> FastAPI:
    """The app. data_dir: folder clients may open volumes from by relative path (None: uploads only);
    state_dir: where sessions live (existing ones are restored); limits: the server's bounds
    (``max_upload_bytes`` overrides its upload limit); embedding_memory: bytes of slice embeddings cached for all
    sessions together; predictor: share this predictor's engine instead of loading ``model``; max_loaded: sessions
    whose volume stays in memory (others reload from disk on their next request). allowed_hosts: ``Host`` names
    answered besides the loopback names 127.0.0.1, localhost and [::1] (``name`` or ``name:port``; ``*`` = any);
    port: the port the server listens on (a name without a port must come with it; None: any port)."""
    limits = limits or Limits()
    if max_upload_bytes is not None:
        limits = Limits(**{**limits.__dict__, "max_upload_bytes": max_upload_bytes})
    store = SessionStore(Path(state_dir), data_dir, max_loaded=max_loaded, limits=limits)
    models = ModelService(model, predictor, embedding_memory)
    app = FastAPI(title="medsamkit annotation server", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.store = store
    app.state.models = models
    app.state.limits = limits
    hosts = HostRule([*LOOPBACK_NAMES, *allowed_hosts], port)
    app.state.hosts = hosts
    app.add_middleware(Guard, limits=limits, hosts=hosts)
    scrub = _scrubber([store.state_dir, store.data_dir, data_dir, state_dir, Path(tempfile.gettempdir())])

    # -- errors: always {"error": ...}, mapped here only --------------------------------------------------------
    @app.exception_handler(MedsamkitError)
    async def _known_error(request: Request, exc: MedsamkitError) -> JSONResponse:
        status = int(getattr(exc, "status", 503))
        return JSONResponse({"error": scrub(exc.message if isinstance(exc, AppError) else one_line(exc))}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        return JSONResponse({"error": _describe(errors)}, status_code=status)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    # -- page -----------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        f = STATIC / name
        if "/" in name or name.startswith(".") or not f.is_file():
            raise AppError(404, "not found")
        return FileResponse(f, media_type=_MEDIA.get(f.suffix))  # not the OS's table: a module script must be JS

    @app.get("/vendor/niivue/{name}", include_in_schema=False)
    def niivue(name: str) -> FileResponse:
        if not (NIIVUE_DIST / "index.js").is_file():
            raise AppError(404, "the NiiVue viewer is not installed: run `npm ci --prefix src/medsamkit/app/web`")
        f = NIIVUE_DIST / name
        if "/" in name or name.startswith(".") or not f.is_file():
            raise AppError(404, "not found")
        return FileResponse(f, media_type=_MEDIA.get(f.suffix))

    # -- sessions -------------------------------------------------------------------------------------------
    @app.post("/api/sessions", responses=_errors(503))
    def create_session() -> dict[str, Any]:
        return {"session": store.create().sid}

    @app.get("/api/sessions/{sid}", responses=_errors(*_SID, 409))
    def session_info(sid: str) -> dict[str, Any]:
        s = store.get(sid)
        with s.lock:
            if not s.meta.get("source"):
                return {"session": sid, "volume": None, "limits": limits.describe()}
            vol = store.volume(s)
            return {"session": sid, "volume": _volume_info(s, vol), "undo_steps": len(s.undo), "limits": limits.describe()}

    @app.delete("/api/sessions/{sid}", responses=_errors(*_SID, 409))
    def delete_session(sid: str) -> dict[str, Any]:
        store.delete(sid)
        return {"deleted": sid}

    # -- opening a volume -----------------------------------------------------------------------------------
    @app.post("/api/sessions/{sid}/volume", responses=_errors(*_SID, 403, 409, 415, 507), openapi_extra=_UPLOAD_BODY)
    async def open_volume(sid: str, request: Request) -> dict[str, Any]:
        """Open a volume: upload it (multipart, field ``file``, options as form fields) or name a path under
        the data folder (JSON ``{"path", "preset"?, "window"?, "modality"?, "resample"?}``)."""
        s = store.get(sid)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            room = await run_in_threadpool(store.upload_room, s)
            path, name, fields = await _receive_upload(request, s.folder, room, limits.max_upload_bytes)
            try:
                opts = _parse(OpenOptions, fields)
                return await run_in_threadpool(_open_upload, s, path, name, opts)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        if ctype == "application/json":
            body = _parse(OpenPath, await _read_json(request, limits.max_json_bytes))
            return await run_in_threadpool(_open_data, s, body)
        raise AppError(415, "send the volume as multipart/form-data (field 'file') or JSON {\"path\": ...}")

    def _open_upload(s: Session, path: Path, name: str, opts: OpenOptions) -> dict[str, Any]:
        check_upload(path)
        options = opts.model_dump()
        loaded = store.load(path, options, name)
        with s.lock:
            vol = store.install(s, loaded, {"kind": "upload", "file": path.name, "name": name}, options)
            return _volume_info(s, vol)

    def _open_data(s: Session, body: OpenPath) -> dict[str, Any]:
        path = store.resolve_data_path(body.path)
        options = body.model_dump(exclude={"path"})
        rel = path.relative_to(store.data_dir).as_posix()  # type: ignore[arg-type]
        loaded = store.load(path, options, rel)
        with s.lock:
            vol = store.install(s, loaded, {"kind": "data", "path": rel, "name": rel}, options)
            return _volume_info(s, vol)

    def _volume_info(s: Session, vol: Volume) -> dict[str, Any]:
        src = s.meta["source"]
        return {"session": s.sid, "source": src.get("name"), **vol.info(), "labels": _labels(s, vol), "limits": limits.describe()}

    # -- viewing --------------------------------------------------------------------------------------------
    @app.get("/api/sessions/{sid}/volume.nii.gz", responses={**_GZ, **_errors(*_SID, 409)}, response_class=Response)
    def volume_nifti(sid: str) -> Response:
        s = store.get(sid)
        with s.lock:
            vol = store.volume(s)
            f = s.folder / "display.nii.gz"
            if f.is_file():
                data = f.read_bytes()
            else:
                data = _nifti_gz(vol.display, vol)
                atomic_write_bytes(f, data)  # cached for the next viewer, unless over the disk quota
                try:
                    store.check_disk(s, [f])
                except AppError:
                    pass
        return Response(data, media_type="application/gzip", headers={"Content-Disposition": 'inline; filename="volume.nii.gz"'})

    @app.get("/api/sessions/{sid}/mask.nii.gz", responses={**_GZ, **_errors(*_SID, 409)}, response_class=Response)
    def mask_nifti(sid: str) -> Response:
        s = store.get(sid)
        with s.lock:
            vol = store.volume(s)
            labels = vol.labels.copy()
        return Response(
            _nifti_gz(labels, vol),
            media_type="application/gzip",
            headers={"Content-Disposition": 'inline; filename="mask.nii.gz"'},
        )

    @app.get("/api/sessions/{sid}/slice/{axis}/{index}.png", responses={**_PNG, **_errors(*_SID, 409)}, response_class=Response)
    def slice_png(sid: str, axis: Axis, index: int) -> Response:
        s = store.get(sid)
        with s.lock:
            vol = store.volume(s)
            vol.check_slice(axis, index)
            picture = vol.picture(axis, index)
        return Response(_png(picture), media_type="image/png")

    @app.get("/api/sessions/{sid}/mask/{axis}/{index}.png", responses={**_PNG, **_errors(*_SID, 409)}, response_class=Response)
    def mask_png(sid: str, axis: Axis, index: int) -> Response:
        s = store.get(sid)
        with s.lock:
            vol = store.volume(s)
            vol.check_slice(axis, index)
            lab = vol.labels[slice_index(axis, index)].copy()
        return Response(_png(lab), media_type="image/png")

    # -- segmenting -----------------------------------------------------------------------------------------
    @app.post("/api/sessions/{sid}/segment", responses=_errors(*_SID, 409))
    def segment(sid: str, body: SegmentBody) -> dict[str, Any]:
        t0 = time.perf_counter()
        s = store.get(sid)
        with s.lock:
            vol = store.volume(s)
            h, w = vol.check_slice(body.axis, body.slice)
            box, points = _check_prompts(body, h, w, limits.max_points)
            picture, volume_id = vol.picture(body.axis, body.slice), s.meta["volume_id"]
        result = segment_2d(models.predictor(), picture, boxes=[box] if box else (), points=points)
        mask, score = result.masks[0], float(result.scores[0])
        with s.lock:
            _same_volume(s, volume_id)
            store.set_slice_label(s, body.axis, body.slice, body.label, mask, "segment")
            lab = store.volume(s).labels[slice_index(body.axis, body.slice)].copy()
        return {
            "label": body.label,
            "axis": body.axis,
            "slice": body.slice,
            "pixels": int(mask.sum()),
            "score": round(score, 4),
            "ms": round((time.perf_counter() - t0) * 1000, 1),
            "mask": _mask_payload(lab),
            "warnings": result.warnings,
        }

    @app.post("/api/sessions/{sid}/propagate", responses=_errors(*_SID, 409))
    def propagate(sid: str, body: PropagateBody) -> dict[str, Any]:
        """Segment ``label`` through slices ``slices`` [first, last] of ``axis`` (default: all of them, at most
        ``max_propagate_slices``) from its pixels on ``slice``; the label is replaced inside that range only."""
        t0 = time.perf_counter()
        s = store.get(sid)
        axis, k, label = body.axis, body.slice, body.label
        a = AXES.index(axis)
        with s.lock:
            vol = store.volume(s)
            vol.check_slice(axis, k)
            n = vol.shape[a]
            if vol.is_2d or n < 2:
                raise AppError(422, f"nothing to propagate: the volume has one slice along {axis}")
            lo, hi = body.slices if body.slices is not None else (0, n - 1)
            if not 0 <= lo <= k <= hi < n:
                raise AppError(422, f"slices [{lo}, {hi}] must lie in 0..{n - 1} along {axis} and contain slice {k}")
            cap = limits.max_propagate_slices
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
            region = tuple(slice(lo, hi + 1) if i == a else slice(0, m) for i, m in enumerate(vol.shape))
            display, volume_id = vol.display[tuple(window)], s.meta["volume_id"]

        def tick() -> None:
            job.done = min(job.total, job.done + 1)

        try:
            seg = segment_volume(
                display,
                [ObjectPrompt(label=label, box=box, slice_index=k - lo)],
                models.predictor(on_embed=tick),
                axis=axis,
                preset="passthrough",
                embedding_memory=8 * MiB,  # the shared cache keeps slice embeddings; this is segment_volume's own
            )
        except MedsamkitError as e:
            job.error = scrub(one_line(e))  # shown by /progress, like every error: no server paths
            raise
        except BaseException:
            job.error = "failed"
            raise
        finally:
            job.running = False
        obj = seg.labels == label
        del seg
        with s.lock:
            _same_volume(s, volume_id)
            vol = store.volume(s)
            cur = vol.labels[region]
            new = cur.copy()
            keep = slice_index(axis, k - lo)
            new[new == label] = 0  # the object is re-derived from slice k, which keeps its pixels as they are
            new[obj] = label
            new[keep] = cur[keep]
            del obj
            store.commit(s, region, new, "propagate")  # type: ignore[arg-type]
            del new
            inside = vol.labels[region] == label
            covered = np.flatnonzero(inside.any(axis=tuple(i for i in range(3) if i != a))) + lo
            voxels = int(inside.sum())
        job.done = job.total
        return {
            "label": label,
            "axis": axis,
            "slice": k,
            "slices": [int(covered[0]), int(covered[-1])] if covered.size else [],
            "voxels": voxels,
            "ms": round((time.perf_counter() - t0) * 1000, 1),
        }

    @app.get("/api/sessions/{sid}/progress", responses=_errors(*_SID))
    def progress(sid: str) -> dict[str, Any]:
        return store.get(sid).job.as_dict()

    # -- editing --------------------------------------------------------------------------------------------
    @app.put("/api/sessions/{sid}/mask/{axis}/{index}", responses=_errors(*_SID, 409, 415), openapi_extra=_EDIT_BODY)
    async def edit_slice(sid: str, axis: Axis, index: int, request: Request) -> dict[str, Any]:
        """Replace a label on one slice (brush edits): JSON ``{"label", "png": base64}``, or an image/png or
        application/octet-stream body (``rows * columns`` bytes, non-zero = the label) with ``?label=``."""
        s = store.get(sid)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            body = _parse(MaskBody, await _read_json(request, limits.max_edit_json_bytes))
            label, raw, kind = body.label, _b64(body.png), "png"
        elif ctype in ("image/png", "application/octet-stream"):
            label = _query_label(request)
            raw, kind = await _read_body(request, limits.max_edit_bytes), ("png" if ctype == "image/png" else "raw")
        else:
            raise AppError(
                415, 'send JSON {"label", "png": base64}, or an image/png or application/octet-stream body with ?label='
            )
        return await run_in_threadpool(_edit, s, axis, index, label, raw, kind)

    def _edit(s: Session, axis: str, index: int, label: int, raw: bytes, kind: str) -> dict[str, Any]:
        with s.lock:
            vol = store.volume(s)
            h, w = vol.check_slice(axis, index)
            mask = _decode_mask(raw, kind, h, w)
            changed = store.set_slice_label(s, axis, index, label, mask, "edit")
            return {"label": label, "axis": axis, "slice": index, "pixels": int(mask.sum()), "changed": changed}

    @app.post("/api/sessions/{sid}/undo", responses=_errors(*_SID, 409))
    def undo(sid: str) -> dict[str, Any]:
        s = store.get(sid)
        with s.lock:
            c = store.undo(s)
            return {"undone": c.kind, "region_zyx": [[r.start, r.stop - 1] for r in c.region], "remaining": len(s.undo)}

    # -- labels ---------------------------------------------------------------------------------------------
    @app.get("/api/sessions/{sid}/labels", responses=_errors(*_SID, 409))
    def labels(sid: str) -> dict[str, Any]:
        s = store.get(sid)
        with s.lock:
            return {"labels": _labels(s, store.volume(s))}

    @app.put("/api/sessions/{sid}/labels/{value}", responses=_errors(*_SID))
    def name_label(sid: str, value: int, body: LabelName) -> dict[str, Any]:
        s = store.get(sid)
        if not 1 <= value <= 255:
            raise AppError(422, "label values are 1..255")
        name = body.name.strip()
        if not name.isprintable():
            raise AppError(422, "the name contains control characters")
        with s.lock:
            names = dict(s.meta.get("names", {}))
            if name:
                names[str(value)] = name
            else:
                names.pop(str(value), None)
            s.meta["names"] = names
            store.save_meta(s)
        return {"value": value, "name": name or None}

    # -- saving ---------------------------------------------------------------------------------------------
    @app.post("/api/sessions/{sid}/save", responses=_errors(*_SID, 409, 507))
    def save(sid: str, body: SaveBody | None = None) -> dict[str, Any]:
        """Write the mask on the source's grid (``format``); for ``dcm`` the label names become DICOM SegmentLabels
        (``io.dicom.segment_label``)."""
        fmt = (body or SaveBody()).format
        s = store.get(sid)
        with s.lock:
            vol = store.volume(s)
            if fmt == "png" and not vol.is_2d:
                raise AppError(422, "PNG is for 2D images; save volumes as nii.gz, nrrd, mha or dcm")
            name = "segmentation" + SAVE_FORMATS[fmt]
            if not vol.is_2d:
                like, labels = vol.image, vol.labels
            elif fmt in ("png", "dcm"):
                like, labels = vol.image, vol.labels[0]
            else:  # a 2D image as a one-slice volume
                like, labels = vol.geom3d, vol.labels
            meta = {"intensity": vol.preset.describe(), "saved": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": models.model}
            names = s.names
            s.exports_dir.mkdir(mode=0o700, exist_ok=True)
            out = write_mask(s.exports_dir / name, labels, like, names=names, metadata=meta)
            side = out.name + ".json"
            private(s.exports_dir)
            store.check_disk(s, [out, s.exports_dir / side])
            s.meta["exports"] = sorted({*s.meta.get("exports", []), out.name, side})
            store.save_meta(s)
        base = f"/api/sessions/{sid}/download/"
        return {"format": fmt, "file": out.name, "url": base + out.name, "sidecar_url": base + side}

    @app.get("/api/sessions/{sid}/download/{name}", responses=_errors(*_SID))
    def download(sid: str, name: str) -> FileResponse:
        s = store.get(sid)
        with s.lock:
            known = name in s.meta.get("exports", [])
        f = s.exports_dir / name
        if not known or not f.is_file() or f.resolve().parent != s.exports_dir.resolve():
            raise AppError(404, "no such file in this session")
        media = "application/json" if name.endswith(".json") else "application/octet-stream"
        return FileResponse(f, media_type=media, filename=name)

    def _labels(s: Session, vol: Volume) -> list[dict[str, Any]]:
        counts = np.bincount(vol.labels.ravel(), minlength=256)
        names = s.names
        values = sorted({int(v) for v in np.flatnonzero(counts[1:]) + 1} | set(names))
        return [{"value": v, "name": names.get(v), "voxels": int(counts[v])} for v in values]

    return app


# -- helpers ---------------------------------------------------------------------------------------------------
def _describe(errors: Any) -> str:
    parts = []
    if any(e.get("type") == "json_invalid" for e in errors):
        return "the body is not valid JSON"
    for e in list(errors)[:3]:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "path", "query")]
        parts.append(f"{'.'.join(loc) + ': ' if loc else ''}{e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _parse(model: type[_Body], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise AppError(422, _describe(e.errors())) from None


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise AppError(413, f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise AppError(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_json(request: Request, limit: int) -> Any:
    raw = await _read_body(request, limit)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AppError(400, "the body is not valid JSON") from None


async def _receive_upload(request: Request, folder: Path, room: int, max_upload: int) -> tuple[Path, str, dict[str, str]]:
    """Stream a multipart upload's ``file`` part into ``folder`` (mode 0600) under a name the server chooses
    (only the client's extension is kept), refusing it as soon as it exceeds ``room`` bytes (413 over the upload
    limit ``max_upload``, 507 over the disk quota). Returns the file, the client's base name (for display only)
    and the other form fields."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise AppError(400, "multipart body without boundary")
    limit = min(room, max_upload)

    def too_large() -> AppError:
        if limit >= max_upload:
            return AppError(413, f"the file is larger than the server's limit of {max_upload} bytes")
        return AppError(507, f"the server's disk quota for sessions leaves room for {limit} bytes; the file is larger")

    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MiB:
        raise too_large()

    st: dict[str, Any] = {"field": None, "header": b"", "value": b"", "headers": {}, "file": None, "size": 0}
    fields: dict[str, str] = {}
    found: dict[str, Any] = {}

    def on_part_begin() -> None:
        st.update(field=None, headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        st["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        st["value"] += data[start:end]

    def on_header_end() -> None:
        st["headers"][st["header"].lower()] = st["value"]
        st["header"] = st["value"] = b""

    def on_headers_finished() -> None:
        _, opts = parse_options_header(st["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in opts:
            if name != "file" or "path" in found:
                raise AppError(400, "send exactly one file, in the form field 'file'")
            client = opts[b"filename"].decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
            suffix = split_suffix(client)[1]
            if suffix not in UPLOAD_SUFFIXES:
                raise AppError(415, f"unsupported file type {suffix or '(none)'}; upload one of {', '.join(UPLOAD_SUFFIXES)}")
            found["path"] = folder / f"source-{secrets.token_hex(8)}{suffix}"
            found["name"] = "".join(c for c in client if c.isprintable())[:200] or f"upload{suffix}"
            st["file"] = os.fdopen(os.open(found["path"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        else:
            if len(fields) >= 8:
                raise AppError(400, "too many form fields")
            st["field"] = name

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if st["file"] is not None:
            st["size"] += end - start
            if st["size"] > limit:
                raise too_large()
            st["file"].write(data[start:end])
        else:
            st["data"] += data[start:end]
            if len(st["data"]) > _FIELD_LIMIT:
                raise AppError(400, "form field too long")

    def on_part_end() -> None:
        if st["file"] is not None:
            st["file"].close()
            st["file"] = None
        elif st["field"]:
            fields[st["field"]] = st["data"].decode("utf-8", "replace")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException as e:
        if st["file"] is not None:
            st["file"].close()
        if "path" in found:
            found["path"].unlink(missing_ok=True)
        if isinstance(e, FormParserError):
            raise AppError(400, "malformed multipart body") from None
        raise
    if "path" not in found:
        raise AppError(422, "no file: send the volume in the form field 'file'")
    parsed: dict[str, Any] = {}
    for k, v in fields.items():
        if k == "window" and v:
            try:
                parsed[k] = [float(x) for x in v.split(",")]
            except ValueError:
                found["path"].unlink(missing_ok=True)
                raise AppError(422, "window: expected LEVEL,WIDTH") from None
        elif k == "resample" and v:
            if v.strip().lower() not in ("true", "false", "1", "0"):
                found["path"].unlink(missing_ok=True)
                raise AppError(422, "resample: expected true or false")
            parsed[k] = v.strip().lower() in ("true", "1")
        elif v:
            parsed[k] = v
    return found["path"], found["name"], parsed


def _same_volume(s: Session, volume_id: Any) -> None:
    if s.meta.get("volume_id") != volume_id:
        raise AppError(409, "the session's volume was replaced during the request; nothing was written")


def _check_prompts(body: SegmentBody, h: int, w: int, max_points: int) -> tuple[list[float] | None, list[list[float]]]:
    """Validate prompts against an ``h`` x ``w`` slice before any model work (the Predictor checks again):
    one box at most, at most ``max_points`` points (413 above)."""
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


def _decode_mask(raw: bytes, kind: str, h: int, w: int) -> np.ndarray:
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
    return (arr > 0) if arr.ndim == 2 else arr.any(axis=-1)


def _scrubber(roots: Iterable[Path | None]):
    """A function that removes server folders (``roots``, resolved or as given, and any other absolute
    directory) and upload temp names from a message, keeping file names relative to those folders."""
    prefixes = sorted({str(p) for r in roots if r is not None for p in (Path(r), Path(r).resolve())}, key=len, reverse=True)
    absolute_dirs = re.compile(r"(?<![\w.~-])(?:/[^/\s'\"()<>:,;]+)+/")
    session = re.compile(r"(?<![\w-])[A-Za-z0-9_-]{32}/")  # a session folder
    upload = re.compile(r"source-[0-9a-f]*(\.[A-Za-z.]+)?")  # an upload's server-side name (maybe cut short)

    def scrub(message: str) -> str:
        for pre in prefixes:
            message = message.replace(pre + os.sep, "").replace(pre, "the server's folder")
        message = session.sub("", absolute_dirs.sub("", message))
        return upload.sub("the uploaded file", message)

    return scrub


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _mask_payload(lab: np.ndarray) -> dict[str, Any]:
    """A slice's label values (uint8, slice frame) as a base64 PNG."""
    return {"encoding": "png-base64", "shape": list(lab.shape), "data": base64.b64encode(_png(lab)).decode()}


def _nifti_gz(array: np.ndarray, vol: Volume) -> bytes:
    """A ``(Z, Y, X)`` uint8 array (or ``(Z, Y, X, 3)`` colour, written as NIfTI RGB24) as .nii.gz bytes on the
    volume's grid, as the library writes NIfTI: a NIfTI source's own header (identical affine), else its geometry
    as sform/qform."""
    return by_name("nifti").as_bytes(array, vol.geom3d, ".nii.gz")
