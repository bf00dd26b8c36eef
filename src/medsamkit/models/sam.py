"""The assembled SAM-family model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .configs import ArchSpec, ViTConfig
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT
from .vit import ImageEncoderViT

if TYPE_CHECKING:
    from .loading import WeightsRef


class SamModel(nn.Module):
    """SAM / MedSAM / MobileSAM / LiteMedSAM network with the published parameter names."""

    spec: ArchSpec
    image_encoder: nn.Module
    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder
    #: set by :func:`~medsamkit.models.loading.load` and :func:`~medsamkit.models.adapted.load_adapted`; absent on
    #: a model built here (read it with ``getattr(model, "weights", None)``)
    weights: WeightsRef
    #: set by :func:`~medsamkit.models.adapted.load_adapted` only: the adapter file's mode, base, epoch, ...
    adapter_info: dict[str, Any]

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        enc = spec.encoder
        self.image_encoder = ImageEncoderViT(enc) if isinstance(enc, ViTConfig) else TinyViT(enc)
        g = spec.embed_grid
        self.prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(g, g), input_image_size=(enc.img_size, enc.img_size)
        )
        self.mask_decoder = MaskDecoder(256)

    @property
    def img_size(self) -> int:
        return self.spec.img_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` preprocessed float32 images -> ``(B, 256, 64, 64)`` embeddings."""
        return self.image_encoder(images)

    def decode(
        self,
        embedding: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        outputs: torch.Tensor | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode prompts given as labelled points (boxes are two points labelled 2 and 3).

        embedding ``(1 or N, 256, 64, 64)``; coords ``(N, P, 2)`` (x, y) in model-input pixels;
        labels ``(N, P)`` in {-1, 0, 1, 2, 3}; mask_input ``(N, 1, 256, 256)`` logits or None;
        outputs: int64 indices of the mask outputs to compute (0 single-mask, 1-3 multimask; default all);
        fast: re-associated decoder attention for inference (same maths, about half the arithmetic).
        Returns logits ``(N, K, 256, 256)`` and IoU predictions ``(N, K)``.
        """
        sparse = self.prompt_encoder.embed_labelled_points(coords, labels)
        dense = self.prompt_encoder.embed_dense(mask_input, 1)  # batch 1 broadcasts when there is no mask
        pe = self.prompt_encoder.dense_pe()
        return self.mask_decoder.predict_all(embedding, pe, sparse, dense, outputs, fast)

    def prepare_decoder(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Prompt-independent decoder work for one image ``(1, 256, 64, 64)`` without mask input;
        pass the result to :meth:`decode_prepared` for any number of prompts."""
        dense = self.prompt_encoder.embed_dense(None, 1)
        return self.mask_decoder.prepare_image(embedding, self.prompt_encoder.dense_pe(), dense)

    def decode_prepared(
        self,
        prepared: tuple[torch.Tensor, ...],
        coords: torch.Tensor,
        labels: torch.Tensor,
        outputs: torch.Tensor | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`decode` without mask input, reusing :meth:`prepare_decoder`'s output."""
        sparse = self.prompt_encoder.embed_labelled_points(coords, labels)
        return self.mask_decoder.predict_prepared(prepared, self.prompt_encoder.dense_pe(), sparse, outputs, fast)

    def forward(
        self,
        images: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one image ``(1, 3, S, S)`` and decode N prompts (see :meth:`decode`)."""
        return self.decode(self.encode(images), coords, labels, mask_input)
