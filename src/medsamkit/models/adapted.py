"""Models adapted by ``medsamkit finetune``: the adapter file format and loading an adapted model for inference.

An adapter file (``RUN_DIR/adapter.pt``, format :data:`ADAPTER_FORMAT`) holds **only the trained parameters** of a
run, its mode (:data:`MODES`), the structure options of the mode and the identity of its base model (registry name
or checkpoint, architecture, weight digest). :func:`load_adapted` rebuilds the adapted model on top of that base:
a ``SamModel`` for the prompted modes (``medsamkit segment --adapter``, ``batch segment --adapter``,
``serve --adapter``, or ``models.load(..., adapter=)``) or an :class:`~medsamkit.models.autosam.AutoSam` for
AutoSAM runs (``medsamkit autoseg``). Files are written by :mod:`medsamkit.train.finetune`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import torch
from torch import nn

from ..errors import FileInputError, MissingFileError, OptionError

if TYPE_CHECKING:
    from .autosam import AutoSam
    from .configs import ArchSpec
    from .sam import SamModel

#: what ``medsamkit finetune`` trains: the modes an adapter file may hold
MODES = ("decoder", "full", "adapter", "lora", "autosam")
ADAPTER_FORMAT = "medsamkit.finetune/1"
ADAPTER_FILE = "adapter.pt"


# ------------------------------------------------------------------------------------------------ base models


def arch_to_dict(spec: ArchSpec) -> dict[str, Any]:
    """An :class:`~medsamkit.models.configs.ArchSpec` as plain JSON-able data (see :func:`arch_from_dict`)."""
    from .configs import ViTConfig

    enc = spec.encoder
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(enc).items()}
    return {
        "name": spec.name,
        "pipeline": spec.pipeline,
        "encoder": "vit" if isinstance(enc, ViTConfig) else "tiny_vit",
        "config": cfg,
    }


def arch_from_dict(data: Mapping[str, Any]) -> ArchSpec:
    """The :class:`~medsamkit.models.configs.ArchSpec` written by :func:`arch_to_dict`; OptionError when ``data`` is
    not one."""
    from .configs import ArchSpec, TinyViTConfig, ViTConfig

    try:
        cls = {"vit": ViTConfig, "tiny_vit": TinyViTConfig}[data["encoder"]]
        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(data["config"]).items()}
        return ArchSpec(str(data["name"]), cls(**cfg), data["pipeline"])
    except (KeyError, TypeError) as e:
        raise OptionError(f"not an architecture description: {e}") from e


def load_base(
    model: str | os.PathLike[str] | nn.Module = "litemedsam",
    checkpoint: str | os.PathLike[str] | None = None,
    size: int | None = None,
) -> SamModel:
    """The base ``SamModel`` (eval mode, CPU): a registry name or checkpoint path (``models.load``), or a module
    (used as is). size: rebuild a TinyViT model for an ``S x S`` input (same weights); ValueError for ViT models."""
    from .configs import TinyViTConfig
    from .loading import WeightsRef, load
    from .sam import SamModel

    if isinstance(model, nn.Module):
        if not (hasattr(model, "image_encoder") and hasattr(model, "mask_decoder") and hasattr(model, "spec")):
            raise OptionError(f"model must be a SamModel, got {type(model).__name__}")
        net = cast("SamModel", model)  # a SamModel or a module with its parts (checked above)
    else:
        net = load(model, checkpoint=checkpoint)
    spec = net.spec
    if size is None or int(size) == spec.img_size:
        return net
    if not isinstance(spec.encoder, TinyViTConfig):
        raise OptionError(f"size {size}: only TinyViT models ({spec.name} is a ViT) can be rebuilt for another input size")
    enc = replace(spec.encoder, img_size=int(size))
    new_spec = replace(spec, name=f"{spec.name.split('@')[0]}@{int(size)}", encoder=enc)
    resized = SamModel(new_spec)
    resized.load_state_dict(net.state_dict(), strict=True)
    resized.eval()
    ref = getattr(net, "weights", None)
    if ref is not None:
        resized.weights = WeightsRef(ref.name, new_spec, ref.path, ref.sha256)
    return resized


def weights_digest(model: nn.Module) -> str:
    """sha256 of a module's state (names, shapes, bytes): the identity of a base model an adapter file needs."""
    from .backends.onnx import state_dict_digest

    return state_dict_digest(model)


# ------------------------------------------------------------------------------------------------ adapter files


