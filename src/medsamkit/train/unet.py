"""MONAI segmentation networks trained on raw, SAMAug-augmented or both inputs; prediction and evaluation.

:func:`train_unet` splits a 2D dataset (``run_dir/split.json``), reads the train and val cases into memory
(:mod:`medsamkit.train.data`), builds a MONAI network (:func:`build_network`) and trains it with MONAI's
``DiceCELoss(to_onehot_y=True, softmax=True)`` on two output classes (background, foreground) through
:func:`medsamkit.train.engine.fit`. The validation metric is the mean Dice over the val cases at the training
size, computed exactly as at test time: for a model trained on ``both``, on the mean of the foreground
probabilities of the raw and the augmented input.

:func:`predict_unet` gives the foreground probability (float32 ``(H, W)`` on the original image's grid; the
network's ``S x S`` probability map resized back bilinearly): a ``raw`` model sees the raw picture, a
``samaug`` model the augmented one (priors needed), a ``both`` model the mean of the two (SAMAug's test-time
ensemble; priors needed) or, with ``ensemble=False``, the augmented input when priors are given and the raw one
when they are not. :func:`evaluate_unet` scores a trained run on a split of a dataset at the original
resolution; a pixel is foreground when its probability is above the threshold (0.5: the argmax of the two
classes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Dataset, read_split, run_split
from ..errors import MissingFileError, OptionError
from ..io.image import MedicalImage
from ..metrics.torch_overlap import batch_dice
from .data import (
    InputSpec,
    SegmentationDataset,
    as_priors,
    binary_target,
    load_case_priors,
    load_picture,
    load_split_data,
    make_view,
    open_dataset,
    resize_input,
    resize_probability,
)
from .engine import FitResult, TrainConfig, dist_info, fit, load_checkpoint, make_loader, seed_everything

ARCHS = ("unet", "basicunet", "attentionunet", "segresnet")
#: feature channels per level (MONAI UNet / AttentionUnet: one per level, the last is the bottleneck; BasicUNet:
#: its six ``features``; SegResNet: ``init_filters`` = the first entry)
DEFAULT_CHANNELS: dict[str, tuple[int, ...]] = {
    "unet": (16, 32, 64, 128, 256),
    "attentionunet": (16, 32, 64, 128, 256),
    "basicunet": (32, 32, 64, 128, 256, 32),
    "segresnet": (16,),
}
DEFAULT_STRIDES = (2, 2, 2, 2)


# -------------------------------------------------------------------------------------------------- networks


def build_network(
    arch: str = "unet",
    in_channels: int = 3,
    out_channels: int = 2,
    *,
    channels: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    num_res_units: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """A 2D MONAI network mapping ``(N, in_channels, S, S)`` to ``(N, out_channels, S, S)`` logits.

    arch "unet" (default): ``monai.networks.nets.UNet`` with ``channels`` (16, 32, 64, 128, 256), ``strides``
    (2, 2, 2, 2) (S must be a multiple of 16), ``num_res_units`` 2 residual units per block, instance norm and
    PReLU (MONAI's defaults), ~1.6 M parameters at 3 input channels. "attentionunet": ``AttentionUnet`` with
    the same channels/strides. "basicunet": ``BasicUNet`` with ``features`` = ``channels`` (six numbers,
    default (32, 32, 64, 128, 256, 32); S multiple of 16). "segresnet": ``SegResNet`` with ``init_filters`` =
    ``channels[0]`` (default 16; S multiple of 8).
    """
    from monai.networks import nets

    if arch not in ARCHS:
        raise OptionError(f"unknown arch {arch!r}; use one of {', '.join(ARCHS)}")
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise OptionError(f"{name} must be an integer >= 1, got {v!r}")
    if not 0.0 <= dropout < 1.0:
        raise OptionError(f"dropout must be in [0, 1), got {dropout!r}")
    ch = tuple(int(c) for c in (channels or DEFAULT_CHANNELS[arch]))
    st = tuple(int(s) for s in (strides or DEFAULT_STRIDES))
    if any(c < 1 for c in ch) or any(s < 1 for s in st):
        raise OptionError(f"channels and strides must be positive, got {ch} and {st}")
    if arch in ("unet", "attentionunet"):
        if len(st) != len(ch) - 1:
            raise OptionError(
                f"{arch}: give one stride per level change: {len(ch)} channels need {len(ch) - 1} strides, got {len(st)}"
            )
        if arch == "unet":
            return nets.UNet(2, in_channels, out_channels, channels=ch, strides=st, num_res_units=num_res_units, dropout=dropout)
        return nets.AttentionUnet(2, in_channels, out_channels, channels=ch, strides=st, dropout=dropout)
    if arch == "basicunet":
        if len(ch) != 6:
            raise OptionError(f"basicunet takes six feature numbers, got {len(ch)}: {ch}")
        return nets.BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=ch, dropout=dropout)
    return nets.SegResNet(
        spatial_dims=2, init_filters=ch[0], in_channels=in_channels, out_channels=out_channels, dropout_prob=dropout or None
    )


def size_multiple(arch: str, strides: Sequence[int] | None = None) -> int:
    """The input size S must be a multiple of this number for ``arch``."""
    if arch in ("unet", "attentionunet"):
        return int(np.prod(strides or DEFAULT_STRIDES))
    return {"basicunet": 16, "segresnet": 8}[arch]


def unet_loss() -> nn.Module:
    """MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``: logits ``(N, 2, S, S)``, labels ``(N, 1, S, S)``."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(N, S, S)`` probability of any non-background class (softmax; sigmoid for one output channel)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]


def _ensemble_val_step(loss_fn: nn.Module):
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
) -> FitResult:
    """Train a MONAI segmentation network on a 2D dataset; everything goes to ``run_dir``.

    input: "raw", "samaug" or "both" (see :mod:`medsamkit.train.data`); the last two need ``samaug_dir``
    (``medsamkit samaug prepare`` output for this dataset). size: S of the ``S x S`` network input. label: train
    on one label value (default: every label > 0). The split (``split_cases`` with ``split_seed``, default
    ``config.seed``; fix it to compare training seeds on one test set) is written to ``run_dir/split.json``; a
    resumed run reuses it. network: extra :func:`build_network` arguments
    (channels, strides, num_res_units, dropout). augment: MONAI train-time augmentation.
    Returns :func:`~medsamkit.train.engine.fit`'s result; the model is ``run_dir/best.pt`` (:func:`load_unet`).
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
    if input != "raw" and samaug_dir is None:
        raise OptionError(f"input {input!r} needs samaug_dir (the output folder of `medsamkit samaug prepare`)")
    ds = open_dataset(dataset)
    run = Path(run_dir)
    split_seed = config.seed if split_seed is None else int(split_seed)
    split = run_split(run, ds, val_fraction, test_fraction, split_seed, resume=resume, write=dist_info()[0] == 0)
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
    loss = unet_loss()
    meta = {
        "task": "unet",
        "network": _jsonable(net_spec),
        "input": spec.to_dict(),
        "dataset": str(ds.root),
        "samaug_dir": str(Path(samaug_dir).resolve()) if samaug_dir is not None else None,
        "augment": augment,
        "cases": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "train_items": len(train_ds),
    }
    return fit(
        net,
        train_loader,
        val_loader,
        loss_fn=loss,
        config=config,
        run_dir=run,
        val_step=_ensemble_val_step(loss),
        resume=resume,
        progress=progress,
        meta=meta,
    )


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ------------------------------------------------------------------------------------------------ prediction


@dataclass
class TrainedUNet:
    """A trained network in eval mode with what it needs to rebuild its inputs (:class:`~.data.InputSpec`)."""

    network: nn.Module
    spec: InputSpec
    meta: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    epoch: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def load_unet(run_dir: str | os.PathLike[str], checkpoint: str = "best", device: str | torch.device = "cpu") -> TrainedUNet:
    """The network of a :func:`train_unet` run from ``run_dir/best.pt`` (or ``"last"``), in eval mode on
    ``device``. The file is read with ``weights_only=True``."""
    if checkpoint not in ("best", "last"):
        raise OptionError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run = Path(run_dir)
    path = run / f"{checkpoint}.pt"
    if not path.is_file():
        raise MissingFileError(
            f"{path} not found: {run} is not a finished medsamkit U-Net run (train one with `medsamkit train unet`)"
        )
    ckpt = load_checkpoint(path)
    meta = dict(ckpt.get("meta") or {})
    if meta.get("task") != "unet" or "network" not in meta or "input" not in meta:
        raise OptionError(f"{path} is a training checkpoint but not of a U-Net run (task {meta.get('task')!r})")
    net = build_network(**meta["network"])
    net.load_state_dict(ckpt["model"])
    dev = torch.device(device)
    net.to(dev).eval()
    return TrainedUNet(net, InputSpec.from_dict(meta["input"]), meta, run, ckpt.get("epoch"), dev)


def views_for(spec: InputSpec, have_priors: bool, ensemble: bool) -> tuple[str, ...]:
    """The inputs a model of ``spec`` is applied to (rules in the module docstring); ValueError when priors are
    needed but missing."""
    if spec.kind == "raw":
        return ("raw",)
    if spec.kind == "samaug":
        if not have_priors:
            raise OptionError(
                "this model was trained on SAMAug-augmented inputs: give the image's priors (priors= / --priors / --samaug-dir)"
            )
        return ("samaug",)
    if ensemble:
        if not have_priors:
            raise OptionError(
                "this model was trained on both raw and augmented inputs; its test-time ensemble needs the image's priors "
                "(priors= / --priors / --samaug-dir), or use ensemble=False (--no-ensemble) for the raw input alone"
            )
        return ("raw", "samaug")
    return ("samaug",) if have_priors else ("raw",)


def predict_unet(
    model: TrainedUNet | str | os.PathLike[str],
    image: np.ndarray | MedicalImage,
    priors: Any = None,
    *,
    ensemble: bool = True,
    modality: str | None = None,
) -> np.ndarray:
    """Foreground probability of a 2D image: float32 ``(H, W)`` in [0, 1] on the image's own grid.

    model: a :class:`TrainedUNet` or a run folder (``best.pt`` is loaded). image: ``(H, W)``, ``(H, W, 1|3|4)``
    array or a 2D :class:`~medsamkit.io.MedicalImage`, made uint8 by the ``auto`` preset as in training (give
    ``modality`` "CT" for a raw CT slice). priors: the image's SAMAug priors (a ``Priors``, ``(seg, boundary)``
    pair, mapping or npz path; ``(H, W)`` each). Which inputs are used: see the module docstring.
    """
    m = model if isinstance(model, TrainedUNet) else load_unet(model)
    picture = _picture(image, modality)
    views = views_for(m.spec, priors is not None, ensemble)
    pri = None
    if "samaug" in views:
        pri = as_priors(priors)
        if pri[0].shape != picture.shape[:2] or pri[1].shape != picture.shape[:2]:
            raise OptionError(
                f"priors are {pri[0].shape} and {pri[1].shape}, the image is {picture.shape[0]} x {picture.shape[1]} (H, W)"
            )
    return _predict_views(m, picture, views, pri)


def _picture(image: np.ndarray | MedicalImage, modality: str | None) -> np.ndarray:
    from .data import to_picture

    return to_picture(image, modality)


def _predict_views(
    m: TrainedUNet, picture: np.ndarray, views: Sequence[str], priors: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    x = np.stack([resize_input(make_view(picture, m.spec, v, priors), m.spec.size) for v in views])
    with torch.inference_mode():
        logits = m.network(torch.from_numpy(x).to(m.device))
        prob = foreground_probability(logits).mean(dim=0).float().cpu().numpy()
    return resize_probability(prob, picture.shape[:2])


SPLITS = ("train", "val", "test", "all")


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
    "raw+samaug").

    dataset: default the training dataset (from the run's config). samaug_dir: default the run's (needed for
    samaug/both models). split: "train", "val", "test" (from ``run_dir/split.json``) or "all" (every case of
    ``dataset``, e.g. an external test set). A pixel is foreground where the probability > ``threshold``.
    views: force the inputs instead of the rules of :func:`views_for` — ("raw",), ("samaug",) or ("raw",
    "samaug") (averaged), e.g. a ``both`` model on raw input alone; a ``raw`` model accepts only ("raw",).
    """
    from ..metrics.overlap import dice_from_counts, iou_from_counts, overlap_counts

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
    if split == "all":
        ids = ds.ids
    else:
        ids = getattr(read_split(Path(run_dir) / "split.json"), split)
        missing = sorted(set(ids) - set(ds.ids))
        if missing:
            raise OptionError(f"the run's {split} split names case(s) that {ds.root} lacks: {', '.join(missing[:5])}")
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
    cases = ds.subset(ids).cases
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), unit="case", desc="evaluating")
    rows = []
    try:
        for case in cases:
            picture, labels = load_picture(case)
            pri = load_case_priors(samaug_dir, case.id) if use_priors else None  # type: ignore[arg-type]
            case_views = views if views is not None else views_for(m.spec, pri is not None, ensemble)
            if pri is not None and pri[0].shape != picture.shape[:2]:
                raise OptionError(f"case {case.id}: priors are {pri[0].shape}, the image is {picture.shape[:2]}")
            prob = _predict_views(m, picture, case_views, pri)
            pred = prob > threshold
            gt = binary_target(labels, m.spec.label)
            counts = overlap_counts(pred, gt)
            rows.append(
                {
                    "case": case.id,
                    "dice": dice_from_counts(*counts),
                    "iou": iou_from_counts(*counts),
                    "gt_pixels": counts[1],
                    "pred_pixels": counts[0],
                    "height": int(picture.shape[0]),
                    "width": int(picture.shape[1]),
                    "views": "+".join(case_views),
                }
            )
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


def mean_dice(rows: Sequence[Mapping[str, Any]]) -> float:
    """Mean of the rows' ``dice`` (NaN for no rows)."""
    return float(np.mean([r["dice"] for r in rows])) if rows else math.nan
