"""SAM's mask decoder: tokens + image embedding -> 4 low-res mask logits and their predicted IoU."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayBlock, TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(self, dim: int = 256, num_multimask_outputs: int = 3) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(depth=2, dim=dim, num_heads=8, mlp_dim=2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3)

    def predict_all(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        outputs: torch.Tensor | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All four mask outputs (or those listed in ``outputs``).

        image_embeddings ``(1 or N, C, 64, 64)``; image_pe ``(1, C, 64, 64)``; sparse ``(N, T, C)``;
        dense ``(N, C, 64, 64)``; outputs: int64 indices into the four outputs, e.g. ``[0]`` or ``[1, 2, 3]``.
        Returns logits ``(N, K, 256, 256)`` and IoU predictions ``(N, K)`` (K = 4 without ``outputs``).
        Output 0 is the single-mask output, 1-3 the multimask outputs. ``fast``: re-associated attention
        for inference (see :class:`~.transformer.Attention`).
        """
        keys = (image_embeddings + dense).flatten(2).transpose(1, 2)
        return self._decode(keys, image_pe, sparse, None, outputs, fast)

    def prepare_image(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Everything of one image the decoder can compute before seeing a prompt, for a dense prompt shared
        by all prompts (the no-mask embedding): ``(keys (1, h*w, C), k, v, q)``: the image side as tokens and
        the first two-way layer's image-side projections ``(1, h*w, C/2)``. Use with :meth:`predict_prepared`."""
        keys = (image_embeddings + dense).flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        first = cast(TwoWayBlock, self.transformer.layers[0])
        return (keys, *first.image_projections(keys, key_pe))

    def predict_prepared(
        self,
        prepared: tuple[torch.Tensor, ...],
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        outputs: torch.Tensor | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same outputs as :meth:`predict_all` for N prompts of a prepared image (see :meth:`prepare_image`)."""
        return self._decode(prepared[0], image_pe, sparse, tuple(prepared[1:]), outputs, fast)

    def _decode(
        self,
        keys: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        first_projections: tuple[torch.Tensor, ...] | None,
        outputs: torch.Tensor | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keys: the image side as tokens ``(N or 1, h*w, C)``; the grid comes from ``image_pe (1, C, h, w)``.
        Only the mask outputs listed in ``outputs`` are upscaled (the costly part)."""
        n = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        hs, src_tokens = self.transformer.forward_tokens(keys, key_pe, tokens, first_projections, fast)
        iou_out = hs[:, 0, :]
        mask_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        hyper = torch.stack([mlp(mask_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        iou = self.iou_prediction_head(iou_out)
        if outputs is not None:
            hyper, iou = hyper.index_select(1, outputs), iou.index_select(1, outputs)
        masks = self.upscale_and_project(src_tokens, hyper, (image_pe.shape[-2], image_pe.shape[-1]))
        return masks, iou

    def upscale_and_project(self, tokens: torch.Tensor, hyper: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``output_upscaling`` followed by the per-mask dot product, computed channels-last.

        tokens ``(N, h*w, C)`` (row-major over the ``h x w`` grid), hyper ``(N, K, C/8)`` -> logits
        ``(N, K, 4h, 4w)``. A 2x2 stride-2 transposed convolution maps each input pixel to its own 2x2 output
        block, so it is a matmul per pixel: ``(C) -> (2, 2, C')``. Working on tokens avoids transposing the
        large 32x256x256 map; only the K output maps are rearranged at the end. Same maths as
        ``output_upscaling`` on the ``(N, C, h, w)`` map (the test suite checks it).
        """
        up1 = cast(nn.ConvTranspose2d, self.output_upscaling[0])
        ln = cast(LayerNorm2d, self.output_upscaling[1])
        up2 = cast(nn.ConvTranspose2d, self.output_upscaling[3])
        b1, b2 = up1.bias, up2.bias
        if b1 is None or b2 is None:  # pragma: no cover - __init__ builds both with a bias
            raise TypeError("output_upscaling's transposed convolutions have no bias")
        n, hw, c = tokens.shape
        h, w = int(grid[0]), int(grid[1])
        c1, c2 = up1.out_channels, up2.out_channels
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)  # (C, (a, b, o))
        x = (tokens @ w1).reshape(n, hw * 4, c1) + b1
        x = F.gelu(F.layer_norm(x, (c1,), ln.weight, ln.bias, ln.eps))
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)  # (C', (c, d, o))
        x = F.gelu((x @ w2).reshape(n, hw * 16, c2) + b2)
        k = hyper.shape[1]
        m = x @ hyper.transpose(1, 2)  # (N, h*w*16, K) ordered (i, j, a, b, c, d)
        m = m.reshape(n, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)  # (N, K, i, a, c, j, b, d)
        return m.reshape(n, k, 4 * h, 4 * w)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's interface: returns ``(N, 1|3, 256, 256)`` logits and ``(N, 1|3)`` IoU predictions."""
        idx = torch.arange(1 if multimask_output else 0, self.num_mask_tokens if multimask_output else 1)
        return self.predict_all(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, idx)
