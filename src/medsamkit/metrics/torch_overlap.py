"""Batch-first Dice on torch tensors, for training loops (validation scores computed on the device).

The numpy metrics of :mod:`.overlap` score one object; these score a batch at once: masks ``(B, ...)`` (any
number of spatial axes), one Dice per sample, returned as a float64 tensor ``(B,)`` on the masks' device.
The conventions are those of :func:`medsamkit.metrics.dice`: nonzero (or True) = foreground; both masks of a
sample empty -> 1.0, exactly one empty -> 0.0; never NaN.

torch is imported when a function is called, so ``import medsamkit.metrics`` stays free of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError, OptionError

if TYPE_CHECKING:
    import torch


def batch_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice ``2|P & G| / (|P| + |G|)`` of two batches of masks.

    pred, target: tensors of one shape ``(B, ...)`` (B >= 1 samples, at least one more axis), any dtype,
    nonzero = foreground. Returns float64 ``(B,)`` on their device: both empty -> 1.0, one empty -> 0.0.
    Raises :class:`~medsamkit.errors.InputError` when the shapes differ or a batch has no axis besides B."""
    import torch

    if pred.shape != target.shape:
        raise InputError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.ndim < 2:
        raise InputError(f"masks must be batch-first (B, ...) with at least one axis after B, got {tuple(pred.shape)}")
    p = pred if pred.dtype == torch.bool else pred != 0
    g = target if target.dtype == torch.bool else target != 0
    inter = (p & g).flatten(1).sum(1).double()
    total = (p.flatten(1).sum(1) + g.flatten(1).sum(1)).double()
    return torch.where(total == 0, torch.ones_like(total), 2 * inter / total.clamp_min(1))


def segmentation_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample binary Dice ``(N,)`` float64 of a segmentation network's output against a label map
    (:func:`batch_dice` of the foreground masks).

    logits: ``(N, C, *spatial)``; C == 1: foreground where the logit > 0; C >= 2: foreground where the argmax
    class is not 0. target: ``(N, 1, *spatial)`` or ``(N, *spatial)`` labels, foreground = value > 0.
    Both empty -> 1.0, one empty -> 0.0 (as :func:`medsamkit.metrics.dice`).
    """
    if logits.ndim < 3:
        raise OptionError(f"logits must be (N, C, *spatial), got shape {tuple(logits.shape)}")
    pred = logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(dim=1) > 0
    t = target[:, 0] if target.ndim == logits.ndim else target
    if t.shape != pred.shape:
        raise OptionError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    return batch_dice(pred, t > 0)
