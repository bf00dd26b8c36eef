"""Writing masks on the source image's grid: NIfTI, NRRD/MHA, PNG (2D) and DICOM-SEG, plus a JSON sidecar.

A mask written for a NIfTI input reuses the input's header (sform, qform and their codes), so its affine is
identical to the source's; other formats take the source geometry (spacing, origin, direction).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write_text
from ..errors import OutputError
from .formats import MASK_SUFFIXES, mask_format, split_suffix
from .geometry import check_grid_output
from .image import MedicalImage
from .raster import write_png
from .readers import load_nifti
from .segments import Segment, slicer_keys

Segments = Mapping[int, Segment]


def mask_suffix(path: str | os.PathLike[str]) -> str:
    """The lower-case mask format suffix of a path, ``.nii.gz`` counted as one
    (:func:`medsamkit.io.formats.split_suffix`)."""
    return split_suffix(path)[1]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``mask.nii.gz`` -> ``mask.nii.gz.json``: label names, preset, prompts, model and source."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def check_mask_output(
    path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str] | None] = (),
    extra: Mapping[str, str | os.PathLike[str]] | None = None,
) -> None:
    """Check, before any work, that a mask (and its JSON sidecar, and the ``extra`` outputs: label -> path) can
    be written at ``path``: a mask format (:data:`MASK_SUFFIXES`), no input overwritten (``inputs``: files or
    folders the job reads; symlinks and hard links count), no two outputs the same, writable folders. Raises
    :class:`~medsamkit.errors.OutputError` naming the output."""
    from .._files import check_outputs, check_writable

    if Path(path).is_dir():
        raise OutputError(f"-o {path} is a folder; give a file name such as mask.nii.gz or mask.png")
    if mask_suffix(path) not in MASK_SUFFIXES:
        raise OutputError(f"-o {path}: unsupported mask format; use one of {', '.join(MASK_SUFFIXES)}")
    outputs = {"-o": Path(path), "the mask's JSON sidecar": sidecar_path(path), **(extra or {})}
    check_outputs(outputs, list(inputs))
    for what, p in outputs.items():
        check_writable(p, what)


def check_mask_fits(like: MedicalImage, path: str | os.PathLike[str]) -> None:
    """Refuse a mask format that does not fit the image: a PNG for a volume, a volume format for a 2D image,
    DICOM-SEG for anything but a DICOM series, one-grid formats for a series whose slices are not on one grid
    (:class:`~medsamkit.errors.GeometryError`). Raises :class:`~medsamkit.errors.OutputError`."""
    s = mask_suffix(path)
    name = Path(path).name
    if not like.is_volume:
        if s != ".png":
            raise OutputError(f"-o {name}: 2D masks are written as .png")
        return
    if s == ".png":
        raise OutputError(f"-o {name}: a volume mask cannot be a PNG; use .nii.gz, .nrrd, .mha (.dcm: DICOM series)")
    if s == ".dcm" and "resampled" in like.meta:
        raise OutputError(f"-o {name}: a DICOM-SEG must lie on the series' own slices; drop --resample, or write .nii.gz")
    if s == ".dcm" and like.format != "dicom-series":
        raise OutputError(f"-o {name}: DICOM-SEG output needs a DICOM series as input; write .nii.gz, .nrrd or .mha")
    check_grid_output(like, s)


def write_mask(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    like: MedicalImage,
    names: dict[int, str] | None = None,
    metadata: dict[str, Any] | None = None,
    segments: Segments | None = None,
) -> Path:
    """Write the label mask ``labels`` (uint8, ``like.spatial_shape``) in the format of ``path``'s suffix
    (.nii.gz/.nii, .nrrd, .mha, .png for 2D, .dcm = DICOM-SEG for a DICOM series) and a JSON sidecar.
    ``segments``: per label value its :class:`~medsamkit.io.segments.Segment` (name, colour, coded category and
    type), written where the format can hold them (DICOM-SEG, Slicer's NRRD keys) and always in the sidecar;
    ``names`` alone is the same with names only. Every file is written to a temporary name and renamed (atomic)."""
    segs: dict[int, Segment] = dict(segments or {})
    for v, name in (names or {}).items():
        if name and not segs.get(v, Segment()).name:
            segs[v] = replace(segs.get(v, Segment()), name=name)
    names = {v: seg.name for v, seg in segs.items() if seg.name}
    p = Path(path)
    lab = np.asarray(labels)
    if lab.shape != like.spatial_shape:
        raise ValueError(f"mask shape {lab.shape} does not match the image grid {like.spatial_shape}")
    if lab.min(initial=0) < 0 or lab.max(initial=0) > 255:
        raise ValueError("mask labels must be within 0..255")
    lab = lab.astype(np.uint8)
    s = mask_suffix(p)
    check_grid_output(like, s)
    p.parent.mkdir(parents=True, exist_ok=True)
    fmt = mask_format(p)
    if fmt is None:
        raise OutputError(f"{p.name}: unsupported mask format {s or '(no suffix)'}; use one of {', '.join(MASK_SUFFIXES)}")
    fmt.write(p, lab, like, segs)
    info = {
        "mask": p.name,
        "labels": {str(k): v for k, v in sorted((names or {}).items())},
        "segments": {str(k): seg.as_json() for k, seg in sorted(segs.items())},
        "label_values_present": [int(v) for v in np.unique(lab) if v != 0],
        "source": str(like.source) if like.source else None,
        "source_format": like.format,
        "grid_xyz": list(reversed(like.spatial_shape)),
        "spacing_xyz": list(like.spacing),
        "modality": like.modality,
        "modality_source": like.modality_source,
        **({"resampled": like.meta["resampled"]} if "resampled" in like.meta else {}),
        **(metadata or {}),
    }
    atomic_write_text(sidecar_path(p), json.dumps(info, indent=2, default=str) + "\n")
    return p


def _tmp_like(p: Path) -> Path:
    # keep the real suffix so the writer libraries pick the right format
    return p.with_name(f".tmp-{os.getpid()}-{p.name}")


# The mask writers of the format table (io.formats): (path, uint8 labels, like, label names) -> None.


def _write_nifti(p: Path, lab: np.ndarray, like: MedicalImage, segments: Segments | None = None) -> None:
    import nibabel as nib

    img = _nifti_image(lab, like, p.name)
    tmp = _tmp_like(p)
    try:
        nib.save(img, tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


_RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


def _nifti_image(array: np.ndarray, like: MedicalImage, name: str):
    """``array`` (``like``'s ``(Z, Y, X)`` or ``(Y, X)`` order; uint8, or NIfTI RGB24) as a NIfTI image on ``like``'s
    grid: a NIfTI source's own header (sform, qform and codes, so the affine is identical), else ``like``'s
    geometry as sform and qform."""
    import nibabel as nib

    data = np.ascontiguousarray(array.transpose(2, 1, 0) if array.ndim == 3 else array.T)  # back to (i, j, k)
    src = like.meta.get("source_path")
    if like.format == "nifti" and src and Path(src).is_file():
        header = load_nifti(src).header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(None, None)
        return nib.Nifti1Image(data, None, header=header)  # affine None: keep the header's sform/qform as is
    if not like.is_volume:
        raise OutputError(f"{name}: write 2D masks as .png")
    aff = like.affine_ras()
    img = nib.Nifti1Image(data, aff)
    img.header.set_sform(aff, code=1)
    img.header.set_qform(aff, code=1)
    return img


def nifti_bytes(array: np.ndarray, like: MedicalImage, suffix: str = ".nii.gz") -> bytes:
    """The NIfTI file of ``array`` on ``like``'s grid, as :func:`write_mask` writes it (``suffix`` ``.nii.gz``:
    gzip level 1, as served by the app; ``.nii``: uncompressed). ``array``: ``(Z, Y, X)`` (or ``(Y, X)``) values
    cast to uint8, or ``(Z, Y, X, 3)`` colour written as NIfTI RGB24."""
    import gzip

    a: np.ndarray = np.ascontiguousarray(array, dtype=np.uint8)  # uint8, or RGB24 records below
    if a.ndim == 4:
        a = a.view(_RGB24)[..., 0]
    raw = _nifti_image(a, like, f"array{suffix}").to_bytes()
    return gzip.compress(raw, compresslevel=1) if suffix == ".nii.gz" else raw


def to_sitk(image: MedicalImage, array: np.ndarray | None = None):
    """A SimpleITK image with ``image``'s geometry (and its array, or ``array``)."""
    import SimpleITK as sitk

    im = sitk.GetImageFromArray(image.array if array is None else array, isVector=False)
    im.SetSpacing(tuple(float(s) for s in image.spacing))
    im.SetOrigin(tuple(float(o) for o in image.origin))
    im.SetDirection(tuple(float(d) for d in np.asarray(image.direction).ravel()))
    return im


def _write_itk(p: Path, lab: np.ndarray, like: MedicalImage, segments: Segments | None = None) -> None:
    """MetaImage, or NRRD with 3D Slicer's segmentation keys (:func:`medsamkit.io.segments.slicer_keys`)."""
    import SimpleITK as sitk

    tmp = _tmp_like(p)
    im = to_sitk(like, lab)
    if mask_suffix(p) == ".nrrd":
        for key, value in slicer_keys(segments or {}, lab if lab.ndim == 3 else lab[None]).items():
            im.SetMetaData(key, value)
    try:
        sitk.WriteImage(im, str(tmp), useCompression=True)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def _write_png(p: Path, lab: np.ndarray, like: MedicalImage, segments: Segments | None = None) -> None:
    if like.is_volume:
        raise OutputError(f"{p.name}: a volume mask cannot be a PNG; use .nii.gz, .nrrd or .mha")
    write_png(p, lab)


def _write_seg(p: Path, lab: np.ndarray, like: MedicalImage, segments: Segments | None = None) -> None:
    from .dicom import write_dicom_seg

    write_dicom_seg(p, lab, like, segments=segments)


def resample_like(image: MedicalImage, reference: MedicalImage, nearest: bool = True) -> np.ndarray:
    """``image``'s array resampled onto ``reference``'s voxel grid through world coordinates (nearest
    neighbour for labels). Exact when the grids coincide up to axis flips/permutations (e.g. a NIfTI mask
    stored with flipped rows relative to its DICOM series)."""
    import SimpleITK as sitk

    out = sitk.Resample(
        to_sitk(image),
        to_sitk(reference, np.zeros(reference.spatial_shape, dtype=np.uint8)),
        sitk.Transform(),
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        0,
    )
    return sitk.GetArrayFromImage(out)
