"""Every bound the annotation server enforces, and the memory a volume will take, known before it is read.

The server must not be made to allocate without limit by a small request: request bodies are counted while they
stream in (:mod:`medsamkit.app.guard`), prompts and propagations are capped per request, sessions are capped in
number, idle time and disk, and a volume's memory is computed from its header before any voxel is decoded
(:func:`volume_cost`). All numbers are in :class:`Limits`; ``medsamkit serve`` exposes the useful ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LimitError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    """The server's bounds (bytes unless named otherwise).

    max_upload_bytes: largest uploaded file. max_json_bytes: body of every route but uploads and brush edits
    (a segment request with ``max_points`` points is ~2 KiB). max_edit_bytes: body of a brush edit (a slice's PNG,
    as base64 JSON or image/png, or its raw ``rows * columns`` bytes: 16 MiB is a raw 4096 x 4096 slice).
    max_volume_bytes: memory one volume may take while it is opened (see :func:`volume_cost`); opening is one
    volume at a time, and the display + label arrays of the volumes kept loaded together stay under it too.
    max_points: points per segment request (one box at most). max_propagate_slices: slices one propagation may
    cover. max_sessions: sessions at once (idle ones past ``session_ttl_s`` are removed first).
    max_session_disk / max_disk: disk of one session's folder / of all sessions together.
    undo_steps / undo_bytes: undo history kept per session (steps; compressed bytes); undo_total_bytes: all
    sessions' undo history together (the least recently used sessions lose their oldest steps first).
    """

    max_upload_bytes: int = 512 * MiB
    max_json_bytes: int = 64 * KiB
    max_edit_bytes: int = 16 * MiB
    max_volume_bytes: int = 2 * GiB
    max_points: int = 64
    max_propagate_slices: int = 256
    max_sessions: int = 64
    session_ttl_s: float = 7 * 24 * 3600.0
    max_session_disk: int = 2 * GiB
    max_disk: int = 20 * GiB
    undo_steps: int = 20
    undo_bytes: int = 32 * MiB
    undo_total_bytes: int = 256 * MiB

    @property
    def max_edit_json_bytes(self) -> int:
        """Body of a brush edit sent as JSON: the PNG in base64 (4/3 of ``max_edit_bytes``) and the fields."""
        return self.max_edit_bytes * 4 // 3 + 4 * KiB

    def describe(self) -> dict[str, int | float]:
        """The limits a client may need to know (sent with the volume info)."""
        return {
            "max_points": self.max_points,
            "max_propagate_slices": self.max_propagate_slices,
            "max_edit_bytes": self.max_edit_bytes,
            "max_upload_bytes": self.max_upload_bytes,
            "max_volume_bytes": self.max_volume_bytes,
        }


@dataclass(frozen=True)
class Footprint:
    """What a file will hold once decoded, from its header: ``voxels`` values (channels included) of
    ``itemsize`` bytes each as the reader returns them (e.g. 8 for a scaled NIfTI, read as float64)."""

    shape: tuple[int, ...]
    voxels: int
    itemsize: int
    what: str

    def cost(self, resample: bool = False) -> int:
        """Peak bytes while the server opens it: the decoded values three times (the reader's contiguous or
        ITK/PIL copy, and the percentile preset's positive values and their sorted copy), the preset's
        ``a > 0`` mask, the uint8 display and label arrays, one working copy for requests on it (1 byte per
        voxel each); with ``resample`` one more copy of the values (the uniform grid)."""
        copies = 4 if resample else 3
        return self.voxels * (copies * self.itemsize + 4)


def volume_cost_limit(fp: Footprint, limit: int, name: str, resample: bool = False) -> None:
    """Raise :class:`LimitError` (413) when opening ``fp`` would take more than ``limit`` bytes."""
    need = fp.cost(resample)
    if need > limit:
        raise LimitError(
            f"{name}: {fp.what} ({fp.voxels:,} values of {fp.itemsize} bytes) would take about {need / MiB:,.0f} MiB "
            f"of server memory to open, over this server's limit of {limit / MiB:,.0f} MiB per volume "
            "(medsamkit serve --max-volume-mb); nothing was read"
        )


def footprint(path: Path) -> Footprint | None:
    """The decoded size of an image file or DICOM series folder, from headers only (no voxel is decoded);
    None when the header cannot tell (the reader then reports the problem, and its own size check applies)."""
    from ..io.readers import declared_size, format_of

    try:
        fmt = format_of(path)
    except Exception:  # noqa: BLE001 - unsupported types are reported by the reader
        return None
    try:
        if fmt == "nifti":
            return _nifti(path)
        if fmt == "raster":
            return _raster(path)
        if fmt == "dicom-series":
            return _dicom_series(path)
        if fmt == "dicom":
            return _dicom_file(path)
        declared = declared_size(path)  # NRRD, MetaImage, npz
    except LimitError:
        raise
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the reader
        return None
    if declared is None:
        return None
    shape, dtype, _ = declared
    n = int(np.prod(shape, dtype=np.float64))
    return Footprint(tuple(shape), n, max(1, dtype.itemsize), f"its {'x'.join(map(str, shape))} {dtype.name} values")


def _nifti(path: Path) -> Footprint:
    from ..io.readers import load_nifti

    hdr = load_nifti(path).header
    shape = tuple(int(v) for v in hdr.get_data_shape())
    dtype = np.dtype(hdr.get_data_dtype())
    slope, inter = hdr.get_slope_inter()  # (None, None) when the header does not scale
    scaled = (slope is not None and float(slope) != 1.0) or (inter is not None and float(inter) != 0.0)
    item = 8 if scaled else dtype.itemsize  # nibabel applies scaling in float64
    n = int(np.prod(shape, dtype=np.float64))
    what = f"its {'x'.join(map(str, shape))} {dtype.name} values" + (" (scaled: read as float64)" if scaled else "")
    return Footprint(shape, n, max(1, item), what)


_PNG_BANDS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # PNG colour type -> channels once decoded (palette -> RGB)


def _raster(path: Path) -> Footprint:
    """A PNG's size from its IHDR chunk (read directly: nothing is decompressed), other pictures from PIL's
    lazy open (which refuses decompression bombs)."""
    import struct

    with path.open("rb") as f:
        head = f.read(29)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h, depth, colour = struct.unpack(">IIBB", head[16:26])
        bands = _PNG_BANDS.get(colour, 4)
        return Footprint((h, w, bands), w * h * bands, 2 if depth == 16 else 1, f"its {w}x{h} pixels x {bands} channels")
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            bands = len(im.getbands())
            item = 2 if im.mode.startswith("I;16") else (4 if im.mode in ("I", "F") else 1)
    except Image.DecompressionBombError:
        raise LimitError(f"{path.name}: the picture declares more pixels than PIL decodes safely (decompression bomb)") from None
    return Footprint((h, w, bands), w * h * bands, item, f"its {w}x{h} pixels x {bands} channels")


def _dicom_series(folder: Path) -> Footprint | None:
    import pydicom

    files = [p for p in folder.iterdir() if p.is_file()]
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not every file of a folder is DICOM
            continue
        if "Rows" in ds and "Columns" in ds:
            rows, cols = int(ds.Rows), int(ds.Columns)
            n = len(files) * rows * cols  # every file counted: an upper bound for one series
            return Footprint((len(files), rows, cols), n, 4, f"its {len(files)} files of {cols}x{rows} pixels")
    return None


def _dicom_file(path: Path) -> Footprint | None:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    n = rows * cols * frames * samples
    return Footprint((frames, rows, cols, samples), n, 4, f"its {frames} frame(s) of {cols}x{rows} pixels")
