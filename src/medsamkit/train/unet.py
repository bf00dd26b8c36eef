"""Training MONAI segmentation networks on raw, SAMAug-augmented or both inputs, and scoring a trained run.

:func:`train_unet` splits a 2D dataset (``run_dir/split.json``), reads the train and val cases into memory
(:mod:`medsamkit.train.data`), builds a MONAI network (:func:`medsamkit.models.unet.build_network`) and trains it
with MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` on two output classes (background, foreground) through
:func:`medsamkit.train.loop.fit`. The validation metric is the mean Dice over the val cases at the training
size, computed exactly as at test time: for a model trained on ``both``, on the mean of the foreground
probabilities of the raw and the augmented input.

:func:`evaluate_unet` scores a trained run on a split of a dataset at the original resolution through the
evaluation runner (:func:`medsamkit.evaluate.runner.evaluate_case` with the run as a segmenter); a pixel is
foreground when its probability is above the threshold (0.5: the argmax of the two classes).

The networks and their loading (:func:`~medsamkit.models.unet.load_unet`, :class:`~medsamkit.models.unet.TrainedUNet`)
are :mod:`medsamkit.models.unet`; prediction (:func:`~medsamkit.predict.unet.predict_unet`,
:func:`~medsamkit.predict.unet.views_for`) is :mod:`medsamkit.predict.unet`. Both are importable from here too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Dataset, run_split
from ..errors import OptionError
from ..metrics.torch_overlap import batch_dice
from ..models.unet import (  # noqa: F401 - the networks and their loading, also importable from here
    ARCHS,
    DEFAULT_CHANNELS,
    DEFAULT_STRIDES,
    TrainedUNet,
    build_network,
    foreground_probability,
    load_unet,
    size_multiple,
)
from ..predict.unet import UNetSegmenter, predict_unet, predict_views, views_for  # noqa: F401 - also from here
from .data import SPLITS, SegmentationDataset, each_case, load_case_priors, load_split_data, open_dataset, split_part
from .distributed import dist_info, make_loader
from .loop import FitResult, TrainConfig, ValStep, fit, seed_everything

# -------------------------------------------------------------------------------------------------- networks


#: the losses of :func:`unet_loss`
LOSSES = ("dice_ce", "dice_ce_batch")


def unet_loss(kind: str = "dice_ce") -> nn.Module:
    """MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` on logits ``(N, 2, S, S)`` and labels ``(N, 1, S, S)``.

    kind "dice_ce": soft Dice per image over both classes (background included) + cross-entropy. "dice_ce_batch":
    nnU-Net's choice for small foregrounds: soft Dice of the foreground class alone, pooled over the whole batch
    (``include_background=False, batch=True``) + cross-entropy; an image without foreground then adds no Dice term
    of its own, and the trivial all-background solution is no longer a flat region of the loss."""
    from monai.losses import DiceCELoss

    if kind == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if kind == "dice_ce_batch":
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    raise OptionError(f"unknown loss {kind!r}; use one of {', '.join(LOSSES)}")


def _ensemble_val_step(loss_fn: nn.Module) -> ValStep:
    """Validation on ``{"image": (N, K, C, S, S), "label": (N, 1, S, S)}``: loss over all views, Dice of the
    mean foreground probability of the K views thresholded at 0.5."""

    def step(model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch["image"], batch["label"]
        n, k = x.shape[:2]
        logits = model(x.flatten(0, 1))
        loss = loss_fn(logits, y.repeat_interleave(k, dim=0))
        prob = foreground_probability(logits).view(n, k, *logits.shape[2:]).mean(dim=1)
        return loss, batch_dice(prob > 0.5, y[:, 0] > 0)

    return step


# --------------------------------------------------------------------------------------------------- training


def train_unet(
    dataset: Dataset | str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    input: str = "raw",
    samaug_dir: str | os.PathLike[str] | None = None,
    *,
    size: int = 256,
    arch: str = "unet",
    config: TrainConfig | None = None,
    label: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    network: Mapping[str, Any] | None = None,
    augment: bool = True,
    resume: bool = False,
    progress: bool = True,
    split_seed: int | None = None,
    loss: str = "dice_ce",
    folds: int | None = None,
    fold: int | None = None,
) -> FitResult:
    """Train a MONAI segmentation network on a 2D dataset; everything goes to ``run_dir``.

    input: "raw", "samaug" or "both" (see :mod:`medsamkit.train.data`); the last two need ``samaug_dir``
    (``medsamkit samaug prepare`` output for this dataset). size: S of the ``S x S`` network input. label: train
    on one label value (default: every label > 0). The split (``split_cases`` with ``split_seed``, default
    ``config.seed``; fix it to compare training seeds on one test set; ``folds``/``fold``: k-fold by case, see
    :func:`~medsamkit.data.split_cases`) is written to ``run_dir/split.json``; a resumed run reuses it. network:
    extra :func:`build_network` arguments (channels, strides, num_res_units, dropout). augment: MONAI train-time
    augmentation. loss: :func:`unet_loss`'s kind (validation Dice is the same for every loss).
    Returns :func:`~medsamkit.train.loop.fit`'s result; the model is ``run_dir/best.pt`` (:func:`load_unet`).
    """
    config = config or TrainConfig()
    extra = dict(network or {})
    unknown = sorted(set(extra) - {"channels", "strides", "num_res_units", "dropout"})
    if unknown:
        raise OptionError(f"unknown network option(s): {', '.join(unknown)}; use channels, strides, num_res_units, dropout")
    if arch not in ARCHS:
        raise OptionError(f"unknown arch {arch!r}; use one of {', '.join(ARCHS)}")
    multiple = size_multiple(arch, extra.get("strides"))
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < multiple or size % multiple:
        raise OptionError(f"size must be a positive multiple of {multiple} for {arch}, got {size!r}")
    if loss not in LOSSES:
        raise OptionError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    if input != "raw" and samaug_dir is None:
        raise OptionError(f"input {input!r} needs samaug_dir (the output folder of `medsamkit samaug prepare`)")
    ds = open_dataset(dataset)
    run = Path(run_dir)
    split_seed = config.seed if split_seed is None else int(split_seed)
    split = run_split(
        run, ds, val_fraction, test_fraction, split_seed, resume=resume, write=dist_info()[0] == 0, folds=folds, fold=fold
    )
    spec, parts = load_split_data(ds, split, input, size=int(size), samaug_dir=samaug_dir, label=label)

    seed_everything(config.seed, deterministic=False)  # the initial weights depend on the seed only
    net_spec = {"arch": arch, "in_channels": spec.in_channels, "out_channels": 2, **extra}
    net = build_network(**net_spec)
    train_ds = SegmentationDataset(parts["train"], spec, augment=augment, seed=config.seed)
    train_loader = make_loader(train_ds, config.batch_size, shuffle=True, seed=config.seed, num_workers=config.num_workers)
    val_loader = None
    if parts["val"]:
        val_ds = SegmentationDataset(parts["val"], spec, ensemble=True)
        val_loader = make_loader(val_ds, config.batch_size, shuffle=False, num_workers=config.num_workers)
    loss_fn = unet_loss(loss)
    meta = {
        "task": "unet",
        "network": _jsonable(net_spec),
        "input": spec.to_dict(),
        "dataset": str(ds.root),
        "samaug_dir": str(Path(samaug_dir).resolve()) if samaug_dir is not None else None,
        "augment": augment,
        "loss": loss,
        "cases": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "train_items": len(train_ds),
    }
    return fit(
        net,
        train_loader,
        val_loader,
        loss_fn=loss_fn,
        config=config,
        run_dir=run,
        val_step=_ensemble_val_step(loss_fn),
        resume=resume,
        progress=progress,
        meta=meta,
    )


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ------------------------------------------------------------------------------------------------ evaluation


#: the columns of a run's per-case scores (:func:`write_scores`, ``medsamkit predict-unet --dataset``)
SCORE_COLUMNS = ("case", "dice", "iou", "gt_pixels", "pred_pixels", "height", "width", "views")


def evaluate_unet(
    run_dir: str | os.PathLike[str],
    dataset: Dataset | str | os.PathLike[str] | None = None,
    samaug_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    ensemble: bool = True,
    *,
    threshold: float = 0.5,
    checkpoint: str = "best",
    progress: bool = False,
    views: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per-case scores of a trained run at the original resolution, one dict per case in id order: ``case``,
    ``dice``, ``iou``, ``gt_pixels``, ``pred_pixels``, ``height``, ``width``, ``views`` ("raw", "samaug" or
    "raw+samaug"). Each case goes through :func:`medsamkit.evaluate.runner.evaluate_case` with the run as a
    segmenter (:class:`~medsamkit.predict.unet.UNetSegmenter`, protocol ``auto``) against the union of the target
    labels (``mask > 0``, or the run's label); a case without any target is scored too.

    dataset: default the training dataset (from the run's config). samaug_dir: default the run's (needed for
    samaug/both models). split: "train", "val", "test" (from ``run_dir/split.json``) or "all" (every case of
    ``dataset``, e.g. an external test set). A pixel is foreground where the probability > ``threshold``.
    views: force the inputs instead of the rules of :func:`~medsamkit.predict.unet.views_for` — ("raw",),
    ("samaug",) or ("raw", "samaug") (averaged), e.g. a ``both`` model on raw input alone; a ``raw`` model accepts
    only ("raw",).
    """
    from ..evaluate.runner import AUTO, EvalConfig, evaluate_case

    if split not in SPLITS:
        raise OptionError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not 0.0 <= threshold < 1.0:
        raise OptionError(f"threshold must be in [0, 1), got {threshold!r}")
    m = load_unet(run_dir, checkpoint)
    if dataset is None:
        dataset = m.meta.get("dataset")
        if not dataset:
            raise OptionError(f"{run_dir}: the run does not name its dataset; give one")
    ds = open_dataset(dataset)
    cases = split_part(run_dir, ds, split)
    if views is not None:
        views = tuple(views)
        if views not in (("raw",), ("samaug",), ("raw", "samaug")):
            raise OptionError(f"views must be ('raw',), ('samaug',) or ('raw', 'samaug'); got {views!r}")
        if m.spec.kind == "raw" and views != ("raw",):
            raise OptionError("a raw model only takes raw input: views=('raw',)")
        if m.spec.kind == "samaug" and "raw" in views:
            raise OptionError("a samaug model only takes augmented input: views=('samaug',)")
    need_priors = m.spec.kind == "samaug" or (m.spec.kind == "both" and ensemble)
    if views is not None:
        need_priors = "samaug" in views
    if samaug_dir is None and m.spec.kind != "raw":
        samaug_dir = m.meta.get("samaug_dir")
    if need_priors and samaug_dir is None:
        raise OptionError(f"a {m.spec.kind!r} model needs the dataset's priors: give samaug_dir")
    use_priors = samaug_dir is not None and m.spec.kind != "raw" and (views is None or "samaug" in views)
    cfg = EvalConfig(objects="union", label=m.spec.label, min_pixels=0)  # the target, present or not; masks kept
    rows = []
    for case in each_case(cases, progress):
        pri = load_case_priors(samaug_dir, case.id) if use_priors and samaug_dir is not None else None
        case_views = views if views is not None else views_for(m.spec, pri is not None, ensemble)
        segmenter = UNetSegmenter(m, case_views, pri, threshold=threshold, case_id=case.id)
        res = evaluate_case(case, [AUTO], segmenter, cfg, errors="raise")
        (row,) = res.rows
        height, width = (int(v) for v in row["image_shape"].split("x"))
        rows.append(
            {
                "case": case.id,
                "dice": float(row["dice"]),
                "iou": float(row["iou"]),
                "gt_pixels": int(row["size_px"]),
                "pred_pixels": int(res.masks[f"{row['label']}/-1/{AUTO}/0"].sum()),
                "height": height,
                "width": width,
                "views": "+".join(case_views),
            }
        )
    return rows


def write_scores(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the rows of :func:`evaluate_unet` as CSV (columns :data:`SCORE_COLUMNS`, floats with six decimals;
    :func:`medsamkit.evaluate.store.write_csv`)."""
    from ..evaluate.store import write_csv

    return write_csv(path, rows, SCORE_COLUMNS, decimals=6, lineterminator="\n")


def mean_dice(rows: Sequence[Mapping[str, Any]]) -> float:
    """Mean of the rows' ``dice`` (NaN for no rows)."""
    return float(np.mean([r["dice"] for r in rows])) if rows else math.nan
