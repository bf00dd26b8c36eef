"""Training: a generic, resumable training loop (:mod:`.engine`), 2D datasets of raw and SAMAug-augmented
inputs (:mod:`.data`) and MONAI U-Nets trained, applied and evaluated on them (:mod:`.unet`).

Importing this package is light; MONAI is loaded when a network, loss or augmentation is first built.
"""

from __future__ import annotations

from .data import INPUT_KINDS, InputSpec, SegmentationDataset, Split, read_split, split_cases
from .engine import FitResult, TrainConfig, fit, load_checkpoint, make_loader, read_metrics, seed_everything
from .unet import ARCHS, TrainedUNet, build_network, evaluate_unet, load_unet, predict_unet, train_unet, unet_loss

__all__ = [
    "ARCHS",
    "INPUT_KINDS",
    "FitResult",
    "InputSpec",
    "SegmentationDataset",
    "Split",
    "TrainConfig",
    "TrainedUNet",
    "build_network",
    "evaluate_unet",
    "fit",
    "load_checkpoint",
    "load_unet",
    "make_loader",
    "predict_unet",
    "read_metrics",
    "read_split",
    "seed_everything",
    "split_cases",
    "train_unet",
    "unet_loss",
]
