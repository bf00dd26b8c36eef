"""SAM's simulated interactive training for the mask decoder (``finetune(prompt="interactive")``).

Per object of a batch (Kirillov et al. 2023, section 3 and appendix A; SAM-Med2D trains the same way on medical
images):

1. **First prompt**: the object's box (jittered by ``bbox_shift`` as the box prompt is) with probability
   ``box_start_p``, otherwise one positive click (the object's centre with probability ``click_farthest_p``, else a
   random object pixel; plus SAM's padding point, as :class:`~medsamkit.predict.Predictor` adds it to clicks
   without a box). A lone click is ambiguous: its loss is the smallest over the three multimask outputs (SAM's
   rule), and the output with the highest predicted IoU goes on, as the evaluation's ``select=auto`` keeps it. A box
   uses the single-mask output.
2. **Correction rounds** (``clicks`` of them): a click from the current error
   (:func:`~medsamkit.prompts.sample_click`: the farthest error pixel with probability ``click_farthest_p``, else a
   uniformly random one; false negative -> positive click, false positive -> negative click) is added to the
   object's prompts, and the previous round's low-res logits are fed back as the mask prompt (detached, as SAM
   does). Single-mask output.
3. **Mask-only rounds** (``mask_only``): no new click, only the previous mask; one is the last round, the others
   are placed at random among the correction rounds (SAM uses two).

The loss is summed over the rounds: Dice (squared denominators) + binary cross-entropy per object, as the box
training's loss (MedSAM's), plus ``iou_loss_weight`` x the mean squared error between the IoU head's prediction and
the true IoU of each supervised output's mask, so the predicted IoU stays meaningful. ``grad_iterations`` limits
back-propagation to that many randomly chosen rounds of each batch (the others run without gradient, about a third
of the cost; the gradient is then an unbiased sample of the summed loss's up to scale).

Clicks are drawn on the low-res logit grid ``(L, L)`` (LiteMedSAM: 256 = the model input) and mapped to the
model-input frame: pixel (column c, row r) -> (x, y) = ((c + 0.5) * S / L - 0.5, (r + 0.5) * S / L - 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from ...errors import OptionError
from ...prompts import first_click, sample_click
from .options import FinetuneOptions

#: label of SAM's padding point (no prompt): the rounds that add no click add one, so a batch keeps one shape
PAD_LABEL = -1.0


@dataclass
class RoundResult:
    """One round of a batch: the per-object loss terms ``(N,)``, the kept low-res logits ``(N, 1, L, L)`` and
    their Dice ``(N,)`` against the target."""

    loss: torch.Tensor
    logits: torch.Tensor
    dice: torch.Tensor


def object_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-object Dice + BCE ``(N, K)`` of logits ``(N, K, L, L)`` against a target ``(N, 1, L, L)`` in {0, 1}:
    1 - (2 sum(p t) + 1e-5) / (sum(p^2) + sum(t^2) + 1e-5) with p = sigmoid(logits), plus the mean BCE with logits
    (MONAI's ``DiceCELoss(sigmoid=True, squared_pred=True)`` per object and output)."""
    t = target.expand_as(logits).to(logits.dtype)
    p = torch.sigmoid(logits)
    inter = (p * t).sum(dim=(2, 3))
    denom = (p * p).sum(dim=(2, 3)) + (t * t).sum(dim=(2, 3))
    dice = 1.0 - (2.0 * inter + 1e-5) / (denom + 1e-5)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(dim=(2, 3))
    return dice + bce


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU ``(N, K)`` of the masks ``logits > 0`` ``(N, K, L, L)`` with a target ``(N, 1, L, L)``; both empty -> 1."""
    pred = logits.detach() > 0
    t = target > 0.5
    inter = (pred & t).sum(dim=(2, 3)).float()
    union = (pred | t).sum(dim=(2, 3)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice ``(N,)`` of the masks ``logits > 0`` ``(N, 1, L, L)`` with a target ``(N, 1, L, L)``; both empty -> 1."""
    pred = logits.detach()[:, 0] > 0
    t = target[:, 0] > 0.5
    inter = (pred & t).sum(dim=(1, 2)).float()
    total = pred.sum(dim=(1, 2)).float() + t.sum(dim=(1, 2)).float()
    return torch.where(total > 0, 2.0 * inter / total.clamp(min=1), torch.ones_like(total))


