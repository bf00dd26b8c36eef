"""DICOM: reading a series (a folder) or a single file, and writing DICOM-SEG that references the series.

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the normal of
ImageOrientationPatient), never by file name. The volume is ``array[k, j, i]`` with j = DICOM row and
i = DICOM column; geometry is LPS as in DICOM.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write
from ..errors import GeometryError, OutputError
from .formats import DICOM_SUFFIXES, split_suffix
from .image import MedicalImage
from .limits import check_size
from .raster import ImageReadError
from .segments import Segment, codes_of, term_of


def is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM preamble magic (``DICM`` at byte 128) or a DICOM suffix."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                return True
    except OSError:
        return False
    return split_suffix(path)[1] in DICOM_SUFFIXES


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        return None


def _series_key(ds) -> str:
    return str(getattr(ds, "SeriesInstanceUID", "") or "")


def _normal(ds) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def read_dicom_series(folder: str | Path, series_uid: str | None = None, max_bytes: int | None = None) -> MedicalImage:
    """Read the DICOM image series in ``folder`` (non-recursive).

    Every file's header is read (without pixel data) to group and order the slices; only the chosen series'
    pixel data is then decoded. With several series in the folder, ``series_uid`` picks one (otherwise an
    error lists them). Slices must
    share orientation, size and pixel spacing. Rescale slope/intercept are applied (CT in HU). ``max_bytes``:
    the largest decoded volume accepted (checked from the headers before any pixel is decoded).
    Slices that are unevenly spaced or sheared (gantry tilt) are read, and the problem is recorded in
    ``meta["grid_problem"]`` (see :mod:`medsamkit.io.geometry`: such a volume is written as DICOM-SEG or
    resampled, never as a one-grid format).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    headers = [(p, h) for p in files if (h := _read_header(p)) is not None and "Rows" in h]
    if not headers:
        raise ImageReadError(f"{folder}: no DICOM image files found")
    groups: dict[str, list] = defaultdict(list)
    for p, h in headers:
        groups[_series_key(h)].append((p, h))
    desc = "; ".join(
        f"{uid or '(empty UID)'}: {g[0][1].get('Modality', '?')}, {len(g)} files, '{g[0][1].get('SeriesDescription', '')}'"
        for uid, g in sorted(groups.items())
    )
    if series_uid is not None:
        if series_uid not in groups:
            raise ImageReadError(f"{folder}: no series {series_uid}; the {len(groups)} series here: {desc}")
        chosen = groups[series_uid]
    elif len(groups) > 1:
        raise ImageReadError(f"{folder} holds {len(groups)} DICOM series ({desc}); choose one with --series UID")
    else:
        chosen = next(iter(groups.values()))
    first = chosen[0][1]
    check_size(folder, len(chosen) * int(first.Rows) * int(first.Columns) * 4, f"its {len(chosen)} slices", max_bytes)
    return _assemble(folder, chosen)


