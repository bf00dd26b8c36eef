"""Adapters, LoRA and the AutoSAM prompt generator on tiny random SAM models (TinyViT and ViT encoders)."""

from __future__ import annotations

import copy

import pytest
import torch

from medsamkit.models.adapters import (
    Adapter,
    AdapterConfig,
    adapter_parameter_names,
    add_adapters,
    count_adapter_parameters,
    remove_adapters,
)
from medsamkit.models.autosam import AutoSam, AutoSamConfig, PromptGenerator, autosam_config_for
from medsamkit.models.lora import LoraConfig, add_lora, count_lora_parameters, lora_parameter_names, merge_lora
from medsamkit.models.tiny_vit import TinyViTBlock
from medsamkit.models.transformer import TwoWayBlock
from medsamkit.models.vit import ViTBlock
from tests.models.test_layouts import SMALL, _random_model

FAMILIES = ("litemedsam", "sam")  # TinyViT and ViT encoders


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread, the machine is shared


def _inputs(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    s = model.img_size
    x = torch.rand(1, 3, s, s, generator=g)
    coords = torch.tensor([[[0.1 * s, 0.2 * s], [0.7 * s, 0.8 * s]]])
    labels = torch.tensor([[2.0, 3.0]])
    return x, coords, labels


@torch.no_grad()
def _outputs(model, x, coords, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embedding, decoder logits of the training path, logits of the inference ("fast", prepared) path)."""
    emb = model.encode(x)
    slow, _ = model.decode(emb, coords, labels)
    fast, _ = model.decode_prepared(model.prepare_decoder(emb), coords, labels, fast=True)
    return emb, slow, fast


def _reference(family: str):
    """A tiny random ``family`` model, its inputs ``(x, coords, labels)`` and its :func:`_outputs` on them."""
    model = _random_model(SMALL[family])
    x, coords, labels = _inputs(model)
    return model, (x, coords, labels), _outputs(model, x, coords, labels)


def _perturb(model, names: list[str], seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    wanted = set(names)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in wanted:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_initialised_adapters_leave_outputs_unchanged(family: str) -> None:
    base, (x, c, lab), ref = _reference(family)
    model = copy.deepcopy(base)
    names = add_adapters(model)
    assert names and all(".adapter_attn." in n or ".adapter_mlp." in n for n in names)
    out = _outputs(model, x, c, lab)
    for a, b in zip(ref, out):
        assert torch.equal(a, b)  # exactly: up-projections start at zero
    # every encoder block and both decoder blocks carry two adapters; base keys keep their names
    blocks = [m for m in model.modules() if isinstance(m, (TinyViTBlock, ViTBlock, TwoWayBlock))]
    assert blocks and all(hasattr(b, "adapter_attn") and hasattr(b, "adapter_mlp") for b in blocks)
    assert set(base.state_dict()) <= set(model.state_dict())
    assert set(model.state_dict()) - set(base.state_dict()) == set(names)
    assert sum(p.numel() for n, p in model.named_parameters() if n in set(names)) == count_adapter_parameters(base)


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_adapters_change_outputs_on_both_decoder_paths(family: str) -> None:
    model, (x, c, lab), ref = _reference(family)
    names = add_adapters(model, AdapterConfig(ratio=0.5))
    _perturb(model, names)
    emb, slow, fast = _outputs(model, x, c, lab)
    assert not torch.equal(emb, ref[0]) and not torch.equal(slow, ref[1])
    # the inference engines' re-associated decoder goes through the same adapters
    assert torch.allclose(slow, fast, atol=1e-4)
    # a deep copy keeps working adapters (the hooks follow the copied modules)
    twin = copy.deepcopy(model)
    assert torch.equal(_outputs(twin, x, c, lab)[1], slow)
    remove_adapters(model)
    assert not adapter_parameter_names(model)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, x, c, lab), ref))


def test_adapter_placement_and_options() -> None:
    a = Adapter(8, ratio=0.25, skip=True)
    assert a.down.out_features == 2 and torch.count_nonzero(a.up.weight) == 0
    x = torch.randn(3, 8)
    assert torch.equal(a(x), x) and torch.equal(Adapter(8, skip=False)(x), torch.zeros(3, 8))
    model = _random_model(SMALL["litemedsam"])
    enc_only = count_adapter_parameters(model, AdapterConfig(decoder=False))
    dec_only = count_adapter_parameters(model, AdapterConfig(encoder=False))
    assert enc_only + dec_only == count_adapter_parameters(model)
    add_adapters(model, AdapterConfig(encoder=False))
    assert all(n.startswith("mask_decoder.") for n in adapter_parameter_names(model))
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model)
    for bad in ({"ratio": 0}, {"ratio": 5}, {"mlp_scale": 0}, {"encoder": False, "decoder": False}):
        with pytest.raises(ValueError):
            AdapterConfig(**bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_zero_init_exact_then_merge(family: str) -> None:
    base, (x, c, lab), ref = _reference(family)
    model = copy.deepcopy(base)
    names = add_lora(model, LoraConfig(rank=2, alpha=4.0))
    assert names and all(n.endswith((".lora_a", ".lora_b")) for n in names)
    assert sum(p.numel() for n, p in model.named_parameters() if n in set(names)) == count_lora_parameters(
        base, LoraConfig(rank=2)
    )
    assert any(".qkv." in n for n in names) and any(".k_proj." in n for n in names)
    assert all(torch.equal(a, b) for a, b in zip(ref, _outputs(model, x, c, lab)))  # B = 0: the base exactly
    _perturb(model, [n for n in names if n.endswith("lora_b")])
    emb, slow, fast = _outputs(model, x, c, lab)
    assert not torch.equal(slow, ref[1])
    # the fast decoder multiplies by the projection weights directly: it must see the update too
    assert torch.allclose(slow, fast, atol=1e-4)
    merge_lora(model)
    assert not lora_parameter_names(model) and set(model.state_dict()) == set(base.state_dict())
    merged = _outputs(model, x, c, lab)
    assert torch.allclose(merged[0], emb, atol=1e-5) and torch.allclose(merged[1], slow, atol=1e-4)
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="exceeds"):
        add_lora(_random_model(SMALL[family]), LoraConfig(rank=10_000))


@pytest.mark.parametrize("family", FAMILIES)
def test_autosam_generator_shapes_and_dense_only_start(family: str) -> None:
    sam = _random_model(SMALL[family])
    x, _, _ = _inputs(sam)
    g = sam.spec.embed_grid
    cfg = autosam_config_for(sam, num_sparse=3)
    gen = PromptGenerator(cfg, sam.prompt_encoder.no_mask_embed.weight)
    with torch.no_grad():
        emb = sam.encode(x)
        sparse, dense = gen(x, emb)
    assert sparse.shape == (1, 3, 256) and dense.shape == (1, 256, g, g)
    # the dense head starts at zero: the dense prompt is SAM's "no mask" embedding exactly
    assert torch.equal(dense, sam.prompt_encoder.embed_dense(None, 1).expand_as(dense))
    # with no sparse token, an untrained AutoSAM is SAM's decoder with an empty prompt
    model = AutoSam(sam, PromptGenerator(autosam_config_for(sam, num_sparse=0), sam.prompt_encoder.no_mask_embed.weight))
    with torch.no_grad():
        logits = model(x)
        empty = torch.zeros(1, 0, 256)
        ref, _ = sam.mask_decoder.predict_all(
            emb, sam.prompt_encoder.dense_pe(), empty, sam.prompt_encoder.embed_dense(None, 1), torch.tensor([0])
        )
    assert logits.shape == (1, 1, 4 * g, 4 * g) and torch.equal(logits, ref)
    # embedding-only generators need no image
    emb_only = PromptGenerator(autosam_config_for(sam, use_image=False))
    assert emb_only(None, emb)[1].shape == (1, 256, g, g)
    with pytest.raises(ValueError, match="reads the image"):
        gen(None, emb)


def test_autosam_config_checks() -> None:
    cfg = AutoSamConfig()
    assert AutoSamConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="power of two"):
        AutoSamConfig(input_size=200)
    with pytest.raises(ValueError, match="widths"):
        AutoSamConfig(widths=(32, 64))
    with pytest.raises(ValueError, match="use_image"):
        AutoSamConfig(use_image=False, use_embedding=False)


def test_litemedsam_adapter_share(litemedsam_model) -> None:
    """MSA's budget on the bundled model: the adapters are a few percent of LiteMedSAM's parameters."""
    total = sum(p.numel() for p in litemedsam_model.parameters())
    n_adapter = count_adapter_parameters(litemedsam_model)
    n_lora = count_lora_parameters(litemedsam_model)
    assert n_adapter == 528_160 and 0.04 < n_adapter / total < 0.06
    assert n_lora == 91_648 and n_lora / total < 0.01
