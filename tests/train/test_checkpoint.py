"""The training loop's files: the metrics table reads back what was written (NaN as an empty cell), RNG states
restore every draw, and a resume with other shaping settings is refused."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from medsamkit.train.checkpoint import (
    METRICS_COLUMNS,
    check_resumable,
    load_checkpoint,
    metrics_csv,
    read_metrics,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from medsamkit.train.loop import TrainConfig


def test_metrics_table_round_trip(tmp_path) -> None:
    rows = [
        {"epoch": 1, "train_loss": 0.5, "val_loss": math.nan, "val_dice": math.nan, "lr": 1e-3, "seconds": 1.25},
        {"epoch": 2, "train_loss": 0.25, "val_loss": 0.3, "val_dice": 0.875, "lr": 5e-4, "seconds": 1.0},
    ]
    text = metrics_csv(rows)
    assert text.splitlines()[0] == ",".join(METRICS_COLUMNS) and text.splitlines()[1] == "1,0.5,,,0.001,1.25"
    (tmp_path / "metrics.csv").write_text(text)
    back = read_metrics(tmp_path)
    assert back[1] == rows[1] and back[0]["epoch"] == 1 and math.isnan(back[0]["val_dice"])


def test_rng_state_restores_every_draw(tmp_path) -> None:
    g = torch.Generator().manual_seed(5)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state([g])
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    write_checkpoint(tmp_path / "c.pt", {"format": "medsamkit.train/1", "rng": state})
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"], [g])  # through the file, weights_only
    assert (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item()) == first
    with pytest.raises(ValueError, match="generator state"):
        set_rng_state(state, [])


def test_resume_check_names_the_differences(tmp_path) -> None:
    ckpt = {"config": TrainConfig(lr=1e-3).to_dict()}
    check_resumable(ckpt, TrainConfig(lr=1e-3, epochs=99, patience=3), tmp_path)  # epochs, patience may change
    with pytest.raises(ValueError, match="settings differ"):
        check_resumable(ckpt, TrainConfig(lr=1e-2), tmp_path)
