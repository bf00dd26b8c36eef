"""Run by ``test_finetune.py`` under ``torchrun --nproc_per_node 2``: fine-tune a tiny random model with DDP (gloo,
CPU) and save this rank's final weights to ``OUT/rank<r>.pt``.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/ddp_worker.py DATA OUT MODE``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from medsamkit.train.finetune import finetune
from medsamkit.train.loop import TrainConfig
from tests.models.test_layouts import SMALL, _random_model


def main(data: str, out: str, mode: str) -> None:
    base = _random_model(SMALL["litemedsam"])
    config = TrainConfig(epochs=2, batch_size=1, lr=1e-2, weight_decay=0.01, device="cpu")
    res = finetune(data, Path(out) / "run", mode, model=base, config=config, progress=False, val_fraction=0.0, test_fraction=0.0)
    assert res.model is not None
    state = {k: v.detach().clone() for k, v in res.model.state_dict().items()}
    torch.save({"state": state}, Path(out) / f"rank{res.rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4])
