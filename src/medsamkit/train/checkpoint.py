"""The training loop's files: checkpoints, the resume check, RNG states and the metrics table.

:func:`medsamkit.train.loop.fit` keeps in its ``run_dir``:

* ``last.pt``: model, optimizer, scheduler, completed epochs, best metric, early-stopping counter, history, RNG
  states (:func:`rng_state`: python, numpy, torch CPU/CUDA, loader generators), config and meta; written atomically
  (:func:`write_checkpoint`) after every epoch, so a resumed run continues where a killed one stopped;
* ``best.pt``: the model weights of the best epoch plus config and meta;
* ``metrics.csv``: one row per epoch (:data:`METRICS_COLUMNS`), rewritten atomically from the run's history after
  every epoch (:func:`metrics_csv`), read back by :func:`read_metrics`.

Both checkpoints are ``torch.save`` dicts tagged ``{"format": CHECKPOINT_FORMAT}`` holding tensors and plain values
only, so they load with ``weights_only=True``; the one reader is :func:`medsamkit.models.checkpoint.load_checkpoint`
(below the training side, for inference too), re-exported here.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from .._files import atomic_write
from .._runs import describe_changes
from ..errors import OptionError
from ..models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint

if TYPE_CHECKING:
    from .loop import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRICS_COLUMNS",
    "RESUME_FIELDS",
    "check_resumable",
    "load_checkpoint",
    "metrics_csv",
    "read_metrics",
    "rng_state",
    "set_rng_state",
    "write_checkpoint",
]

METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")
#: config fields that must agree between a checkpoint and the run that resumes it (epochs, patience, time
#: budget, workers and device may change)
RESUME_FIELDS = (
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "schedule",
    "warmup_epochs",
    "min_lr_ratio",
    "grad_accum_steps",
    "grad_clip",
    "seed",
)


def write_checkpoint(path: Path, obj: Mapping[str, Any]) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a temporary file renamed into place)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def check_resumable(ckpt: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    """OptionError (a ValueError) naming the differences when ``config``'s :data:`RESUME_FIELDS` differ from
    those in the checkpoint ``ckpt`` read from ``path``."""
    mine = {k: getattr(config, k) for k in RESUME_FIELDS}
    diff = describe_changes(ckpt.get("config", {}), mine, RESUME_FIELDS)
    if diff:
        raise OptionError(f"cannot resume {path}: the run's settings differ from the checkpoint's ({diff})")


# ------------------------------------------------------------------------------------------------ RNG state


def rng_state(generators: Sequence[torch.Generator]) -> dict[str, Any]:
    """Every RNG state the loop depends on (python, numpy's global RNG, torch CPU and initialised CUDA devices,
    the loaders' ``generators``), as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
        "numpy_gauss": [int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "generators": [g.get_state() for g in generators],
    }
    return state


def set_rng_state(state: Mapping[str, Any], generators: Sequence[torch.Generator]) -> None:
    """Restore the states :func:`rng_state` saved; OptionError when the number of loader generators differs."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["generators"]
    if len(saved) != len(generators):
        raise OptionError(
            f"the checkpoint holds {len(saved)} loader generator state(s) but the loaders have {len(generators)}; "
            "resume with loaders built the same way"
        )
    for g, s in zip(generators, saved):
        g.set_state(s)


# --------------------------------------------------------------------------------------------- metrics table


def metrics_csv(history: Sequence[Mapping[str, float]]) -> str:
    """The text of ``metrics.csv``: a :data:`METRICS_COLUMNS` header, one row per epoch of ``history`` (``epoch`` as
    an integer, the rest with 6 significant digits, NaN as an empty cell), ``\\n`` line ends."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRICS_COLUMNS)
    for row in history:
        w.writerow([int(row["epoch"])] + [_fmt(row[c]) for c in METRICS_COLUMNS[1:]])
    return buf.getvalue()


def _fmt(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The rows of ``run_dir/metrics.csv`` as dicts of floats (``epoch`` as int; empty cells as NaN)."""
    p = Path(run_dir) / "metrics.csv"
    with p.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float(v) if v else math.nan) for k, v in r.items()} for r in rows]
