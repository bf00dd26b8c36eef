"""SAMAug prior maps from everything-mode masks, and the augmented network input built from them.

SAMAug (Zhang et al., MICCAI 2023) runs SAM in everything mode on an image and turns the masks into two maps on
the image's pixel grid, then trains a segmentation network on the image augmented with them:

* **segmentation prior** (:func:`segmentation_prior`): every mask's pixels take the mask's stability score;
  where masks overlap the highest score wins; pixels covered by no mask are 0. float32 in [0, 1].
* **boundary prior** (:func:`boundary_prior`): the union of the *outer* boundaries of the masks. For each mask
  its holes are filled first (a hole = a background region, 4-connected, that does not reach the image edge),
  then a pixel of the filled mask is a boundary pixel when one of its 4 neighbours (up, down, left, right) lies
  outside the filled mask. This is a closed 8-connected contour one pixel wide, on the mask's own pixels; hole
  edges are never boundary. The image frame is not a boundary: pixels outside the image count as inside the
  mask, so a mask touching the image edge gets no contour along it. ``thickness`` t > 1 widens the contour
  inwards: mask pixels within t 4-neighbour steps of the outside. float32 in {0, 1}.

The augmented network input built from the two maps (:func:`augment_image`, modes ``"add"`` and ``"stack"``),
the :class:`Priors` record and the prior files (:func:`save_priors` / :func:`load_priors`,
``<samaug_dir>/priors/<case_id>.npz``) live on the inference side, :mod:`medsamkit.predict.unet`, since a U-Net
trained on augmented inputs needs them to predict; they are importable from here too (loaded on first use, so
this module itself needs only numpy and scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from ..errors import OptionError

if TYPE_CHECKING:
    from ..predict.unet import Priors

# the augmented input and the prior files: names of medsamkit.predict.unet, also importable from here
_UNET_NAMES = {
    "DEFAULT_ALPHA": "DEFAULT_ALPHA",
    "FORMAT_VERSION": "FORMAT_VERSION",
    "MODES": "SAMAUG_MODES",
    "Priors": "Priors",
    "augment_image": "augment_image",
    "augmented_channels": "augmented_channels",
    "is_grey": "is_grey",
    "load_priors": "load_priors",
    "save_priors": "save_priors",
}


def __getattr__(name: str) -> Any:
    if name in _UNET_NAMES:
        from ..predict import unet

        return getattr(unet, _UNET_NAMES[name])
    raise AttributeError(f"module 'medsamkit.samaug.priors' has no attribute {name!r}")


_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbourhood


def record_mask(record: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` bool mask of an everything-mode record (``segmentation`` as a bool array or COCO RLE
    dict). Raises ``InputError`` (a ``ValueError``) when it is missing or not of ``shape``."""
    if not isinstance(record, dict) or "segmentation" not in record:
        raise OptionError("an everything-mode record must be a dict with a 'segmentation' entry")
    seg = record["segmentation"]
    if isinstance(seg, dict):
        from ..predict.masks import rle_decode

        m = rle_decode(seg)
    else:
        m = np.asarray(seg)
        if m.dtype != bool:
            if not np.issubdtype(m.dtype, np.number) or not np.isin(m, (0, 1)).all():
                raise OptionError(f"record segmentation must be a bool mask or COCO RLE, got {m.dtype} values")
            m = m.astype(bool)
    if m.shape != tuple(shape):
        raise OptionError(f"record mask has shape {m.shape}, expected {tuple(shape)}")
    return m


def _shape(shape: Sequence[int]) -> tuple[int, int]:
    s = tuple(int(v) for v in shape)
    if len(s) != 2 or min(s) < 1:
        raise OptionError(f"shape must be (H, W) with H, W >= 1, got {tuple(shape)}")
    return s


def _stability(record: dict[str, Any], i: int) -> float:
    try:
        s = float(record["stability_score"])
    except (KeyError, TypeError, ValueError):
        raise OptionError(f"record {i} has no numeric 'stability_score'") from None
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        raise OptionError(f"record {i}: stability_score must be in [0, 1], got {s}")
    return s


def segmentation_prior(records: Sequence[dict[str, Any]], shape: Sequence[int]) -> np.ndarray:
    """Segmentation prior map ``(H, W)`` float32 in [0, 1]: at each pixel the highest stability score of the
    records' masks covering it, 0 where no mask does. ``shape`` = (H, W) of the image the masks belong to."""
    hw = _shape(shape)
    out = np.zeros(hw, dtype=np.float32)
    for i, r in enumerate(records):
        s = np.float32(_stability(r, i))
        m = record_mask(r, hw)
        np.maximum(out, np.where(m, s, np.float32(0)), out=out)
    return out


def outer_boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Outer boundary ``(H, W)`` bool of one mask, as defined in the module docstring: pixels of the
    hole-filled mask within ``thickness`` 4-neighbour steps of a pixel outside it (the image frame is not
    outside)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise OptionError(f"mask must be 2D (H, W), got shape {m.shape}")
    if isinstance(thickness, bool) or not isinstance(thickness, (int, np.integer)) or thickness < 1:
        raise OptionError(f"thickness must be an integer >= 1, got {thickness!r}")
    if not m.any():
        return m.copy()
    filled = ndimage.binary_fill_holes(m, structure=_CROSS)
    inner = ndimage.binary_erosion(filled, structure=_CROSS, iterations=int(thickness), border_value=1)
    return filled & ~inner


def boundary_prior(records: Sequence[dict[str, Any]], shape: Sequence[int], thickness: int = 1) -> np.ndarray:
    """Boundary prior map ``(H, W)`` float32 in {0, 1}: the union of the records' outer boundaries
    (:func:`outer_boundary`; holes' edges excluded, image frame excluded, ``thickness`` pixels wide, inwards)."""
    hw = _shape(shape)
    out = np.zeros(hw, dtype=bool)
    for r in records:
        out |= outer_boundary(record_mask(r, hw), thickness)
    return out.astype(np.float32)


def priors_from_records(records: Sequence[dict[str, Any]], shape: Sequence[int], thickness: int = 1) -> Priors:
    """Both prior maps of everything-mode ``records`` on an image of ``shape`` (H, W), with coverage stats:
    ``seg_coverage`` (fraction of pixels under some mask), ``boundary_fraction``, ``mean_stability``."""
    hw = _shape(shape)
    recs = list(records)
    seg = segmentation_prior(recs, hw)
    bnd = boundary_prior(recs, hw, thickness)
    stabs = [float(r["stability_score"]) for r in recs]
    stats = {
        "seg_coverage": round(float((seg > 0).mean()), 6),
        "boundary_fraction": round(float(bnd.mean()), 6),
        "mean_stability": round(float(np.mean(stabs)), 6) if stabs else None,
        "thickness": int(thickness),
    }
    from ..predict.unet import Priors

    return Priors(seg, bnd, len(recs), stats)
