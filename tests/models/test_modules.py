"""Building blocks compute what the architecture description says."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medsamkit.models.common import LayerNorm2d
from medsamkit.models.mask_decoder import MaskDecoder
from medsamkit.models.prompt_encoder import PromptEncoder, to_labelled_points
from medsamkit.models.tiny_vit import attention_offset_index
from medsamkit.models.vit import ViTAttention
from tests.models.test_layouts import SMALL, _random_model


def test_layer_norm_2d_is_channel_normalisation() -> None:
    torch.manual_seed(0)
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2)
        ln.bias.normal_()
    x = torch.randn(2, 6, 5, 7)
    mean = x.mean(1, keepdim=True)
    var = ((x - mean) ** 2).mean(1, keepdim=True)
    ref = ln.weight[:, None, None] * (x - mean) / torch.sqrt(var + 1e-6) + ln.bias[:, None, None]
    assert torch.allclose(ln(x), ref, atol=1e-5)


@pytest.mark.parametrize("window, n_offsets", [(7, 49), (14, 196), (2, 4)])
def test_attention_offset_index(window: int, n_offsets: int) -> None:
    n, idx = attention_offset_index(window)
    assert n == n_offsets
    assert idx.shape == (window * window, window * window)
    assert torch.equal(idx, idx.T)  # |dr|, |dc| are symmetric
    assert idx[0, 0] == 0 and int(idx.max()) == n_offsets - 1
    # positions (0,0) and (0,1): offset (0,1) is the second one met in row-major enumeration
    assert idx[0, 1] == 1
    # one index per offset (|dr|, |dc|), and one offset per index
    seen: dict[tuple[int, int], int] = {}
    for a in range(window * window):
        for b in range(window * window):
            off = (abs(a // window - b // window), abs(a % window - b % window))
            assert seen.setdefault(off, int(idx[a, b])) == int(idx[a, b])
    assert len(set(seen.values())) == len(seen) == n_offsets


def test_vit_attention_matches_direct_formula() -> None:
    """Decomposed relative positions: logit(q=(y,x), k=(y',x')) += q.Rh[y-y'] + q.Rw[x-x']."""
    torch.manual_seed(0)
    dim, heads, g = 8, 2, 3
    att = ViTAttention(dim, heads, g)
    with torch.no_grad():
        att.rel_pos_h.normal_()
        att.rel_pos_w.normal_()
    x = torch.randn(1, g, g, dim)
    hd = dim // heads
    qkv = att.qkv(x).reshape(1, g * g, 3, heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (1, N, heads, hd)
    out = torch.zeros(1, g * g, heads, hd)
    for h in range(heads):
        logits = torch.zeros(g * g, g * g)
        for i in range(g * g):
            yi, xi = divmod(i, g)
            for j in range(g * g):
                yj, xj = divmod(j, g)
                logits[i, j] = (q[0, i, h] @ k[0, j, h]) / math.sqrt(hd)
                logits[i, j] += q[0, i, h] @ att.rel_pos_h[yi - yj + g - 1] + q[0, i, h] @ att.rel_pos_w[xi - xj + g - 1]
        out[0, :, h] = torch.softmax(logits, -1) @ v[0, :, h]
    ref = att.proj(out.reshape(1, g, g, dim))
    assert torch.allclose(att(x), ref, atol=1e-5)


def test_channels_last_upscaling_equals_transposed_convolutions() -> None:
    torch.manual_seed(0)
    md = MaskDecoder().eval()
    with torch.no_grad():
        for p in md.output_upscaling.parameters():
            p.normal_(0, 0.05)
    src = torch.randn(3, 256, 8, 8)
    hyper = torch.randn(3, 4, 32)
    up = md.output_upscaling(src)
    ref = (hyper @ up.flatten(2)).reshape(3, 4, 32, 32)
    new = md.upscale_and_project(src.flatten(2).transpose(1, 2), hyper, (8, 8))
    assert torch.allclose(new, ref, atol=1e-5)


def test_prepared_decoding_equals_plain_decoding() -> None:
    m = _random_model(SMALL["litemedsam"], seed=1)
    g = SMALL["litemedsam"].embed_grid
    emb = torch.randn(1, 256, g, g)
    coords = torch.tensor([[[3.0, 4.0], [40.0, 50.0]], [[10.0, 12.0], [0.0, 0.0]]])
    labels = torch.tensor([[2.0, 3.0], [1.0, -1.0]])
    with torch.inference_mode():
        a = m.decode(emb, coords, labels)
        b = m.decode_prepared(m.prepare_decoder(emb), coords, labels)
        one = m.decode(emb, coords[1:], labels[1:])
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-6)
    assert torch.allclose(a[0][1:], one[0], atol=1e-5)  # prompts in a batch do not interact


def test_labelled_points_equal_sam_interface() -> None:
    torch.manual_seed(0)
    pe = PromptEncoder(input_image_size=(256, 256))
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_()
    pts = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    lab = torch.tensor([[1, 0]])
    box = torch.tensor([[5.0, 6.0, 100.0, 120.0]])
    sparse, dense = pe((pts, lab), box, None)

    # by hand: Fourier features of (p + 0.5) / size, plus the label's embedding
    def enc(xy):
        c = (xy + 0.5) / 256.0
        c = (2 * c - 1) @ pe.pe_layer.positional_encoding_gaussian_matrix * 2 * math.pi
        return torch.cat([torch.sin(c), torch.cos(c)], -1)

    assert torch.allclose(sparse[0, 0], enc(pts[0, 0]) + pe.point_embeddings[1].weight[0], atol=1e-5)
    assert torch.allclose(sparse[0, 1], enc(pts[0, 1]) + pe.point_embeddings[0].weight[0], atol=1e-5)
    assert torch.allclose(sparse[0, 2], enc(box[0, :2]) + pe.point_embeddings[2].weight[0], atol=1e-5)
    assert torch.allclose(sparse[0, 3], enc(box[0, 2:]) + pe.point_embeddings[3].weight[0], atol=1e-5)
    assert dense.shape == (1, 256, 64, 64) and torch.equal(dense[0, :, 0, 0], pe.no_mask_embed.weight[0])
    # points without a box get one padding point
    sparse2, _ = pe((pts, lab), None, None)
    assert sparse2.shape == (1, 3, 256)
    assert torch.allclose(sparse2[0, 2], pe.not_a_point_embed.weight[0])
    coords, labels = to_labelled_points((pts, lab), None)
    assert labels.tolist() == [[1.0, 0.0, -1.0]]


def test_mask_prompt_changes_dense_embedding() -> None:
    pe = PromptEncoder(input_image_size=(256, 256))
    masks = torch.randn(2, 1, 256, 256)
    dense = pe.embed_dense(masks, 2)
    assert dense.shape == (2, 256, 64, 64)
    assert not torch.allclose(dense[0], dense[1])


def test_image_pe_grid_is_pixel_centres() -> None:
    pe = PromptEncoder(input_image_size=(256, 256))
    grid = pe.dense_pe()[0]  # (C, 64, 64)
    # the encoding at grid cell (row 3, col 5) equals the encoding of point ((5+.5)/64, (3+.5)/64) in [0,1]
    c = torch.tensor([5.5 / 64, 3.5 / 64])
    assert torch.allclose(grid[:, 3, 5], pe.pe_layer.encode(c), atol=1e-5)
    assert F.cosine_similarity(grid[:, 3, 5], grid[:, 5, 3], dim=0) < 0.99


@pytest.mark.parametrize("with_mask", [False, True])
def test_fast_decoder_attention_equals_standard(litemedsam_model, with_mask: bool) -> None:
    """The re-associated attention used at inference computes SAM's decoder up to float rounding."""
    m = litemedsam_model
    torch.manual_seed(0)
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.tensor([[[20.0, 30.0], [150.0, 170.0], [80.0, 90.0]], [[60.0, 60.0], [200.0, 210.0], [0.0, 0.0]]])
    labels = torch.tensor([[2.0, 3.0, 1.0], [2.0, 3.0, -1.0]])
    mask = torch.randn(2, 1, 256, 256) if with_mask else None
    with torch.inference_mode():
        std = m.decode(emb, coords, labels, mask)
        fast = m.decode(emb, coords, labels, mask, fast=True)
        prepared = m.decode_prepared(m.prepare_decoder(emb), coords, labels, fast=True) if not with_mask else fast
    scale = float(std[0].abs().max())
    assert float((std[0] - fast[0]).abs().max()) < 1e-5 * max(scale, 1.0) * 10
    assert float((std[1] - fast[1]).abs().max()) < 1e-5
    assert float((std[0] - prepared[0]).abs().max()) < 1e-4
