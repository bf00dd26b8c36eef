"""The generic training loop: seeded, checkpointed every epoch, resumable, early-stopped, logged.

:func:`fit` trains any ``nn.Module`` with AdamW (:func:`build_optimizer`) on its trainable (``requires_grad``)
parameters, a per-step learning-rate schedule (linear warmup, then cosine decay or constant), gradient accumulation
and optional gradient clipping, validates after every epoch and keeps in ``run_dir``:

* ``config.json``: the :class:`TrainConfig`, the caller's ``meta`` (e.g. how to rebuild the network) and the
  parameter counts;
* ``last.pt``, ``best.pt`` and ``metrics.csv``, the files of :mod:`medsamkit.train.checkpoint`: ``last.pt`` is
  written after every epoch with every RNG state, so ``fit(..., resume=True)`` continues a killed run and ends with
  the same weights as an uninterrupted one (on CPU, bit for bit); ``best.pt`` holds the weights of the epoch with
  the highest validation metric (higher is better, e.g. Dice).

The loop knows nothing about the task. Batches are whatever the loaders yield (tensors anywhere inside tuples,
lists and dicts are moved to the device: :func:`to_device`); the default steps read ``(inputs, targets)`` pairs or
``{"image": ..., "label": ...}`` dicts (:func:`split_batch`) and call ``loss_fn(model(inputs), targets)``; a caller
with other needs passes ``train_step(model, batch) -> loss`` and ``val_step(model, batch) -> (mean loss, per-sample
scores)``.

torch.distributed (:mod:`medsamkit.train.distributed`): when a process group is initialised, only rank 0 writes
files and shows progress, the validation sums are all-reduced, and ``set_epoch`` is called on each loader's sampler
and dataset when they have one. The caller wraps the model with :func:`~medsamkit.train.distributed.wrap_ddp`
before calling :func:`fit`; the checkpoints hold the unwrapped module's weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from .._files import atomic_write_text
from ..errors import OptionError
from ..metrics.torch_overlap import segmentation_dice
from ..models.configs import StoredConfig
from .checkpoint import (
    CHECKPOINT_FORMAT,
    check_resumable,
    load_checkpoint,
    metrics_csv,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from .distributed import dist_info, resolve_device, set_epoch, unwrap

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw",)
SCHEDULES = ("cosine", "constant")
TrainStep = Callable[[nn.Module, Any], torch.Tensor]
ValStep = Callable[[nn.Module, Any], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class TrainConfig(StoredConfig):
    """Hyper-parameters of :func:`fit`.

    epochs: total epochs of the run (a resumed run counts the epochs already done).
    batch_size: samples per loader batch (used by the callers that build loaders, e.g. ``train_unet``).
    lr, weight_decay: AdamW's; weight decay applies to parameters with >= 2 dimensions only (not to biases and
    normalisation scales).
    schedule: "cosine" (decay from ``lr`` to ``lr * min_lr_ratio`` over the run's optimizer steps) or
    "constant"; either after ``warmup_epochs`` (may be fractional) of linear warmup from ``lr / warmup_steps``.
    grad_accum_steps: batches whose gradients are summed (each loss divided by this number) per optimizer step.
    grad_clip: clip the gradients' global L2 norm to this value (None: no clipping).
    patience: stop after this many epochs without a validation-metric improvement larger than ``min_delta``
    (None or 0: never stop early).
    seed: seeds python, numpy and torch at the start of :func:`fit` (callers seed again before building models).
    deterministic: ask torch for deterministic algorithms (cuDNN deterministic, no benchmark) during the fit.
    num_workers: loader worker processes (for the callers that build loaders).
    device: "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", ...
    max_minutes: wall-clock budget of one :func:`fit` call: no epoch is started that the previous epoch's
    duration says would end past it (the first epoch always runs). None: no budget.
    """

    _unknown = "TrainConfig field(s)"  # from_dict refuses other keys

    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    grad_accum_steps: int = 1
    grad_clip: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    seed: int = 0
    deterministic: bool = True
    num_workers: int = 0
    device: str = "auto"
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise OptionError(f"TrainConfig.{name} must be an integer >= {minimum}, got {v!r}")

        positive_int("epochs")
        positive_int("batch_size")
        positive_int("grad_accum_steps")
        positive_int("num_workers", 0)
        positive_int("seed", 0)
        if self.patience is not None:
            positive_int("patience", 0)
        for name in ("lr", "weight_decay", "warmup_epochs", "min_lr_ratio", "min_delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise OptionError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise OptionError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.min_lr_ratio > 1:
            raise OptionError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not (self.grad_clip > 0):
            raise OptionError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.max_minutes is not None and not (self.max_minutes > 0):
            raise OptionError(f"TrainConfig.max_minutes must be > 0 or None, got {self.max_minutes!r}")
        if self.optimizer not in OPTIMIZERS:
            raise OptionError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise OptionError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not isinstance(self.device, str) or not self.device:
            raise OptionError(f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


@dataclass
class FitResult:
    """What :func:`fit` did. Epoch numbers are 1-based; ``history`` holds the metrics.csv rows of the whole run
    (including epochs done before a resume). stop_reason: "completed", "early_stopping" or "time_budget"."""

    run_dir: Path | None
    epochs: int
    best_epoch: int | None
    best_metric: float
    stop_reason: str
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None

    @property
    def last_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "best.pt"


# ----------------------------------------------------------------------------------------------- determinism


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device) with ``seed``.

    deterministic: also select deterministic algorithms process-wide: cuDNN deterministic without benchmarking and,
    when CUDA is available, ``torch.use_deterministic_algorithms(True, warn_only=True)`` with
    ``CUBLAS_WORKSPACE_CONFIG`` set when unset (not on CPU-only machines: PyTorch's CPU kernels are deterministic for
    a fixed thread count, and the call imports torch's compiler stack, ~2.5 s). The same seed then gives
    bit-identical weights on CPU (and on one GPU for the ops that have deterministic kernels). :func:`fit` restores
    the previous flags when it returns.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also every CUDA device
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        if torch.cuda.is_available():  # the CPU kernels are deterministic already (for a fixed thread count)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def _restore_determinism_flags() -> Iterator[None]:
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        yield
    finally:
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != saved[:2]:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


# ------------------------------------------------------------------------------------------------ batches


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor inside tuples, lists and dicts moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a ``(inputs, targets)`` pair or an ``{"image": ..., "label": ...}`` dict."""
    if isinstance(batch, Mapping):
        if "image" in batch and "label" in batch:
            return batch["image"], batch["label"]
        raise OptionError(f"a dict batch needs 'image' and 'label' keys, got {', '.join(map(str, batch))}")
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise OptionError(
        "the default steps read (inputs, targets) pairs or {'image', 'label'} dicts; "
        f"got {type(batch).__name__} - pass train_step/val_step for other batches"
    )


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = _batch_size(v)
            if n:
                return n
    return 0


# ------------------------------------------------------------------------------------------------- schedule


def _lr_factor(schedule: str, warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """The learning-rate multiplier of optimizer step ``s`` (0-based)."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of ``model`` (weight decay on the >= 2-D ones only); ValueError when
    no parameter requires a gradient."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise OptionError("the model has no trainable parameters (every parameter has requires_grad=False)")
    groups = [
        g
        for g in ({"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


# ------------------------------------------------------------------------------------------------------ fit


class _LoopState(TypedDict):
    """Where a run stands after its last completed epoch (saved in ``last.pt`` under these keys, in this order)."""

    epoch: int
    best_metric: float
    best_epoch: int | None
    bad_epochs: int
    history: list[dict[str, float]]


def fit(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any = None,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    config: TrainConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    train_step: TrainStep | None = None,
    val_step: ValStep | None = None,
    metric_fn: Callable[[Any, Any], torch.Tensor] = segmentation_dice,
    resume: bool = False,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs on ``train_loader``, validating on ``val_loader`` after each.

    loss_fn: ``loss_fn(outputs, targets) -> scalar`` for the default steps (needed unless both steps are given).
    train_step: ``(model, batch) -> scalar loss`` (batch already on the device); default: ``loss_fn(model(x), y)``.
    val_step: ``(model, batch) -> (mean loss of the batch, per-sample scores (N,))`` run under ``torch.no_grad``
    in eval mode; default: ``loss_fn(model(x), y)`` and ``metric_fn(model(x), y)`` (per-sample Dice).
    The epoch's ``val_loss`` is the sample-weighted mean of the batch losses, ``val_dice`` the mean score; the
    best epoch has the highest ``val_dice``. Without ``val_loader`` both are NaN, ``best.pt`` follows the last
    epoch and there is no early stopping.
    run_dir: where config.json, last.pt, best.pt and metrics.csv go (None: nothing is written, no resume).
    resume: continue from ``run_dir/last.pt`` when it exists (model, optimizer, scheduler, RNG states, history,
    early-stopping state); the hyper-parameters that shape the run must match the checkpoint's (ValueError).
    meta: JSON-serialisable details stored in config.json and both checkpoints (e.g. how to rebuild the model).
    on_epoch_end: called with each epoch's metrics row after the checkpoints are written.
    Raises FloatingPointError when a training loss is NaN or infinite.
    """
    config = config or TrainConfig()
    if train_step is None or val_step is None:
        if loss_fn is None:
            raise OptionError("fit needs loss_fn unless both train_step and val_step are given")
        train_step = train_step or _default_train_step(loss_fn)
        val_step = val_step or _default_val_step(loss_fn, metric_fn)
    if meta is not None:
        json.dumps(meta)  # fail now, not after the first epoch
    out = Path(run_dir) if run_dir is not None else None
    if resume and out is None:
        raise OptionError("resume=True needs a run_dir")
    rank, world = dist_info()
    writer = out is not None and rank == 0
    device = resolve_device(config.device)
    try:
        n_batches = len(train_loader)
    except TypeError:
        raise OptionError("train_loader must have a length (a map-style dataset) for the learning-rate schedule") from None
    if n_batches == 0:
        raise OptionError("train_loader yields no batches (empty training set, or drop_last with too few samples)")
    steps_per_epoch = math.ceil(n_batches / config.grad_accum_steps)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(config.warmup_epochs * steps_per_epoch))
    generators = [g for g in (getattr(ld, "generator", None) for ld in (train_loader, val_loader)) if g is not None]

    with _restore_determinism_flags():
        seed_everything(config.seed, deterministic=config.deterministic)
        model.to(device)
        core = unwrap(model)
        optimizer = build_optimizer(model, config)
        factor = _lr_factor(config.schedule, warmup_steps, total_steps, config.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        state = _LoopState(epoch=0, best_metric=-math.inf, best_epoch=None, bad_epochs=0, history=[])
        resumed_from = None
        ckpt_path = out / "last.pt" if out is not None else None
        if resume and ckpt_path is not None and ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path)  # on the CPU: RNG states must stay there
            check_resumable(ckpt, config, ckpt_path)
            core.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"], generators)
            state = _LoopState(
                epoch=ckpt["epoch"],
                best_metric=ckpt["best_metric"],
                best_epoch=ckpt["best_epoch"],
                bad_epochs=ckpt["bad_epochs"],
                history=ckpt["history"],
            )
            resumed_from = int(ckpt["epoch"])
            log.info("resuming %s after epoch %d", out, resumed_from)
        n_train = sum(p.numel() for p in core.parameters() if p.requires_grad)
        n_frozen = sum(p.numel() for p in core.parameters() if not p.requires_grad)
        if writer:
            assert out is not None
            doc = {
                "format": CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "meta": dict(meta or {}),
                "model": type(core).__name__,
                "trainable_parameters": n_train,
                "frozen_parameters": n_frozen,
                "device": str(device),
                "world_size": world,
            }
            atomic_write_text(out / "config.json", json.dumps(doc, indent=2) + "\n")

        t_start = time.perf_counter()
        stop_reason = "completed"
        last_epoch_s = 0.0
        budget_s = None if config.max_minutes is None else config.max_minutes * 60.0
        while state["epoch"] < config.epochs:
            if config.patience and state["bad_epochs"] >= config.patience:
                stop_reason = "early_stopping"
                break
            elapsed = time.perf_counter() - t_start
            if budget_s is not None and last_epoch_s > 0 and elapsed + last_epoch_s > budget_s:
                stop_reason = "time_budget"
                log.info("stopping: another epoch (~%.0f s) would pass the %.1f min budget", last_epoch_s, config.max_minutes)
                break
            epoch = state["epoch"] + 1
            t0 = time.perf_counter()
            set_epoch(train_loader, epoch - 1)
            train_loss, lr = _train_epoch(
                model, train_loader, train_step, optimizer, scheduler, config, device, epoch, n_batches, progress and rank == 0
            )
            if val_loader is not None:
                set_epoch(val_loader, 0)
                val_loss, val_dice = _validate(model, val_loader, val_step, device, epoch, progress and rank == 0)
            else:
                val_loss = val_dice = math.nan
            seconds = time.perf_counter() - t0
            last_epoch_s = seconds
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_dice": val_dice,
                "lr": lr,
                "seconds": seconds,
            }
            state["history"] = [*state["history"], row]
            state["epoch"] = epoch
            if val_loader is None:
                improved = True
            else:
                improved = not math.isnan(val_dice) and val_dice > state["best_metric"] + (
                    config.min_delta if state["best_epoch"] is not None else 0.0
                )
            if improved:
                state["best_metric"] = val_dice if val_loader is not None else math.nan
                state["best_epoch"] = epoch
                state["bad_epochs"] = 0
            else:
                state["bad_epochs"] += 1
            if writer:
                assert out is not None
                weights = {k: v.detach().clone() for k, v in core.state_dict().items()}
                common = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "meta": dict(meta or {})}
                last = {
                    **common,
                    **state,
                    "model": weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(generators),
                }
                write_checkpoint(out / "last.pt", last)
                if improved:
                    write_checkpoint(
                        out / "best.pt", {**common, "model": weights, "epoch": epoch, "metric": state["best_metric"]}
                    )
                atomic_write_text(out / "metrics.csv", metrics_csv(state["history"]))
            log.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.4f, lr %.3g, %.1f s%s",
                epoch,
                config.epochs,
                train_loss,
                val_loss,
                val_dice,
                lr,
                seconds,
                " (best)" if improved and val_loader is not None else "",
            )
            if world > 1:
                torch.distributed.barrier()
            if on_epoch_end is not None:
                on_epoch_end(dict(row))
        best = state["best_metric"]
        return FitResult(
            run_dir=out,
            epochs=int(state["epoch"]),
            best_epoch=state["best_epoch"],
            best_metric=float(best) if best is not None and best != -math.inf else math.nan,
            stop_reason=stop_reason,
            history=list(state["history"]),
            seconds=time.perf_counter() - t_start,
            resumed_from=resumed_from,
        )


