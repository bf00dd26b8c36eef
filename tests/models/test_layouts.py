"""Architectures load the published checkpoint layouts by strict key matching."""

from __future__ import annotations

import re

import pytest
import torch

from medsamkit.models import ARCHS, WeightsError, infer_arch, load
from medsamkit.models.configs import ArchSpec, TinyViTConfig, ViTConfig
from medsamkit.models.sam import SamModel
from tests.conftest import MODELS_DOC

requires_docs = pytest.mark.skipif(not MODELS_DOC.is_dir(), reason=f"{MODELS_DOC} not found")


def _listing(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (MODELS_DOC / name).read_text().splitlines():
        m = re.match(r"^(\S+) \(([\d, ]*)\) \w+$", line)
        if m:
            out[m.group(1)] = tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x)
    return out


def _meta_model(spec: ArchSpec) -> SamModel:
    with torch.device("meta"):
        return SamModel(spec)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@requires_docs
@pytest.mark.parametrize(
    "arch, listing", [("litemedsam", "lite_medsam_state_dict.txt"), ("sam_vit_b", "sam_vit_b_state_dict.txt")]
)
def test_layout_equals_published_listing(arch: str, listing: str) -> None:
    expected = _listing(listing)
    assert len(expected) > 300
    assert _shapes(_meta_model(ARCHS[arch])) == expected