def to_input_frame(col: float, row: float, input_size: int, low_res: int) -> tuple[float, float]:
    """A low-res pixel (column, row) -> model-input (x, y) of its centre (identity when L == S)."""
    s = input_size / low_res
    return (col + 0.5) * s - 0.5, (row + 0.5) * s - 0.5


def first_prompts(
    batch: Mapping[str, torch.Tensor], gt: np.ndarray, options: FinetuneOptions, rng: np.random.Generator, input_size: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The first prompt of each object: ``coords (N, 2, 2)`` model-input (x, y), ``labels (N, 2)`` and
    ``box_start (N,)`` bool. A box is its two corners (labels 2, 3; the batch's jittered ``box``), a click is one
    positive point plus the padding point (labels 1, -1). gt: bool ``(N, L, L)``."""
    n, low_res = gt.shape[0], gt.shape[-1]
    box = batch["box"].detach().cpu().numpy().astype(np.float32)
    coords = np.zeros((n, 2, 2), np.float32)
    labels = np.zeros((n, 2), np.float32)
    box_start: np.ndarray = np.asarray(rng.random(n) < options.box_start_p, dtype=bool)
    for i in range(n):
        if box_start[i]:
            coords[i] = box[i].reshape(2, 2)
            labels[i] = (2.0, 3.0)
        else:
            c = first_click(gt[i], rng, options.click_farthest_p)
            coords[i, 0] = to_input_frame(c.x, c.y, input_size, low_res)
            labels[i] = (1.0, PAD_LABEL)
    dev = batch["box"].device
    return torch.from_numpy(coords).to(dev), torch.from_numpy(labels).to(dev), box_start


def correction_points(
    pred: np.ndarray, gt: np.ndarray, options: FinetuneOptions, rng: np.random.Generator, input_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One new point per object: a correction click (:func:`~medsamkit.prompts.sample_click`) or, where the mask
    has no error left, the padding point. pred, gt: bool ``(N, L, L)``. Returns ``(N, 1, 2)`` model-input (x, y)
    and ``(N, 1)`` labels (1 positive, 0 negative, -1 padding)."""
    n, low_res = gt.shape[0], gt.shape[-1]
    coords = np.zeros((n, 1, 2), np.float32)
    labels = np.full((n, 1), PAD_LABEL, np.float32)
    for i in range(n):
        c = sample_click(pred[i], gt[i], rng, options.click_farthest_p)
        if c is not None:
            coords[i, 0] = to_input_frame(c.x, c.y, input_size, low_res)
            labels[i, 0] = float(c.label)
    return coords, labels


def round_plan(options: FinetuneOptions, rng: np.random.Generator) -> tuple[list[str], set[int]]:
    """The rounds of one batch, in order: "first", then "click" x ``clicks`` and "mask" x ``mask_only`` (one mask-only
    round last, the others at random places after the first), and the rounds that get a gradient."""
    middle = ["click"] * int(options.clicks) + ["mask"] * max(0, int(options.mask_only) - 1)
    order = [middle[i] for i in rng.permutation(len(middle))]
    plan = ["first", *order] + (["mask"] if options.mask_only else [])
    k = options.grad_iterations
    if k is None or k >= len(plan):
        grad = set(range(len(plan)))
    else:
        grad = {int(i) for i in rng.choice(len(plan), size=int(k), replace=False)}
    return plan, grad


def interactive_loss(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    options: FinetuneOptions,
    rng: np.random.Generator,
    *,
    input_size: int,
    train: bool = True,
) -> tuple[torch.Tensor, list[RoundResult]]:
    """Simulate one interaction per object of ``batch`` (module docstring) with ``model`` (a
    :class:`~medsamkit.train.finetune.model.FinetuneModel`) and return the summed loss of the rounds with a gradient
    and every round's :class:`RoundResult`. batch: ``embedding (N, 256, g, g)`` (or ``image``), ``target
    (N, 1, L, L)``, ``box (N, 4)`` model-input x0, y0, x1, y1. ``train=False``: no gradient anywhere (validation)."""
    target = batch["target"]
    gt = target[:, 0].detach().cpu().numpy() > 0.5
    plan, grad_rounds = round_plan(options, rng)
    coords, labels, box_start = first_prompts(batch, gt, options, rng, input_size)
    click_start = torch.from_numpy(~box_start).to(target.device)
    embedding = batch.get("embedding")
    if embedding is None:
        with torch.no_grad():  # interactive training is decoder mode: the image encoder is frozen
            embedding = model(batch, "encode")
    total = target.new_zeros(())
    results: list[RoundResult] = []
    mask_in: torch.Tensor | None = None
    for r, kind in enumerate(plan):
        if kind == "click":
            assert results  # a click round follows the first round
            pred = (results[-1].logits[:, 0] > 0).cpu().numpy()
            c, lab = correction_points(pred, gt, options, rng, input_size)
            coords = torch.cat([coords, torch.from_numpy(c).to(coords.device)], dim=1)
            labels = torch.cat([labels, torch.from_numpy(lab).to(labels.device)], dim=1)
        first = kind == "first"
        outputs = torch.arange(4) if first else torch.zeros(1, dtype=torch.long)
        with torch.set_grad_enabled(train and r in grad_rounds):
            logits, iou = model(
                {"embedding": embedding}, "decode", coords=coords, labels=labels, mask_input=mask_in, outputs=outputs
            )
            losses = object_losses(logits, target)  # (N, K)
            true_iou = mask_iou(logits, target)
            if first:
                # a box: output 0; a lone click: the best of the three multimask outputs (its loss), and the output
                # with the highest predicted IoU goes on
                multi = losses[:, 1:]
                best = multi.argmin(dim=1)
                mask_loss = torch.where(click_start, multi.gather(1, best[:, None])[:, 0], losses[:, 0])
                iou_err = (iou - true_iou) ** 2
                iou_loss = torch.where(click_start, iou_err[:, 1:].mean(dim=1), iou_err[:, 0])
                kept = torch.where(click_start, 1 + iou[:, 1:].detach().argmax(dim=1), torch.zeros_like(best))
                kept_logits = logits.gather(1, kept[:, None, None, None].expand(-1, 1, *logits.shape[2:]))
            else:
                mask_loss = losses[:, 0]
                iou_loss = (iou[:, 0] - true_iou[:, 0]) ** 2
                kept_logits = logits[:, :1]
            loss = mask_loss + float(options.iou_loss_weight) * iou_loss
            if train and r in grad_rounds:
                total = total + loss.mean()
        kept_logits = kept_logits.detach()
        results.append(RoundResult(loss.detach(), kept_logits, mask_dice(kept_logits, target)))
        mask_in = kept_logits
    if train and not total.requires_grad:
        raise OptionError("interactive training: no round had a gradient (no trainable parameter?)")
    return total, results


def validation_score(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], options: FinetuneOptions, *, input_size: int, clicks: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic interactive score for checkpoint selection: each object is run twice, from its tight box
    and from its centre click, each followed by ``clicks`` farthest-error corrections with the mask fed back. Returns
    the mean loss and per-object score ``(N,)``: the mean Dice over the two starts' first and last rounds."""
    scores = []
    losses = []
    for box_p in (1.0, 0.0):
        opts = replace(options, clicks=clicks, mask_only=0, click_farthest_p=1.0, box_start_p=box_p, grad_iterations=None)
        _, rounds = interactive_loss(model, batch, opts, np.random.default_rng(0), input_size=input_size, train=False)
        scores += [rounds[0].dice, rounds[-1].dice]
        losses += [rounds[0].loss.mean(), rounds[-1].loss.mean()]
    return torch.stack(losses).mean(), torch.stack(scores).mean(dim=0).double()
