"""Training: a generic, resumable training loop (:mod:`.engine`), 2D datasets of raw and SAMAug-augmented
inputs (:mod:`.data`), MONAI U-Nets trained, applied and evaluated on them (:mod:`.unet`), and SAM-family models
adapted to a dataset: decoder / full fine-tuning, adapters, LoRA and AutoSAM (:mod:`.finetune`).

Importing this package is light; MONAI is loaded when a network, loss or augmentation is first built.
"""

from __future__ import annotations

from ..data import Split, read_split, split_cases  # the case splits live in medsamkit.data
from .data import INPUT_KINDS, InputSpec, SegmentationDataset
from .engine import (
    FitResult,
    TrainConfig,
    fit,
    init_distributed,
    load_checkpoint,
    make_loader,
    read_metrics,
    seed_everything,
    shutdown_distributed,
    wrap_ddp,
)
from .finetune import (
    MODES,
    AutoSegmenter,
    FinetuneOptions,
    FinetuneResult,
    default_config,
    evaluate_finetune,
    finetune,
    load_adapted,
    load_autosam,
)
from .unet import ARCHS, TrainedUNet, build_network, evaluate_unet, load_unet, predict_unet, train_unet, unet_loss

__all__ = [
    "ARCHS",
    "INPUT_KINDS",
    "MODES",
    "AutoSegmenter",
    "FinetuneOptions",
    "FinetuneResult",
    "FitResult",
    "InputSpec",
    "SegmentationDataset",
    "Split",
    "TrainConfig",
    "TrainedUNet",
    "build_network",
    "default_config",
    "evaluate_finetune",
    "evaluate_unet",
    "finetune",
    "fit",
    "init_distributed",
    "load_adapted",
    "load_autosam",
    "load_checkpoint",
    "load_unet",
    "make_loader",
    "predict_unet",
    "read_metrics",
    "read_split",
    "seed_everything",
    "shutdown_distributed",
    "split_cases",
    "train_unet",
    "unet_loss",
    "wrap_ddp",
]
