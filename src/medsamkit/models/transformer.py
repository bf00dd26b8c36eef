"""SAM's two-way transformer (tokens <-> image embedding) used by the mask decoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections to ``dim / downsample_rate`` features."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, self.internal_dim)
        self.k_proj = nn.Linear(dim, self.internal_dim)
        self.v_proj = nn.Linear(dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on already projected ``(B, n, internal_dim)`` inputs; a batch of 1 broadcasts against B."""
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        attn = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])), dim=-1)
        out = attn @ v  # (B, heads, n, head_dim)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    # -- the same attention, re-associated for few tokens against many image positions ----------------------
    # With T tokens (5 output tokens + the prompt points, typically 7) and M = 64*64 image positions, the
    # standard form projects all M positions to the 128-dim internal space (and back). Moving the token side
    # through the projection matrices instead needs heads*T (= 56 for T = 7) columns rather than 128 per
    # image position: about half the arithmetic, identical maths up to float rounding. SAM's decoder is used
    # this way at inference (``fast=True``); training keeps the standard form.

    def _per_head(self, w: torch.Tensor) -> torch.Tensor:
        """A projection weight ``(internal_dim, C)`` as ``(heads, head_dim, C)``."""
        return w.reshape(self.num_heads, -1, w.shape[-1])

    def attend_tokens_to_image(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        """``forward(q_in, k_in, v_in)`` for few queries ``(B, T, C)`` over many keys/values ``(B or 1, M, C)``.

        logits_h = (q_h Wk_h) k_in^T (the key bias adds a constant per query and cancels in the softmax);
        output_h = (a_h v_in) Wv_h^T + bv_h (softmax rows sum to one)."""
        h = self.num_heads
        b, t, c = q_in.shape
        q = self.q_proj(q_in).reshape(b, t, h, -1)  # (B, T, H, d)
        d = q.shape[-1]
        qk = torch.einsum("bthd,hdc->bhtc", q, self._per_head(self.k_proj.weight)).reshape(b, h * t, c)
        attn = torch.softmax((qk @ k_in.transpose(1, 2)) * (1.0 / math.sqrt(d)), dim=-1)  # (B, H*T, M)
        av = (attn @ v_in).reshape(b, h, t, c)  # (B, H, T, C)
        out = torch.einsum("bhtc,hdc->bthd", av, self._per_head(self.v_proj.weight)) + self.v_proj.bias.reshape(h, d)
        return self.out_proj(out.reshape(b, t, h * d))

    def attend_image_to_tokens(
        self,
        q_in: torch.Tensor | None,
        k_in: torch.Tensor,
        v_in: torch.Tensor,
        q_projected: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward(q_in, k_in, v_in)`` for many queries ``(B or 1, M, C)`` over few keys/values ``(B, T, C)``.

        logits_h = q_in (Wq_h^T k_h^T) + bq_h k_h^T; out = sum_h a_h (v_h Wo_h^T) + bo, so neither the M
        queries nor the M outputs pass through a 128-dim projection. ``q_projected`` ``(B or 1, M, internal)``:
        the queries already projected (precomputed per image), used instead of ``q_in``."""
        h = self.num_heads
        b, t, c = k_in.shape
        k = self.k_proj(k_in).reshape(b, t, h, -1)  # (B, T, H, d)
        d = k.shape[-1]
        if q_projected is not None:
            qp = self._heads(q_projected)  # (B, H, M, d)
            logits = (qp @ k.permute(0, 2, 3, 1)).permute(0, 2, 1, 3)  # (B, M, H, T)
        else:
            assert q_in is not None
            kq = torch.einsum("bthd,hdc->bcht", k, self._per_head(self.q_proj.weight)).reshape(b, c, h * t)
            bias = torch.einsum("bthd,hd->bht", k, self.q_proj.bias.reshape(h, d)).reshape(b, 1, h * t)
            logits = (q_in @ kq + bias).reshape(-1, q_in.shape[1], h, t)
        attn = torch.softmax(logits * (1.0 / math.sqrt(d)), dim=-1)  # (B, M, H, T)
        v = self.v_proj(v_in).reshape(b, t, h, d)
        wo = self.out_proj.weight.reshape(-1, h, d)  # (C_out, H, d)
        vo = torch.einsum("bthd,ohd->bhto", v, wo).reshape(b, h * t, -1)  # (B, H*T, C_out)
        return attn.flatten(2) @ vo + self.out_proj.bias


class TwoWayBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_projections(self, keys: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The three projections of the image side that do not depend on the prompt tokens:
        (token->image keys, token->image values, image->token queries), each ``(B, h*w, dim/2)``."""
        k = keys + key_pe
        return (
            self.cross_attn_token_to_image.k_proj(k),
            self.cross_attn_token_to_image.v_proj(keys),
            self.cross_attn_image_to_token.q_proj(k),
        )

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        projections: tuple[torch.Tensor, ...] | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries ``(N, T, C)``, keys ``(N or 1, h*w, C)``; ``projections`` = :meth:`image_projections` of
        these keys when already computed (they are shared by every prompt of an image); ``fast``: use the
        re-associated cross-attentions (same maths, fewer operations for few tokens)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        t2i = self.cross_attn_token_to_image
        i2t = self.cross_attn_image_to_token
        if fast and projections is None:
            k = keys + key_pe
            queries = self.norm2(queries + t2i.attend_tokens_to_image(queries + query_pe, k, keys))
            queries = self.norm3(queries + self.mlp(queries))
            keys = self.norm4(keys + i2t.attend_image_to_tokens(k, queries + query_pe, queries))
            return queries, keys
        tk, tv, iq = projections if projections is not None else self.image_projections(keys, key_pe)
        queries = self.norm2(queries + t2i.attend(t2i.q_proj(queries + query_pe), tk, tv))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        if fast:
            keys = self.norm4(keys + i2t.attend_image_to_tokens(None, q, queries, q_projected=iq))
        else:
            keys = self.norm4(keys + i2t.attend(iq, i2t.k_proj(q), i2t.v_proj(queries)))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, num_heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        tokens: torch.Tensor,
        first_projections: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image ``(N or 1, C, h, w)``, image_pe ``(1, C, h, w)``, tokens ``(N, T, C)`` ->
        (tokens ``(N, T, C)``, image tokens ``(N, h*w, C)``).

        ``first_projections``: the first layer's :meth:`TwoWayBlock.image_projections` of this image, when
        precomputed once for many prompts."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        return self.forward_tokens(keys, key_pe, tokens, first_projections)

    def forward_tokens(
        self,
        keys: torch.Tensor,
        key_pe: torch.Tensor,
        tokens: torch.Tensor,
        first_projections: tuple[torch.Tensor, ...] | None = None,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the image side already as tokens: keys ``(N or 1, h*w, C)``, key_pe
        ``(1, h*w, C)`` (row-major over the grid). ``fast``: see :meth:`TwoWayBlock.forward`."""
        queries = tokens
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, tokens, key_pe, first_projections if i == 0 else None, fast)
        final = self.final_attn_token_to_image
        if fast:
            attn = final.attend_tokens_to_image(queries + tokens, keys + key_pe, keys)
        else:
            attn = final(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys
