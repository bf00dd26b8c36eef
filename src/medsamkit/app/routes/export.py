"""Saving: the mask written on the source's grid in a chosen format (``POST .../save``, through
:func:`medsamkit.io.write_mask`, with a JSON sidecar) into the session's ``exports/`` folder, and those files
downloaded (``GET .../download/{name}``; only files the session saved)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ...io import Segment, write_mask
from ..schemas import SESSION_ERRORS, SaveBody, error_responses
from ..sessions import SAVE_FORMATS, AppError, private
from ..state import StateDep

router = APIRouter()


@router.post("/api/sessions/{sid}/save", responses=error_responses(*SESSION_ERRORS, 409, 507))
def save(sid: str, state: StateDep, body: SaveBody | None = None) -> dict[str, Any]:
    """Write the mask on the source's grid (``format``) with each segment's name, colour and SNOMED CT category
    and type where the format holds them (DICOM-SEG; NRRD as 3D Slicer's segment keys) and in the JSON sidecar."""
    store = state.store
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
        meta = {
            "intensity": vol.preset.describe(),
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model": state.models.model,
            "prompts": store.prompts(s),  # each with the intensity mapping the model saw then
            # the session's own settings (visible, locked, reviewed...); names, colours and codes are "segments"
            "segment_settings": {str(k): v for k, v in sorted(s.segments.items())},
        }
        segments = {
            v: Segment(s.names.get(v), tuple(seg["color"]) if seg.get("color") else None, seg.get("category"), seg.get("type"))
            for v, seg in {**{v: {} for v in s.names}, **s.segments}.items()
        }
        s.exports_dir.mkdir(mode=0o700, exist_ok=True)
        out = write_mask(s.exports_dir / name, labels, like, metadata=meta, segments=segments)
        side = out.name + ".json"
        private(s.exports_dir)
        store.check_disk(s, [out, s.exports_dir / side])
        s.meta["exports"] = sorted({*s.meta.get("exports", []), out.name, side})
        s.meta["saved_generation"] = s.meta.get("generation", 0)
        store.save_meta(s)
    base = f"/api/sessions/{sid}/download/"
    return {"format": fmt, "file": out.name, "url": base + out.name, "sidecar_url": base + side}


@router.get("/api/sessions/{sid}/download/{name}", responses=error_responses(*SESSION_ERRORS))
def download(sid: str, name: str, state: StateDep) -> FileResponse:
    s = state.store.get(sid)
    with s.lock:
        known = name in s.meta.get("exports", [])
    f = s.exports_dir / name
    if not known or not f.is_file() or f.resolve().parent != s.exports_dir.resolve():
        raise AppError(404, "no such file in this session")
    media = "application/json" if name.endswith(".json") else "application/octet-stream"
    return FileResponse(f, media_type=media, filename=name)
