"""Prediction: the 2D prompted predictor, the one-call 2D job, 3D propagation and the embedding cache."""

from .cache import EmbeddingCache
from .predictor import Prediction, Predictor
from .segment import Segmentation2D, segment_2d
from .volume import ObjectPrompt, PropagationOptions, VolumeSegmentation, segment_volume

__all__ = [
    "EmbeddingCache",
    "ObjectPrompt",
    "Prediction",
    "Predictor",
    "PropagationOptions",
    "Segmentation2D",
    "VolumeSegmentation",
    "segment_2d",
    "segment_volume",
]