@pytest.mark.parametrize(
    "arch, dim, depth, heads, global_blocks",
    [
        ("sam_vit_l", 1024, 24, 16, (5, 11, 17, 23)),
        ("sam_vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    ],
)
def test_vit_l_h_layouts(arch: str, dim: int, depth: int, heads: int, global_blocks: tuple[int, ...]) -> None:
    shapes = _shapes(_meta_model(ARCHS[arch]))
    hd = dim // heads
    assert shapes["image_encoder.pos_embed"] == (1, 64, 64, dim)
    assert shapes["image_encoder.patch_embed.proj.weight"] == (dim, 3, 16, 16)
    assert not any(k.startswith(f"image_encoder.blocks.{depth}.") for k in shapes)
    for i in range(depth):
        size = 127 if i in global_blocks else 27
        assert shapes[f"image_encoder.blocks.{i}.attn.rel_pos_h"] == (size, hd)
        assert shapes[f"image_encoder.blocks.{i}.attn.qkv.weight"] == (3 * dim, dim)
        assert shapes[f"image_encoder.blocks.{i}.mlp.lin1.weight"] == (4 * dim, dim)
    assert shapes["image_encoder.neck.0.weight"] == (256, dim, 1, 1)
    # 14 tensors per block; everything else (neck, prompt encoder, decoder) as in ViT-B
    vit_b = _shapes(_meta_model(ARCHS["sam_vit_b"]))
    assert len(shapes) == len(vit_b) + 14 * (depth - 12)


def test_mobilesam_layout() -> None:
    lite = _shapes(_meta_model(ARCHS["litemedsam"]))
    mob = _shapes(_meta_model(ARCHS["mobilesam"]))
    assert mob["image_encoder.patch_embed.seq.0.c.weight"] == (32, 3, 3, 3)
    assert mob["image_encoder.patch_embed.seq.2.c.weight"] == (64, 32, 3, 3)
    assert lite["image_encoder.patch_embed.seq.0.c.weight"] == (32, 3, 1, 1)
    # MobileSAM's checkpoint also carries TinyViT's unused ImageNet classifier
    assert mob["image_encoder.head.weight"] == (1000, 320)
    assert mob["image_encoder.norm_head.weight"] == (320,)
    assert set(mob) - set(lite) == {
        "image_encoder.head.weight",
        "image_encoder.head.bias",
        "image_encoder.norm_head.weight",
        "image_encoder.norm_head.bias",
    }


def test_real_litemedsam_loads_strictly_and_runs(litemedsam_model) -> None:
    m = litemedsam_model
    assert m.weights.name == "litemedsam"
    assert m.weights.sha256 == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    with torch.inference_mode():
        emb = m.encode(torch.rand(1, 3, 256, 256))
        logits, iou = m.decode(emb, torch.tensor([[[20.0, 30.0], [120.0, 140.0]]]), torch.tensor([[2.0, 3.0]]))
    assert emb.shape == (1, 256, 64, 64)
    assert logits.shape == (1, 4, 256, 256) and iou.shape == (1, 4)
    assert torch.isfinite(logits).all()


# Small configurations with the real module code, for round trips of every family.
SMALL = {
    "sam": ArchSpec(
        "small_sam", ViTConfig(img_size=256, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4), "sam"
    ),
    "medsam": ArchSpec(
        "small_medsam",
        ViTConfig(img_size=256, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4),
        "medsam",
    ),
    "litemedsam": ArchSpec(
        "small_lite",
        TinyViTConfig(
            img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_sizes=(7, 7, 14, 7)
        ),
        "litemedsam",
    ),
    "mobilesam": ArchSpec(
        "small_mobile",
        TinyViTConfig(
            img_size=256,
            stem_kernel=3,
            embed_dims=(16, 32, 48, 64),
            depths=(1, 1, 2, 1),
            num_heads=(1, 1, 2, 2),
            window_sizes=(7, 7, 14, 7),
            classifier_classes=10,
        ),
        "sam",
    ),
}


def _random_model(spec: ArchSpec, seed: int = 0) -> SamModel:
    torch.manual_seed(seed)
    m = SamModel(spec).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (0.02 if p.ndim > 1 else 0.1) + (1.0 if name.endswith("norm.weight") else 0.0))
        for name, b in m.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("family", sorted(SMALL))
def test_round_trip_small_config(family: str, tmp_path) -> None:
    spec = SMALL[family]
    m = _random_model(spec)
    path = tmp_path / f"{family}.pth"
    torch.save(m.state_dict(), path)
    back = load(path, arch=spec)
    s = spec.img_size
    x = torch.rand(1, 3, s, s)
    coords = torch.tensor([[[5.0, 6.0], [s - 10.0, s - 20.0]]])
    labels = torch.tensor([[2.0, 3.0]])
    with torch.inference_mode():
        a = m(x, coords, labels)
        b = back(x, coords, labels)
    g = spec.embed_grid
    assert a[0].shape == (1, 4, 4 * g, 4 * g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert back.weights.sha256 and back.weights.path == path


def test_mismatch_is_one_error_listing_keys(tmp_path) -> None:
    spec = SMALL["litemedsam"]
    sd = _random_model(spec).state_dict()
    sd.pop("mask_decoder.iou_token.weight")
    sd["image_encoder.bogus.weight"] = torch.zeros(3)
    sd["mask_decoder.mask_tokens.weight"] = torch.zeros(5, 256)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        load(path, arch=spec)
    msg = str(e.value)
    assert "missing keys (1): mask_decoder.iou_token.weight" in msg
    assert "unexpected keys (1): image_encoder.bogus.weight" in msg
    assert "mask_decoder.mask_tokens.weight: checkpoint (5, 256) vs model (4, 256)" in msg


def test_wrong_architecture_is_reported(tmp_path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(_random_model(SMALL["sam"]).state_dict(), path)
    with pytest.raises(WeightsError, match="does not match the small_lite layout"):
        load(path, arch=SMALL["litemedsam"])


def test_wrapped_checkpoint_and_inference_of_arch(tmp_path) -> None:
    m = _random_model(SMALL["mobilesam"])
    path = tmp_path / "wrapped.pt"
    torch.save({"model": m.state_dict(), "epoch": 3}, path)
    back = load(path, arch=SMALL["mobilesam"])
    assert torch.equal(back.mask_decoder.iou_token.weight, m.mask_decoder.iou_token.weight)
    assert infer_arch(m.state_dict()).name == "mobilesam"
    assert infer_arch(_random_model(SMALL["litemedsam"]).state_dict()).name == "litemedsam"
    assert infer_arch({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1280)}).name == "sam_vit_h"
    with pytest.raises(WeightsError, match="cannot tell the architecture"):
        infer_arch({"foo": torch.zeros(1)})


def test_corrupt_or_missing_checkpoint(tmp_path) -> None:
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsError, match="could not read checkpoint"):
        load(bad, arch="litemedsam")
    with pytest.raises(WeightsError, match="checkpoint not found"):
        load(tmp_path / "nope.pth", arch="litemedsam")
    with pytest.raises(WeightsError, match="unknown model"):
        load("no_such_model")
    with pytest.raises(WeightsError, match="unknown architecture"):
        load(bad, arch="vit_z")
