"""Reading an existing label mask back onto its image's grid, with the segments it describes (to review and correct
it): NIfTI, NRRD (3D Slicer's segment keys), MetaImage, PNG (2D) or a DICOM-SEG of the image's DICOM series; the
JSON sidecar :func:`medsamkit.io.write_mask` writes beside a mask adds names, colours and codes where the file
holds none. The mask must lie on exactly the image's grid (shape, spacing, origin and direction): it is refused
otherwise, never resampled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import FileInputError, GeometryError, InputError
from .formats import split_suffix
from .image import MedicalImage
from .readers import read_image
from .segments import Segment, check_term, from_slicer_keys

# how far a mask's grid may differ from the image's (float rounding in headers)
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


def read_mask(
    path: str | os.PathLike[str], like: MedicalImage, *, max_bytes: int | None = None
) -> tuple[np.ndarray, dict[int, Segment]]:
    """The label mask at ``path`` on ``like``'s grid: labels (uint8, ``like.spatial_shape``: ``(Z, Y, X)`` or
    ``(Y, X)``) and per label value its :class:`~medsamkit.io.segments.Segment` (from the file, then its sidecar).

    Raises :class:`~medsamkit.errors.GeometryError` when the mask is on another grid (naming what differs) and
    :class:`~medsamkit.errors.FileInputError` when its values are not labels (not integers in 0..255)."""
    p = Path(path)
    if _is_dicom_seg(p):
        from .dicom import read_dicom_seg_segments

        labels, segments = read_dicom_seg_segments(p, like)
        if labels.shape != like.spatial_shape:
            raise GeometryError(f"{p.name}: the DICOM-SEG covers {labels.shape}, the series is {like.spatial_shape}")
    else:
        mask = read_image(p, max_bytes=max_bytes)
        check_same_grid(mask, like, p.name)
        labels = _as_labels(mask.array, p.name)
        segments = _header_segments(p)
    for v, seg in _sidecar_segments(p).items():  # the sidecar fills in what the file itself does not say
        have = segments.get(v, Segment())
        segments[v] = Segment(
            have.name or seg.name,
            have.color or seg.color,
            have.category or seg.category,
            have.type or seg.type,
        )
    return labels, segments


def check_same_grid(mask: MedicalImage, like: MedicalImage, name: str) -> None:
    """:class:`GeometryError` unless ``mask`` lies on ``like``'s voxel grid (shape, spacing, origin, direction)."""
    if mask.array.ndim != len(mask.spatial_shape):
        raise FileInputError(f"{name}: a label mask has one value per voxel; this file has {mask.array.shape[-1]} channels")
    if mask.spatial_shape != like.spatial_shape:
        raise GeometryError(f"{name}: the mask is {_xyz(mask.spatial_shape)} voxels, the image {_xyz(like.spatial_shape)}")
    if not mask.is_volume:  # a 2D picture has no world geometry to compare beyond its size
        return
    if not np.allclose(mask.spacing, like.spacing, rtol=SPACING_RTOL, atol=0):
        raise GeometryError(f"{name}: the mask's spacing {_mm(mask.spacing)} mm differs from the image's {_mm(like.spacing)} mm")
    if not np.allclose(mask.origin, like.origin, rtol=0, atol=ORIGIN_ATOL_MM):
        raise GeometryError(f"{name}: the mask's origin {_mm(mask.origin)} mm differs from the image's {_mm(like.origin)} mm")
    if not np.allclose(np.asarray(mask.direction), np.asarray(like.direction), rtol=0, atol=DIRECTION_ATOL):
        raise GeometryError(f"{name}: the mask's axes point another way than the image's (direction cosines differ)")


def _as_labels(array: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.kind == "b":
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise FileInputError(f"{name}: the mask holds NaN or infinite values; labels are integers 0..255")
        if not np.array_equal(a, np.round(a)):
            raise FileInputError(f"{name}: the mask holds fractional values (a probability map?); labels are integers 0..255")
    if a.dtype.kind not in "biuf":
        raise FileInputError(f"{name}: mask values of type {a.dtype} are not labels")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise FileInputError(f"{name}: mask values span {lo:g}..{hi:g}; labels are integers 0..255")
    return a.astype(np.uint8)


def _is_dicom_seg(p: Path) -> bool:
    if p.is_dir() or split_suffix(p)[1] not in (".dcm", ".dicom", ""):
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not a DICOM file: the image readers say what it is
        return False
    return str(getattr(ds, "Modality", "")) == "SEG"


def _header_segments(p: Path) -> dict[int, Segment]:
    if split_suffix(p)[1] not in (".nrrd", ".nhdr"):
        return {}
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    try:
        return from_slicer_keys({k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()})
    except (InputError, ValueError, IndexError) as e:
        raise FileInputError(f"{p.name}: its 3D Slicer segment keys are not readable ({e})") from None


def _sidecar_segments(p: Path) -> dict[int, Segment]:
    side = p.with_name(p.name + ".json")
    if not side.is_file():
        return {}
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise FileInputError(f"{side.name}: the mask's sidecar is not readable JSON ({e})") from None
    out: dict[int, Segment] = {}
    try:
        for k, v in (info.get("segments") or {}).items():
            seg = Segment.from_json(v)
            check_term(seg.category, seg.type)
            if seg.color is not None and (len(seg.color) != 3 or not all(0 <= c <= 255 for c in seg.color)):
                raise InputError(f"colour {list(seg.color)} is not [r, g, b] in 0..255")
            out[_value(k)] = seg
        for k, name in (info.get("labels") or {}).items():
            out.setdefault(_value(k), Segment(name=str(name)))
    except (InputError, ValueError, TypeError, AttributeError) as e:
        raise FileInputError(f"{side.name}: the mask's sidecar does not describe its segments ({e})") from None
    return out


def _value(key: str) -> int:
    v = int(key)
    if not 1 <= v <= 255:
        raise InputError(f"segment value {v} is outside 1..255")
    return v


def _xyz(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in reversed(shape))


def _mm(values: object) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"  # type: ignore[attr-defined]
