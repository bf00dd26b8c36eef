"""Devices and torch.distributed without a process group: one process is rank 0 of 1, nothing is wrapped, loaders
shuffle with the global RNG, set_epoch reaches samplers and datasets. (Two processes under torchrun:
tests/train/test_finetune.py's DDP test.)"""

from __future__ import annotations

import pytest
import torch

from medsamkit.train.distributed import (
    dist_info,
    init_distributed,
    make_loader,
    resolve_device,
    set_epoch,
    shutdown_distributed,
    unwrap,
    wrap_ddp,
)


def test_distributed_helpers_without_a_group(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") is False and dist_info() == (0, 1)
    net = torch.nn.Linear(2, 2)
    assert wrap_ddp(net, "cpu") is net  # one process: no wrapper
    assert unwrap(net) is net and unwrap(torch.nn.DataParallel(net)) is net
    shutdown_distributed()  # no group: nothing to do


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu:x")


class _Epochs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


def test_loader_and_set_epoch() -> None:
    ds = _Epochs()
    loader = make_loader(ds, 2, shuffle=False)
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    set_epoch(loader, 3)
    assert ds.epoch == 3
    torch.manual_seed(0)
    first = [b.tolist() for b in make_loader(ds, 4, shuffle=True)]
    torch.manual_seed(0)
    assert [b.tolist() for b in make_loader(ds, 4, shuffle=True)] == first  # the global RNG decides the order
