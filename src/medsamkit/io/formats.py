"""The file formats medsamkit reads and writes, in one table (after nnU-Net's reader/writer-by-file-ending idea).

A :class:`Format` names its file endings, the images it is meant for, the endings a mask may be written with,
and the functions of this package that read it, write a mask in it and give its bytes. :func:`split_suffix` is
the one place where a file name is split into stem and ending (``.nii.gz``, and any other two-part ending of the
table, counted as one); :func:`format_for` tells a path's format. A new format is one entry of :data:`FORMATS`
(and its functions).

This module imports nothing of the package when loaded (the functions are named, and looked up when called),
so every other module of :mod:`medsamkit.io` may import it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    from .image import MedicalImage
    from .raster import ImageReadError


@dataclass(frozen=True)
class Format:
    """One file format.

    ``name``: what :attr:`MedicalImage.format <medsamkit.io.image.MedicalImage>` and ``format_of`` call it.
    ``suffixes``: its lower-case file endings (none: a folder). ``kind``: the images it is meant for,
    ``"volume"``, ``"2d"`` or ``"both"``. ``mask_suffixes``: the endings a label mask may be written with (none:
    masks are not written in it). ``one_grid``: one spacing/origin/direction per file (a series whose slices are
    not on one grid cannot be written in it). ``reader``, ``writer``, ``to_bytes``: ``"module:function"`` in
    :mod:`medsamkit.io`, called as ``reader(path, format name, series_uid, max_bytes) -> MedicalImage``,
    ``writer(path, labels, like, segments) -> None`` and ``to_bytes(array, like, suffix) -> bytes``."""

    name: str
    suffixes: tuple[str, ...]
    kind: Literal["volume", "2d", "both"]
    mask_suffixes: tuple[str, ...] = ()
    one_grid: bool = False
    reader: str = ""
    writer: str | None = None
    to_bytes: str | None = None

    @property
    def holds_masks(self) -> bool:
        """Whether a label mask can be written in this format."""
        return bool(self.mask_suffixes)

    def read(self, path: str | os.PathLike[str], *, series_uid: str | None = None, max_bytes: int | None = None) -> MedicalImage:
        """Read ``path`` (known to be of this format) as a :class:`MedicalImage`."""
        return _function(self.reader)(Path(path), self.name, series_uid, max_bytes)

    def write(self, path: Path, labels: np.ndarray, like: MedicalImage, segments: Mapping[int, Any] | None = None) -> None:
        """Write the uint8 label mask ``labels`` on ``like``'s grid at ``path`` (atomically); ``segments``: per
        label value its :class:`~medsamkit.io.segments.Segment`, kept where the format can hold it."""
        if self.writer is None:
            raise ValueError(f"no mask writer for {self.name}")
        _function(self.writer)(path, labels, like, segments)

    def as_bytes(self, array: np.ndarray, like: MedicalImage, suffix: str | None = None) -> bytes:
        """The file ``array`` on ``like``'s grid would be, as bytes (``suffix``: which of the format's endings,
        default its first)."""
        if self.to_bytes is None:
            raise ValueError(f"{self.name} cannot be written to bytes")
        return _function(self.to_bytes)(array, like, suffix or self.suffixes[0])


# The order counts: MASK_SUFFIXES (and so the "use one of ..." messages) lists the mask endings in table order.
FORMATS: tuple[Format, ...] = (
    Format(
        "nifti",
        (".nii.gz", ".nii"),
        "volume",
        (".nii.gz", ".nii"),
        one_grid=True,
        reader="readers:_read_itk",
        writer="writers:_write_nifti",
        to_bytes="writers:nifti_bytes",
    ),
    Format(
        "nrrd", (".nrrd", ".nhdr"), "volume", (".nrrd",), one_grid=True, reader="readers:_read_itk", writer="writers:_write_itk"
    ),
    Format(
        "metaimage", (".mha", ".mhd"), "volume", (".mha",), one_grid=True, reader="readers:_read_itk", writer="writers:_write_itk"
    ),
    Format(
        "raster",
        (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"),
        "2d",
        (".png",),
        reader="readers:_read_raster",
        writer="writers:_write_png",
    ),
    Format("npz", (".npz",), "both", reader="readers:_read_npz"),
    # a DICOM file is known by its content (the DICM magic); its endings name one also without the magic
    Format("dicom", (".dcm", ".dicom", ".ima"), "both", (".dcm",), reader="readers:_read_dicom", writer="writers:_write_seg"),
    Format("dicom-series", (), "volume", reader="readers:_read_series"),  # a folder
)

_BY_NAME = {f.name: f for f in FORMATS}
_BY_SUFFIX = {s: f for f in FORMATS for s in f.suffixes}
_BY_MASK_SUFFIX = {s: f for f in FORMATS for s in f.mask_suffixes}
_MULTI = tuple(sorted((s for s in _BY_SUFFIX if s.count(".") > 1), key=len, reverse=True))  # longest first

MASK_SUFFIXES: tuple[str, ...] = tuple(_BY_MASK_SUFFIX)
"""Every ending a label mask may be written with, in table order."""
RASTER_SUFFIXES: tuple[str, ...] = _BY_NAME["raster"].suffixes
DICOM_SUFFIXES: tuple[str, ...] = _BY_NAME["dicom"].suffixes
GRID_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS if f.one_grid for s in f.suffixes)
"""Endings of the formats with one spacing/origin/direction per file."""


def split_suffix(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(stem, suffix)`` of a path's file name: ``suffix`` lower-case, a two-part ending of the table
    (``.nii.gz``) counted as one, matched without regard to case; otherwise the last ending as :mod:`pathlib`
    tells it (none for ``noext``, ``.hidden`` or ``name.``). Folders above the file do not count:
    ``split_suffix("my.data/CT.NII.GZ") == ("CT", ".nii.gz")``; ``split_suffix("x.tar.gz") == ("x.tar", ".gz")``."""
    name = PurePath(os.fspath(path)).name
    low = name.lower()
    for s in _MULTI:
        if low.endswith(s):
            return name[: len(name) - len(s)], s
    i = name.rfind(".")
    if 0 < i < len(name) - 1:
        return name[:i], low[i:]
    return name, ""


