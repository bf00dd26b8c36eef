"""Adapting a SAM-family model to a labelled dataset: five modes, prompt sampling, cached embeddings, evaluation.

:func:`finetune` splits a dataset (``run_dir/split.json``, the same :func:`~medsamkit.data.split_cases` as
the U-Net, so a fixed ``split_seed`` gives both the same test cases), trains through
:func:`medsamkit.train.loop.fit` and writes ``run_dir/adapter.pt``: **only the trained parameters** of the best
epoch, loaded on top of the base checkpoint by :func:`load_adapted` (``medsamkit segment --adapter``) or, for
AutoSAM, :func:`load_autosam` (``medsamkit autoseg``).

Modes (:data:`MODES`); the prompt encoder is always frozen, BatchNorm layers always use their stored statistics:

* ``decoder``: the mask decoder (MedSAM's decoder-only recipe);
* ``full``: image encoder + mask decoder (MedSAM's recipe);
* ``adapter``: bottleneck adapters in every encoder block and the decoder's two-way transformer
  (:mod:`medsamkit.models.adapters`), base frozen;
* ``lora``: low-rank updates of the attention projections (:mod:`medsamkit.models.lora`), base frozen;
* ``autosam``: a prompt generator (:mod:`medsamkit.models.autosam`) replaces the prompts; SAM frozen (optionally
  the decoder trained too). Trained and evaluated without any prompt, on the union of the target labels.

In ``decoder`` and ``full`` mode the IoU-prediction head and the three multimask hypernetworks stay frozen: the loss
only sees the single-mask output (output 0), so they would receive no gradient (and weight decay alone would move them).

**Samples.** Every image (2D case, or an axial slice of a 3D case that holds the target: ``case@z``; the volume's
intensity preset is fitted on the whole volume) gives one sample per **object**: each label value present
(``objects="label"``, the evaluation's ``box`` protocol) or each connected component (``"component"``); objects with
fewer than ``min_pixels`` pixels are skipped. Pictures are made as for the evaluation (the ``auto`` intensity
preset) and fed through the model family's own pipeline (:mod:`medsamkit.preprocess.transforms`), exactly as
:class:`~medsamkit.predict.Predictor` does at inference. Targets are the object masks mapped into the model-input
frame (nearest neighbour onto the resized image, zero padding) at the low-res logit size.

**Prompts**, sampled on the fly in the model-input frame: ``box`` (the object's tight box, each side moved outwards
by a random 0..``bbox_shift`` pixels, MedSAM's jitter; 5 px at LiteMedSAM's 256 input), ``points``
(``num_points`` random foreground pixels + SAM's padding point) or ``mixed`` (box or points per batch, p = 0.5).
Validation uses the tight box (``points``: fixed random points). Draws are seeded by (seed, epoch, item).

**Augmentation** (training items, when the encoder runs in the step): MONAI flips along both axes (p = 0.5 each),
a rotation by k x 90 degrees (p = 0.5), a gamma contrast change in [0.7, 1.5] (p = 0.3) and Gaussian noise of
sd 0.02 (p = 0.2) on the picture before the model's preprocessing (min-max normalisation would cancel a plain
intensity scale or shift).

**Cached embeddings** (``cache_embeddings=DIR``, modes ``decoder`` and ``autosam``, whose image encoder is frozen):
every train/val picture is encoded once by the base model and stored in ``DIR`` under a content key (weights,
pipeline, input size, picture bytes: :func:`medsamkit.predict.cache.embedding_key`, shared with ``medsamkit segment
--embedding-cache``); training then never runs the encoder, and the pictures are not augmented. Without a cache,
frozen-encoder modes still encode the validation pictures only once (in memory).

**Distributed**: under ``torchrun`` every rank joins a gloo (CPU) / NCCL (CUDA) group, the model is wrapped in
``DistributedDataParallel`` and each rank trains on its share of every epoch; rank 0 encodes the cache and writes
every file.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from .._files import atomic_write, atomic_write_text
from .._runs import describe_changes
from ..data import Case, Dataset, Split, load_case, run_split
from ..errors import FileInputError, MissingFileError, OptionError
from ..metrics.torch_overlap import segmentation_dice
from ..models.adapted import (  # noqa: F401 - the adapter file's names, also importable from here
    ADAPTER_FILE,
    ADAPTER_FORMAT,
    MODES,
    arch_from_dict,
    arch_to_dict,
    build_base_for,
    load_adapted,
    load_base,
    read_adapter,
    weights_digest,
)
from ..models.checkpoint import load_checkpoint
from ..predict.autoseg import AutoSegmentation, AutoSegmenter, base_predictor, load_autosam  # noqa: F401
from ..preprocess.picture import model_picture, volume_pictures
from .data import SPLITS, each_case, open_dataset, split_part
from .distributed import dist_info, init_distributed, make_loader, resolve_device, shutdown_distributed, wrap_ddp
from .loop import FitResult, TrainConfig, fit, seed_everything

log = logging.getLogger(__name__)

PROMPTS = ("box", "points", "mixed")
OBJECTS = ("label", "component")
AUTOSAM_INPUTS = ("image", "embedding", "both")
SUMMARY_FILE = "finetune.json"
#: modes whose image encoder is the base model's (their embeddings can be cached)
FROZEN_ENCODER_MODES = ("decoder", "autosam")
#: AdamW learning rate of each mode when none is given (zero-initialised adapters and new networks take larger steps)
DEFAULT_LR = {"decoder": 1e-4, "full": 3e-5, "adapter": 5e-4, "lora": 5e-4, "autosam": 1e-3}


def default_config(mode: str = "decoder", **overrides: Any) -> TrainConfig:
    """The training-loop settings :func:`finetune` uses when given none: 20 epochs, batch size 4, AdamW with the
    mode's :data:`DEFAULT_LR` and weight decay 0.01 (MedSAM's), cosine schedule; ``overrides`` replace any field."""
    if mode not in MODES:
        raise OptionError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    settings: dict[str, Any] = {"epochs": 20, "batch_size": 4, "lr": DEFAULT_LR[mode], "weight_decay": 0.01}
    settings.update(overrides)
    return TrainConfig(**settings)


# ---------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class FinetuneOptions:
    """What :func:`finetune` adapts and how (the training loop's settings are a :class:`TrainConfig`).

    mode: one of :data:`MODES`. model: registry name or checkpoint path of the base; checkpoint: another weight
    file for ``model``'s architecture. size: model input side S (default the architecture's; other sizes for
    TinyViT models only, a multiple of 16 >= 64: the embedding grid is S/4).
    prompt: "box", "points" or "mixed"; num_points: points per prompt; bbox_shift: maximum outward move of each
    box side, model-input pixels. objects: "label" or "component"; label: train on one label value only;
    min_pixels: smallest object (pixels on the original grid). slices_per_case: 3D cases give at most this many
    slices (evenly spaced among the slices holding the target; None: all).
    augment: train-time augmentation (see the module docstring). cache_embeddings: folder of the embedding cache
    (decoder/autosam). encode_backend: engine that fills the cache ("auto": ONNX Runtime when installed).
    adapter_ratio, adapter_mlp_scale: :class:`~medsamkit.models.adapters.AdapterConfig`. lora_rank, lora_alpha:
    :class:`~medsamkit.models.lora.LoraConfig`. autosam_tokens: k sparse tokens; autosam_input: what the generator
    reads ("image", "embedding" or "both"); autosam_train_decoder: also train the mask decoder.
    val_fraction, test_fraction, split_seed: the split (split_seed None: the training seed).
    """

    mode: str = "decoder"
    model: str = "litemedsam"
    checkpoint: str | None = None
    size: int | None = None
    prompt: str = "box"
    num_points: int = 1
    bbox_shift: int = 5
    objects: str = "label"
    label: int | None = None
    min_pixels: int = 1
    slices_per_case: int | None = None
    augment: bool = True
    cache_embeddings: str | None = None
    encode_backend: str = "auto"
    adapter_ratio: float = 0.25
    adapter_mlp_scale: float = 0.5
    lora_rank: int = 4
    lora_alpha: float | None = None
    autosam_tokens: int = 2
    autosam_input: str = "both"
    autosam_train_decoder: bool = False
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int | None = None

    def __post_init__(self) -> None:
        def check_int(name: str, minimum: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise OptionError(f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, got {v!r}")

        if self.mode not in MODES:
            raise OptionError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.prompt not in PROMPTS:
            raise OptionError(f"unknown prompt {self.prompt!r}; use one of {', '.join(PROMPTS)}")
        if self.objects not in OBJECTS:
            raise OptionError(f"unknown objects {self.objects!r}; use 'label' or 'component'")
        if self.autosam_input not in AUTOSAM_INPUTS:
            raise OptionError(f"unknown autosam_input {self.autosam_input!r}; use one of {', '.join(AUTOSAM_INPUTS)}")
        if not isinstance(self.model, str) or not self.model:
            raise OptionError(f"model must be a registry name or a checkpoint path, got {self.model!r}")
        check_int("num_points", 1)
        check_int("bbox_shift", 0)
        check_int("min_pixels", 1)
        check_int("lora_rank", 1)
        check_int("autosam_tokens", 0)
        check_int("label", 1, optional=True)
        check_int("slices_per_case", 1, optional=True)
        check_int("split_seed", 0, optional=True)
        check_int("size", 64, optional=True)
        if self.size is not None and self.size % 16:
            raise OptionError(f"size must be a multiple of 16, got {self.size}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise OptionError(f"{name} must be in [0, 1), got {v!r}")
        if self.cache_embeddings is not None and self.mode not in FROZEN_ENCODER_MODES:
            raise OptionError(
                f"cached embeddings need a frozen image encoder (modes {', '.join(FROZEN_ENCODER_MODES)}); "
                f"mode {self.mode!r} trains the encoder"
            )
        if self.encode_backend not in ("auto", "onnxruntime", "torch"):
            raise OptionError(f"unknown encode_backend {self.encode_backend!r}; use auto, onnxruntime or torch")
        # the structure options are validated by their configs
        self.adapter_config()
        self.lora_config()

    def adapter_config(self):  # noqa: ANN201 - AdapterConfig
        from ..models.adapters import AdapterConfig

        return AdapterConfig(ratio=self.adapter_ratio, mlp_scale=self.adapter_mlp_scale)

    def lora_config(self):  # noqa: ANN201 - LoraConfig
        from ..models.lora import LoraConfig

        return LoraConfig(rank=int(self.lora_rank), alpha=self.lora_alpha)

    @property
    def cached(self) -> bool:
        return self.cache_embeddings is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(f"unknown finetune option(s): {', '.join(unknown)}")
        return cls(**dict(data))


# options that may differ between a run and its resumption (they do not change what is trained)
_RESUMABLE_CHANGES = ("cache_embeddings", "encode_backend")


# ---------------------------------------------------------------------------------------------- model building


class FinetuneModel(nn.Module):
    """The trained network: a ``SamModel`` (possibly adapted) and, in autosam mode, a prompt generator.

    ``forward(batch, prompt)`` returns the single-mask low-res logits ``(N, 1, L, L)`` (L = 4 x embedding grid).
    batch: ``{"image": (N, 3, S, S) model inputs, "embedding": (N, 256, g, g), "box": (N, 4) model-input x0, y0,
    x1, y1, "points": (N, k, 2) model-input x, y}``; the embedding is computed from the image when absent.
    prompt: "box" or "points" (ignored in autosam mode). BatchNorm layers stay in eval mode in training.
    """

    def __init__(self, sam: nn.Module, mode: str, generator: nn.Module | None = None) -> None:
        super().__init__()
        self.sam = sam
        self.mode = mode
        self.generator = generator

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, batch: Mapping[str, torch.Tensor], prompt: str = "box") -> torch.Tensor:
        emb = batch.get("embedding")
        image = batch.get("image")
        if emb is None:
            if image is None:
                raise OptionError("a batch needs 'image' and/or 'embedding'")
            emb = self.sam.encode(image)
        zero = torch.zeros(1, dtype=torch.long, device=emb.device)
        if self.generator is not None:
            sparse, dense = self.generator(image if self.generator.config.use_image else None, emb)
            pe = self.sam.prompt_encoder.dense_pe()
            logits, _ = self.sam.mask_decoder.predict_all(emb, pe, sparse, dense, zero)
            return logits
        coords, labels = prompt_tensors(batch, prompt)
        logits, _ = self.sam.decode(emb, coords, labels, outputs=zero)
        return logits


def prompt_tensors(batch: Mapping[str, torch.Tensor], prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled points of a batch's prompts: box -> ``(N, 2, 2)`` corners labelled 2, 3; points -> ``(N, k + 1, 2)``
    labelled 1 plus SAM's padding point (label -1), as :class:`~medsamkit.predict.Predictor` builds them."""
    if prompt == "box":
        box = batch["box"].float()
        n = box.shape[0]
        labels = torch.tensor([2.0, 3.0], device=box.device).expand(n, 2)
        return box.view(n, 2, 2), labels
    if prompt == "points":
        pts = batch["points"].float()
        n, k = pts.shape[:2]
        coords = torch.cat([pts, pts.new_zeros(n, 1, 2)], dim=1)
        labels = torch.cat([pts.new_ones(n, k), pts.new_full((n, 1), -1.0)], dim=1)
        return coords, labels
    raise OptionError(f"unknown prompt {prompt!r}; use 'box' or 'points'")


