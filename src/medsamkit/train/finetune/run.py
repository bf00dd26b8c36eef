"""The training run of :func:`finetune`: split, samples, embedding cache, model, the loop
(:func:`medsamkit.train.loop.fit`), ``adapter.pt`` and ``finetune.json``; resume checks; under ``torchrun`` the
ranks train together (DDP)."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._files import atomic_write_text
from ..._runs import describe_changes
from ...data import Dataset, Split, run_split
from ...errors import FileInputError, OptionError
from ...metrics.torch_overlap import segmentation_dice
from ...models.adapted import (
    ADAPTER_FILE,
    ADAPTER_FORMAT,
    arch_to_dict,
    load_base,
    weights_digest,
)
from ...models.checkpoint import load_checkpoint
from ...predict.autoseg import base_predictor
from ..data import open_dataset
from ..distributed import dist_info, init_distributed, make_loader, resolve_device, shutdown_distributed, wrap_ddp
from ..loop import FitResult, TrainConfig, fit, seed_everything
from .interactive import interactive_loss, validation_score
from .model import FinetuneModel, build_model, parameter_counts, save_adapter
from .options import FROZEN_ENCODER_MODES, RESUMABLE_CHANGES, SUMMARY_FILE, FinetuneOptions, default_config
from .samples import FinetuneDataset, augmented_copies, embed_images, read_images

# ---------------------------------------------------------------------------------------------------- results


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the engine's :class:`FitResult`, where the trained parameters went (rank 0),
    parameter counts, the split, the numbers of training/validation items, this process's rank and the trained
    model (the best epoch's weights on rank 0, the last epoch's on the other ranks)."""

    fit: FitResult
    adapter_path: Path | None
    parameters: dict[str, Any]
    split: Split
    items: dict[str, int] = field(default_factory=dict)
    rank: int = 0
    model: FinetuneModel | None = None

    @property
    def run_dir(self) -> Path | None:
        return self.fit.run_dir


def _loss() -> nn.Module:
    from monai.losses import DiceCELoss

    # Dice (squared denominators, per sample) + binary cross-entropy on the logits: MedSAM's loss
    return DiceCELoss(sigmoid=True, squared_pred=True)


# --------------------------------------------------------------------------------------------------- training


