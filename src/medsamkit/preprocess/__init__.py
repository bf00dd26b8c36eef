"""Image preprocessing: channel/dtype normalisation and the model-family pipelines."""

from .image2d import to_rgb_uint8
from .transforms import Geometry, LiteMedSAMTransform, MedSAMTransform, SAMTransform, Transform, transform_for

__all__ = [
    "Geometry",
    "LiteMedSAMTransform",
    "MedSAMTransform",
    "SAMTransform",
    "Transform",
    "to_rgb_uint8",
    "transform_for",
]
