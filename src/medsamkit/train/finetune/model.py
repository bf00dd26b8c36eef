"""The network a fine-tuning run trains and the file it leaves: :class:`FinetuneModel` (a ``SamModel``, adapted
in place by :func:`build_model` so that exactly the mode's parameters train, plus AutoSAM's prompt generator),
the prompt tensors it decodes, parameter counts, and :func:`save_adapter` writing only the trained parameters
(read back by :func:`medsamkit.models.adapted.load_adapted`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..._files import atomic_write
from ...errors import OptionError
from ...models.adapted import ADAPTER_FORMAT
from .options import FinetuneOptions

if TYPE_CHECKING:
    from ...models.autosam import PromptGenerator
    from ...models.mask_decoder import MaskDecoder
    from ...models.sam import SamModel

# ---------------------------------------------------------------------------------------------- model building


class FinetuneModel(nn.Module):
    """The trained network: a ``SamModel`` (possibly adapted) and, in autosam mode, a prompt generator.

    ``forward(batch, prompt)`` returns the single-mask low-res logits ``(N, 1, L, L)`` (L = 4 x embedding grid).
    batch: ``{"image": (N, 3, S, S) model inputs, "embedding": (N, 256, g, g), "box": (N, 4) model-input x0, y0,
    x1, y1, "points": (N, k, 2) model-input x, y}``; the embedding is computed from the image when absent.
    prompt: "box" or "points" (ignored in autosam mode). Interactive training calls it as ``forward(batch, "encode")``
    -> embeddings and ``forward({"embedding": e}, "decode", coords=, labels=, mask_input=, outputs=)`` -> ``(logits
    (N, K, L, L), IoU predictions (N, K))`` (a module's forward, so the engine's wrappers see every pass). BatchNorm
    layers stay in eval mode in training.
    """

    sam: SamModel
    generator: PromptGenerator | None

    def __init__(self, sam: SamModel, mode: str, generator: PromptGenerator | None = None) -> None:
        super().__init__()
        self.sam = sam
        self.mode = mode
        self.generator = generator

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        prompt: str = "box",
        *,
        coords: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        outputs: torch.Tensor | None = None,
    ) -> Any:
        emb = batch.get("embedding")
        image = batch.get("image")
        if prompt == "encode":  # interactive training: the image embedding once per batch
            if image is None:
                raise OptionError("encoding needs the batch's 'image'")
            return self.sam.encode(image)
        if prompt == "decode":  # interactive training: explicit labelled points -> (logits, IoU predictions)
            if emb is None or coords is None or labels is None:
                raise OptionError("decode needs the batch's 'embedding' and coords/labels")
            return self.sam.decode(emb, coords, labels, mask_input, outputs)
        if emb is None:
            if image is None:
                raise OptionError("a batch needs 'image' and/or 'embedding'")
            emb = self.sam.encode(image)
        zero = torch.zeros(1, dtype=torch.long, device=emb.device)
        if self.generator is not None:
            sparse, dense = self.generator(image if self.generator.config.use_image else None, emb)
            pe = self.sam.prompt_encoder.dense_pe()
            logits, _ = self.sam.mask_decoder.predict_all(emb, pe, sparse, dense, zero)
            return logits
        coords, labels = prompt_tensors(batch, prompt)
        logits, _ = self.sam.decode(emb, coords, labels, outputs=zero)
        return logits


def prompt_tensors(batch: Mapping[str, torch.Tensor], prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled points of a batch's prompts: box -> ``(N, 2, 2)`` corners labelled 2, 3; points -> ``(N, k + 1, 2)``
    labelled 1 plus SAM's padding point (label -1), as :class:`~medsamkit.predict.Predictor` builds them."""
    if prompt == "box":
        box = batch["box"].float()
        n = box.shape[0]
        labels = torch.tensor([2.0, 3.0], device=box.device).expand(n, 2)
        return box.view(n, 2, 2), labels
    if prompt == "points":
        pts = batch["points"].float()
        n, k = pts.shape[:2]
        coords = torch.cat([pts, pts.new_zeros(n, 1, 2)], dim=1)
        labels = torch.cat([pts.new_ones(n, k), pts.new_full((n, 1), -1.0)], dim=1)
        return coords, labels
    raise OptionError(f"unknown prompt {prompt!r}; use 'box' or 'points'")


def _decoder_trainable(decoder: MaskDecoder) -> list[nn.Parameter]:
    """The mask decoder's parameters that shape output 0 (all but the IoU head and hypernetworks 1-3)."""
    skip = {id(p) for p in decoder.iou_prediction_head.parameters()}
    for mlp in list(decoder.output_hypernetworks_mlps)[1:]:
        skip |= {id(p) for p in mlp.parameters()}
    return [p for p in decoder.parameters() if id(p) not in skip]


