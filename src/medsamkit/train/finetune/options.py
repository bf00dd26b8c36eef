"""What a fine-tuning run adapts and how: :class:`FinetuneOptions`, the training-loop defaults of each mode
(:func:`default_config`, :data:`DEFAULT_LR`) and the evaluation settings that score the objects a run trains on
(:func:`evaluation_config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import OptionError
from ...models.adapted import MODES
from ...models.configs import StoredConfig
from ..loop import TrainConfig

if TYPE_CHECKING:
    from ...evaluate.runner import EvalConfig
    from ...models.adapters import AdapterConfig
    from ...models.lora import LoraConfig

PROMPTS = ("box", "points", "mixed", "interactive")
SLICE_AXES = ("z", "all")
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
class FinetuneOptions(StoredConfig):
    """What :func:`finetune` adapts and how (the training loop's settings are a :class:`TrainConfig`).

    mode: one of :data:`MODES`. model: registry name or checkpoint path of the base; checkpoint: another weight
    file for ``model``'s architecture. size: model input side S (default the architecture's; other sizes for
    TinyViT models only, a multiple of 16 >= 64: the embedding grid is S/4).
    prompt: "box", "points", "mixed" or "interactive" (SAM's simulated interaction, decoder mode:
    :mod:`.interactive`); num_points: points per prompt; bbox_shift: maximum outward move of each box side,
    model-input pixels.
    Interactive training: clicks: correction clicks per object after the first prompt; mask_only: extra iterations
    with no new click (the previous mask only; one is the last, the others at random places); click_farthest_p: the
    chance that a click is the error pixel farthest from its region's boundary (else a uniformly random error
    pixel; a first click: the object's centre, else a random object pixel); box_start_p: the chance that an object
    starts from its (jittered) box rather than one positive click; iou_loss_weight: weight of the IoU head's MSE
    (0: off); grad_iterations: back-propagate through this many randomly chosen iterations of each batch (the others
    run without gradient; None: all). objects: "label" or "component"; label: train on one label value only;
    min_pixels: smallest object (pixels on the original grid). slices_per_case: 3D cases give at most this many
    slices per axis (evenly spaced among the slices holding the target; None: all); slice_axes: "z" (axial slices)
    or "all" (slices along each of the three array axes).
    augment: train-time augmentation (see the module docstring); augment_copies: with cached embeddings, this many
    augmented copies of every training picture are made once and encoded into the cache too.
    cache_embeddings: folder of the embedding cache (decoder/autosam). encode_backend: engine that fills the cache
    ("auto": ONNX Runtime when installed).
    adapter_ratio, adapter_mlp_scale: :class:`~medsamkit.models.adapters.AdapterConfig`. lora_rank, lora_alpha:
    :class:`~medsamkit.models.lora.LoraConfig`. autosam_tokens: k sparse tokens; autosam_input: what the generator
    reads ("image", "embedding" or "both"); autosam_train_decoder: also train the mask decoder.
    val_fraction, test_fraction, split_seed: the split (split_seed None: the training seed). folds, fold: k-fold by
    case (:func:`~medsamkit.data.split_cases`; test_fraction is then not used; fold None = 0; fold needs folds).
    """

    _unknown = "finetune option(s)"  # from_dict refuses other keys

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
    slice_axes: str = "z"
    augment: bool = True
    augment_copies: int = 0
    cache_embeddings: str | None = None
    encode_backend: str = "auto"
    adapter_ratio: float = 0.25
    adapter_mlp_scale: float = 0.5
    lora_rank: int = 4
    lora_alpha: float | None = None
    autosam_tokens: int = 2
    autosam_input: str = "both"
    autosam_train_decoder: bool = False
    clicks: int = 8
    mask_only: int = 2
    click_farthest_p: float = 0.5
    box_start_p: float = 0.5
    iou_loss_weight: float = 1.0
    grad_iterations: int | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int | None = None
    folds: int | None = None
    fold: int | None = None

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
        if self.slice_axes not in SLICE_AXES:
            raise OptionError(f"unknown slice_axes {self.slice_axes!r}; use one of {', '.join(SLICE_AXES)}")
        if self.prompt == "interactive" and self.mode != "decoder":
            raise OptionError(f"interactive training trains the mask decoder: use mode 'decoder', not {self.mode!r}")
        check_int("num_points", 1)
        check_int("augment_copies", 0)
        check_int("clicks", 0)
        check_int("mask_only", 0)
        check_int("grad_iterations", 1, optional=True)
        check_int("bbox_shift", 0)
        check_int("min_pixels", 1)
        check_int("lora_rank", 1)
        check_int("autosam_tokens", 0)
        check_int("label", 1, optional=True)
        check_int("slices_per_case", 1, optional=True)
        check_int("split_seed", 0, optional=True)
        check_int("folds", 2, optional=True)
        check_int("fold", 0, optional=True)
        if self.fold is not None and self.folds is None:
            raise OptionError("fold needs folds (k-fold by case): set folds too, or leave fold unset")
        if self.folds is not None and self.fold is not None and self.fold >= self.folds:
            raise OptionError(f"fold must be below folds ({self.folds}), got {self.fold}")
        check_int("size", 64, optional=True)
        if self.size is not None and self.size % 16:
            raise OptionError(f"size must be a multiple of 16, got {self.size}")
        for name in ("click_farthest_p", "box_start_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise OptionError(f"{name} must be in [0, 1], got {v!r}")
        w = self.iou_loss_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise OptionError(f"iou_loss_weight must be a finite number >= 0, got {w!r}")
        if self.augment_copies and not self.cached:
            raise OptionError("augment_copies needs cached embeddings (cache_embeddings); without a cache every step augments")
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

    def adapter_config(self) -> AdapterConfig:
        """The adapters' structure (``adapter_ratio``, ``adapter_mlp_scale``)."""
        from ...models.adapters import AdapterConfig

        return AdapterConfig(ratio=self.adapter_ratio, mlp_scale=self.adapter_mlp_scale)

    def lora_config(self) -> LoraConfig:
        """The LoRA updates' structure (``lora_rank``, ``lora_alpha``)."""
        from ...models.lora import LoraConfig

        return LoraConfig(rank=int(self.lora_rank), alpha=self.lora_alpha)

    @property
    def cached(self) -> bool:
        return self.cache_embeddings is not None


# options that may differ between a run and its resumption (they do not change what is trained)
RESUMABLE_CHANGES = ("cache_embeddings", "encode_backend")


def evaluation_config(options: FinetuneOptions) -> EvalConfig:
    """The :class:`~medsamkit.evaluate.runner.EvalConfig` that evaluates the objects a run was trained on: the
    run's ``objects`` (AutoSAM: the union of the target labels), ``label`` and ``min_pixels`` (also per slice),
    and ``slices_per_case``; the ``auto`` intensity preset; no masks kept."""
    from ...evaluate.runner import EvalConfig

    return EvalConfig(
        objects="union" if options.mode == "autosam" else options.objects,
        label=options.label,
        min_pixels=options.min_pixels,
        min_slice_pixels=options.min_pixels,
        slices_per_case=options.slices_per_case,
        save_masks=False,
    )
