"""MONAI segmentation networks (U-Net and kin) for 2D pictures, what their inputs are, and loading a trained one.

:func:`build_network` maps ``(N, C, S, S)`` inputs to ``(N, 2, S, S)`` logits (background, foreground);
:func:`foreground_probability` turns logits into the ``(N, S, S)`` foreground probability. :class:`InputSpec`
records how a network's inputs are made (raw picture, SAMAug-augmented picture or both; grey or RGB; the size
S); it is stored in the training checkpoint, so :func:`load_unet` rebuilds a trained network and its inputs from
the checkpoint alone. Building the inputs from a picture and running the network on an image is
:mod:`medsamkit.predict.unet`; training is :mod:`medsamkit.train.unet`.

The checkpoint is the training loop's file (``run_dir/best.pt`` / ``last.pt``, written by
:func:`medsamkit.train.loop.fit`), read by :func:`medsamkit.models.checkpoint.load_checkpoint` (below the
training side, so inference needs no training code); this module knows no other file. PyTorch and MONAI are
imported when a network is built or loaded (so importing this module, or :mod:`medsamkit.samaug.priors` through
:mod:`medsamkit.predict.unet`, stays light).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingFileError, OptionError
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint  # noqa: F401 - the checkpoint reader, also importable from here
from .configs import StoredConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

ARCHS = ("unet", "basicunet", "attentionunet", "segresnet")
#: feature channels per level (MONAI UNet / AttentionUnet: one per level, the last is the bottleneck; BasicUNet:
#: its six ``features``; SegResNet: ``init_filters`` = the first entry)
DEFAULT_CHANNELS: dict[str, tuple[int, ...]] = {
    "unet": (16, 32, 64, 128, 256),
    "attentionunet": (16, 32, 64, 128, 256),
    "basicunet": (32, 32, 64, 128, 256, 32),
    "segresnet": (16,),
}
DEFAULT_STRIDES = (2, 2, 2, 2)

INPUT_KINDS = ("raw", "samaug", "both")
COLOURS = ("grey", "rgb")
VIEWS = ("raw", "samaug")

# -------------------------------------------------------------------------------------------------- networks


def build_network(
    arch: str = "unet",
    in_channels: int = 3,
    out_channels: int = 2,
    *,
    channels: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    num_res_units: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """A 2D MONAI network mapping ``(N, in_channels, S, S)`` to ``(N, out_channels, S, S)`` logits.

    arch "unet" (default): ``monai.networks.nets.UNet`` with ``channels`` (16, 32, 64, 128, 256), ``strides``
    (2, 2, 2, 2) (S must be a multiple of 16), ``num_res_units`` 2 residual units per block, instance norm and
    PReLU (MONAI's defaults), ~1.6 M parameters at 3 input channels. "attentionunet": ``AttentionUnet`` with
    the same channels/strides. "basicunet": ``BasicUNet`` with ``features`` = ``channels`` (six numbers,
    default (32, 32, 64, 128, 256, 32); S multiple of 16). "segresnet": ``SegResNet`` with ``init_filters`` =
    ``channels[0]`` (default 16; S multiple of 8).
    """
    from monai.networks import nets

    if arch not in ARCHS:
        raise OptionError(f"unknown arch {arch!r}; use one of {', '.join(ARCHS)}")
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise OptionError(f"{name} must be an integer >= 1, got {v!r}")
    if not 0.0 <= dropout < 1.0:
        raise OptionError(f"dropout must be in [0, 1), got {dropout!r}")
    ch = tuple(int(c) for c in (channels or DEFAULT_CHANNELS[arch]))
    st = tuple(int(s) for s in (strides or DEFAULT_STRIDES))
    if any(c < 1 for c in ch) or any(s < 1 for s in st):
        raise OptionError(f"channels and strides must be positive, got {ch} and {st}")
    if arch in ("unet", "attentionunet"):
        if len(st) != len(ch) - 1:
            raise OptionError(
                f"{arch}: give one stride per level change: {len(ch)} channels need {len(ch) - 1} strides, got {len(st)}"
            )
        if arch == "unet":
            return nets.UNet(2, in_channels, out_channels, channels=ch, strides=st, num_res_units=num_res_units, dropout=dropout)
        return nets.AttentionUnet(2, in_channels, out_channels, channels=ch, strides=st, dropout=dropout)
    if arch == "basicunet":
        if len(ch) != 6:
            raise OptionError(f"basicunet takes six feature numbers, got {len(ch)}: {ch}")
        return nets.BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=ch, dropout=dropout)
    return nets.SegResNet(
        spatial_dims=2, init_filters=ch[0], in_channels=in_channels, out_channels=out_channels, dropout_prob=dropout or None
    )


def size_multiple(arch: str, strides: Sequence[int] | None = None) -> int:
    """The input size S must be a multiple of this number for ``arch``."""
    if arch in ("unet", "attentionunet"):
        return int(np.prod(strides or DEFAULT_STRIDES))
    return {"basicunet": 16, "segresnet": 8}[arch]


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(N, S, S)`` probability of any non-background class from ``(N, C, S, S)`` logits (softmax over C;
    sigmoid of the one channel when C == 1)."""
    import torch

    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]


