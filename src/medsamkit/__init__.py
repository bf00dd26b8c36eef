"""medsamkit: Segment-Anything-class models for medical image segmentation.

Quick start::

    from medsamkit import Predictor
    p = Predictor()                 # bundled LiteMedSAM, ONNX Runtime when installed
    p.set_image(image)              # (H, W) or (H, W, 3) array
    masks = p.predict(boxes=[[x0, y0, x1, y1]]).masks

Importing medsamkit is cheap; heavy modules load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__", "load_model", "segment_2d"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from .predict import Predictor

        return Predictor
    if name == "segment_2d":
        from .predict import segment_2d

        return segment_2d
    if name == "load_model":
        from .models import load

        return load
    raise AttributeError(f"module 'medsamkit' has no attribute {name!r}")
