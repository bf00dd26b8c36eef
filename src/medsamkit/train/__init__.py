"""Training: a generic, resumable training loop (:mod:`.loop`; its files :mod:`.checkpoint`; devices, process
groups and loaders :mod:`.distributed`), 2D datasets of raw and SAMAug-augmented inputs (:mod:`.data`), MONAI
U-Nets trained and evaluated on them (:mod:`.unet`; the networks are :mod:`medsamkit.models.unet`, their inference
:mod:`medsamkit.predict.unet`), and SAM-family models adapted to a dataset: decoder / full fine-tuning, adapters,
LoRA and AutoSAM (:mod:`.finetune`). Evaluation runs through :mod:`medsamkit.evaluate.runner`.

Importing this package is light; MONAI is loaded when a network, loss or augmentation is first built.
"""

from __future__ import annotations

from ..data import Split, read_split, split_cases  # the case splits live in medsamkit.data
from ..models.adapted import MODES, load_adapted  # adapted models are loaded for inference in medsamkit.models
from ..models.checkpoint import load_checkpoint  # the training checkpoint's reader lives in medsamkit.models
from ..models.unet import (  # the U-Net networks and their inputs live in medsamkit.models
    ARCHS,
    INPUT_KINDS,
    InputSpec,
    TrainedUNet,
    build_network,
    load_unet,
)
from ..predict.autoseg import AutoSegmenter, load_autosam  # AutoSAM inference lives in medsamkit.predict
from ..predict.unet import predict_unet  # U-Net inference lives in medsamkit.predict
from .checkpoint import read_metrics
from .data import SegmentationDataset
from .distributed import init_distributed, make_loader, shutdown_distributed, wrap_ddp
from .finetune import FinetuneOptions, FinetuneResult, default_config, evaluate_finetune, finetune
from .loop import FitResult, TrainConfig, fit, seed_everything
from .unet import evaluate_unet, train_unet, unet_loss

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
