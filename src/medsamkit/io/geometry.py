"""Exact geometry or a refusal: volumes whose slices do not lie on one uniform grid.

A DICOM series with missing slices (or varying spacing) or with sheared slices (gantry tilt) is read slice by
slice onto an array ``(Z, Y, X)``, but no single spacing/origin/direction places every slice where it is:
NIfTI, NRRD and MetaImage masks of it would be off by millimetres past the first irregular slice. Readers
record the problem in ``image.meta["grid_problem"]`` (a sentence) and ``image.meta["grid_problem_kind"]``
(``"spacing"`` or ``"tilt"``); the slice positions along the normal are in ``image.meta["slice_positions_mm"]``.

Such a volume may be written as DICOM-SEG (every frame carries its own source slice's position), or
resampled onto a uniform grid by :func:`resample_uniform` (spacing problems only) and then written in any
volume format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GeometryError
from .formats import GRID_SUFFIXES
from .image import MedicalImage
from .limits import check_size

GRID_FORMATS = GRID_SUFFIXES  # one spacing/origin/direction per file


def grid_problem(image: MedicalImage) -> str | None:
    """Why ``image``'s voxels are not on one uniform grid, or None when they are."""
    return image.meta.get("grid_problem")


def check_grid_output(image: MedicalImage, suffix: str) -> None:
    """Raise :class:`GeometryError` when a mask of ``image`` written with ``suffix`` (e.g. ``.nii.gz``) would
    misplace slices; the message names the problem and the ways out."""
    problem = grid_problem(image)
    if problem is None or suffix.lower() not in GRID_FORMATS:
        return
    if image.meta.get("grid_problem_kind") == "tilt":
        ways = "or correct the tilt first (e.g. dcm2niix)"
    else:
        ways = "or resample the series onto a uniform grid (--resample)"
    ways = f"write a DICOM-SEG (.dcm) instead, which keeps every slice's position, {ways}"
    raise GeometryError(f"{problem}; a {suffix} mask has one slice spacing and would misplace slices: {ways}")


def check_uniform(image: MedicalImage, what: str) -> None:
    """Raise :class:`GeometryError` when ``what`` (e.g. "world coordinates") needs a uniform grid that
    ``image`` does not have."""
    problem = grid_problem(image)
    if problem is not None:
        raise GeometryError(f"{problem}; {what} need(s) a uniform grid: resample the series (--resample) or use voxel indices")


def resample_uniform(image: MedicalImage, max_bytes: int | None = None) -> MedicalImage:
    """``image`` (a volume with a ``spacing`` grid problem) resampled along the slice axis onto a uniform grid.

    The new grid starts at the first slice and ends at the last one (both kept exactly), with the step closest
    to the series' usual (median) spacing that divides the span evenly; in-plane geometry and orientation are
    unchanged. A new slice that coincides with a source slice (within 0.1 % of the step) is that slice's voxels
    unchanged - every source slice when the gaps are whole multiples of the usual spacing (missing slices);
    others are interpolated linearly between the two source slices around them (integer data is rounded back to
    its type). ``meta["resampled"]`` records the source positions, the new positions and which new slices are
    interpolated. ``max_bytes``: the largest resampled volume accepted (default
    :func:`~medsamkit.io.limits.default_max_bytes`), checked before it is allocated
    (:class:`~medsamkit.errors.LimitError`). An image without a grid problem is returned as it is.
    """
    if grid_problem(image) is None:
        return image
    if image.meta.get("grid_problem_kind") != "spacing":
        raise GeometryError(f"{grid_problem(image)}; resampling handles uneven slice spacing only")
    pos = np.asarray(image.meta["slice_positions_mm"], float)
    arr = np.asarray(image.array)
    span = float(pos[-1] - pos[0])
    usual = float(np.median(np.diff(pos)))
    n_new = int(round(span / usual)) + 1
    name = Path(str(image.source or "the series"))
    check_size(name, n_new * int(np.prod(arr.shape[1:])) * arr.dtype.itemsize, f"its {n_new} slices once resampled", max_bytes)
    step = span / (n_new - 1)
    new_pos = pos[0] + step * np.arange(n_new)
    out = np.empty((n_new, *arr.shape[1:]), dtype=arr.dtype)
    interpolated: list[int] = []
    integer = np.issubdtype(arr.dtype, np.integer)
    for j, q in enumerate(new_pos):
        i = int(np.clip(np.searchsorted(pos, q, side="right") - 1, 0, len(pos) - 2))
        t = (q - pos[i]) / (pos[i + 1] - pos[i])
        if t <= 1e-3 * step / (pos[i + 1] - pos[i]):
            out[j] = arr[i]
        elif t >= 1 - 1e-3 * step / (pos[i + 1] - pos[i]):
            out[j] = arr[i + 1]
        else:
            mix = (1 - t) * arr[i].astype(np.float64) + t * arr[i + 1].astype(np.float64)
            out[j] = np.rint(mix).astype(arr.dtype) if integer else mix.astype(arr.dtype)
            interpolated.append(j)
    meta: dict[str, Any] = {k: v for k, v in image.meta.items() if k not in ("grid_problem", "grid_problem_kind", "dicom_files")}
    meta["slice_positions_mm"] = [float(v) for v in new_pos]
    meta["resampled"] = {
        "from": "uneven slice spacing",
        "source_problem": grid_problem(image),
        "source_positions_mm": [float(v) for v in pos],
        "positions_mm": [float(v) for v in new_pos],
        "spacing_mm": step,
        "interpolated_slices": interpolated,
        "method": "linear along the slice normal; source slices on the new grid kept exactly",
    }
    spacing = (*image.spacing[:2], step)
    return MedicalImage(
        out,
        spacing,
        image.origin,
        np.asarray(image.direction, float),
        image.modality,
        image.modality_source,
        image.source,
        format=f"{image.format}-resampled",
        meta=meta,
    )