def _decoder_trainable(decoder: nn.Module) -> list[nn.Parameter]:
    """The mask decoder's parameters that shape output 0 (all but the IoU head and hypernetworks 1-3)."""
    skip = {id(p) for p in decoder.iou_prediction_head.parameters()}
    for mlp in list(decoder.output_hypernetworks_mlps)[1:]:
        skip |= {id(p) for p in mlp.parameters()}
    return [p for p in decoder.parameters() if id(p) not in skip]


def build_model(sam: nn.Module, options: FinetuneOptions) -> FinetuneModel:
    """Adapt ``sam`` in place for ``options.mode`` and set ``requires_grad`` so that exactly the mode's
    parameters train (see the module docstring)."""
    mode = options.mode
    for p in sam.parameters():
        p.requires_grad_(False)
    generator = None
    trainable: list[nn.Parameter] = []
    if mode == "decoder":
        trainable = _decoder_trainable(sam.mask_decoder)
    elif mode == "full":
        enc = sam.image_encoder
        unused = {id(p) for name in ("norm_head", "head") if hasattr(enc, name) for p in getattr(enc, name).parameters()}
        trainable = [p for p in enc.parameters() if id(p) not in unused] + _decoder_trainable(sam.mask_decoder)
    elif mode == "adapter":
        from ..models.adapters import adapter_parameters, add_adapters

        add_adapters(sam, options.adapter_config())
        trainable = adapter_parameters(sam)
    elif mode == "lora":
        from ..models.lora import add_lora, lora_parameters

        add_lora(sam, options.lora_config())
        trainable = lora_parameters(sam)
    else:
        generator = build_generator(sam, options)
        trainable = list(generator.parameters())
        if options.autosam_train_decoder:
            trainable += _decoder_trainable(sam.mask_decoder)
    for p in trainable:
        p.requires_grad_(True)
    return FinetuneModel(sam, mode, generator)


