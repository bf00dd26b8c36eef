"""Where an evaluation run keeps each case: its file names and the archive of predicted masks; and the one CSV
writer of result tables.

``cases/<dataset>/<case>.json`` holds a case's rows, ``masks/<dataset>/<case>.npz`` its predicted masks
(bit-packed; :func:`save_masks`, :func:`load_masks`). The runner writes both, the report reads the masks.
:func:`write_csv` writes every table of rows: the runner's ``results.csv`` and the training side's evaluation
tables (a fine-tuned run's ``test.csv``, a U-Net run's per-case scores).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._files import atomic_write

if TYPE_CHECKING:
    from ..data import Case


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def file_stem(name: str) -> str:
    """A file name for ``name``; names that needed changing get a short hash so that two never collide."""
    safe = _safe(name)
    return safe if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def case_paths(out: Path, case: Case) -> tuple[Path, Path]:
    """The rows file and the mask archive of ``case`` in the run folder ``out``."""
    d, c = file_stem(case.dataset), file_stem(case.id)
    return out / "cases" / d / f"{c}.json", out / "masks" / d / f"{c}.npz"


def save_masks(path: Path, masks: dict[str, np.ndarray]) -> None:
    """Add ``masks`` (key -> bool mask) to the archive at ``path`` (bit-packed, written atomically; a damaged
    archive is replaced)."""
    old: dict[str, np.ndarray] = {}
    if path.exists():
        try:
            with np.load(path) as z:
                old = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            old = {}
    for key, m in masks.items():
        old[f"{key}|bits"] = np.packbits(m.ravel())
        old[f"{key}|shape"] = np.array(m.shape, dtype=np.int64)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            # bit-packed masks and shapes, no objects. No allow_pickle=: numpy < 2.2 would store it as an array (the
            # project allows numpy 1.26); numpy's stub maps the names of **old onto that keyword.
            np.savez_compressed(f, **old)  # type: ignore[arg-type]

    atomic_write(path, write)


def load_masks(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Predicted masks saved by a run (``masks/<dataset>/<case>.npz``): key ``"<label>/<slice>/<protocol>/<step>"``
    -> bool mask."""
    out: dict[str, np.ndarray] = {}
    with np.load(path) as z:
        for k in z.files:
            if k.endswith("|bits"):
                key = k[: -len("|bits")]
                shape = tuple(int(s) for s in z[f"{key}|shape"])
                out[key] = np.unpackbits(z[k], count=int(np.prod(shape))).astype(bool).reshape(shape)
    return out


def write_csv(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    decimals: int | None = None,
    lineterminator: str = "\r\n",
) -> Path:
    """Write ``rows`` as a CSV table atomically (UTF-8): a header of ``columns``, then one line per row with
    those columns (other keys ignored; a missing key or None is an empty cell). decimals: write floats with this
    many decimals (None: as Python writes them). lineterminator: the csv module's default ``"\r\n"``, or
    ``"\n"``."""

    def cell(v: Any) -> Any:
        if v is None:
            return ""
        if decimals is not None and isinstance(v, float):
            return f"{v:.{decimals}f}"
        return v

    def write(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", lineterminator=lineterminator)
            w.writeheader()
            for r in rows:
                w.writerow({k: cell(r.get(k)) for k in columns})

    out = Path(path)
    atomic_write(out, write)
    return out