def _assemble(folder: Path, items: list) -> MedicalImage:
    first = items[0][1]
    for attr in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        missing = [p.name for p, h in items if attr not in h]
        if missing:
            raise ImageReadError(f"{folder}: slice {missing[0]} lacks {attr}; cannot place it in a volume")
    iop0 = np.asarray([float(v) for v in first.ImageOrientationPatient])
    shape0 = (int(first.Rows), int(first.Columns))
    ps0 = np.asarray([float(v) for v in first.PixelSpacing])
    for p, h in items:
        if (int(h.Rows), int(h.Columns)) != shape0:
            raise ImageReadError(f"{folder}: mixed series: {p.name} is {h.Rows}x{h.Columns}, others {shape0[0]}x{shape0[1]}")
        if not np.allclose([float(v) for v in h.ImageOrientationPatient], iop0, atol=1e-4):
            raise ImageReadError(f"{folder}: mixed series: {p.name} has another ImageOrientationPatient")
        if not np.allclose([float(v) for v in h.PixelSpacing], ps0, atol=1e-4):
            raise ImageReadError(f"{folder}: mixed series: {p.name} has another PixelSpacing")
    n = np.cross(iop0[:3], iop0[3:])
    ipp = np.array([[float(v) for v in h.ImagePositionPatient] for _, h in items])
    pos = ipp @ n
    order = np.argsort(pos, kind="stable")
    items = [items[i] for i in order]
    pos, ipp = pos[order], ipp[order]
    problem = None
    if len(items) > 1:
        gaps = np.diff(pos)
        if np.any(gaps < 1e-3):
            dup = items[int(np.argmin(gaps)) + 1][0].name
            raise GeometryError(f"{folder}: two slices at the same position ({dup}); mixed or duplicated series")
        dz = float(np.median(gaps))
        tilt = _tilt(folder, ipp, n, pos)
        gap = None if tilt else _gap(folder, pos, dz)
        problem = ("tilt", tilt) if tilt else (("spacing", gap) if gap else None)
        if problem is None:  # the grid's step is the one that puts the first and last slice where they are
            dz = float(pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        dz = float(getattr(first, "SliceThickness", 1.0) or 1.0)
    slices = []
    import pydicom

    for p, _ in items:
        try:
            ds = pydicom.dcmread(p)
            a = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - decoders raise many types
            raise ImageReadError(f"{p.name}: cannot decode pixel data: {e}".splitlines()[0]) from e
        if a.ndim != 2:
            raise ImageReadError(f"{p.name}: expected single-frame 2D slices, got pixel array {a.shape}")
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append((a, slope, inter))
    integral = all(s.is_integer() and i.is_integer() for _, s, i in slices)
    dtype = np.int32 if integral else np.float32
    vol = np.stack([a.astype(dtype) * (int(s) if integral else s) + (int(i) if integral else i) for a, s, i in slices])
    if integral and vol.min() >= np.iinfo(np.int16).min and vol.max() <= np.iinfo(np.int16).max:
        vol = vol.astype(np.int16)
    direction = np.stack([iop0[:3], iop0[3:], n], axis=1)
    origin = tuple(float(v) for v in items[0][1].ImagePositionPatient)
    modality = str(first.get("Modality", "") or "") or None
    return MedicalImage(
        array=vol,
        spacing=(float(ps0[1]), float(ps0[0]), dz),  # PixelSpacing is (row spacing, column spacing)
        origin=origin,
        direction=direction,
        modality=modality,
        modality_source="dicom" if modality else "none",
        source=folder,
        format="dicom-series",
        meta={
            "dicom_files": [p for p, _ in items],
            "series_uid": _series_key(first),
            "slice_positions_mm": [float(v) for v in pos],
            **({"grid_problem": problem[1], "grid_problem_kind": problem[0]} if problem else {}),
        },
    )


# how far a slice may lie from the uniform grid through the first and last slice: a tenth of the step, and at
# least 0.1 mm (positions rounded to 0.1 mm in the headers, as some scanners write them, stay within it; one
# missing slice in 500 does not)
GRID_TOLERANCE, GRID_TOLERANCE_MM = 0.1, 0.1


def _gap(folder: Path, pos: np.ndarray, dz: float) -> str | None:
    """None when every slice lies within :data:`GRID_TOLERANCE` of a step (at least :data:`GRID_TOLERANCE_MM`)
    of the uniform grid from the first to the last slice - where a one-spacing format (NIfTI, NRRD, MHA) puts
    it -, else a description
    of the largest departure from the usual (median) spacing ``dz``: which slices, how far apart, how many
    slices seem to be missing."""
    step = float(pos[-1] - pos[0]) / (len(pos) - 1)
    misplaced = np.abs(pos - (pos[0] + step * np.arange(len(pos))))
    if float(misplaced.max()) <= max(GRID_TOLERANCE * abs(step), GRID_TOLERANCE_MM):
        return None
    gaps = np.diff(pos)
    dev = np.abs(gaps - dz)
    k = int(np.argmax(dev))
    missing = int(round(gaps[k] / dz)) - 1
    what = f"about {missing} slice(s) missing there" if missing >= 1 else "the spacing varies"
    return (
        f"{folder.name}: the slice spacing is not uniform: slices {k} and {k + 1} (at {pos[k]:.4g} and {pos[k + 1]:.4g} mm "
        f"along the slice normal) are "
        f"{gaps[k]:.4g} mm apart where the series' usual spacing is {dz:.4g} mm ({what}; spacings "
        f"{gaps.min():.4g}..{gaps.max():.4g} mm; a one-spacing grid would put slice(s) up to "
        f"{float(misplaced.max()):.3g} mm from their place)"
    )


def _tilt(folder: Path, ipp: np.ndarray, normal: np.ndarray, pos: np.ndarray) -> str | None:
    """None when every slice lies along the slice normal from the first one, else a description of the shear
    (gantry tilt): the slices cannot be stacked on a rectilinear voxel grid."""
    step = ipp - ipp[0]
    inplane = step - np.outer(pos - pos[0], normal)
    drift = float(np.linalg.norm(inplane, axis=1).max())
    if drift <= 1e-2 + 1e-4 * float(abs(pos[-1] - pos[0])):
        return None
    span = float(abs(pos[-1] - pos[0]))
    angle = float(np.degrees(np.arctan2(drift, span))) if span > 0 else 90.0
    return (
        f"{folder.name}: the slices are sheared against their plane (gantry tilt of about {angle:.1f} degrees: the last "
        f"slice is offset {drift:.3g} mm in-plane from the first); they do not lie on a rectilinear voxel grid"
    )


def read_dicom_file(path: str | Path, max_bytes: int | None = None) -> MedicalImage:
    """Read one single-frame DICOM image as a 2D :class:`MedicalImage` (geometry from the slice's plane).
    ``max_bytes``: the largest decoded image accepted (default :func:`~medsamkit.io.limits.default_max_bytes`),
    checked from Rows x Columns before the pixels are decoded."""
    import pydicom

    p = Path(path)
    try:
        ds = pydicom.dcmread(p)
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(f"cannot read {p.name} as DICOM: {e}".splitlines()[0]) from e
    if "PixelData" not in ds:
        raise ImageReadError(f"{p.name} is a DICOM object without pixel data ({ds.get('Modality', '?')})")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"{p.name} is a multi-frame DICOM ({frames} frames); give the series folder or a NIfTI")
    try:
        rows, cols, samples = int(ds.Rows), int(ds.Columns), int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as e:
        raise ImageReadError(f"{p.name}: the DICOM header has no valid Rows/Columns") from e
    check_size(p, rows * cols * samples * 4, f"its {cols}x{rows} pixels", max_bytes)
    try:
        a = ds.pixel_array
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(f"{p.name}: cannot decode pixel data: {e}".splitlines()[0]) from e
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if a.ndim == 2 and (slope != 1 or inter != 0):
        a = a.astype(np.float32) * slope + inter
    ps = [float(v) for v in getattr(ds, "PixelSpacing", [1.0, 1.0])]
    spacing_known = "PixelSpacing" in ds
    if "ImageOrientationPatient" in ds:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        direction2 = np.eye(2)  # in-plane axes; the 3D plane is kept in meta
        meta: dict[str, Any] = {"iop": iop.tolist(), "ipp": [float(v) for v in getattr(ds, "ImagePositionPatient", [0, 0, 0])]}
    else:
        direction2, meta = np.eye(2), {}
    meta["spacing_known"] = spacing_known
    modality = str(ds.get("Modality", "") or "") or None
    return MedicalImage(
        array=a,
        spacing=(ps[1], ps[0]),
        origin=(0.0, 0.0),
        direction=direction2,
        modality=modality,
        modality_source="dicom" if modality else "none",
        source=p,
        format="dicom",
        meta=meta,
    )