def interactive_trainable(decoder: MaskDecoder) -> list[nn.Parameter]:
    """The mask decoder's parameters that interactive training adapts: all of them (every output, the IoU head)
    except the shared upscaling of the image features (``output_upscaling``, 74 k of 4.06 M parameters), which
    keeps the shipped fp16 file under 8 MB."""
    skip = {id(p) for p in decoder.output_upscaling.parameters()}
    return [p for p in decoder.parameters() if id(p) not in skip]


def build_model(sam: SamModel, options: FinetuneOptions) -> FinetuneModel:
    """Adapt ``sam`` in place for ``options.mode`` and set ``requires_grad`` so that exactly the mode's
    parameters train (see the module docstring)."""
    mode = options.mode
    for p in sam.parameters():
        p.requires_grad_(False)
    generator = None
    trainable: list[nn.Parameter] = []
    if mode == "decoder" and options.prompt == "interactive":
        trainable = interactive_trainable(sam.mask_decoder)
    elif mode == "decoder":
        trainable = _decoder_trainable(sam.mask_decoder)
    elif mode == "full":
        enc = sam.image_encoder
        unused = {id(p) for name in ("norm_head", "head") if hasattr(enc, name) for p in getattr(enc, name).parameters()}
        trainable = [p for p in enc.parameters() if id(p) not in unused] + _decoder_trainable(sam.mask_decoder)
    elif mode == "adapter":
        from ...models.adapters import adapter_parameters, add_adapters

        add_adapters(sam, options.adapter_config())
        trainable = adapter_parameters(sam)
    elif mode == "lora":
        from ...models.lora import add_lora, lora_parameters

        add_lora(sam, options.lora_config())
        trainable = lora_parameters(sam)
    else:
        generator = build_generator(sam, options)
        trainable = list(generator.parameters())
        if options.autosam_train_decoder:
            trainable += _decoder_trainable(sam.mask_decoder)
    for p in trainable:
        p.requires_grad_(True)
    return FinetuneModel(sam, mode, generator)


def build_generator(sam: SamModel, options: FinetuneOptions) -> PromptGenerator:
    """AutoSAM's prompt generator for ``sam`` (k = ``options.autosam_tokens`` sparse tokens; it reads the picture
    and/or the image embedding as ``options.autosam_input`` says), on ``sam``'s device and dtype, freshly initialised
    (from torch's global RNG)."""
    from ...models.autosam import PromptGenerator, autosam_config_for

    cfg = autosam_config_for(
        sam,
        num_sparse=int(options.autosam_tokens),
        use_image=options.autosam_input in ("image", "both"),
        use_embedding=options.autosam_input in ("embedding", "both"),
    )
    ref = sam.prompt_encoder.no_mask_embed.weight
    return PromptGenerator(cfg, ref).to(device=ref.device, dtype=ref.dtype)


def parameter_counts(model: nn.Module, base_parameters: int) -> dict[str, Any]:
    """``trainable``, ``total`` (base + added), ``base`` and ``trainable_percent`` (of the base model)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "trainable": int(trainable),
        "total": int(total),
        "base": int(base_parameters),
        "trainable_percent": round(100.0 * trainable / max(1, base_parameters), 3),
    }


# ----------------------------------------------------------------------------------------------- adapter files


def trained_state(model: FinetuneModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(trained ``SamModel`` parameters by state-dict key, the generator's whole state dict or None)."""
    sam = {n: p.detach().cpu().clone() for n, p in model.sam.named_parameters() if p.requires_grad}
    gen = None
    if model.generator is not None:
        gen = {k: v.detach().cpu().clone() for k, v in model.generator.state_dict().items()}
    return sam, gen


def save_adapter(
    path: str | os.PathLike[str],
    model: FinetuneModel,
    options: FinetuneOptions,
    base: Mapping[str, Any],
    *,
    epoch: int | None = None,
    metric: float | None = None,
    counts: Mapping[str, Any] | None = None,
) -> Path:
    """Write the trained parameters of ``model`` (only those: see :func:`trained_state`) with what is needed to
    rebuild the adapted model on its base (mode, structure options, base identity) atomically to ``path``."""
    sam_state, gen_state = trained_state(model)
    structure: dict[str, Any] = {}
    if options.mode == "adapter":
        structure["adapter"] = options.adapter_config().to_dict()
    elif options.mode == "lora":
        structure["lora"] = options.lora_config().to_dict()
    elif options.mode == "autosam":
        if model.generator is None:
            raise OptionError("an autosam adapter file needs the model's prompt generator")
        structure["autosam"] = model.generator.config.to_dict()
    doc = {
        "format": ADAPTER_FORMAT,
        "mode": options.mode,
        "base": dict(base),
        "structure": structure,
        "options": options.to_dict(),
        "sam": sam_state,
        "generator": gen_state,
        "epoch": epoch,
        "val_dice": None if metric is None or (isinstance(metric, float) and math.isnan(metric)) else float(metric),
        "parameters": dict(counts or {}),
    }
    p = Path(path)
    atomic_write(p, lambda tmp: torch.save(doc, tmp))
    return p
