"""What the viewer shows: the session's display volume and label volume as .nii.gz (on the source's grid), and
one slice of either as a PNG (``(H, W)`` in the slice's (column, row) frame; a colour 2D image as RGB)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response

from ..._files import atomic_write_bytes
from ...io.formats import by_name
from ..schemas import GZ_RESPONSE, PNG_RESPONSE, SESSION_ERRORS, Axis, error_responses
from ..sessions import AppError, Volume, slice_index
from ..state import AppState, StateDep
from .common import png_bytes

router = APIRouter()


_GZ: dict[int | str, dict[str, Any]] = {**GZ_RESPONSE, **error_responses(*SESSION_ERRORS, 409)}
_PNG: dict[int | str, dict[str, Any]] = {**PNG_RESPONSE, **error_responses(*SESSION_ERRORS, 409)}


@router.get("/api/sessions/{sid}/volume.nii.gz", responses=_GZ, response_class=Response)
def volume_nifti(sid: str, state: StateDep) -> Response:
    return _nifti_response(state, sid, labels=False)


@router.get("/api/sessions/{sid}/mask.nii.gz", responses=_GZ, response_class=Response)
def mask_nifti(sid: str, state: StateDep) -> Response:
    return _nifti_response(state, sid, labels=True)


@router.get("/api/sessions/{sid}/slice/{axis}/{index}.png", responses=_PNG, response_class=Response)
def slice_png(sid: str, axis: Axis, index: int, state: StateDep) -> Response:
    return _slice_png(state, sid, axis, index, labels=False)


@router.get("/api/sessions/{sid}/mask/{axis}/{index}.png", responses=_PNG, response_class=Response)
def mask_png(sid: str, axis: Axis, index: int, state: StateDep) -> Response:
    return _slice_png(state, sid, axis, index, labels=True)


def _slice_png(state: AppState, sid: str, axis: str, index: int, labels: bool) -> Response:
    """Slice ``index`` along ``axis`` of the display picture or (``labels``) the label volume as a PNG."""
    store = state.store
    s = store.get(sid)
    with s.lock:
        vol = store.volume(s)
        vol.check_slice(axis, index)
        arr = vol.labels[slice_index(axis, index)].copy() if labels else vol.picture(axis, index)
    return Response(png_bytes(arr), media_type="image/png")


def _nifti_response(state: AppState, sid: str, labels: bool) -> Response:
    """The display volume or (``labels``) the label volume as an inline ``volume.nii.gz`` / ``mask.nii.gz``. The
    display volume does not change, so it is kept in the session folder (``display.nii.gz``) for the next viewer,
    unless that goes over the disk quota; the labels are copied under the session's lock and encoded after it."""
    store = state.store
    s = store.get(sid)
    with s.lock:
        vol = store.volume(s)
        if labels:
            array = vol.labels.copy()
        else:
            f = s.folder / "display.nii.gz"
            if f.is_file():
                data = f.read_bytes()
            else:
                data = nifti_gz(vol.display, vol)
                atomic_write_bytes(f, data)
                try:
                    store.check_disk(s, [f])
                except AppError:
                    pass
    if labels:
        data = nifti_gz(array, vol)
    name = "mask" if labels else "volume"
    return Response(data, media_type="application/gzip", headers={"Content-Disposition": f'inline; filename="{name}.nii.gz"'})


def nifti_gz(array: np.ndarray, vol: Volume) -> bytes:
    """A ``(Z, Y, X)`` uint8 array (or ``(Z, Y, X, 3)`` colour, written as NIfTI RGB24) as .nii.gz bytes on the
    volume's grid, as the library writes NIfTI: a NIfTI source's own header (identical affine), else its geometry
    as sform/qform."""
    return by_name("nifti").as_bytes(array, vol.geom3d, ".nii.gz")
