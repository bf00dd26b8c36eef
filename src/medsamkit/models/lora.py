"""Low-rank adaptation (LoRA) of the attention projections of a SAM-family model.

Each adapted ``nn.Linear`` keeps its frozen weight ``W`` ``(out, in)`` and gains ``A`` ``(r, in)`` and ``B``
``(out, r)``; the layer then uses ``W + (alpha / r) * B @ A`` (Hu et al., LoRA). ``A`` starts with nn.Linear's
default (Kaiming-uniform) initialisation and ``B`` at zero, so an adapted model gives **exactly** the base
model's outputs until it is trained.

The update is a ``torch.nn.utils.parametrize`` parametrisation of ``weight``: every reader of ``layer.weight``
(the forward pass, the mask decoder's re-associated "fast" attention that multiplies by the projection matrices
directly, an ONNX export) sees the adapted weight. State-dict keys of an adapted layer become
``<layer>.parametrizations.weight.original`` (the base weight) and ``<layer>.parametrizations.weight.0.lora_a`` /
``lora_b``; :func:`merge_lora` folds the update into a plain weight again (base key names, no per-call cost).

Targets: the image encoder's attention ``qkv`` and ``proj`` (TinyViT and ViT blocks) and, in the mask decoder's
two-way transformer, every attention's ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import OptionError
from .configs import StoredConfig

if TYPE_CHECKING:
    from .sam import SamModel

#: attribute under which an adapted model keeps its :class:`LoraConfig`
CONFIG_ATTR = "lora_config"
ENCODER_TARGETS = ("qkv", "proj")
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class LoraConfig(StoredConfig):
    """rank: r of the update (>= 1). alpha: scale numerator (the update is ``alpha / rank * B @ A``; None:
    alpha = rank, i.e. scale 1). encoder / decoder: adapt the image encoder's / the mask decoder's attention."""

    rank: int = 4
    alpha: float | None = None
    encoder: bool = True
    decoder: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise OptionError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is not None and (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
            or self.alpha <= 0
        ):
            raise OptionError(f"LoRA alpha must be > 0 (or None for alpha = rank), got {self.alpha!r}")
        if not (self.encoder or self.decoder):
            raise OptionError("LoRA needs encoder=True and/or decoder=True")

    @property
    def scaling(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank) / self.rank


class LoraDelta(nn.Module):
    """The parametrisation ``W -> W + scaling * B @ A`` of one linear layer's weight."""

    def __init__(self, out_features: int, in_features: int, rank: int, scaling: float) -> None:
        super().__init__()
        if rank > min(out_features, in_features):
            raise OptionError(f"LoRA rank {rank} exceeds the layer's size {out_features} x {in_features}")
        self.scaling = float(scaling)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's default for its weight

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scaling * (self.lora_b @ self.lora_a)


def _targets(model: SamModel, config: LoraConfig) -> list[tuple[str, nn.Linear]]:
    from .tiny_vit import TinyAttention
    from .transformer import Attention
    from .vit import ViTAttention

    out: list[tuple[str, nn.Linear]] = []
    if config.encoder:
        for name, m in model.image_encoder.named_modules():
            if isinstance(m, (TinyAttention, ViTAttention)):
                out += [(f"image_encoder.{name}.{t}", getattr(m, t)) for t in ENCODER_TARGETS]
        if not out:
            raise OptionError(f"no TinyViT or ViT attention found in the image encoder ({type(model.image_encoder).__name__})")
    if config.decoder:
        for name, m in model.mask_decoder.transformer.named_modules():
            if isinstance(m, Attention):
                out += [(f"mask_decoder.transformer.{name}.{t}", getattr(m, t)) for t in DECODER_TARGETS]
    return out


def add_lora(model: SamModel, config: LoraConfig | None = None) -> list[str]:
    """Parametrise the attention projections of a ``SamModel`` in place (see the module docstring); returns
    the names of the new (trainable) parameters. ValueError when the model already carries LoRA."""
    config = config or LoraConfig()
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise OptionError("the model already has LoRA updates")
    for _, layer in _targets(model, config):
        if not isinstance(layer, nn.Linear) or parametrize.is_parametrized(layer, "weight"):
            raise OptionError(f"cannot add LoRA to {type(layer).__name__}")
        w = layer.weight
        delta = LoraDelta(layer.out_features, layer.in_features, config.rank, config.scaling).to(device=w.device, dtype=w.dtype)
        parametrize.register_parametrization(layer, "weight", delta)
    setattr(model, CONFIG_ATTR, config)
    return lora_parameter_names(model)


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Names (state-dict keys) of the LoRA parameters of ``model`` (empty without LoRA)."""
    return [n for n, _ in model.named_parameters() if n.endswith((".lora_a", ".lora_b"))]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    names = set(lora_parameter_names(model))
    return [p for n, p in model.named_parameters() if n in names]


def _weight_parametrizations(m: nn.Module) -> parametrize.ParametrizationList:
    """``m.parametrizations.weight`` of a module whose weight is parametrised (``parametrize.is_parametrized``)."""
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, m.parametrizations).weight)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its layer's weight (``W + scaling * B @ A``, computed once) and drop the
    parametrisations: the model is a plain ``SamModel`` again with the base key names (outputs equal the
    unmerged model's up to float rounding). Returns ``model``."""
    if getattr(model, CONFIG_ATTR, None) is None:
        return model
    for m in list(model.modules()):
        if parametrize.is_parametrized(m, "weight") and any(isinstance(p, LoraDelta) for p in _weight_parametrizations(m)):
            with torch.no_grad():
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    setattr(model, CONFIG_ATTR, None)
    return model


def count_lora_parameters(model: SamModel, config: LoraConfig | None = None) -> int:
    """How many parameters :func:`add_lora` would add to ``model`` with ``config`` (without adding them)."""
    config = config or LoraConfig()
    return sum(config.rank * (layer.in_features + layer.out_features) for _, layer in _targets(model, config))