def _default_train_step(loss_fn: Callable[[Any, Any], torch.Tensor]) -> TrainStep:
    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = split_batch(batch)
        return loss_fn(model(x), y)

    return step


def _default_val_step(loss_fn: Callable[[Any, Any], torch.Tensor], metric_fn: Callable[[Any, Any], torch.Tensor]) -> ValStep:
    def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = split_batch(batch)
        out = model(x)
        return loss_fn(out, y), metric_fn(out, y)

    return step


def _bar(iterable: Any, total: int | None, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _train_epoch(
    model: nn.Module,
    loader: Any,
    step: TrainStep,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    n_batches: int,
    progress: bool,
) -> tuple[float, float]:
    """One pass over ``loader``; returns (sample-weighted mean loss, learning rate of the last optimizer step)."""
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    accum = config.grad_accum_steps
    loss_sum, count = 0.0, 0
    lr = optimizer.param_groups[0]["lr"]
    optimizer.zero_grad(set_to_none=True)
    bar = _bar(loader, n_batches, f"epoch {epoch}/{config.epochs}", progress)
    for i, batch in enumerate(bar):
        batch = to_device(batch, device)
        loss = step(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise OptionError("train_step must return a scalar tensor")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}, batch {i + 1}")
        (loss / accum).backward()
        n = _batch_size(batch) or 1
        loss_sum += float(loss.detach()) * n
        count += n
        if (i + 1) % accum == 0 or i + 1 == n_batches:
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if progress:
            bar.set_postfix(loss=f"{loss_sum / count:.4f}")
    sums = torch.tensor([loss_sum, float(count)], dtype=torch.float64, device=device)
    if dist_info()[1] > 1:
        torch.distributed.all_reduce(sums)
    return float(sums[0] / sums[1].clamp_min(1)), float(lr)


@torch.no_grad()
def _validate(
    model: nn.Module, loader: Any, step: ValStep, device: torch.device, epoch: int, progress: bool
) -> tuple[float, float]:
    """(sample-weighted mean loss, mean per-sample score) over ``loader``, summed over ranks."""
    model.eval()
    loss_sum, n_loss, score_sum, n_score = 0.0, 0, 0.0, 0
    try:
        total = len(loader)
    except TypeError:
        total = None
    for batch in _bar(loader, total, f"validating {epoch}", progress):
        batch = to_device(batch, device)
        loss, scores = step(model, batch)
        scores = torch.as_tensor(scores).detach().double().flatten()
        n = int(scores.numel()) or (_batch_size(batch) or 1)
        loss_sum += float(loss) * n
        n_loss += n
        score_sum += float(scores.sum())
        n_score += int(scores.numel())
    sums = torch.tensor([loss_sum, n_loss, score_sum, n_score], dtype=torch.float64, device=device)
    if dist_info()[1] > 1:
        torch.distributed.all_reduce(sums)
    val_loss = float(sums[0] / sums[1]) if sums[1] > 0 else math.nan
    val_score = float(sums[2] / sums[3]) if sums[3] > 0 else math.nan
    return val_loss, val_score
