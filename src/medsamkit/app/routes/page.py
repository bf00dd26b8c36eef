"""The page: ``/`` (the annotation page), ``/static/{name}`` (its ES modules and styles, no build step) and
``/vendor/niivue/{name}`` (the NiiVue viewer from npm: ``npm ci --prefix src/medsamkit/app/web``; never from a
CDN). None of them is in the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..sessions import AppError

STATIC = Path(__file__).resolve().parents[1] / "static"
NIIVUE_DIST = Path(__file__).resolve().parents[1] / "web" / "node_modules" / "@niivue" / "niivue" / "dist"
_MEDIA = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".map": "application/json"}

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> FileResponse:
    f = STATIC / name
    if "/" in name or name.startswith(".") or not f.is_file():
        raise AppError(404, "not found")
    return FileResponse(f, media_type=_MEDIA.get(f.suffix))  # not the OS's table: a module script must be JS


@router.get("/vendor/niivue/{name}", include_in_schema=False)
def niivue(name: str) -> FileResponse:
    if not (NIIVUE_DIST / "index.js").is_file():
        raise AppError(404, "the NiiVue viewer is not installed: run `npm ci --prefix src/medsamkit/app/web`")
    f = NIIVUE_DIST / name
    if "/" in name or name.startswith(".") or not f.is_file():
        raise AppError(404, "not found")
    return FileResponse(f, media_type=_MEDIA.get(f.suffix))