def build_generator(sam: nn.Module, options: FinetuneOptions):  # noqa: ANN201 - PromptGenerator
    from ..models.autosam import PromptGenerator, autosam_config_for

    cfg = autosam_config_for(
        sam,
        num_sparse=int(options.autosam_tokens),
        use_image=options.autosam_input in ("image", "both"),
        use_embedding=options.autosam_input in ("embedding", "both"),
    )
    ref = sam.prompt_encoder.no_mask_embed.weight
    return PromptGenerator(cfg, ref).to(device=ref.device, dtype=ref.dtype)


def parameter_counts(model: nn.Module, base_parameters: int) -> dict[str, Any]:
    """``trainable``, ``total`` (base + added), ``base`` and ``trainable_percent`` (of the base model)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "trainable": int(trainable),
        "total": int(total),
        "base": int(base_parameters),
        "trainable_percent": round(100.0 * trainable / max(1, base_parameters), 3),
    }


# ------------------------------------------------------------------------------------------------------ images


@dataclass
class ImageRecord:
    """One 2D training/evaluation image: a case, or a slice of a 3D case (``id`` = ``case@z``; slice -1 for 2D).

    picture: uint8 ``(H, W)`` or ``(H, W, 3)``; objects: int32 ``(H, W)`` map, 0 = background, object i = value
    ``object_ids[i]``; object_labels: the label value of each object (-1 for AutoSAM's one object, the union, or the
    run's label); union: bool ``(H, W)`` of every target label.
    """

    id: str
    case: str
    slice: int
    picture: np.ndarray
    objects: np.ndarray
    object_ids: list[int]
    object_labels: list[int]
    union: np.ndarray
    key: str | None = None

    def object_mask(self, i: int) -> np.ndarray:
        return self.objects == self.object_ids[i]


def _record(
    case_id: str, z: int, picture: np.ndarray, mask: np.ndarray, labels: Sequence[int], config: Any, min_pixels: int
) -> ImageRecord | None:
    """The record of one picture with its objects (:func:`medsamkit.evaluate.runner.picture_objects`), or None
    when it holds none."""
    from ..evaluate.runner import picture_objects

    found = picture_objects(mask, labels, config, min_pixels)
    if not found:
        return None
    objects = np.zeros(mask.shape, np.int32)
    for k, (_, _, m) in enumerate(found, start=1):
        objects[m] = k
    union = np.isin(mask, labels)
    rid = case_id if z < 0 else f"{case_id}@{z}"
    ids, owners = list(range(1, len(found) + 1)), [label for label, _, _ in found]
    return ImageRecord(rid, case_id, z, np.ascontiguousarray(picture), objects, ids, owners, union)


def read_images(cases: Sequence[Case], options: FinetuneOptions) -> list[ImageRecord]:
    """The images of ``cases`` with their objects (2D cases as they are; 3D cases as axial slices holding the
    target, at most ``options.slices_per_case`` evenly spaced ones). Images without a usable object are left out.
    Objects and slices are those the evaluation scores (:func:`evaluation_config`:
    :func:`~medsamkit.evaluate.runner.picture_objects`, :func:`~medsamkit.evaluate.runner.evaluated_slices`);
    pictures are :mod:`medsamkit.preprocess.picture`'s (``auto`` preset; a volume's fitted on the whole volume), as
    the evaluation runner makes them."""
    from ..evaluate.runner import evaluated_slices, target_labels

    config = evaluation_config(options)
    out: list[ImageRecord] = []
    for case in cases:
        image, mask = load_case(case)
        labels = target_labels(mask, config)
        if not image.is_volume:
            picture = model_picture(image, modality=case.modality)[0]
            rec = _record(case.id, -1, picture, mask, labels, config, config.min_pixels)
            if rec is not None:
                out.append(rec)
            continue
        if image.is_rgb:
            raise OptionError(f"case {case.id}: RGB volumes are not supported")
        pictures = volume_pictures(image, modality=case.modality or image.modality)
        least = max(config.min_slice_pixels, config.min_pixels)
        for z in evaluated_slices(mask, labels, config):
            rec = _record(case.id, int(z), pictures[int(z)], np.asarray(mask[z]), labels, config, least)
            if rec is not None:
                out.append(rec)
    return out


def to_model_frame(mask: np.ndarray, geometry: Any) -> np.ndarray:
    """bool ``(H, W)`` on the image grid -> uint8 ``(S, S)`` in the model-input frame: nearest neighbour onto the
    resized image (``geometry.resized``), zero elsewhere (the padding)."""
    h, w = geometry.resized
    s = geometry.input_size
    small = cv2.resize(np.asarray(mask, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    out = np.zeros((s, s), np.uint8)
    out[:h, :w] = small
    return out


def _to_low_res(target: np.ndarray, low_res: int) -> np.ndarray:
    if target.shape[0] == low_res:
        return target
    return cv2.resize(target, (low_res, low_res), interpolation=cv2.INTER_NEAREST_EXACT)


# ----------------------------------------------------------------------------------------------------- dataset


def _augment_transform():
    from monai.transforms import Compose, RandAdjustContrastd, RandFlipd, RandGaussianNoised, RandRotate90d

    keys = ["image", "mask"]
    return Compose(
        [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandRotate90d(keys, prob=0.5, max_k=3),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
            RandGaussianNoised("image", prob=0.2, mean=0.0, std=0.02),
        ]
    )


def _plain(x: Any) -> np.ndarray:
    t = x.as_tensor() if hasattr(x, "as_tensor") else x
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


class FinetuneDataset(torch.utils.data.Dataset):
    """Items of one split: one per (image, object). Item: ``{"target": float32 (1, L, L), "box": float32 (4,),
    "points": float32 (k, 2), "image": float32 (3, S, S)?, "embedding": float32 (256, g, g)?}`` (coordinates in
    the model-input frame, x = column). ``image`` is present when the encoder runs in the step or the prompt
    generator reads it; ``embedding`` when an embedding cache is given.

    train: random prompt jitter and augmentation (seeded by (seed, epoch, index)); else tight boxes and fixed points.
    """

    def __init__(
        self,
        images: Sequence[ImageRecord],
        transform: Any,
        low_res: int,
        options: FinetuneOptions,
        *,
        train: bool,
        seed: int = 0,
        cache: Any = None,
        need_image: bool = True,
    ) -> None:
        self.images = list(images)
        self.transform = transform
        self.low_res = int(low_res)
        self.options = options
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self.need_image = need_image or cache is None
        self.augment = train and options.augment and cache is None
        self._aug = _augment_transform() if self.augment else None
        self.items: list[tuple[int, int]] = []
        self.dropped = 0
        for i, rec in enumerate(self.images):
            geom = self._geometry(rec)  # the picture's place in the model input (prepare is cheap next to a step)
            for j in range(len(rec.object_ids)):
                if to_model_frame(rec.object_mask(j), geom).any():
                    self.items.append((i, j))
                else:
                    self.dropped += 1

    def _geometry(self, rec: ImageRecord) -> Any:
        return self.transform.prepare(rec.picture)[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch if self.train else 0
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index, 1 if self.train else 2]))

    def _embedding(self, rec: ImageRecord) -> tuple[np.ndarray, Any]:
        hit = self.cache.get(rec.key) if rec.key is not None else None
        if hit is None:
            raise RuntimeError(f"embedding of {rec.id} missing from the cache (key {rec.key})")
        return hit

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..prompts import mask_box, random_points, shift_box

        i, j = self.items[index]
        rec = self.images[i]
        mask = rec.object_mask(j)
        picture = rec.picture
        out: dict[str, Any] = {}
        geom = None
        if self.cache is not None:
            emb, geom = self._embedding(rec)
            out["embedding"] = torch.from_numpy(np.ascontiguousarray(emb[0], np.float32))
        if self._aug is not None:
            picture, mask = self._augment(picture, mask, index)
        if self.need_image:
            x, geom_x = self.transform.prepare(picture)
            out["image"] = torch.from_numpy(x[0])
            geom = geom if geom is not None else geom_x
        target = to_model_frame(mask, geom)
        if not target.any():  # an augmented object can vanish only by rounding: use the item unaugmented
            target = to_model_frame(rec.object_mask(j), geom)
        rng = self._rng(index)
        box = mask_box(target)
        if self.train and self.options.bbox_shift:
            box = shift_box(box, self.options.bbox_shift, rng, geom.resized)
        pts = random_points(target, self.options.num_points, rng)
        out["target"] = torch.from_numpy(_to_low_res(target, self.low_res).astype(np.float32))[None]
        out["box"] = torch.from_numpy(box.astype(np.float32))
        out["points"] = torch.from_numpy(pts.astype(np.float32))
        return out

    def _augment(self, picture: np.ndarray, mask: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        self._aug.set_random_state(seed=seed)  # type: ignore[union-attr]
        img = picture[None] if picture.ndim == 2 else picture.transpose(2, 0, 1)
        data = {"image": img.astype(np.float32) / np.float32(255.0), "mask": mask[None].astype(np.uint8)}
        res = self._aug(data)  # type: ignore[misc]
        img = np.clip(_plain(res["image"]), 0.0, 1.0)
        pic = np.rint(img * 255.0).astype(np.uint8)
        pic = pic[0] if pic.shape[0] == 1 else pic.transpose(1, 2, 0)
        return np.ascontiguousarray(pic), np.ascontiguousarray(_plain(res["mask"])[0] > 0)


# ------------------------------------------------------------------------------------------- embedding cache


def embed_images(
    images: Sequence[ImageRecord], predictor: Any, *, compute: bool = True, progress: bool = False, desc: str = "encoding"
) -> None:
    """Set each record's embedding-cache key (:func:`~medsamkit.predict.cache.embedding_key` of the predictor's
    weights, pipeline and the picture) and, with ``compute``, make sure ``predictor.cache`` holds its embedding
    (encoding the pictures it lacks)."""
    from ..predict.cache import embedding_key
    from ..preprocess.image2d import to_rgb_uint8

    eng, tf = predictor.engine, predictor.transform
    for rec in images:
        rec.key = embedding_key(eng.weights_id, tf.name, tf.input_size, to_rgb_uint8(rec.picture))
    if not compute:
        return
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images), desc=desc, unit="image", leave=False, dynamic_ncols=True)
    try:
        for rec in images:
            predictor.embed(rec.picture)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the engine's :class:`FitResult`, where the trained parameters went (rank 0),
    parameter counts, the split, the numbers of training/validation items, this process's rank and the trained
    model (the best epoch's weights on rank 0, the last epoch's on the other ranks)."""

    fit: FitResult
    adapter_path: Path | None
    parameters: dict[str, Any]
    split: Split
    items: dict[str, int] = field(default_factory=dict)
    rank: int = 0
    model: FinetuneModel | None = None

    @property
    def run_dir(self) -> Path | None:
        return self.fit.run_dir


