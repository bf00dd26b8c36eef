"""Files a MetaImage or NRRD header makes the reader open besides itself (detached voxel data).

A MetaImage header (``.mha``/``.mhd``) names its voxels with ``ElementDataFile``: ``LOCAL`` (in the same file),
a file name, ``LIST [nD]`` followed by one file name per line, or a pattern ``name%03d.raw MIN MAX STEP``.
An NRRD header (``.nrrd``/``.nhdr``) may name them with ``data file`` (or ``datafile``): a file name,
``LIST [subdim]`` followed by one file name per line, or a format string ``name%03d.raw MIN MAX STEP [subdim]``.
Relative names are relative to the header's folder. ITK follows all of these, absolute paths and ``..``
included, so the server resolves them itself and applies its data-folder rules before any reader runs.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import FileInputError

_HEADER_BYTES = 1 << 20  # a header (with its file list) larger than this is refused
_MAX_FILES = 100_000
_PATTERN = re.compile(r"%0?\d*d")


def detached_files(path: Path) -> list[str]:
    """The data files ``path``'s header names, exactly as written (relative or absolute); ``[]`` when the
    voxels are in the file itself or the file is not a MetaImage/NRRD header. Raises
    :class:`~medsamkit.errors.FileInputError` for a header whose file list cannot be resolved (too long, a
    pattern without numbers, more than 100,000 files)."""
    with path.open("rb") as f:
        head = f.read(_HEADER_BYTES + 1)
    if head.startswith(b"NRRD"):
        return _nrrd(path, head)
    if re.search(rb"(?im)^\s*ElementDataFile\s*=", head[:_HEADER_BYTES]):
        return _metaimage(path, head)
    return []


def _lines(head: bytes) -> list[str]:
    """The first MiB as text lines (an attached header is followed by binary voxels: only its lines matter)."""
    return head[:_HEADER_BYTES].decode("latin-1").splitlines()


def _metaimage(path: Path, head: bytes) -> list[str]:
    lines = _lines(head)
    for i, line in enumerate(lines):
        key, eq, value = line.partition("=")
        if not eq or key.strip().lower() != "elementdatafile":
            continue
        value = value.strip()
        words = value.split()
        if value.upper() == "LOCAL":
            return []
        if words and words[0].upper() == "LIST":
            if len(head) > _HEADER_BYTES:
                raise FileInputError(f"{path.name}: the header's file list is longer than {_HEADER_BYTES} bytes; refused")
            return _limited(path, [ln.strip() for ln in lines[i + 1 :] if ln.strip()])
        if len(words) >= 4 and "%" in words[0]:
            return _pattern(path, words[0], words[1:4])
        return [value]
    return []


def _nrrd(path: Path, head: bytes) -> list[str]:
    lines = _lines(head)
    for i, line in enumerate(lines[1:], start=1):
        if not line.strip():
            return []  # end of header: the voxels follow in this file
        if line.startswith("#") or ":=" in line:
            continue
        key, colon, value = line.partition(":")
        if not colon or key.strip().lower() not in ("data file", "datafile"):
            continue
        words = value.split()
        if not words:
            raise FileInputError(f"{path.name}: empty 'data file' field")
        if words[0].upper() == "LIST":
            if len(head) > _HEADER_BYTES:
                raise FileInputError(f"{path.name}: the header's file list is longer than {_HEADER_BYTES} bytes; refused")
            return _limited(path, [ln.strip() for ln in lines[i + 1 :] if ln.strip()])
        if len(words) >= 4 and "%" in words[0]:
            return _pattern(path, words[0], words[1:4])
        return [value.strip()]
    return []


def _pattern(path: Path, fmt: str, numbers: list[str]) -> list[str]:
    try:
        lo, hi, step = (int(v) for v in numbers)
    except ValueError:
        raise FileInputError(f"{path.name}: data file pattern {fmt!r} needs integer MIN MAX STEP") from None
    if len(_PATTERN.findall(fmt)) != 1 or fmt.count("%") != 1 or step == 0:
        raise FileInputError(f"{path.name}: data file pattern {fmt!r} is not one this server resolves (one %d, step != 0)")
    count = (hi - lo) // step + 1
    if count > _MAX_FILES:
        raise FileInputError(f"{path.name}: data file pattern {fmt!r} names {count} files; refused")
    return [fmt % k for k in range(lo, hi + (1 if step > 0 else -1), step)]


def _limited(path: Path, names: list[str]) -> list[str]:
    if not names:
        raise FileInputError(f"{path.name}: 'LIST' without file names")
    if len(names) > _MAX_FILES:
        raise FileInputError(f"{path.name}: the header lists {len(names)} data files; refused")
    return names
