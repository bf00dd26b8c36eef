"""Bottleneck adapters (Medical SAM Adapter style) inserted into a SAM-family model without touching its weights.

An :class:`Adapter` maps features ``(..., C)`` through ``down`` (C -> H = round(C * ratio)), ReLU and ``up``
(H -> C). Two placements per transformer block (Wu et al., Medical SAM Adapter):

* **sequential**, after the multi-head attention and before the residual sum: ``y = a + up(relu(down(a)))``
  where ``a`` is the attention output (the adapter has its own skip connection);
* **parallel** to the MLP: ``y = mlp(x) + scale * up(relu(down(n)))`` where ``n`` is the MLP's normalised
  input (TinyViT's MLP normalises inside, so its own LayerNorm is applied to the branch input too).

:func:`add_adapters` puts both into every TinyViT transformer block (stages 1-3; stage 0 is convolutional) or
every ViT block of the image encoder, and into both blocks of the mask decoder's two-way transformer (on the
prompt tokens: after the self-attention, parallel to the MLP). ``up`` starts at zero, so an adapted model gives
**exactly** the base model's outputs until it is trained.

The adapters are registered as submodules of the blocks they adapt (``<block>.adapter_attn``,
``<block>.adapter_mlp``), so their parameters appear in ``state_dict()`` under new keys while every base key
keeps its name; they run from forward hooks on the adapted submodules, which the inference engines (the
re-associated "fast" decoder path, the ONNX export) call like any other module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import OptionError
from .configs import StoredConfig

if TYPE_CHECKING:
    from .sam import SamModel

#: attribute under which an adapted model keeps its :class:`AdapterConfig`
CONFIG_ATTR = "adapter_config"


@dataclass(frozen=True)
class AdapterConfig(StoredConfig):
    """Where and how big the adapters are.

    ratio: bottleneck width as a fraction of the block's feature width (hidden = max(1, round(C * ratio)));
    Medical SAM Adapter uses 0.25. mlp_scale: factor on the parallel (MLP) branch (MSA: 0.5).
    encoder / decoder: adapt the image encoder's blocks / the mask decoder's two-way transformer blocks.
    """

    ratio: float = 0.25
    mlp_scale: float = 0.5
    encoder: bool = True
    decoder: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= 4:
            raise OptionError(f"adapter ratio must be in (0, 4], got {self.ratio!r}")
        if isinstance(self.mlp_scale, bool) or not isinstance(self.mlp_scale, (int, float)) or not self.mlp_scale > 0:
            raise OptionError(f"adapter mlp_scale must be > 0, got {self.mlp_scale!r}")
        if not (self.encoder or self.decoder):
            raise OptionError("adapters need encoder=True and/or decoder=True")


class Adapter(nn.Module):
    """``x (..., dim) -> up(relu(down(x)))``, plus ``x`` when ``skip``. ``up`` is zero-initialised (the adapter
    starts as the identity with ``skip``, as zero without); ``down`` has nn.Linear's default initialisation."""

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise OptionError(f"adapter dim must be an integer >= 1, got {dim!r}")
        hidden = max(1, round(dim * ratio))
        self.skip = skip
        self.down = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.act(self.down(x)))
        return x + y if self.skip else y


