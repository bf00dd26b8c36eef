"""Reading and writing 2D raster images (PNG, JPEG, TIFF, BMP).

Arrays follow numpy's image convention: ``(H, W)`` grey or ``(H, W, C)`` colour, row 0 at the top, the
pixel grid exactly as stored in the file (EXIF orientation tags are not applied, so masks written for an
image always line up with its stored pixels).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import FileInputError, LimitError, decoder_detail
from .formats import RASTER_SUFFIXES


class ImageReadError(FileInputError):
    """A file could not be read as an image (a :class:`~medsamkit.errors.FileInputError`)."""


def read_image_2d(path: str | os.PathLike[str], max_bytes: int | None = None) -> np.ndarray:
    """Read a PNG/JPEG/TIFF/BMP file as ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (dtype as stored:
    uint8, uint16 or float for TIFF). Palette and 1-bit images become uint8 RGB / grey. ``max_bytes``: the
    largest decoded image accepted (default :func:`medsamkit.io.limits.default_max_bytes`), checked from the
    header before decoding; PIL's decompression-bomb guard also applies."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image not found: {p}")
    if p.is_dir():
        raise ImageReadError(f"{p} is a folder, not a 2D image file")
    if p.suffix.lower() not in RASTER_SUFFIXES:
        raise ImageReadError(
            f"{p.name}: unsupported 2D image type {p.suffix or '(no suffix)'}; use one of {', '.join(RASTER_SUFFIXES)}"
        )
    from PIL import Image

    from .limits import check_size

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Corrupt EXIF data")  # reported as a read error below
            with Image.open(p) as im:
                w, h = im.size
                check_size(p, w * h * max(4, len(im.getbands()) * 2), f"its {w}x{h} pixels", max_bytes)
                im.load()
                arr = _pil_to_array(im)
    except (ImageReadError, LimitError):
        raise
    except Image.DecompressionBombError as e:
        raise LimitError(f"{p.name}: {e}".split(". ")[0] + "; refused as a possible decompression bomb") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt files make PIL's decoders raise many types (OSError, TypeError, ...)
        if p.suffix.lower() in (".tif", ".tiff"):
            arr = _read_tiff(p, e, max_bytes)
        else:
            raise ImageReadError(f"cannot read {p.name} as an image: {decoder_detail(e)}") from e
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.size == 0:
        raise ImageReadError(f"{p.name} has no pixels")
    return arr


def _pil_to_array(im) -> np.ndarray:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif im.mode == "LA":
        im = im.convert("L")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    if getattr(im, "n_frames", 1) > 1:
        raise ImageReadError(f"image has {im.n_frames} frames/pages; medsamkit reads 2D images with one frame")
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    return arr


def _read_tiff(p: Path, first_error: Exception, max_bytes: int | None) -> np.ndarray:
    """TIFFs PIL cannot decode (float, many samples, other codecs) through tifffile, the first series only, its
    size checked from the tags before decoding."""
    from .limits import check_size

    why = decoder_detail(first_error)
    try:
        import tifffile

        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            shape, dtype = tuple(int(v) for v in series.shape), np.dtype(series.dtype)
            check_size(
                p,
                int(np.prod(shape, dtype=np.float64)) * dtype.itemsize,
                f"its {'x'.join(map(str, shape))} {dtype.name} values",
                max_bytes,
            )
            arr = series.asarray()
    except LimitError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for corrupt files
        raise ImageReadError(f"cannot read {p.name} as an image: {why}; tifffile: {decoder_detail(e)}") from e
    arr = np.squeeze(np.asarray(arr))
    if arr.size == 0:
        raise ImageReadError(f"cannot read {p.name} as an image: {why}; tifffile found no pixels")
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar RGB
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageReadError(f"{p.name}: expected a 2D grey or RGB(A) TIFF, got array shape {arr.shape}")
    return arr


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)`` or ``(H, W, 3|4)`` array, or a uint16 ``(H, W)`` array (16-bit grey, e.g. a
    label image with more than 255 labels), as PNG atomically (temp file + rename)."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype == np.uint16 and arr.ndim == 2:
        arr = np.ascontiguousarray(arr)
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            Image.fromarray(arr).save(tmp, format="PNG")  # PIL stores uint16 as 16-bit grey (mode I;16)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return p
    if arr.dtype != np.uint8:
        raise ValueError(f"PNG writer expects uint8 (or 2D uint16), got {arr.dtype}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
