"""SAM's ViT image encoder (B/L/H) with windowed and global attention and decomposed relative positions.

Input ``(B, 3, 1024, 1024)`` float32 (normalised pixels), output ``(B, 256, 64, 64)``.
Parameter names follow the published ``sam_vit_{b,l,h}`` / ``medsam_vit_b`` checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock
from .configs import VIT_B, ViTConfig


def _relative_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Gather the relative-position rows for every (query, key) offset: ``(q_size, k_size, head_dim)``.

    The stored table has ``2*S-1`` rows (offsets -(S-1)..S-1). When it was trained for another size it is
    linearly resampled, as SAM does for inputs of a different resolution.
    """
    n = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != n:
        rel_pos = F.interpolate(rel_pos.T[None], size=n, mode="linear").reshape(-1, n).T
    q = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    idx = (q - k) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[idx.long()]


class ViTAttention(nn.Module):
    """Multi-head self-attention on a ``(B, H, W, C)`` grid with decomposed relative position terms."""

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        nh, hd = self.num_heads, self.head_dim
        # qkv layout: (3, heads, head_dim) along the output features
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, HW, hd)
        rh = _relative_table(self.rel_pos_h, h, h)  # (h, h, hd)
        rw = _relative_table(self.rel_pos_w, w, w)  # (w, w, hd)
        qg = q.reshape(b, nh, h, w, hd)
        bias_h = torch.einsum("bnyxc,ykc->bnyxk", qg, rh)  # (B, nh, h, w, h)
        bias_w = torch.einsum("bnyxc,xkc->bnyxk", qg, rw)  # (B, nh, h, w, w)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, nh, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


def _to_windows(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``(B, H, W, C)`` at bottom/right to multiples of ``ws`` and cut into ``(B*n, ws, ws, C)``."""
    b, h, w, c = x.shape
    ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def _from_windows(x: torch.Tensor, ws: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = x.shape[0] // ((hp // ws) * (wp // ws))
    x = x.view(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, : size[0], : size[1], :]


class ViTBlock(nn.Module):
    """Pre-norm transformer block; ``window_size == 0`` means global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads, window_size if window_size > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = _to_windows(x, self.window_size)
            x = self.attn(x)
            x = _from_windows(x, self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)


class ImageEncoderViT(nn.Module):
    """SAM ViT encoder: ``(B, 3, S, S) -> (B, 256, S/16, S/16)``."""

    def __init__(self, cfg: ViTConfig = VIT_B) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = cfg.img_size
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                0 if i in cfg.global_attn_indexes else cfg.window_size,
                grid,
            )
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, 1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