def by_name(name: str) -> Format:
    """The format called ``name`` (``KeyError`` for an unknown one)."""
    return _BY_NAME[name]


def by_suffix(suffix: str) -> Format | None:
    """The format with the ending ``suffix`` (any case), or None."""
    return _BY_SUFFIX.get(suffix.lower())


def mask_format(path: str | os.PathLike[str]) -> Format | None:
    """The format a mask written at ``path`` would have (from its ending), or None when masks are not written
    with that ending."""
    return _BY_MASK_SUFFIX.get(split_suffix(path)[1])


def format_for(path: str | os.PathLike[str]) -> Format:
    """The format of an existing (or to be read) path: a folder is a DICOM series; a file goes by its ending,
    and a file of no known ending is DICOM when it has the DICOM magic. Raises
    :class:`~medsamkit.io.raster.ImageReadError` for anything else."""
    p = Path(path)
    if p.is_dir():
        return _BY_NAME["dicom-series"]
    fmt = by_suffix(split_suffix(p)[1])
    if fmt is not None and fmt.name != "dicom":
        return fmt
    if p.exists():
        from .dicom import is_dicom_file

        if is_dicom_file(p):
            return _BY_NAME["dicom"]
    raise unsupported(p)


def unsupported(path: str | os.PathLike[str]) -> ImageReadError:
    """The error for a file of no supported format."""
    from .raster import ImageReadError

    p = Path(path)
    s = split_suffix(p)[1]
    return ImageReadError(
        f"{p.name}: unsupported file type {s or '(no suffix)'}; medsamkit reads NIfTI, NRRD, MHA/MHD, a DICOM "
        f"series folder or file, PNG/JPEG/TIFF/BMP and npz"
    )


def _function(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)
