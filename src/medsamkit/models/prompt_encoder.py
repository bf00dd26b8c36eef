"""SAM's prompt encoder: points, box corners and a low-res mask to sparse and dense embeddings.

Coordinates given to this module are in the **model input** frame (pixels of the resized, padded image the
encoder sees, x = column, y = row); the +0.5 pixel-centre shift is applied here.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .common import LayerNorm2d
from .configs import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PAD


class RandomPositionEmbedding(nn.Module):
    """Fourier features of coordinates with a fixed random Gaussian matrix (stored in the checkpoint)."""

    positional_encoding_gaussian_matrix: torch.Tensor  # buffer (2, num_feats) float32

    def __init__(self, num_feats: int = 128, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_feats))

    def encode(self, coords01: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates in [0, 1] (x, y) -> ``(..., 2*num_feats)``."""
        c = (2 * coords01 - 1) @ self.positional_encoding_gaussian_matrix
        c = 2 * math.pi * c
        return torch.cat([torch.sin(c), torch.cos(c)], dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """Dense encoding at the pixel centres of an ``h x w`` grid: ``(C, h, w)``."""
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return self.encode(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)

    def encode_pixels(self, coords: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(..., 2)`` pixel coordinates (x, y) in an image of ``size = (H, W)`` -> encodings."""
        scale = torch.tensor([1.0 / size[1], 1.0 / size[0]], device=coords.device, dtype=coords.dtype)
        return self.encode(coords * scale)


class PromptEncoder(nn.Module):
    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = RandomPositionEmbedding(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: ``(1, C, 64, 64)``."""
        return self.pe_layer.grid(*self.image_embedding_size).unsqueeze(0)

    def embed_labelled_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse embeddings of labelled points.

        coords: ``(N, P, 2)`` float, (x, y) in model-input pixels. labels: ``(N, P)`` with -1 padding,
        0 negative, 1 positive, 2 box top-left, 3 box bottom-right. Returns ``(N, P, C)``.
        """
        emb = self.pe_layer.encode_pixels(coords + 0.5, self.input_image_size)
        lab = labels.unsqueeze(-1).to(emb.dtype)
        pad = (lab == LABEL_PAD).to(emb.dtype)
        emb = emb * (1 - pad) + pad * self.not_a_point_embed.weight
        for value in range(4):
            point = cast(nn.Embedding, self.point_embeddings[value])
            emb = emb + (lab == value).to(emb.dtype) * point.weight
        return emb

    def embed_dense(self, masks: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``(N, 1, 256, 256)`` low-res mask logits (or None) -> dense embedding ``(N, C, 64, 64)``."""
        if masks is not None:
            return self.mask_downscaling(masks)
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's interface: ``points=(coords (N,P,2), labels (N,P))``, ``boxes (N,4)`` x0,y0,x1,y1,
        ``masks (N,1,256,256)``. Returns sparse ``(N, T, C)`` and dense ``(N, C, 64, 64)`` embeddings.
        When points come without a box, one padding point is appended (as SAM does)."""
        coords, labels = to_labelled_points(points, boxes)
        n = coords.shape[0] if coords is not None else (masks.shape[0] if masks is not None else 1)
        if coords is None or labels is None:  # both None or neither (to_labelled_points)
            sparse = torch.empty((n, 0, self.embed_dim), device=self.no_mask_embed.weight.device)
        else:
            sparse = self.embed_labelled_points(coords, labels)
        return sparse, self.embed_dense(masks, n)


def to_labelled_points(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Combine points ``(N,P,2)``/``(N,P)`` and boxes ``(N,4)`` into one labelled point list ``(N,T,2)``/``(N,T)``.

    Order: points, then box corners; a padding point is appended when there are points but no box.
    """
    parts_c: list[torch.Tensor] = []
    parts_l: list[torch.Tensor] = []
    if points is not None:
        c, lab = points
        parts_c.append(c.float())
        parts_l.append(lab.float())
        if boxes is None:
            parts_c.append(torch.zeros_like(c[:, :1, :], dtype=torch.float32))
            parts_l.append(torch.full_like(lab[:, :1], LABEL_PAD, dtype=torch.float32))
    if boxes is not None:
        b = boxes.float().reshape(-1, 2, 2)
        parts_c.append(b)
        parts_l.append(
            torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], dtype=torch.float32, device=b.device).expand(b.shape[0], 2)
        )
    if not parts_c:
        return None, None
    return torch.cat(parts_c, dim=1), torch.cat(parts_l, dim=1)
