"""A small adapter file on the real LiteMedSAM, made without training, for the inference-side tests
(``models.load(adapter=)``, ``batch segment --adapter``, ``serve --adapter``)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch


def write_inverting_adapter(path: Path, base: torch.nn.Module) -> Path:
    """A ``decoder``-mode adapter file for ``base`` (the registry's ``litemedsam``) whose single-mask output is
    the base's logits negated (the last layer of hypernetwork 0 flipped): a box gives the complement of the base
    model's mask, so a result shows which model made it."""
    from medsamkit.models.adapted import arch_to_dict, weights_digest
    from medsamkit.train.finetune import FinetuneOptions, build_model, save_adapter

    opts = FinetuneOptions(mode="decoder")
    net = build_model(copy.deepcopy(base), opts)
    last = net.sam.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
    with torch.no_grad():
        last.weight.neg_()
        last.bias.neg_()
    info = {"model": "litemedsam", "checkpoint": None, "digest": weights_digest(base), "arch": arch_to_dict(base.spec)}
    return save_adapter(path, net, opts, info)