# -- DICOM-SEG -------------------------------------------------------------------------------------------


class DicomSegError(OutputError):
    """A DICOM-SEG cannot be written for this source."""


def _repaired_sources(files: list[Path]) -> tuple[list[Any], list[str]]:
    """Read the source slices and repair what anonymisation emptied; returns datasets and warnings."""
    import pydicom
    from pydicom.uid import generate_uid

    datasets = [pydicom.dcmread(p) for p in files]
    notes: list[str] = []
    fixed_sop = 0
    for p, ds in zip(files, datasets):
        meta = getattr(ds, "file_meta", None)
        if not getattr(ds, "SOPClassUID", ""):
            cls = getattr(meta, "MediaStorageSOPClassUID", "") if meta is not None else ""
            if not cls:
                raise DicomSegError(f"cannot write DICOM-SEG: {p.name} has no SOPClassUID, not even in its file meta")
            ds.SOPClassUID = cls
            fixed_sop += 1
        if not getattr(ds, "SOPInstanceUID", ""):
            inst = getattr(meta, "MediaStorageSOPInstanceUID", "") if meta is not None else ""
            if not inst:
                raise DicomSegError(
                    f"cannot write DICOM-SEG: {p.name} has no SOPInstanceUID (dataset and file meta); "
                    "the SEG could not reference it"
                )
            ds.SOPInstanceUID = inst
    if fixed_sop:
        notes.append(f"restored SOPClassUID/SOPInstanceUID of {fixed_sop} source slices from their file meta")
    uids = {str(ds.SOPInstanceUID) for ds in datasets}
    if len(uids) != len(datasets):
        raise DicomSegError("cannot write DICOM-SEG: source slices share SOPInstanceUIDs")
    for attr, what in (
        ("StudyInstanceUID", "study"),
        ("SeriesInstanceUID", "series"),
        ("FrameOfReferenceUID", "frame of reference"),
    ):
        values = {str(getattr(ds, attr, "") or "") for ds in datasets}
        if values == {""}:
            seed = [str(datasets[0].SOPInstanceUID), attr]
            uid = generate_uid(entropy_srcs=seed)
            for ds in datasets:
                setattr(ds, attr, uid)
            notes.append(
                f"the source series has an empty {attr}; generated {uid} (deterministic): "
                f"the SEG will not link to the original {what} in a PACS"
            )
        elif "" in values or len(values) > 1:
            raise DicomSegError(f"cannot write DICOM-SEG: source slices disagree on {attr}")
    return datasets, notes


