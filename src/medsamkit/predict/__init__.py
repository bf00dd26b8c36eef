"""Prediction: the 2D prompted predictor and the one-call 2D segmentation job."""

from .predictor import Prediction, Predictor
from .segment import Segmentation2D, segment_2d

__all__ = ["Prediction", "Predictor", "Segmentation2D", "segment_2d"]