# ------------------------------------------------------------------------------------------------ input spec


@dataclass(frozen=True)
class InputSpec(StoredConfig):
    """How network inputs are made; stored with a trained model so prediction rebuilds them exactly.

    kind: "raw", "samaug" or "both". mode: the SAMAug mode ("add" or "stack"; None for raw). alpha: add mode's
    blend weight. colour: "grey" or "rgb" pictures. size: S of the (C, S, S) input. label: the target label
    value (None: every label > 0 is foreground).
    """

    kind: str
    colour: str
    size: int
    mode: str | None = None
    alpha: float = 0.5
    label: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise OptionError(f"unknown input kind {self.kind!r}; use one of {', '.join(INPUT_KINDS)}")
        if self.colour not in COLOURS:
            raise OptionError(f"colour must be 'grey' or 'rgb', got {self.colour!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 8:
            raise OptionError(f"size must be an integer >= 8, got {self.size!r}")
        if self.kind != "raw" and self.mode not in ("add", "stack"):
            raise OptionError(f"input {self.kind!r} needs the SAMAug mode 'add' or 'stack', got {self.mode!r}")
        if self.label is not None and (
            isinstance(self.label, bool) or not isinstance(self.label, (int, np.integer)) or self.label < 1
        ):
            raise OptionError(f"label must be an integer >= 1 or None, got {self.label!r}")

    @property
    def views(self) -> tuple[str, ...]:
        """The views of each case: ("raw",), ("samaug",) or ("raw", "samaug")."""
        return {"raw": ("raw",), "samaug": ("samaug",), "both": VIEWS}[self.kind]

    @property
    def image_channels(self) -> int:
        return 1 if self.colour == "grey" else 3

    @property
    def in_channels(self) -> int:
        """Channels of every network input: raw pictures 1 or 3; add mode 3; stack mode image + 2 priors."""
        if self.kind == "raw":
            return self.image_channels
        return 3 if self.mode == "add" else self.image_channels + 2


# ----------------------------------------------------------------------------------------- trained networks


@dataclass
class TrainedUNet:
    """A trained network in eval mode with what it needs to rebuild its inputs (:class:`InputSpec`).

    network: maps ``(N, spec.in_channels, S, S)`` float32 inputs to ``(N, 2, S, S)`` logits, on ``device``.
    meta: the training run's record (network arguments, input spec, dataset, SAMAug folder, ...)."""

    network: nn.Module
    spec: InputSpec
    meta: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    epoch: int | None = None
    device: torch.device = field(default_factory=lambda: _device("cpu"))


def _device(name: str | torch.device) -> torch.device:
    import torch

    return torch.device(name)


def load_unet(run_dir: str | os.PathLike[str], checkpoint: str = "best", device: str | torch.device = "cpu") -> TrainedUNet:
    """The network of a U-Net training run (``medsamkit train unet``) from ``run_dir/best.pt`` (or ``"last"``),
    in eval mode on ``device``. The file is read with ``weights_only=True``."""
    if checkpoint not in ("best", "last"):
        raise OptionError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run = Path(run_dir)
    path = run / f"{checkpoint}.pt"
    if not path.is_file():
        raise MissingFileError(
            f"{path} not found: {run} is not a finished medsamkit U-Net run (train one with `medsamkit train unet`)"
        )
    ckpt = load_checkpoint(path)
    meta = dict(ckpt.get("meta") or {})
    if meta.get("task") != "unet" or "network" not in meta or "input" not in meta:
        raise OptionError(f"{path} is a training checkpoint but not of a U-Net run (task {meta.get('task')!r})")
    net = build_network(**meta["network"])
    net.load_state_dict(ckpt["model"])
    dev = _device(device)
    net.to(dev).eval()
    return TrainedUNet(net, InputSpec.from_dict(meta["input"]), meta, run, ckpt.get("epoch"), dev)