def segment_label(name: str, value: int) -> str:
    """``name`` as a DICOM SegmentLabel (VR LO): the value separator backslash becomes ``/``, control characters
    and runs of white space one space, at most 64 bytes in UTF-8 (cut on a character boundary); ``label <value>``
    when nothing is left. Non-ASCII letters are kept (the SEG then declares UTF-8, ``ISO_IR 192``)."""
    text = re.sub(r"[\x00-\x1f\x7f\s]+", " ", str(name).replace("\\", "/")).strip()
    text = text.encode("utf-8")[:64].decode("utf-8", errors="ignore").strip()
    return text or f"label {value}"


def write_dicom_seg(
    path: str | Path,
    labels: np.ndarray,
    like: MedicalImage,
    names: dict[int, str] | None = None,
    description: str = "medsamkit segmentation",
    algorithm: str = "medsamkit",
    segments: Mapping[int, Segment] | None = None,
) -> Path:
    """Write ``labels`` (``(Z, Y, X)`` ints on ``like``'s grid, 0 = background) as a DICOM-SEG (binary, one
    segment per label) referencing the source DICOM series of ``like``. ``segments`` (or ``names`` alone): per
    label value its name (SegmentLabel), colour (RecommendedDisplayCIELabValue) and SNOMED CT category and type
    (:mod:`medsamkit.io.segments`; default tissue/tissue). Returns the path."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from .._version import __version__

    files = like.meta.get("dicom_files")
    if "resampled" in like.meta:
        raise DicomSegError(
            "this volume was resampled onto a uniform grid, so its slices are not the series' own: a DICOM-SEG must "
            "lie on the source slices (write .nii.gz, .nrrd or .mha of the resampled grid, or DICOM-SEG without resampling)"
        )
    if like.format != "dicom-series" or not files:
        raise DicomSegError("DICOM-SEG output needs a DICOM series as input (write .nii.gz or .nrrd instead)")
    lab = np.asarray(labels)
    if lab.shape != like.spatial_shape:
        raise DicomSegError(f"mask shape {lab.shape} does not match the series grid {like.spatial_shape}")
    values = [int(v) for v in np.unique(lab) if v != 0]
    if not values:
        raise DicomSegError("the mask is empty: a DICOM-SEG needs at least one segment")
    datasets, notes = _repaired_sources(list(files))
    for note in notes:
        warnings.warn(note, stacklevel=2)
    # renumber labels to consecutive segment numbers 1..n, as DICOM requires
    seg_array = np.zeros(lab.shape, dtype=np.uint8)
    descriptions = []
    for number, v in enumerate(values, start=1):
        seg_array[lab == v] = number
        seg = (segments or {}).get(v, Segment())
        name = segment_label(seg.name or (names or {}).get(v, ""), v)
        (cat_code, cat_meaning), (type_code, type_meaning) = codes_of(seg)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=Code(cat_code, "SCT", cat_meaning),
                segmented_property_type=Code(type_code, "SCT", type_meaning),
                display_color=hd.color.CIELabColor.from_rgb(*seg.color) if seg.color else None,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=algorithm[:64], version=__version__, family=codes.cid7162.ArtificialIntelligence
                ),
            )
        )
    out = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=seg_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medsamkit",
        manufacturer_model_name=algorithm[:64],
        software_versions=__version__,
        device_serial_number="0",
        series_description=segment_label(description, 0) if description.strip() else "medsamkit segmentation",
    )
    texts = [str(d.SegmentLabel) for d in descriptions] + [str(out.SeriesDescription)]
    if any(ord(c) > 127 for t in texts for c in t):
        # UTF-8 names: declare the repertoire so readers (and dciodvfy) decode the LO values correctly
        out.SpecificCharacterSet = "ISO_IR 192"
    return atomic_write(path, out.save_as)


def read_dicom_seg(path: str | Path, like: MedicalImage) -> tuple[np.ndarray, dict[int, str]]:
    """Read a DICOM-SEG back onto ``like``'s series grid: labels ``(Z, Y, X)`` uint8 (the segment numbers) and
    segment names (see :func:`read_dicom_seg_segments` for colours and codes too)."""
    labels, segments = read_dicom_seg_segments(path, like)
    return labels, {v: seg.name or "" for v, seg in segments.items()}


def read_dicom_seg_segments(path: str | Path, like: MedicalImage) -> tuple[np.ndarray, dict[int, Segment]]:
    """Read a DICOM-SEG back onto ``like``'s series grid: labels ``(Z, Y, X)`` uint8 (value = segment number) and
    per segment its :class:`~medsamkit.io.segments.Segment` (name, colour, category and type when on the list).
    :class:`DicomSegError` when the SEG references none of the series' slices."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    files = like.meta.get("dicom_files") or []
    import pydicom

    sop_uids = []
    for p in files:
        h = pydicom.dcmread(p, stop_before_pixels=True)
        uid = str(getattr(h, "SOPInstanceUID", "") or getattr(h.file_meta, "MediaStorageSOPInstanceUID", ""))
        sop_uids.append(uid)
    referenced = {
        str(r.ReferencedSOPInstanceUID)
        for item in getattr(seg, "ReferencedSeriesSequence", [])
        for r in item.ReferencedInstanceSequence
    }
    if referenced and not referenced & set(sop_uids):
        raise DicomSegError(f"{Path(path).name}: this DICOM-SEG belongs to another series (none of its slices is in this one)")
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, combine_segments=True, skip_overlap_checks=True)
    segments = {}
    for d in seg.SegmentSequence:
        cat = d.SegmentedPropertyCategoryCodeSequence[0].CodeValue
        typ = d.SegmentedPropertyTypeCodeSequence[0].CodeValue
        category, type_ = term_of(str(cat), str(typ))
        lab_value = getattr(d, "RecommendedDisplayCIELabValue", None)
        color = hd.color.CIELabColor.from_dicom_value(list(lab_value)).to_rgb() if lab_value is not None else None
        segments[int(d.SegmentNumber)] = Segment(str(d.SegmentLabel), color, category, type_)
    return np.asarray(arr, dtype=np.uint8), segments
