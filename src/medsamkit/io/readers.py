"""One reader for every supported format: :func:`read_image` returns a :class:`MedicalImage`.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) via SimpleITK; a DICOM series
(a folder) or a single DICOM file via pydicom; PNG/JPEG/TIFF/BMP; npz (key ``imgs`` as in MedSAM's npz files,
or ``image``, or the only array; optional ``spacing`` in (z, y, x) order as MedSAM stores it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ..errors import decoder_detail
from .dicom import read_dicom_file, read_dicom_series
from .formats import by_name, format_for
from .image import MedicalImage, guess_modality
from .limits import check_size
from .raster import ImageReadError, read_image_2d

if TYPE_CHECKING:
    from nibabel.nifti1 import Nifti1Image

MODALITIES = ("CT", "MR", "PT", "US", "XR", "OTHER")


def load_nifti(path: str | os.PathLike[str]) -> Nifti1Image:
    """nibabel's lazy image of a NIfTI file (.nii, .nii.gz): the header is read, the voxels stay on disk behind
    ``.dataobj`` in the file's own (i, j, k[, t]) axis order. nibabel types :func:`nibabel.load` as any
    ``FileBasedImage``; for a NIfTI file it returns a ``Nifti1Image`` (or ``Nifti2Image``, its subclass)."""
    import nibabel as nib

    return cast("Nifti1Image", nib.load(path))


def format_of(path: str | os.PathLike[str]) -> str:
    """Format name for a path: nifti, nrrd, metaimage, dicom-series, dicom, raster, npz
    (:func:`medsamkit.io.formats.format_for`)."""
    return format_for(path).name


def declared_size(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """What a file says it holds, read from its header only (nothing decoded): ``(shape, dtype, bytes)`` with
    shape in the file's own axis order, or None when the header cannot tell (or the format is not one with a
    header: raster images are checked by their reader, DICOM series by :func:`read_dicom_series`)."""
    p = Path(path)
    fmt = format_of(p)
    try:
        if fmt == "nifti":
            nimg = load_nifti(p)  # reads the header; the voxels stay on disk behind nimg.dataobj
            hdr = nimg.header
            shape, dtype = tuple(int(v) for v in hdr.get_data_shape()), np.dtype(hdr.get_data_dtype())
            slope, inter = getattr(nimg.dataobj, "slope", 1.0), getattr(nimg.dataobj, "inter", 0.0)
            if dtype.kind in "iub" and (slope != 1.0 or inter != 0.0):
                dtype = np.dtype(np.float64)  # nibabel decodes scaled integers as float64
        elif fmt in ("nrrd", "metaimage"):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            printed: list[str] = []
            with _captured_stderr(printed):
                reader.ReadImageInformation()
            comps = int(reader.GetNumberOfComponents())
            shape = tuple(int(v) for v in reader.GetSize()) + ((comps,) if comps > 1 else ())
            probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), max(1, comps))
            dtype = np.dtype(sitk.GetArrayViewFromImage(probe).dtype)
        elif fmt == "npz":
            import zipfile

            with zipfile.ZipFile(p) as z:
                sizes = []
                for info in z.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with z.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                        s, _, dt = read(f)
                        sizes.append((tuple(int(v) for v in s), np.dtype(dt)))
            if not sizes:
                return None
            shape, dtype = max(sizes, key=lambda sd: int(np.prod(sd[0], dtype=np.float64)) * sd[1].itemsize)
        else:
            return None
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the reader itself
        return None
    n = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    return shape, dtype, n


def read_image(
    path: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    modality: str | None = None,
    max_bytes: int | None = None,
    channel: int | None = None,
) -> MedicalImage:
    """Read any supported image as a :class:`MedicalImage` (see :mod:`medsamkit.io.image` for axes and
    geometry). ``modality`` overrides what the file says or the intensity-based guess. ``max_bytes``: the
    largest decoded image accepted (default :func:`default_max_bytes`), checked from the header before any
    voxel is decoded (:class:`~medsamkit.errors.LimitError`).

    ``channel``: which image of a multi-channel 4D NIfTI to read (the Medical Segmentation Decathlon stores
    multi-modal images that way: voxels ``(i, j, k, c)`` on disk, the channel axis last, i.e. NIfTI's 4th
    dimension). The result is the 3D volume ``array[k, j, i]`` of channel ``c`` (0-based) with the geometry of
    the header's first three axes, exactly as a 3D NIfTI with that header is read; ``meta["channel"]`` records
    it. A file that holds a single image (any format; a 4D NIfTI with one volume) has channel 0 only. None (the
    default): a 4D NIfTI of several volumes is refused. Unknown channels raise :class:`ImageReadError`."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image not found: {p}")
    fmt = format_of(p)
    if channel is not None and (fmt != "nifti" or nifti_channels(p) <= 1):
        if channel:
            raise ImageReadError(f"{p.name} holds a single image; channel {channel} does not exist")
        channel = None  # channel 0 of a single image: the image
    declared = declared_size(p)
    if declared is not None:
        shape, dtype, nbytes = declared
        if channel is not None and len(shape) == 4:  # one volume of the 4D file is decoded
            nbytes //= max(1, shape[3])
            shape = shape[:3]
        _check_dtype(p, dtype)
        check_size(p, nbytes, f"its {'x'.join(map(str, shape))} {dtype.name} values", max_bytes)
    if channel is not None:
        img = _read_nifti(p, channel)
    else:
        img = by_name(fmt).read(p, series_uid=series_uid, max_bytes=max_bytes)
    _check_dtype(p, np.asarray(img.array).dtype)
    if modality is not None:
        m = modality.upper()
        if m not in MODALITIES:
            raise ImageReadError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
        img.modality, img.modality_source = m, "user"
    elif img.modality is None and (img.is_volume or not img.is_rgb) and img.format != "raster":
        img.modality, img.modality_source = guess_modality(img.array), "guess"
    return img


