"""Model-family pipelines: image -> model input, prompts -> model-input coordinates, logits -> image masks.

Coordinate conventions used throughout medsamkit (2D):

* an image is ``(H, W[, C])``; **x is the column index, y the row index**;
* a point ``(x, y)`` is a pixel index (its centre), float allowed;
* a box ``(x0, y0, x1, y1)`` has *inclusive* pixel-index corners: the object spans columns x0..x1 and
  rows y0..y1 (a one-pixel object at (5, 7) has box (5, 7, 5, 7)).

Each transform maps these into the model-input frame (the resized, padded square the encoder sees) exactly as
the family's reference implementation does, and maps the 256x256 low-res logits back to ``(H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import OptionError
from .image2d import to_rgb_uint8

SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


@dataclass(frozen=True)
class Geometry:
    """Where the original image lies in the model input.

    ``original`` = (H, W) of the user's image; ``resized`` = (h, w) of the resized image placed at the
    top-left of the ``input_size`` square; ``scale`` = (sx, sy) mapping original pixel coordinates to
    model-input coordinates.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    input_size: int
    scale: tuple[float, float]


def longest_side_shape(h: int, w: int, target: int) -> tuple[int, int]:
    """(h', w') with the longest side ``target``, rounding half up (SAM / LiteMedSAM convention)."""
    s = target / max(h, w)
    return max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))


def _resize_logits(logits: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel centres, i.e. ``align_corners=False``) resize of ``(..., h, w)`` float32 maps."""
    lead = logits.shape[:-2]
    flat = logits.reshape(-1, *logits.shape[-2:])
    out = np.empty((flat.shape[0], size_hw[0], size_hw[1]), dtype=np.float32)
    for i, m in enumerate(flat):
        out[i] = cv2.resize(m, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)
    return out.reshape(*lead, size_hw[0], size_hw[1])


class Transform:
    """Base class; subclasses define one family's pipeline."""

    name = "base"
    input_size = 1024
    #: whether box coordinates are truncated to integers after scaling (official LiteMedSAM does this)
    truncate_boxes = False

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Image ``(H, W[, C])`` -> model input ``(1, 3, S, S)`` float32 and its :class:`Geometry`."""
        raise NotImplementedError

    def points_to_input(self, points: np.ndarray, geom: Geometry) -> np.ndarray:
        """``(..., 2)`` (x, y) pixel coordinates of the original image -> model-input coordinates."""
        return np.asarray(points, dtype=np.float64) * np.array(geom.scale)

    def boxes_to_input(self, boxes: np.ndarray, geom: Geometry) -> np.ndarray:
        """``(N, 4)`` inclusive (x0, y0, x1, y1) -> model-input coordinates ``(N, 4)``."""
        sx, sy = geom.scale
        out = np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])
        return np.floor(out) if self.truncate_boxes else out

    def logits_to_image(self, logits: np.ndarray, geom: Geometry) -> np.ndarray:
        """Low-res logits ``(..., 256, 256)`` -> logits at the original size ``(..., H, W)``."""
        raise NotImplementedError


class LiteMedSAMTransform(Transform):
    """The official LiteMedSAM pipeline (256 input).

    3-channel uint8 -> resize longest side to 256 (OpenCV area interpolation) -> min-max to [0, 1] over the
    resized image -> zero-pad bottom/right to 256. Boxes are scaled by 256/max(H, W) and truncated to
    integers, points are scaled without rounding. Logits are cropped to the resized region and resized
    bilinearly to (H, W).
    """

    name = "litemedsam"
    input_size = 256
    truncate_boxes = True

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        rgb = to_rgb_uint8(image)
        h0, w0 = rgb.shape[:2]
        h, w = longest_side_shape(h0, w0, self.input_size)
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all())
        if grey:  # resizing one channel is the same as resizing three equal ones
            small = cv2.resize(rgb[..., 0], (w, h), interpolation=cv2.INTER_AREA)[..., None]
        else:
            small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        lo, hi = float(small.min()), float(small.max())
        norm = (small.astype(np.float64) - lo) / max(hi - lo, 1e-8)
        x = np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32)
        x[0, :, :h, :w] = norm.transpose(2, 0, 1)  # broadcasts the grey channel to 3
        s = self.input_size / max(h0, w0)
        return x, Geometry((h0, w0), (h, w), self.input_size, (s, s))

    def logits_to_image(self, logits: np.ndarray, geom: Geometry) -> np.ndarray:
        h, w = geom.resized
        r = logits.shape[-1] / self.input_size  # 1 for LiteMedSAM (256 logits for a 256 input)
        if r != 1:
            h, w = max(1, round(h * r)), max(1, round(w * r))
        return _resize_logits(np.ascontiguousarray(logits[..., :h, :w]), geom.original)


class SAMTransform(Transform):
    """SAM's 1024 pipeline (SAM ViT-B/L/H, MobileSAM).

    RGB uint8 -> resize longest side to 1024 (PIL bilinear) -> (x - pixel_mean) / pixel_std -> zero-pad
    bottom/right. Points and boxes are scaled per axis by (w'/W, h'/H). Logits: 256 -> 1024 bilinear, crop the
    resized region, bilinear to (H, W).
    """

    name = "sam"
    input_size = 1024

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        from PIL import Image

        rgb = to_rgb_uint8(image)
        h0, w0 = rgb.shape[:2]
        h, w = longest_side_shape(h0, w0, self.input_size)
        small = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        x = np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32)
        x[0, :, :h, :w] = ((small - SAM_PIXEL_MEAN) / SAM_PIXEL_STD).transpose(2, 0, 1)
        return x, Geometry((h0, w0), (h, w), self.input_size, (w / w0, h / h0))

    def logits_to_image(self, logits: np.ndarray, geom: Geometry) -> np.ndarray:
        up = _resize_logits(logits, (self.input_size, self.input_size))
        h, w = geom.resized
        return _resize_logits(np.ascontiguousarray(up[..., :h, :w]), geom.original)


class MedSAMTransform(Transform):
    """MedSAM ViT-B's pipeline: stretch to 1024x1024 (bicubic, anti-aliased, as scikit-image does), min-max to
    [0, 1]; points/boxes scaled by (1024/W, 1024/H); the 256x256 logits resized straight to (H, W)."""

    name = "medsam"
    input_size = 1024

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        from skimage.transform import resize

        rgb = to_rgb_uint8(image)
        h0, w0 = rgb.shape[:2]
        s = self.input_size
        big = resize(rgb, (s, s), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
        lo, hi = float(big.min()), float(big.max())
        norm = (big.astype(np.float64) - lo) / max(hi - lo, 1e-8)
        x = norm.transpose(2, 0, 1)[None].astype(np.float32)
        return np.ascontiguousarray(x), Geometry((h0, w0), (s, s), s, (s / w0, s / h0))

    def logits_to_image(self, logits: np.ndarray, geom: Geometry) -> np.ndarray:
        return _resize_logits(logits, geom.original)


TRANSFORMS: dict[str, type[Transform]] = {
    "litemedsam": LiteMedSAMTransform,
    "sam": SAMTransform,
    "medsam": MedSAMTransform,
}


def transform_for(pipeline: str, input_size: int | None = None) -> Transform:
    """The :class:`Transform` of a pipeline name (``litemedsam``, ``sam``, ``medsam``); ``input_size``
    overrides the family's model input side (for custom-size models)."""
    try:
        t = TRANSFORMS[pipeline]()
    except KeyError:
        raise OptionError(f"unknown pipeline {pipeline!r}; known: {sorted(TRANSFORMS)}") from None
    if input_size is not None:
        t.input_size = input_size
    return t
