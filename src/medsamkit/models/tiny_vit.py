"""TinyViT-5M image encoder, in the two SAM variants.

* ``LITEMEDSAM``: input ``(B, 3, 256, 256)``, stride-free 1x1 stem convolutions (the patch grid is 256x256).
* ``MOBILESAM``: input ``(B, 3, 1024, 1024)``, two 3x3 stride-2 stem convolutions (1024 -> 256 grid); its
  checkpoint also carries an unused ImageNet classifier (``norm_head``, ``head``), kept so keys match strictly.

Both produce a ``(B, 256, 64, 64)`` embedding. Parameter names follow ``lite_medsam.pth`` / ``mobile_sam.pt``.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .configs import LITEMEDSAM, TinyViTConfig


class Conv2dBN(nn.Module):
    """Convolution without bias followed by BatchNorm (keys ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: TinyViTConfig) -> None:
        super().__init__()
        d = cfg.embed_dims[0]
        if cfg.stem_kernel == 1:
            a, b = Conv2dBN(3, d // 2, 1, 1, 0), Conv2dBN(d // 2, d, 1, 1, 0)
        else:
            a, b = Conv2dBN(3, d // 2, 3, 2, 1), Conv2dBN(d // 2, d, 3, 2, 1)
        self.seq = nn.Sequential(a, nn.GELU(), b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, plus the input, then GELU."""

    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages: ``(B, C, H, W)`` or tokens ``(B, H*W, C)`` -> tokens ``(B, H'*W', C')``.

    The depthwise 3x3 has stride 2, except before the last stage, where SAM's TinyViT uses stride 1 so the
    last stage stays at the 64x64 embedding grid.
    """

    def __init__(self, grid: int, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()
        self.grid = grid
        self.conv1 = Conv2dBN(cin, cout, 1)
        self.conv2 = Conv2dBN(cout, cout, 3, stride, 1, groups=cout)
        self.conv3 = Conv2dBN(cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b, _, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, self.grid, self.grid)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


def attention_offset_index(window: int) -> tuple[int, torch.Tensor]:
    """Index of each (query, key) pair of a ``window x window`` window into the learned bias table.

    Offsets ``(|dr|, |dc|)`` are numbered in the order they first appear when pairs of positions are
    enumerated row-major over both positions. Returns ``(number_of_offsets, index (N, N) int64)``.
    """
    points = list(itertools.product(range(window), range(window)))
    seen: dict[tuple[int, int], int] = {}
    idx = []
    for r1, c1 in points:
        for r2, c2 in points:
            off = (abs(r1 - r2), abs(c1 - c2))
            if off not in seen:
                seen[off] = len(seen)
            idx.append(seen[off])
    n = len(points)
    return len(seen), torch.tensor(idx, dtype=torch.long).view(n, n)


class TinyAttention(nn.Module):
    """Window attention with a learned per-head bias for each relative offset (head dim 32)."""

    bias_index: torch.Tensor  # buffer (N, N) int64: offset index of each query/key pair of a window

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        n_offsets, index = attention_offset_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        # qkv layout: per head [q(kd), k(kd), v(kd)]
        q, k, v = self.qkv(x).view(b, n, self.num_heads, 3 * self.key_dim).split(self.key_dim, dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        bias = self.attention_biases[:, self.bias_index]  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (residual) -> depthwise 3x3 on the grid -> MLP (residual). Tokens ``(B, H*W, C)``."""

    def __init__(self, dim: int, grid: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.grid = grid
        self.window = window
        self.attn = TinyAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        g, ws = self.grid, self.window
        if g == ws:
            y = self.attn(x)
        else:
            y = x.view(b, g, g, c)
            pad = (ws - g % ws) % ws
            if pad:
                y = F.pad(y, (0, 0, 0, pad, 0, pad))
            gp = g + pad
            nw = gp // ws
            y = y.view(b, nw, ws, nw, ws, c).transpose(2, 3).reshape(b * nw * nw, ws * ws, c)
            y = self.attn(y)
            y = y.view(b, nw, nw, ws, ws, c).transpose(2, 3).reshape(b, gp, gp, c)
            if pad:
                y = y[:, :g, :g].contiguous()
            y = y.view(b, n, c)
        x = x + y
        x = x.transpose(1, 2).reshape(b, c, g, g)
        x = self.local_conv(x)
        x = x.view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class _Stage(nn.Module):
    """A stage: its ``blocks`` in order, then ``downsample`` (patch merging) when there is one."""

    blocks: nn.ModuleList
    downsample: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class ConvStage(_Stage):
    def __init__(self, dim: int, depth: int, expand: float, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = downsample


class TransformerStage(_Stage):
    def __init__(
        self, dim: int, grid: int, depth: int, heads: int, window: int, mlp_ratio: float, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, grid, heads, window, mlp_ratio) for _ in range(depth))
        self.downsample = downsample


class TinyViT(nn.Module):
    """TinyViT encoder: ``(B, 3, S, S) -> (B, 256, 64, 64)``."""

    def __init__(self, cfg: TinyViTConfig = LITEMEDSAM) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = cfg.img_size
        dims, n = cfg.embed_dims, len(cfg.embed_dims)
        self.patch_embed = PatchEmbed(cfg)
        # grid of each stage: halves after stages 0 and 1; stage 3 keeps stage 2's grid
        grids = [cfg.patch_grid // (2 ** min(i, n - 2)) for i in range(n)]
        self.out_grid = grids[-1]
        layers: list[nn.Module] = []
        for i in range(n):
            down = PatchMerging(grids[i], dims[i], dims[i + 1], 1 if i == n - 2 else 2) if i < n - 1 else None
            if i == 0:
                layers.append(ConvStage(dims[0], cfg.depths[0], cfg.mbconv_expand_ratio, down))
            else:
                layers.append(
                    TransformerStage(dims[i], grids[i], cfg.depths[i], cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio, down)
                )
        self.layers = nn.ModuleList(layers)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, 1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )
        if cfg.classifier_classes:
            # Unused by SAM; present in MobileSAM's checkpoint.
            self.norm_head = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], cfg.classifier_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        g = self.out_grid
        return self.neck(x.transpose(1, 2).reshape(b, c, g, g))