def _check_dtype(p: Path, dtype: np.dtype) -> None:
    """Voxels must be bool, integer or real floating point (not complex, text, objects or records)."""
    if dtype.names is not None:
        raise ImageReadError(f"{p.name}: vector/RGB volumes are not supported (voxel type {dtype})")
    if dtype.kind not in "biuf":
        what = "complex" if dtype.kind == "c" else dtype.name
        raise ImageReadError(f"{p.name}: {what} voxel values are not supported; medsamkit reads real-valued images")


@contextlib.contextmanager
def _captured_stderr(sink: list[str]):
    """Collect what C++ libraries (ITK's MetaIO) print on file descriptor 2, instead of letting it reach the
    user's terminal; the text is appended to ``sink``."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to redirect
        yield
        return
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), fd)
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def _itk_error(p: Path, e: Exception) -> ImageReadError:
    detail = str(e).strip().splitlines()
    hint = next((line.strip() for line in detail if "rror" in line and "Exception" not in line), detail[-1] if detail else "")
    return ImageReadError(f"cannot read {p.name}: the file is truncated or corrupt ({decoder_detail(hint)})")


def nifti_channels(path: str | os.PathLike[str]) -> int:
    """How many images a NIfTI file holds along its 4th axis (the channel axis of a multi-channel file; 1 for 2D
    and 3D files), from its header. Raises :class:`ImageReadError` when the header cannot be read."""
    p = Path(path)
    try:
        shape = load_nifti(p).shape
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise ImageReadError(f"cannot read {p.name}: {decoder_detail(e) or type(e).__name__}") from e
    return int(shape[3]) if len(shape) >= 4 else 1


def _read_nifti(p: Path, channel: int | None = None) -> MedicalImage:
    """NIfTI voxels through nibabel (which notices truncated files; SimpleITK silently zero-fills them) and the
    geometry as ITK reads the header (so masks compare equal in SimpleITK, 3D Slicer, ITK-SNAP). ``channel``:
    the one volume of a 4D file to read (index along the 4th axis; see :func:`read_image`)."""
    import SimpleITK as sitk

    try:
        nimg = load_nifti(p)
        if channel is None:
            data = np.asanyarray(nimg.dataobj)
        else:
            shape = nimg.shape
            if len(shape) != 4:
                raise ImageReadError(f"{p.name}: expected a 4D image, got shape {shape}")
            if not 0 <= channel < shape[3]:
                raise ImageReadError(
                    f"{p.name}: channel {channel} does not exist; the image has {shape[3]} channels (0..{shape[3] - 1})"
                )
            data = np.asanyarray(nimg.dataobj[..., channel])  # only this volume is kept in memory
    except (ImageReadError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file makes nibabel raise many types (HeaderDataError, zlib.error, ...)
        first = decoder_detail(str(e)) or type(e).__name__
        raise ImageReadError(f"cannot read {p.name}: the file is truncated or corrupt ({first})") from e
    if data.dtype.names is not None:
        raise ImageReadError(f"{p.name}: vector/RGB volumes are not supported (NIfTI dtype {data.dtype})")
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise ImageReadError(
                f"{p.name}: 4D image ({data.shape[3]} volumes of {data.shape[0]}x{data.shape[1]}x{data.shape[2]}); "
                "give one 3D volume"
            )
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise ImageReadError(f"{p.name}: {data.ndim}D images are not supported")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise _itk_error(p, e) from e
    d = data.ndim
    direction = np.asarray(reader.GetDirection(), float).reshape(reader.GetDimension(), -1)[:d, :d]
    arr = np.ascontiguousarray(data.transpose(tuple(range(d))[::-1]))  # (i, j, k) -> (k, j, i)
    meta: dict[str, object] = {"source_path": str(p)}
    if channel is not None:
        meta["channel"] = channel
    return MedicalImage(
        arr,
        tuple(reader.GetSpacing()[:d]),
        tuple(reader.GetOrigin()[:d]),
        direction,
        source=p,
        format="nifti",
        meta=meta,
    )


# The readers of the format table (io.formats): (path, format name, series_uid, max_bytes) -> MedicalImage.


def _read_series(p: Path, fmt: str, series_uid: str | None = None, max_bytes: int | None = None) -> MedicalImage:
    return read_dicom_series(p, series_uid, max_bytes=max_bytes)


def _read_dicom(p: Path, fmt: str, series_uid: str | None = None, max_bytes: int | None = None) -> MedicalImage:
    return read_dicom_file(p, max_bytes=max_bytes)


def _read_raster(p: Path, fmt: str, series_uid: str | None = None, max_bytes: int | None = None) -> MedicalImage:
    arr = read_image_2d(p, max_bytes=max_bytes)
    return MedicalImage(arr, (1.0, 1.0), (0.0, 0.0), np.eye(2), source=p, format="raster")


def _read_itk(p: Path, fmt: str, series_uid: str | None = None, max_bytes: int | None = None) -> MedicalImage:
    import SimpleITK as sitk

    if fmt == "nifti":
        return _read_nifti(p)
    printed: list[str] = []
    try:
        with _captured_stderr(printed):
            im = sitk.ReadImage(str(p))
    except RuntimeError as e:
        lines = [ln.strip() for ln in "".join(printed).splitlines() if ln.strip()]
        if lines:
            why = decoder_detail(" ".join(lines))
            raise ImageReadError(f"cannot read {p.name}: the file is truncated or corrupt ({why})") from e
        raise _itk_error(p, e) from e
    dim = im.GetDimension()
    if im.GetNumberOfComponentsPerPixel() > 1 and dim == 3:
        raise ImageReadError(f"{p.name}: vector/RGB volumes are not supported (pixel type {im.GetPixelIDTypeAsString()})")
    if dim == 4:
        size = im.GetSize()
        if size[3] != 1:
            raise ImageReadError(f"{p.name}: 4D image ({size[3]} volumes of {size[0]}x{size[1]}x{size[2]}); give one 3D volume")
        im = im[:, :, :, 0]
        dim = 3
    if dim not in (2, 3):
        raise ImageReadError(f"{p.name}: {dim}D images are not supported")
    arr = sitk.GetArrayFromImage(im)
    direction = np.asarray(im.GetDirection(), float).reshape(dim, dim)
    meta = {"source_path": str(p)}
    return MedicalImage(arr, tuple(im.GetSpacing()), tuple(im.GetOrigin()), direction, source=p, format=fmt, meta=meta)


def _read_npz(p: Path, fmt: str = "npz", series_uid: str | None = None, max_bytes: int | None = None) -> MedicalImage:
    """A MedSAM-style npz: ``imgs`` (or ``image``/``img``/the only array) ``(Z, Y, X)`` with ``spacing`` (z, y, x)
    mm, or a 2D ``(H, W)`` / ``(H, W, 3|4)`` picture. A 3D array whose last axis is 3 or 4 long is a colour
    picture unless a three-value ``spacing`` says it is a volume."""
    import zipfile

    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            key = next((k for k in ("imgs", "image", "img") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ImageReadError(f"{p.name}: npz holds {keys}; expected a key 'imgs' (MedSAM npz) or 'image'")
            arr = z[key]
            spacing = z["spacing"] if "spacing" in keys else None
    except ImageReadError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise ImageReadError(f"cannot read {p.name}: not a valid npz archive, or truncated ({type(e).__name__})") from e
    volume_spacing = spacing is not None and np.ndim(spacing) == 1 and len(spacing) == 3
    if arr.ndim == 3 and (arr.shape[-1] not in (3, 4) or volume_spacing):  # (H, W, 3|4) is a colour picture
        sp = tuple(float(v) for v in spacing[::-1]) if spacing is not None and len(spacing) == 3 else (1.0, 1.0, 1.0)
        known = {"spacing_known": spacing is not None and len(spacing) == 3}
        return MedicalImage(arr, sp, (0.0, 0.0, 0.0), np.eye(3), source=p, format="npz", meta=known)
    if arr.ndim in (2, 3):
        return MedicalImage(arr, (1.0, 1.0), (0.0, 0.0), np.eye(2), source=p, format="npz", meta={"spacing_known": False})
    raise ImageReadError(f"{p.name}: npz array '{key}' has shape {arr.shape}; expected 2D or 3D")
