"""The annotation web app's HTTP API (FastAPI): a thin layer over :mod:`medsamkit.io` and
:mod:`medsamkit.predict`; it has no segmentation logic of its own.

Every route but ``POST /api/sessions`` takes an unguessable session id in its path. Volumes are ``(Z, Y, X)``;
a slice along ``axis`` z, y, x has (column, row) pixel coordinates (x, y), (x, z), (y, z); boxes
``[x0, y0, x1, y1]`` are inclusive, points are ``[x, y, 1|0]`` (1 = foreground).

Errors are ``{"error": message}``, mapped in one place (here): a :class:`~medsamkit.errors.MedsamkitError` (the
library's input errors, :class:`~medsamkit.app.sessions.AppError` for the app's own) gives its ``status``
(422 input, 413 over a limit, 4xx for sessions and paths) and its one-line message with server folders and
temporary names removed; anything else is a bug: 500 "internal server error", the traceback in the server log.
Limits (:class:`~medsamkit.app.limits.Limits`), the ``Host`` check and the security headers are enforced before
any route runs (:mod:`medsamkit.app.guard`).

The app is assembled here from its parts: the routers of :mod:`medsamkit.app.routes` (one per concern), the
request bodies of :mod:`medsamkit.app.schemas`, upload and body reading in :mod:`medsamkit.app.upload`, the
session store of :mod:`medsamkit.app.sessions`, and the state they share (:class:`~medsamkit.app.state.AppState`).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import MedsamkitError, one_line
from ..predict import Predictor
from .guard import LOOPBACK_NAMES, Guard, HostRule
from .limits import Limits
from .model import ModelService
from .preencode import Preencoder
from .routes import ROUTERS
from .routes.edit import png_size
from .schemas import ErrorBody, LabelName, MaskBody, OpenOptions, OpenPath, PropagateBody, SaveBody, SegmentBody, describe_errors
from .sessions import AppError, SessionStore
from .state import AppState

log = logging.getLogger("medsamkit.app")

__all__ = [  # create_app, and the body models and png_size this module exported before the routers moved out; the page's
    # NIIVUE_DIST/STATIC are read from app.routes.page, where patching them takes effect
    "create_app",
    "scrubber",
    "png_size",
    "ErrorBody",
    "LabelName",
    "MaskBody",
    "OpenOptions",
    "OpenPath",
    "PropagateBody",
    "SaveBody",
    "SegmentBody",
]


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
    preencode_slices: int = 256,
) -> FastAPI:
    """The app. data_dir: folder clients may open volumes from by relative path (None: uploads only);
    state_dir: where sessions live (existing ones are restored); limits: the server's bounds
    (``max_upload_bytes`` overrides its upload limit); embedding_memory: bytes of slice embeddings cached for all
    sessions together; predictor: share this predictor's engine instead of loading ``model``; max_loaded: sessions
    whose volume stays in memory (others reload from disk on their next request). allowed_hosts: ``Host`` names
    answered besides the loopback names 127.0.0.1, localhost and [::1] (``name`` or ``name:port``; ``*`` = any);
    port: the port the server listens on (a name without a port must come with it; None: any port).
    preencode_slices: slices of each opened volume encoded in the background, nearest to the viewed slice first
    (:mod:`medsamkit.app.preencode`; 0: off).

    The routes reach the shared state as ``app.state.shared`` (:class:`AppState`); ``app.state.store``,
    ``.models``, ``.limits`` and ``.hosts`` are the same objects."""
    limits = limits or Limits()
    if max_upload_bytes is not None:
        limits = Limits(**{**limits.__dict__, "max_upload_bytes": max_upload_bytes})
    store = SessionStore(Path(state_dir), data_dir, max_loaded=max_loaded, limits=limits)
    models = ModelService(model, predictor, embedding_memory)
    app = FastAPI(title="medsamkit annotation server", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    hosts = HostRule([*LOOPBACK_NAMES, *allowed_hosts], port)
    scrub = scrubber([store.state_dir, store.data_dir, data_dir, state_dir, Path(tempfile.gettempdir())])
    preencoder = Preencoder(store, models, preencode_slices)
    app.state.shared = AppState(store=store, models=models, limits=limits, preencoder=preencoder, hosts=hosts, scrub=scrub)
    app.state.store, app.state.models, app.state.limits, app.state.hosts = store, models, limits, hosts
    app.state.preencoder = preencoder
    app.add_middleware(Guard, limits=limits, hosts=hosts)
    _map_errors(app, scrub)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _map_errors(app: FastAPI, scrub: Callable[[str], str]) -> None:
    """Every error as ``{"error": one line}``, mapped here only (see the module docstring)."""

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
        return JSONResponse({"error": describe_errors(errors)}, status_code=status)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)


def scrubber(roots: Iterable[Path | None]) -> Callable[[str], str]:
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
