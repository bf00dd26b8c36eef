"""How large an image medsamkit decodes: checked from headers, before any voxel is allocated."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LimitError, OptionError


def default_max_bytes() -> int:
    """The largest decoded image :func:`read_image` accepts by default: ``$MEDSAMKIT_MAX_IMAGE_MB`` MiB when set,
    else half of this machine's physical memory (the image, its display copy and the working copies must fit)."""
    env = os.environ.get("MEDSAMKIT_MAX_IMAGE_MB", "").strip()
    if env:
        try:
            return max(1, int(float(env))) << 20
        except ValueError:
            raise OptionError(f"MEDSAMKIT_MAX_IMAGE_MB={env!r} is not a number of MiB") from None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def check_size(path: Path, nbytes: int, what: str, max_bytes: int | None) -> None:
    """Raise :class:`~medsamkit.errors.LimitError` when an image of ``nbytes`` decoded bytes is over the limit."""
    limit = default_max_bytes() if max_bytes is None else max_bytes
    if nbytes > limit:
        how = "set MEDSAMKIT_MAX_IMAGE_MB to change it" if max_bytes is None else "the limit this caller sets"
        raise LimitError(
            f"{path.name}: {what} take {_size(nbytes)} once decoded, over the limit of {_size(limit)} ({how}); nothing was read"
        )


def _size(n: int) -> str:
    """Bytes for people: ``1.50 GiB``, ``12.0 MiB``, ``900 bytes``."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"
