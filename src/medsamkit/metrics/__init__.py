"""Segmentation metrics of binary masks (numpy or torch, 2D or 3D), matching MONAI's definitions.

Overlap: :func:`dice`, :func:`iou`, :func:`size`, :func:`volume_difference`. Surface distances (physical
units from ``spacing``, given in array-axis order): :func:`surface_distances`, :func:`hd95`,
:func:`hausdorff`, :func:`assd`, :func:`nsd`. :func:`compute_metrics` computes all of them for one object.
Empty masks never give NaN or inf; the conventions are in :mod:`.overlap` and :mod:`.surface`.
Batch-first torch Dice for training (:func:`batch_dice`, :func:`segmentation_dice`): :mod:`.torch_overlap`
(torch is imported when they are called).
"""

from .overlap import dice, iou, size, volume_difference
from .surface import assd, compute_metrics, hausdorff, hd95, nsd, surface_distances
from .torch_overlap import batch_dice, segmentation_dice

__all__ = [
    "assd",
    "batch_dice",
    "compute_metrics",
    "dice",
    "hausdorff",
    "hd95",
    "iou",
    "nsd",
    "segmentation_dice",
    "size",
    "surface_distances",
    "volume_difference",
]