def finetune(
    dataset: Dataset | str | os.PathLike[str] | Sequence[Dataset | str | os.PathLike[str]],
    run_dir: str | os.PathLike[str],
    mode: str = "decoder",
    *,
    model: str | os.PathLike[str] | nn.Module = "litemedsam",
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> FinetuneResult:
    """Adapt a SAM-family model to a 2D (or sliced 3D) labelled dataset; everything goes to ``run_dir``.

    dataset: a dataset folder or :class:`~medsamkit.data.Dataset`, or several of them trained on together (case ids
    ``<dataset>/<case>``, one split over all cases).

    mode: one of :data:`MODES`. model: registry name, checkpoint path or a ``SamModel`` (an in-memory base is
    recorded by its weight digest; give it again as ``base=`` to :func:`load_adapted`). config: the training loop
    (epochs, batch size, AdamW lr, schedule, gradient accumulation, patience, seed, device, max_minutes; default
    :func:`default_config`).
    options: :class:`FinetuneOptions` fields (prompt, bbox_shift, cache_embeddings, adapter_ratio, lora_rank, ...).
    resume: continue from ``run_dir/last.pt`` (same split and options). Under ``torchrun`` the ranks train together
    (DDP); call it on every rank.

    Writes ``split.json``, ``config.json``, ``metrics.csv``, ``last.pt``, ``best.pt`` (the engine's files, whole
    model), ``adapter.pt`` (the best epoch's trained parameters only) and ``finetune.json`` (options, base model,
    parameter counts, items, timings).
    """
    config = config or default_config(mode)
    model_name = model if not isinstance(model, nn.Module) else _module_name(model)
    opts = FinetuneOptions(mode=mode, model=str(model_name), **options)
    created = init_distributed(config.device)
    try:
        return _finetune(dataset, Path(run_dir), opts, model, config, resume, progress)
    finally:
        if created:
            shutdown_distributed()


def _module_name(model: nn.Module) -> str:
    """How an in-memory base is named in the adapter file: its registry name, its weight file, or "in-memory"."""
    ref = getattr(model, "weights", None)
    if ref is None:
        return "in-memory"
    if ref.name != "custom":
        return str(ref.name)
    return str(ref.path)


def _finetune(
    dataset: Dataset | str | os.PathLike[str] | Sequence[Dataset | str | os.PathLike[str]],
    run: Path,
    opts: FinetuneOptions,
    model: str | os.PathLike[str] | nn.Module,
    config: TrainConfig,
    resume: bool,
    progress: bool,
) -> FinetuneResult:
    t_start = time.perf_counter()
    rank, world = dist_info()
    if opts.prompt == "interactive" and world > 1:
        raise OptionError("interactive training runs in one process (several decoder passes per step); not under torchrun")
    ds = open_dataset(dataset)
    summary_file = run / SUMMARY_FILE
    if resume and summary_file.is_file():
        _check_resume_options(summary_file, opts)
    split_seed = config.seed if opts.split_seed is None else int(opts.split_seed)
    split = run_split(
        run,
        ds,
        opts.val_fraction,
        opts.test_fraction,
        split_seed,
        resume=resume,
        write=rank == 0,
        folds=opts.folds,
        fold=opts.fold,
    )

    base = load_base(model, opts.checkpoint if not isinstance(model, nn.Module) else None, opts.size)
    if isinstance(model, nn.Module):
        base = copy.deepcopy(base) if base is model else base
    base_parameters = sum(p.numel() for p in base.parameters())
    base_info = {
        "model": opts.model,
        "checkpoint": opts.checkpoint,
        "arch": arch_to_dict(base.spec),
        "digest": weights_digest(base),
        "weights_sha256": getattr(getattr(base, "weights", None), "sha256", None),
    }
    from ...preprocess.transforms import transform_for

    spec = base.spec
    transform = transform_for(spec.pipeline, spec.img_size)
    t0 = time.perf_counter()
    train_images = read_images(ds.subset(split.train).cases, opts)
    val_images = read_images(ds.subset(split.val).cases, opts) if split.val else []
    if opts.augment_copies:
        train_images = [*train_images, *augmented_copies(train_images, opts.augment_copies, config.seed)]
    if not train_images:
        raise OptionError(
            f"{ds.root}: no training image holds a usable object (label {opts.label}, min_pixels {opts.min_pixels})"
        )
    read_s = time.perf_counter() - t0

    # embeddings: a disk cache filled by rank 0 (train + val), or validation embeddings in memory
    from ...predict.cache import EmbeddingCache

    frozen_encoder = opts.mode in FROZEN_ENCODER_MODES
    # no disk budget: every training picture stays encoded for all epochs (the folder is the user's to clear)
    cache = EmbeddingCache(max_bytes=1 << 30, disk_dir=opts.cache_embeddings, disk_max_bytes=None) if opts.cached else None
    val_cache = cache
    t0 = time.perf_counter()
    if cache is not None:
        # rank 0 encodes (and exports the ONNX engine if needed); the other ranks only compute the keys afterwards
        if rank == 0:
            embed_images(
                [*train_images, *val_images], base_predictor(base, base_info, opts.encode_backend, cache), progress=progress
            )
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            embed_images([*train_images, *val_images], base_predictor(base, base_info, opts.encode_backend, cache), compute=False)
    elif frozen_encoder and val_images:
        val_cache = EmbeddingCache(max_bytes=8 << 30)
        embed_images(val_images, base_predictor(base, base_info, opts.encode_backend, val_cache), progress=progress and rank == 0)
    encode_s = time.perf_counter() - t0

    seed_everything(config.seed, deterministic=False)  # adapters / generator initialisation depends on the seed only
    net = build_model(base, opts)
    counts = parameter_counts(net, base_parameters)
    need_image = not frozen_encoder or (opts.mode == "autosam" and opts.autosam_input != "embedding")
    low_res = spec.low_res
    train_ds = FinetuneDataset(
        train_images, transform, low_res, opts, train=True, seed=config.seed, cache=cache, need_image=need_image
    )
    if not len(train_ds):
        raise OptionError("no training object is visible at the model's input size")
    train_loader = make_loader(train_ds, config.batch_size, shuffle=True, seed=config.seed, num_workers=config.num_workers)
    val_loader = None
    val_ds = None
    if val_images:
        val_ds = FinetuneDataset(
            val_images, transform, low_res, opts, train=False, seed=config.seed, cache=val_cache, need_image=need_image
        )
        if len(val_ds):
            val_loader = make_loader(val_ds, config.batch_size, shuffle=False, num_workers=config.num_workers)
    loss_fn = _loss()
    val_prompt = "points" if opts.prompt == "points" else "box"
    interactive = opts.prompt == "interactive"
    # interactive rounds draw their clicks from one generator per run (seeded; a resumed run draws anew)
    click_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 16]))

    def train_step(m: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if interactive:
            return interactive_loss(m, batch, opts, click_rng, input_size=spec.img_size)[0]
        kind = opts.prompt
        if kind == "mixed":
            kind = "points" if float(torch.rand(())) < 0.5 else "box"
        return loss_fn(m(batch, kind), batch["target"])

    def val_step(m: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if interactive:
            return validation_score(m, batch, opts, input_size=spec.img_size)
        logits = m(batch, val_prompt)
        return loss_fn(logits, batch["target"]), segmentation_dice(logits, batch["target"])

    meta = {
        "task": "finetune",
        "options": opts.to_dict(),
        "base": base_info,
        "dataset": str(ds.root),
        "parameters": counts,
        "items": {"train": len(train_ds), "val": len(val_ds) if val_ds is not None else 0},
    }
    device = resolve_device(config.device)
    wrapped = wrap_ddp(net, device)
    result = fit(
        wrapped,
        train_loader,
        val_loader,
        loss_fn=loss_fn,
        config=config,
        run_dir=run,
        train_step=train_step,
        val_step=val_step,
        resume=resume,
        progress=progress,
        meta=meta,
    )
    adapter_path = None
    if rank == 0:
        best = load_checkpoint(run / "best.pt")
        net.load_state_dict(best["model"])
        adapter_path = save_adapter(
            run / ADAPTER_FILE, net, opts, base_info, epoch=best.get("epoch"), metric=best.get("metric"), counts=counts
        )
        doc = {
            "format": ADAPTER_FORMAT,
            "dataset": str(ds.root),
            "options": opts.to_dict(),
            "config": config.to_dict(),
            "base": base_info,
            "parameters": counts,
            "adapter_file": ADAPTER_FILE,
            "adapter_bytes": adapter_path.stat().st_size,
            "base_bytes": _base_bytes(base),
            "items": {
                "train": len(train_ds),
                "val": len(val_ds) if val_ds is not None else 0,
                "dropped_train_objects": train_ds.dropped,
                "train_images": len(train_images),
                "val_images": len(val_images),
            },
            "cases": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
            "best_epoch": result.best_epoch,
            "best_val_dice": None if math.isnan(result.best_metric) else result.best_metric,
            "epochs": result.epochs,
            "stop_reason": result.stop_reason,
            "seconds": {
                "read": round(read_s, 2),
                "encode": round(encode_s, 2),
                "fit": round(result.seconds, 2),
                "total": round(time.perf_counter() - t_start, 2),
            },
            "world_size": world,
        }
        atomic_write_text(summary_file, json.dumps(doc, indent=2) + "\n")
    if world > 1:
        torch.distributed.barrier()
    items = {"train": len(train_ds), "val": len(val_ds) if val_ds is not None else 0}
    return FinetuneResult(result, adapter_path, counts, split, items, rank, net.eval())


def _base_bytes(base: nn.Module) -> int | None:
    ref = getattr(base, "weights", None)
    try:
        return int(Path(ref.path).stat().st_size) if ref is not None else None
    except OSError:
        return None


def _check_resume_options(path: Path, opts: FinetuneOptions) -> None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("options", {})
    except (OSError, ValueError) as e:
        raise FileInputError(f"cannot read {path}: {e}") from e
    mine = opts.to_dict()
    diff = describe_changes(saved, mine, [k for k in mine if k not in RESUMABLE_CHANGES])
    if diff:
        raise OptionError(f"cannot resume {path.parent}: the options differ from the run's ({diff})")
