"""Overlap and size metrics of binary masks: Dice, IoU, physical size, relative volume difference.

Masks are numpy arrays or torch tensors of any dtype and any spatial dimension >= 1 (nonzero = foreground);
``pred`` and ``gt`` must have the same shape. Empty-mask conventions (no NaN or inf is ever returned):

* ``dice``, ``iou``: both empty -> 1.0; exactly one empty -> 0.0 (as MONAI's ``DiceMetric`` / ``MeanIoU``
  with ``ignore_empty=False``).
* ``volume_difference``: both empty -> 0.0; empty gt and non-empty pred -> 1.0 (the difference is taken
  relative to max(|gt|, |pred|) = |pred| in that case, instead of dividing by zero).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._inputs import SpacingLike, as_mask, as_mask_pair, as_spacing


def overlap_counts(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
    """(|pred|, |gt|, |pred & gt|) voxel counts of two bool arrays of the same shape."""
    return int(np.count_nonzero(p)), int(np.count_nonzero(g)), int(np.count_nonzero(p & g))


def dice_from_counts(n_pred: int, n_gt: int, n_inter: int) -> float:
    total = n_pred + n_gt
    return 1.0 if total == 0 else 2.0 * n_inter / total


def iou_from_counts(n_pred: int, n_gt: int, n_inter: int) -> float:
    union = n_pred + n_gt - n_inter
    return 1.0 if union == 0 else n_inter / union


def volume_difference_from_counts(n_pred: int, n_gt: int) -> float:
    if n_gt == 0:
        return 0.0 if n_pred == 0 else 1.0
    return (n_pred - n_gt) / n_gt


def dice(pred: Any, gt: Any) -> float:
    """Dice coefficient 2|P & G| / (|P| + |G|) in [0, 1]; both empty -> 1.0, one empty -> 0.0."""
    return dice_from_counts(*overlap_counts(*as_mask_pair(pred, gt)))


def iou(pred: Any, gt: Any) -> float:
    """Intersection over union |P & G| / |P | G| in [0, 1] (Jaccard); both empty -> 1.0, one empty -> 0.0."""
    return iou_from_counts(*overlap_counts(*as_mask_pair(pred, gt)))


def size(mask: Any, spacing: SpacingLike = None) -> float:
    """Physical area (2D) or volume (3D) of a mask: foreground count x prod(spacing), e.g. mm^2 or mm^3.

    spacing: voxel sizes in **array-axis order** (same order as ``mask.shape``, e.g. (z, y, x) for a volume;
    :class:`medsamkit.io.MedicalImage` stores spacing as (x, y, z), so pass ``image.spacing[::-1]``); a scalar
    is broadcast; None = 1.0 per axis (the result is then the voxel count)."""
    m = as_mask(mask)
    sp = as_spacing(spacing, m.ndim)
    return float(np.count_nonzero(m) * float(np.prod(sp)))


def volume_difference(pred: Any, gt: Any, spacing: SpacingLike = None) -> float:
    """Signed relative size difference (|P| - |G|) / |G|: 0 = same size, > 0 = over-segmentation, -1 = empty pred.

    The voxel volume cancels, so ``spacing`` (array-axis order, see :func:`size`) is only validated.
    gt empty: 0.0 if pred is empty too, else 1.0 (relative to max(|G|, |P|))."""
    p, g = as_mask_pair(pred, gt)
    as_spacing(spacing, p.ndim)
    return volume_difference_from_counts(int(np.count_nonzero(p)), int(np.count_nonzero(g)))
