"""The training checkpoint file: its format tag and its one reader.

The training loop (:func:`medsamkit.train.loop.fit`, through :mod:`medsamkit.train.checkpoint`) writes
``run_dir/last.pt`` and ``run_dir/best.pt`` as a ``torch.save`` dict tagged ``{"format": CHECKPOINT_FORMAT}``;
:func:`load_checkpoint` reads either, for the training side (resuming, the best epoch's weights) and for inference
(:func:`medsamkit.models.unet.load_unet`) alike, so inference needs no training code. PyTorch is imported when a
file is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FileInputError, MissingFileError

if TYPE_CHECKING:
    import torch

#: the ``format`` entry of a training checkpoint (:func:`medsamkit.train.loop.fit`)
CHECKPOINT_FORMAT = "medsamkit.train/1"


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`medsamkit.train.loop.fit` (``last.pt`` or ``best.pt``) as its dict (tensors
    on ``map_location``), loaded with ``weights_only=True`` (no code runs while reading it). MissingFileError when
    the file is absent, FileInputError (a ValueError) when it cannot be read or is not a training checkpoint."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or foreign files
        raise FileInputError(f"cannot read checkpoint {p}: {' '.join(str(e).split())[:200]}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FileInputError(f"{p} is not a medsamkit training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt
