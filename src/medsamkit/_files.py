"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old file or none."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path`` (parent folders are created), then rename it to
    ``path``; the temporary file is removed if ``write`` fails. What ``write`` returns is ignored. Writers that add a
    suffix of their own (e.g. ``numpy.savez``) must write through an open file handle."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# -- output checks, before any work ------------------------------------------------------------------------------


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when ``a`` and ``b`` name the same file: the same inode (symlinks and hard links included) when
    both exist, else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_outputs(outputs: Mapping[str, str | os.PathLike[str]], inputs: Sequence[str | os.PathLike[str] | None]) -> None:
    """Refuse outputs that would replace an input or each other.

    outputs: what each output is called for the user (e.g. ``"-o"``, ``"--overlay"``, ``"the mask's JSON
    sidecar"``) -> its path. inputs: files or folders read by the job (None entries are ignored); an output may
    not be an input file (by inode: symlinks and hard links count), nor lie inside an input folder (a DICOM
    series folder is one input). Raises :class:`~medsamkit.errors.OutputError` naming both."""
    from .errors import OutputError

    given = [Path(p) for p in inputs if p is not None]
    seen: dict[Path, str] = {}
    for what, out in outputs.items():
        o = Path(out)
        for src in given:
            if src.is_dir():
                if o.resolve().is_relative_to(src.resolve()):
                    raise OutputError(
                        f"{what} {o} lies inside the input folder {src}; write outputs elsewhere (inputs are never changed)"
                    )
                continue
            if (o.exists() or o.is_symlink()) and src.exists() and same_file(o, src) or o.resolve() == src.resolve():
                raise OutputError(f"{what} {o} is the input file {src}; choose another output (inputs are never overwritten)")
        key = o.resolve()
        if key in seen:
            raise OutputError(f"{what} and {seen[key]} are the same file {o}")
        seen[key] = what


def check_writable(path: str | os.PathLike[str], what: str = "output") -> None:
    """Refuse, before any work, an output that cannot be written: an existing folder at ``path``, a file where
    a parent folder should be, or a folder the process may not write to (probed with a temporary file in the
    nearest existing parent, removed at once; nothing is created). Raises
    :class:`~medsamkit.errors.OutputError`."""
    import tempfile

    from .errors import OutputError

    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    anc = parent
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{what} {p}: {anc} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".medsamkit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {p}: cannot write to the folder {anc} ({e.strerror or e})") from None