class _SequentialHook:
    """Forward hook: the module's output goes through the adapter (which holds its own skip)."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return self.adapter(output)


class _ParallelHook:
    """Forward hook: ``output + scale * adapter(pre(input))`` (``pre``: a normalisation the module applies inside)."""

    def __init__(self, adapter: Adapter, scale: float, pre: nn.Module | None = None) -> None:
        self.adapter = adapter
        self.scale = float(scale)
        self.pre = pre

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if self.pre is not None:
            x = self.pre(x)
        return output + self.scale * self.adapter(x)


def _blocks(model: SamModel, config: AdapterConfig) -> Iterator[tuple[nn.Module, nn.Module, nn.Module, nn.Module | None, int]]:
    """(block, attention module, MLP module, MLP-internal norm or None, feature width) of every adapted block."""
    from .tiny_vit import TinyViTBlock
    from .transformer import TwoWayBlock
    from .vit import ViTBlock

    if config.encoder:
        enc = model.image_encoder
        found = False
        for m in enc.modules():
            if isinstance(m, TinyViTBlock):
                found = True
                yield m, m.attn, m.mlp, m.mlp.norm, m.mlp.fc1.in_features
            elif isinstance(m, ViTBlock):
                found = True
                yield m, m.attn, m.mlp, None, m.mlp.lin1.in_features
        if not found:
            raise OptionError(f"no TinyViT or ViT transformer block found in the image encoder ({type(enc).__name__})")
    if config.decoder:
        for m in model.mask_decoder.transformer.layers:
            if not isinstance(m, TwoWayBlock):  # pragma: no cover - the decoder is built from TwoWayBlocks
                raise TypeError(f"unexpected decoder block {type(m).__name__}")
            yield m, m.self_attn, m.mlp, None, m.mlp.lin1.in_features


def add_adapters(model: SamModel, config: AdapterConfig | None = None) -> list[str]:
    """Insert bottleneck adapters into a ``SamModel`` in place (see the module docstring); returns the names
    of the new parameters (keys of ``model.state_dict()``). The adapters are created on the model's device and
    dtype and are trainable; nothing else changes (freeze the base yourself, e.g. :func:`adapter_parameters`).
    ValueError when the model already carries adapters."""
    config = config or AdapterConfig()
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise OptionError("the model already has adapters")
    ref = next(model.parameters())
    for block, attn, mlp, norm, dim in list(_blocks(model, config)):
        a_attn = Adapter(dim, config.ratio, skip=True).to(device=ref.device, dtype=ref.dtype)
        a_mlp = Adapter(dim, config.ratio, skip=False).to(device=ref.device, dtype=ref.dtype)
        block.adapter_attn = a_attn
        block.adapter_mlp = a_mlp
        handles = [
            attn.register_forward_hook(_SequentialHook(a_attn)),
            mlp.register_forward_hook(_ParallelHook(a_mlp, config.mlp_scale, norm)),
        ]
        # a plain attribute, not a submodule (nn.Module's __setattr__ is typed for tensors and modules only)
        block._adapter_hooks = handles  # type: ignore[assignment]
    setattr(model, CONFIG_ATTR, config)
    return adapter_parameter_names(model)


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names (state-dict keys) of the adapter parameters of ``model`` (empty without adapters)."""
    return [n for n, _ in model.named_parameters() if ".adapter_attn." in n or ".adapter_mlp." in n]


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters of ``model``, in ``named_parameters`` order."""
    names = set(adapter_parameter_names(model))
    return [p for n, p in model.named_parameters() if n in names]


def remove_adapters(model: nn.Module) -> None:
    """Undo :func:`add_adapters`: remove the hooks and the adapter modules (the base weights are untouched)."""
    if getattr(model, CONFIG_ATTR, None) is None:
        return
    for m in model.modules():
        for h in getattr(m, "_adapter_hooks", []):
            h.remove()
        if hasattr(m, "_adapter_hooks"):
            del m._adapter_hooks
        for name in ("adapter_attn", "adapter_mlp"):
            if name in m._modules:
                del m._modules[name]
    setattr(model, CONFIG_ATTR, None)


def count_adapter_parameters(model: SamModel, config: AdapterConfig | None = None) -> int:
    """How many parameters :func:`add_adapters` would add to ``model`` with ``config`` (without adding them)."""
    config = config or AdapterConfig()
    total = 0
    for _, _, _, _, dim in _blocks(model, config):
        hidden = max(1, round(dim * config.ratio))
        total += 2 * (dim * hidden + hidden + hidden * dim + dim)
    return total
