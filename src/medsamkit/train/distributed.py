"""Devices and torch.distributed for training: the device a run uses, the process group, DDP and loaders.

:func:`init_distributed` creates the process group from ``torchrun``'s environment (gloo on CPU, NCCL on CUDA),
:func:`wrap_ddp` wraps a model in ``DistributedDataParallel`` (gradients averaged over the ranks, so every rank
keeps identical weights) and :func:`make_loader` gives each rank its share of a dataset through a
``DistributedSampler``. Without a process group (one process) every function here is the plain single-process
version: :func:`dist_info` is ``(0, 1)``, :func:`wrap_ddp` returns the model, :func:`make_loader` shuffles with
torch's global RNG. The training loop (:func:`medsamkit.train.loop.fit`) calls :func:`set_epoch` on each loader
before an epoch and saves the :func:`unwrap`-ped module's weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import OptionError


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as ``torch.device`` (OptionError, a ValueError,
    when the name is unknown or CUDA is asked for but not available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise OptionError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if d.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r} asked for but CUDA is not available; use 'cpu' or 'auto'")
    return d


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised torch.distributed process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: str = "auto") -> bool:
    """Join the process group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE`` > 1 and no group exists yet: backend gloo for CPU
    training, NCCL for CUDA (``device`` as in :class:`~medsamkit.train.loop.TrainConfig`; with CUDA each rank takes
    the GPU of its ``LOCAL_RANK``). Each rank's torch thread count is lowered to its share of the CPU cores when
    ``OMP_NUM_THREADS`` is unset. Returns True when this call created the group (the caller then ends it with
    :func:`shutdown_distributed`), False otherwise (single process, or a group that already exists)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not torch.distributed.is_available() or torch.distributed.is_initialized():
        return False
    use_cuda = resolve_device(device).type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // max(1, local_world)))
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def shutdown_distributed() -> None:
    """Leave and destroy the process group (no-op without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def wrap_ddp(model: nn.Module, device: str | torch.device = "cpu", find_unused_parameters: bool = False) -> nn.Module:
    """``model`` moved to ``device`` and wrapped in ``DistributedDataParallel`` when a process group with more
    than one rank exists (rank 0's parameters and buffers are broadcast to every rank at wrapping); the model
    itself otherwise. Every trainable parameter must take part in each step's loss unless
    ``find_unused_parameters``."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    model.to(dev)
    if dist_info()[1] <= 1:
        return model
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        inner: nn.Module = model.module
        return inner
    return model


def make_loader(
    dataset: torch.utils.data.Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> torch.utils.data.DataLoader[Any]:
    """A DataLoader over ``dataset``; with an initialised process group each rank gets its share through a
    ``DistributedSampler`` (shuffled with ``seed`` + epoch; :func:`~medsamkit.train.loop.fit` calls its
    ``set_epoch``). Without one, shuffling draws from torch's global RNG, which ``fit`` seeds and checkpoints."""
    _, world = dist_info()
    kwargs: dict[str, Any] = {"batch_size": batch_size, "num_workers": num_workers, "drop_last": drop_last}
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    if num_workers > 0:
        kwargs["persistent_workers"] = False
    if world > 1:
        sampler: torch.utils.data.DistributedSampler[Any] = torch.utils.data.DistributedSampler(
            dataset, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        return torch.utils.data.DataLoader(dataset, sampler=sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, shuffle=shuffle, **kwargs)


def set_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the loader's sampler, batch sampler and dataset where they have one (a
    ``DistributedSampler`` reshuffles, a dataset selects its augmentation draws)."""
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None)):
        fn = getattr(obj, "set_epoch", None)
        if callable(fn):
            fn(epoch)