def _loss():
    from monai.losses import DiceCELoss

    # Dice (squared denominators, per sample) + binary cross-entropy on the logits: MedSAM's loss
    return DiceCELoss(sigmoid=True, squared_pred=True)


# --------------------------------------------------------------------------------------------------- training


def finetune(
    dataset: Dataset | str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    mode: str = "decoder",
    *,
    model: str | os.PathLike[str] | nn.Module = "litemedsam",
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> FinetuneResult:
    """Adapt a SAM-family model to a 2D (or sliced 3D) labelled dataset; everything goes to ``run_dir``.

    mode: one of :data:`MODES`. model: registry name, checkpoint path or a ``SamModel`` (an in-memory base is
    recorded by its weight digest; give it again as ``base=`` to :func:`load_adapted`). config: the training loop
    (epochs, batch size, AdamW lr, schedule, gradient accumulation, patience, seed, device, max_minutes; default
    :func:`default_config`).
    options: :class:`FinetuneOptions` fields (prompt, bbox_shift, cache_embeddings, adapter_ratio, lora_rank, ...).
    resume: continue from ``run_dir/last.pt`` (same split and options). Under ``torchrun`` the ranks train together
    (DDP); call it on every rank.

    Writes ``split.json``, ``config.json``, ``metrics.csv``, ``last.pt``, ``best.pt`` (the engine's files, whole
    model), ``adapter.pt`` (the best epoch's trained parameters only) and ``finetune.json`` (options, base model,
    parameter counts, items, timings).
    """
    config = config or default_config(mode)
    model_name = model if not isinstance(model, nn.Module) else _module_name(model)
    opts = FinetuneOptions(mode=mode, model=str(model_name), **options)
    created = init_distributed(config.device)
    try:
        return _finetune(dataset, Path(run_dir), opts, model, config, resume, progress)
    finally:
        if created:
            shutdown_distributed()


def _module_name(model: nn.Module) -> str:
    """How an in-memory base is named in the adapter file: its registry name, its weight file, or "in-memory"."""
    ref = getattr(model, "weights", None)
    if ref is None:
        return "in-memory"
    if ref.name != "custom":
        return str(ref.name)
    return str(ref.path)


def _finetune(
    dataset: Dataset | str | os.PathLike[str],
    run: Path,
    opts: FinetuneOptions,
    model: str | os.PathLike[str] | nn.Module,
    config: TrainConfig,
    resume: bool,
    progress: bool,
) -> FinetuneResult:
    t_start = time.perf_counter()
    rank, world = dist_info()
    ds = open_dataset(dataset)
    summary_file = run / SUMMARY_FILE
    if resume and summary_file.is_file():
        _check_resume_options(summary_file, opts)
    split_seed = config.seed if opts.split_seed is None else int(opts.split_seed)
    split = run_split(run, ds, opts.val_fraction, opts.test_fraction, split_seed, resume=resume, write=rank == 0)

    base = load_base(model, opts.checkpoint if not isinstance(model, nn.Module) else None, opts.size)
    if isinstance(model, nn.Module):
        base = copy.deepcopy(base) if base is model else base
    base_parameters = sum(p.numel() for p in base.parameters())
    base_info = {
        "model": opts.model,
        "checkpoint": opts.checkpoint,
        "arch": arch_to_dict(base.spec),
        "digest": weights_digest(base),
        "weights_sha256": getattr(getattr(base, "weights", None), "sha256", None),
    }
    from ..preprocess.transforms import transform_for

    spec = base.spec
    transform = transform_for(spec.pipeline, spec.img_size)
    t0 = time.perf_counter()
    train_images = read_images(ds.subset(split.train).cases, opts)
    val_images = read_images(ds.subset(split.val).cases, opts) if split.val else []
    if not train_images:
        raise OptionError(
            f"{ds.root}: no training image holds a usable object (label {opts.label}, min_pixels {opts.min_pixels})"
        )
    read_s = time.perf_counter() - t0

    # embeddings: a disk cache filled by rank 0 (train + val), or validation embeddings in memory
    from ..predict.cache import EmbeddingCache

    frozen_encoder = opts.mode in FROZEN_ENCODER_MODES
    cache = EmbeddingCache(max_bytes=1 << 30, disk_dir=opts.cache_embeddings) if opts.cached else None
    val_cache = cache
    t0 = time.perf_counter()
    if cache is not None:
        # rank 0 encodes (and exports the ONNX engine if needed); the other ranks only compute the keys afterwards
        if rank == 0:
            embed_images(
                [*train_images, *val_images], base_predictor(base, base_info, opts.encode_backend, cache), progress=progress
            )
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            embed_images([*train_images, *val_images], base_predictor(base, base_info, opts.encode_backend, cache), compute=False)
    elif frozen_encoder and val_images:
        val_cache = EmbeddingCache(max_bytes=8 << 30)
        embed_images(val_images, base_predictor(base, base_info, opts.encode_backend, val_cache), progress=progress and rank == 0)
    encode_s = time.perf_counter() - t0

    seed_everything(config.seed, deterministic=False)  # adapters / generator initialisation depends on the seed only
    net = build_model(base, opts)
    counts = parameter_counts(net, base_parameters)
    need_image = not frozen_encoder or (opts.mode == "autosam" and opts.autosam_input != "embedding")
    low_res = spec.low_res
    train_ds = FinetuneDataset(
        train_images, transform, low_res, opts, train=True, seed=config.seed, cache=cache, need_image=need_image
    )
    if not len(train_ds):
        raise OptionError("no training object is visible at the model's input size")
    train_loader = make_loader(train_ds, config.batch_size, shuffle=True, seed=config.seed, num_workers=config.num_workers)
    val_loader = None
    val_ds = None
    if val_images:
        val_ds = FinetuneDataset(
            val_images, transform, low_res, opts, train=False, seed=config.seed, cache=val_cache, need_image=need_image
        )
        if len(val_ds):
            val_loader = make_loader(val_ds, config.batch_size, shuffle=False, num_workers=config.num_workers)
    loss_fn = _loss()
    val_prompt = "points" if opts.prompt == "points" else "box"

    def train_step(m: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        kind = opts.prompt
        if kind == "mixed":
            kind = "points" if float(torch.rand(())) < 0.5 else "box"
        return loss_fn(m(batch, kind), batch["target"])

    def val_step(m: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = m(batch, val_prompt)
        return loss_fn(logits, batch["target"]), segmentation_dice(logits, batch["target"])

    meta = {
        "task": "finetune",
        "options": opts.to_dict(),
        "base": base_info,
        "dataset": str(ds.root),
        "parameters": counts,
        "items": {"train": len(train_ds), "val": len(val_ds) if val_ds is not None else 0},
    }
    device = resolve_device(config.device)
    wrapped = wrap_ddp(net, device)
    result = fit(
        wrapped,
        train_loader,
        val_loader,
        loss_fn=loss_fn,
        config=config,
        run_dir=run,
        train_step=train_step,
        val_step=val_step,
        resume=resume,
        progress=progress,
        meta=meta,
    )
    adapter_path = None
    if rank == 0:
        best = load_checkpoint(run / "best.pt")
        net.load_state_dict(best["model"])
        adapter_path = save_adapter(
            run / ADAPTER_FILE, net, opts, base_info, epoch=best.get("epoch"), metric=best.get("metric"), counts=counts
        )
        doc = {
            "format": ADAPTER_FORMAT,
            "dataset": str(ds.root),
            "options": opts.to_dict(),
            "config": config.to_dict(),
            "base": base_info,
            "parameters": counts,
            "adapter_file": ADAPTER_FILE,
            "adapter_bytes": adapter_path.stat().st_size,
            "base_bytes": _base_bytes(base),
            "items": {
                "train": len(train_ds),
                "val": len(val_ds) if val_ds is not None else 0,
                "dropped_train_objects": train_ds.dropped,
                "train_images": len(train_images),
                "val_images": len(val_images),
            },
            "cases": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
            "best_epoch": result.best_epoch,
            "best_val_dice": None if math.isnan(result.best_metric) else result.best_metric,
            "epochs": result.epochs,
            "stop_reason": result.stop_reason,
            "seconds": {
                "read": round(read_s, 2),
                "encode": round(encode_s, 2),
                "fit": round(result.seconds, 2),
                "total": round(time.perf_counter() - t_start, 2),
            },
            "world_size": world,
        }
        atomic_write_text(summary_file, json.dumps(doc, indent=2) + "\n")
    if world > 1:
        torch.distributed.barrier()
    items = {"train": len(train_ds), "val": len(val_ds) if val_ds is not None else 0}
    return FinetuneResult(result, adapter_path, counts, split, items, rank, net.eval())


def _base_bytes(base: nn.Module) -> int | None:
    ref = getattr(base, "weights", None)
    try:
        return int(Path(ref.path).stat().st_size) if ref is not None else None
    except OSError:
        return None


def _check_resume_options(path: Path, opts: FinetuneOptions) -> None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("options", {})
    except (OSError, ValueError) as e:
        raise FileInputError(f"cannot read {path}: {e}") from e
    mine = opts.to_dict()
    diff = describe_changes(saved, mine, [k for k in mine if k not in _RESUMABLE_CHANGES])
    if diff:
        raise OptionError(f"cannot resume {path.parent}: the options differ from the run's ({diff})")


# ----------------------------------------------------------------------------------------------- adapter files


def trained_state(model: FinetuneModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(trained ``SamModel`` parameters by state-dict key, the generator's whole state dict or None)."""
    sam = {n: p.detach().cpu().clone() for n, p in model.sam.named_parameters() if p.requires_grad}
    gen = None
    if model.generator is not None:
        gen = {k: v.detach().cpu().clone() for k, v in model.generator.state_dict().items()}
    return sam, gen


def save_adapter(
    path: str | os.PathLike[str],
    model: FinetuneModel,
    options: FinetuneOptions,
    base: Mapping[str, Any],
    *,
    epoch: int | None = None,
    metric: float | None = None,
    counts: Mapping[str, Any] | None = None,
) -> Path:
    """Write the trained parameters of ``model`` (only those: see :func:`trained_state`) with what is needed to
    rebuild the adapted model on its base (mode, structure options, base identity) atomically to ``path``."""
    sam_state, gen_state = trained_state(model)
    structure: dict[str, Any] = {}
    if options.mode == "adapter":
        structure["adapter"] = options.adapter_config().to_dict()
    elif options.mode == "lora":
        structure["lora"] = options.lora_config().to_dict()
    elif options.mode == "autosam":
        structure["autosam"] = model.generator.config.to_dict()  # type: ignore[union-attr]
    doc = {
        "format": ADAPTER_FORMAT,
        "mode": options.mode,
        "base": dict(base),
        "structure": structure,
        "options": options.to_dict(),
        "sam": sam_state,
        "generator": gen_state,
        "epoch": epoch,
        "val_dice": None if metric is None or (isinstance(metric, float) and math.isnan(metric)) else float(metric),
        "parameters": dict(counts or {}),
    }
    p = Path(path)
    atomic_write(p, lambda tmp: torch.save(doc, tmp))
    return p


# ------------------------------------------------------------------------------------------------- evaluation


def _run_doc(run: Path) -> dict[str, Any]:
    f = run / SUMMARY_FILE
    if not f.is_file():
        raise MissingFileError(f"{f} not found: {run} is not a finished `medsamkit finetune` run")
    return json.loads(f.read_text(encoding="utf-8"))


#: the columns of an evaluation table (:func:`write_evaluation`: ``RUN_DIR/test.csv``)
RESULT_COLUMNS = ("case", "image", "slice", "object", "label", "pixels", "dice", "iou", "zero_shot_dice", "zero_shot_iou")


def evaluation_config(options: FinetuneOptions) -> Any:  # noqa: ANN401 - EvalConfig
    """The :class:`~medsamkit.evaluate.runner.EvalConfig` that evaluates the objects a run was trained on: the
    run's ``objects`` (AutoSAM: the union of the target labels), ``label`` and ``min_pixels`` (also per slice),
    and ``slices_per_case``; the ``auto`` intensity preset; no masks kept."""
    from ..evaluate.runner import EvalConfig

    return EvalConfig(
        objects="union" if options.mode == "autosam" else options.objects,
        label=options.label,
        min_pixels=options.min_pixels,
        min_slice_pixels=options.min_pixels,
        slices_per_case=options.slices_per_case,
        save_masks=False,
    )


def _object_rows(rows: Sequence[Mapping[str, Any]], base_rows: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The runner's rows (one per object) as this module's rows, numbered per image; ``base_rows``: the same
    objects scored with the base model (``zero_shot_dice``, ``zero_shot_iou``)."""
    if base_rows is not None and len(base_rows) != len(rows):
        raise RuntimeError(f"the base model was scored on {len(base_rows)} objects, the run's model on {len(rows)}")
    out: list[dict[str, Any]] = []
    numbers: dict[str, int] = {}
    for i, r in enumerate(rows):
        image = r["case"] if r["slice"] < 0 else f"{r['case']}@{r['slice']}"
        numbers[image] = numbers.get(image, 0) + 1
        row = {
            "case": r["case"],
            "image": image,
            "slice": int(r["slice"]),
            "object": numbers[image],
            "label": int(r["label"]),
            "pixels": int(r["size_px"]),
            "dice": float(r["dice"]),
            "iou": float(r["iou"]),
        }
        if base_rows is not None:
            z = base_rows[i]
            if (z["case"], z["slice"], z["label"], z["size_px"]) != (r["case"], r["slice"], r["label"], r["size_px"]):
                raise RuntimeError(f"object {i} of {r['case']}: the base model's rows do not match the run's")
            row["zero_shot_dice"], row["zero_shot_iou"] = float(z["dice"]), float(z["iou"])
        out.append(row)
    return out


class _SharedEncoder:
    """A run's :class:`~medsamkit.predict.Predictor` given the base model's embeddings (``encoder.embed``) for the
    pictures the evaluation runner sets: for modes whose image encoder is the base's, so that scoring the run and
    the base model encodes each picture once. Everything else is the run's predictor."""

    def __init__(self, predictor: Any, encoder: Any) -> None:
        self._predictor = predictor
        self._encoder = encoder

    def set_image(self, image: np.ndarray) -> None:
        self._predictor.set_embedding(*self._encoder.embed(image))

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - whatever the predictor holds
        return getattr(self._predictor, name)


def evaluate_finetune(
    run_dir: str | os.PathLike[str],
    dataset: Dataset | str | os.PathLike[str] | None = None,
    split: str = "test",
    *,
    zero_shot: bool = True,
    prompt: str = "box",
    backend: str = "torch",
    base: Any = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Score a finetune run on a split at the original resolution: one row per object (prompted modes: the
    object's tight box, or with ``prompt="point"`` its centre point; AutoSAM: no prompt, one row per image against
    the union of the target labels), in image order. The objects are those the run was trained on
    (:func:`evaluation_config`); every case goes through :func:`medsamkit.evaluate.runner.evaluate_case` (protocol
    ``box`` or ``point:centre:select=first``; AutoSAM as a segmenter under ``auto``).

    Row: ``case``, ``image`` (``case`` or ``case@z``), ``slice``, ``object`` (1, 2, ... per image), ``label``
    (AutoSAM: -1, or the run's label), ``pixels``, ``dice``, ``iou`` and, with ``zero_shot``, ``zero_shot_dice`` /
    ``zero_shot_iou`` of the base model (at the run's input size) given the same prompt (for AutoSAM rows: the
    tight box of the whole target). dataset: default the run's. split: "train", "val", "test" (``split.json``) or
    "all". backend: engine of both models ("torch": exactly the training numerics).
    base: the base model when the run was trained on an in-memory one (see :func:`load_adapted`).
    """
    from ..evaluate.runner import AUTO, evaluate_case
    from ..predict import Predictor

    if split not in SPLITS:
        raise OptionError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if prompt not in ("box", "point"):
        raise OptionError(f"prompt must be 'box' or 'point', got {prompt!r}")
    run = Path(run_dir)
    doc = _run_doc(run)
    opts = FinetuneOptions.from_dict(doc["options"])
    ds = open_dataset(dataset if dataset is not None else doc["dataset"])
    cases = split_part(run, ds, split)
    file = read_adapter(run)
    adapted = load_adapted(run, base)
    autosam = opts.mode == "autosam"
    threads = torch.get_num_threads()
    model: Any = (  # a segmenter (AutoSAM) or a prompted predictor
        AutoSegmenter(adapted, backend=backend, threads=threads)
        if autosam
        else Predictor(adapted, backend=backend, threads=threads)
    )
    protocol = "box" if prompt == "box" else "point:centre:select=first"  # the single-mask output, as trained
    base_pred = None
    if zero_shot:
        base_model = build_base_for(file, base)
        base_pred = base_predictor(base_model, file["base"], backend) if base is None else Predictor(base_model, backend=backend)
        if opts.mode in FROZEN_ENCODER_MODES:  # the run's encoder is the base's: each picture is encoded once for both
            from ..predict.cache import EmbeddingCache

            base_pred.cache = EmbeddingCache(max_bytes=256 << 20)
            if autosam:
                model.predictor.cache = base_pred.cache  # the same base weights, the same cache keys
            else:
                model = _SharedEncoder(model, base_pred)
    cfg = evaluation_config(opts)
    rows: list[dict[str, Any]] = []
    for case in each_case(cases, progress):
        mine = evaluate_case(case, [AUTO if autosam else protocol], model, cfg, errors="raise").rows
        theirs = None
        if base_pred is not None:  # the same objects, the base model given a box (AutoSAM) or the same prompt
            theirs = evaluate_case(case, ["box" if autosam else protocol], base_pred, cfg, errors="raise").rows
        rows += _object_rows(mine, theirs)
    return rows


def zero_shot_rows(
    dataset: Dataset | str | os.PathLike[str],
    ids: Sequence[str] | None = None,
    *,
    model: str | os.PathLike[str] | nn.Module = "litemedsam",
    objects: str = "label",
    label: int | None = None,
    union: bool = False,
    backend: str = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Box-prompted Dice of a base model on a dataset's cases (all, or ``ids``): one row per object (``objects``
    "label" or "component"; ``union``: one object per image, the union of the target labels, label -1), as
    :func:`evaluate_finetune` rows (``dice``, ``iou``), through :func:`medsamkit.evaluate.runner.evaluate_case`
    (protocol ``box``)."""
    from ..evaluate.runner import EvalConfig, evaluate_case
    from ..predict import Predictor

    if objects not in OBJECTS:
        raise OptionError(f"unknown objects {objects!r}; use 'label' or 'component'")
    ds = open_dataset(dataset)
    cases = ds.subset(ids).cases if ids is not None else ds.cases
    pred = Predictor(model, backend=backend, threads=torch.get_num_threads())
    cfg = EvalConfig(objects="union" if union else objects, label=label, save_masks=False)
    rows = []
    for case in cases:
        case_rows = _object_rows(evaluate_case(case, ["box"], pred, cfg, errors="raise").rows, None)
        rows += case_rows
        if progress:
            log.info("%s: %d object(s)", case.id, len(case_rows))
    return rows


def write_evaluation(run_dir: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], split: str = "test") -> dict[str, Any]:
    """Write the rows of :func:`evaluate_finetune` to ``RUN_DIR/<split>.csv`` (columns :data:`RESULT_COLUMNS`,
    floats with six decimals; :func:`medsamkit.evaluate.store.write_csv`) and their summary to
    ``RUN_DIR/<split>.json`` (``split``, ``objects`` and :func:`summarize_rows`); returns the summary."""
    from ..evaluate.store import write_csv

    run = Path(run_dir)
    write_csv(run / f"{split}.csv", rows, RESULT_COLUMNS, decimals=6, lineterminator="\n")
    summary = summarize_rows(rows)
    atomic_write_text(run / f"{split}.json", json.dumps({"split": split, "objects": len(rows), **summary}, indent=2) + "\n")
    return summary


def summarize_rows(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("dice", "zero_shot_dice")) -> dict[str, Any]:
    """``{key: {"mean", "sd", "n"}}`` over the rows that have the key (sd: sample standard deviation, ddof 1)."""
    out: dict[str, Any] = {}
    for k in keys:
        vals = np.array([float(r[k]) for r in rows if k in r and r[k] is not None], dtype=np.float64)
        if vals.size:
            out[k] = {
                "mean": float(vals.mean()),
                "sd": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                "n": int(vals.size),
            }
    return out
