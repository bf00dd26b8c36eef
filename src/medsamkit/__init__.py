"""medsamkit: Segment-Anything-class models for medical image segmentation.

Quick start::

    from medsamkit import Predictor
    p = Predictor()                 # bundled LiteMedSAM, ONNX Runtime when installed
    p.set_image(image)              # (H, W) or (H, W, 3) array
    masks = p.predict(boxes=[[x0, y0, x1, y1]]).masks

    vol = read_image("ct.nii.gz")   # or a DICOM folder, NRRD, ...; array (z, y, x) + geometry
    seg = segment_volume(vol, [ObjectPrompt(box3d=[x0, y0, z0, x1, y1, z1])], p)
    write_mask("mask.nii.gz", seg.labels, like=vol)

Importing medsamkit is cheap; heavy modules load on first use.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["Predictor", "__version__", "load_model", "read_image", "segment_2d", "segment_volume", "write_mask"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from .predict import Predictor

        return Predictor
    if name in ("segment_2d", "segment_volume"):
        from . import predict

        return getattr(predict, name)
    if name in ("read_image", "write_mask"):
        from . import io

        return getattr(io, name)
    if name == "load_model":
        from .models import load

        return load
    raise AttributeError(f"module 'medsamkit' has no attribute {name!r}")