def read_adapter(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An adapter file (``adapter.pt``, or a run folder holding one), read with ``weights_only=True``."""
    p = Path(path)
    if p.is_dir():
        p = p / ADAPTER_FILE
    if not p.is_file():
        raise MissingFileError(f"adapter file not found: {p} (train one with `medsamkit finetune`)")
    try:
        doc = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or foreign files
        raise FileInputError(f"cannot read {p}: {' '.join(str(e).split())[:200]}") from e
    if not isinstance(doc, dict) or doc.get("format") != ADAPTER_FORMAT:
        raise FileInputError(f"{p} is not a medsamkit adapter file (format {ADAPTER_FORMAT})")
    doc["path"] = str(p)
    return doc


def build_base_for(doc: Mapping[str, Any], base: str | os.PathLike[str] | nn.Module | None) -> SamModel:
    """The base ``SamModel`` of an adapter file (:func:`read_adapter`): the one it names, or ``base`` (a registry
    name, checkpoint path or ``SamModel``, copied), at the file's input size; ValueError when its weight digest
    is not the file's."""
    info = doc["base"]
    spec = arch_from_dict(info["arch"])
    if base is None:
        if info["model"] == "in-memory":
            raise OptionError(f"{doc['path']} was trained on an in-memory model: pass it as base=")
        sam = load_base(info["model"], info.get("checkpoint"), spec.img_size)
    elif isinstance(base, nn.Module):
        sam = copy.deepcopy(load_base(base, None, spec.img_size))
    else:
        sam = load_base(base, None, spec.img_size)
    digest = weights_digest(sam)
    if digest != info["digest"]:
        raise OptionError(
            f"{doc['path']} was trained on other base weights ({info['model']}, digest {info['digest'][:12]}...) "
            f"than the model given (digest {digest[:12]}...)"
        )
    return sam


def _load_into(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    bad = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if bad or wrong:
        raise OptionError(f"{what}: {len(bad)} unknown key(s) {bad[:3]}, {len(wrong)} shape mismatch(es) {wrong[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


@overload
def load_adapted(
    adapter: str | os.PathLike[str],
    base: str | os.PathLike[str] | nn.Module | None = None,
    *,
    merge: bool = True,
    device: str | torch.device = "cpu",
    prompted: Literal[True],
) -> SamModel: ...


@overload
def load_adapted(
    adapter: str | os.PathLike[str],
    base: str | os.PathLike[str] | nn.Module | None = None,
    *,
    merge: bool = True,
    device: str | torch.device = "cpu",
    prompted: bool = False,
) -> SamModel | AutoSam: ...


def load_adapted(
    adapter: str | os.PathLike[str],
    base: str | os.PathLike[str] | nn.Module | None = None,
    *,
    merge: bool = True,
    device: str | torch.device = "cpu",
    prompted: bool = False,
) -> SamModel | AutoSam:
    """The adapted model of an adapter file (or run folder): the base (named in the file, or ``base``: a registry
    name, checkpoint path or ``SamModel``, copied) with the mode's structure and the trained parameters, in eval
    mode on ``device``. The base's weight digest must match the file's (ValueError otherwise).

    Prompted modes return a ``SamModel`` usable by ``Predictor(model, backend="torch")``; its ``weights`` name
    ``<base>+<mode>`` and the adapter file's sha256 (so embedding caches never mix it with the base), its
    architecture is named ``<arch>+<mode>`` (what ``medsamkit segment`` records). merge: fold
    LoRA updates into the weights (any backend; equal to the unmerged model up to float rounding). AutoSAM files
    return an :class:`~medsamkit.models.autosam.AutoSam` (ValueError with ``prompted=True``: the caller needs a
    prompted model).
    """
    from .loading import WeightsRef
    from .weights import file_digest

    doc = read_adapter(adapter)
    mode = doc.get("mode")
    if mode not in MODES:
        raise OptionError(f"{doc['path']}: unknown mode {mode!r}")
    if prompted and mode == "autosam":
        raise OptionError(f"{doc['path']} is an AutoSAM run: it segments without prompts (use `medsamkit autoseg --autosam`)")
    sam = build_base_for(doc, base)
    structure = doc.get("structure") or {}
    generator = None
    if mode == "adapter":
        from .adapters import AdapterConfig, add_adapters

        add_adapters(sam, AdapterConfig.from_dict(structure["adapter"]))
    elif mode == "lora":
        from .lora import LoraConfig, add_lora

        add_lora(sam, LoraConfig.from_dict(structure["lora"]))
    elif mode == "autosam":
        from .autosam import AutoSamConfig, PromptGenerator

        generator = PromptGenerator(AutoSamConfig.from_dict(structure["autosam"]))
        if doc.get("generator") is None:
            raise OptionError(f"{doc['path']}: an autosam file without generator weights")
        _load_into(generator, doc["generator"], f"{doc['path']} (generator)")
    _load_into(sam, doc.get("sam") or {}, doc["path"])
    if mode == "lora" and merge:
        from .lora import merge_lora

        merge_lora(sam)
    base_name = str(doc["base"]["model"])
    if mode != "autosam":
        # a name that says what the weights are: records (``medsamkit segment`` sidecars) and embedding-cache keys
        sam.spec = replace(sam.spec, name=f"{sam.spec.name}+{mode}")
        sam.weights = WeightsRef(f"{Path(base_name).name}+{mode}", sam.spec, Path(doc["path"]), file_digest(doc["path"]))
    dev = torch.device(device)
    if generator is not None:
        from .autosam import AutoSam

        out = AutoSam(sam, generator).to(dev).eval()
        out.adapter_info = {k: doc.get(k) for k in ("mode", "base", "epoch", "val_dice", "path")}
        return out
    sam.to(dev).eval()
    sam.adapter_info = {k: doc.get(k) for k in ("mode", "base", "epoch", "val_dice", "path")}
    return sam
