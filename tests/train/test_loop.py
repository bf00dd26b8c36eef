"""The generic training loop: determinism, resume, early stopping, checkpoints, logs, frozen parameters."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsamkit.data import load_dataset
from medsamkit.models.unet import InputSpec, build_network
from medsamkit.train.checkpoint import METRICS_COLUMNS, load_checkpoint, read_metrics
from medsamkit.train.data import SegmentationDataset, prepare_cases
from medsamkit.train.distributed import make_loader
from medsamkit.train.loop import TrainConfig, fit, seed_everything
from medsamkit.train.unet import unet_loss
from tests.train.synth import make_dataset


class Interrupt(Exception):
    """Raised by a callback to simulate a run killed after an epoch."""


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.2), nn.Conv2d(4, 2, 1))


def _loaders(n: int = 20, batch: int = 4) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    g = torch.Generator().manual_seed(123)
    x = torch.rand(n, 1, 12, 12, generator=g)
    y = (x > 0.6).long()  # a learnable rule: bright pixels are foreground
    ds = torch.utils.data.TensorDataset(x, y)
    val = torch.utils.data.TensorDataset(x[:6], y[:6])
    return make_loader(ds, batch, shuffle=True), make_loader(val, batch, shuffle=False)


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y[:, 0])


def _train(tmp_path, name: str, seed: int = 0, net: nn.Module | None = None, **cfg) -> tuple[nn.Module, object]:
    seed_everything(seed, deterministic=False)
    model = net if net is not None else _net()
    train, val = _loaders()
    config = TrainConfig(**{"epochs": 3, "batch_size": 4, "lr": 1e-2, "seed": seed, **cfg})
    res = fit(model, train, val, loss_fn=_ce, config=config, run_dir=tmp_path / name, progress=False)
    return model, res


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights_and_files(tmp_path) -> None:
    m1, r1 = _train(tmp_path, "a")
    m2, r2 = _train(tmp_path, "b")
    m3, _ = _train(tmp_path, "c", seed=1)
    assert _same_weights(m1, m2)
    assert not _same_weights(m1, m3)
    assert [h["train_loss"] for h in r1.history] == [h["train_loss"] for h in r2.history]
    assert r1.history[-1]["train_loss"] < r1.history[0]["train_loss"]  # it learns
    run = tmp_path / "a"
    with (run / "metrics.csv").open() as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == METRICS_COLUMNS and len(rows) == 4
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3]
    assert read_metrics(run)[1]["val_dice"] == pytest.approx(r1.history[1]["val_dice"], rel=1e-5)
    doc = json.loads((run / "config.json").read_text())
    assert doc["config"]["epochs"] == 3 and doc["trainable_parameters"] == sum(p.numel() for p in m1.parameters())
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 3 and len(last["history"]) == 3
    assert all(torch.equal(last["model"][k], v) for k, v in m1.state_dict().items())
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == r1.best_epoch and best["metric"] == pytest.approx(r1.best_metric)
    assert r1.best_metric == max(h["val_dice"] for h in r1.history)


def test_resume_equals_uninterrupted(tmp_path) -> None:
    cfg = {"epochs": 4, "grad_accum_steps": 2, "warmup_epochs": 1, "grad_clip": 1.0}
    full, full_res = _train(tmp_path, "full", **cfg)

    def stop_after_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise Interrupt

    seed_everything(0, deterministic=False)
    model = _net()
    train, val = _loaders()
    config = TrainConfig(**{"batch_size": 4, "lr": 1e-2, "seed": 0, **cfg})
    run = tmp_path / "killed"
    with pytest.raises(Interrupt):
        fit(model, train, val, loss_fn=_ce, config=config, run_dir=run, progress=False, on_epoch_end=stop_after_2)
    assert len(read_metrics(run)) == 2
    seed_everything(99, deterministic=False)  # a fresh process would start from other weights and RNG states
    resumed = _net()
    train, val = _loaders()
    res = fit(resumed, train, val, loss_fn=_ce, config=config, run_dir=run, resume=True, progress=False)
    assert res.resumed_from == 2 and res.epochs == 4
    assert _same_weights(full, resumed)
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in full_res.history]
    assert len(read_metrics(run)) == 4
    with pytest.raises(ValueError, match="lr"):
        fit(_net(), train, val, loss_fn=_ce, config=TrainConfig(**{**config.to_dict(), "lr": 0.5}), run_dir=run, resume=True)


def test_resume_with_augmented_segmentation_data(tmp_path) -> None:
    """The U-Net data pipeline (MONAI augmentation seeded per epoch and item, shuffled loader) resumes exactly."""
    data, samaug = make_dataset(tmp_path, n=6, mode="stack")
    spec = InputSpec(kind="both", colour="grey", size=32, mode="stack")
    cases = prepare_cases(load_dataset(data).cases, spec, samaug)

    def run(name: str, epochs_cb=None, resume: bool = False) -> nn.Module:
        seed_everything(0, deterministic=False)
        net = build_network("unet", spec.in_channels, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
        train = make_loader(SegmentationDataset(cases[:4], spec, augment=True, seed=0), 3, shuffle=True)
        val = make_loader(SegmentationDataset(cases[4:], spec, ensemble=False), 2, shuffle=False)
        config = TrainConfig(epochs=3, batch_size=3, lr=1e-2, seed=0)
        fit(
            net,
            train,
            val,
            loss_fn=unet_loss(),
            config=config,
            run_dir=tmp_path / name,
            progress=False,
            on_epoch_end=epochs_cb,
            resume=resume,
        )
        return net

    full = run("full")

    def stop(row: dict) -> None:
        if row["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run("killed", stop)
    resumed = run("killed", resume=True)
    assert _same_weights(full, resumed)


def test_early_stopping(tmp_path) -> None:
    scores = iter([0.5, 0.7, 0.69, 0.7, 0.6, 0.9, 0.95])

    def val_step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(0.0), torch.tensor([next(scores)])

    model = _net()
    train, _ = _loaders()
    one = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1)), batch_size=1)
    config = TrainConfig(epochs=7, lr=1e-3, patience=2, min_delta=0.001)
    res = fit(model, train, one, loss_fn=_ce, val_step=val_step, config=config, run_dir=tmp_path / "r", progress=False)
    # 0.69 and 0.7 (not better than 0.7 + min_delta) are the two bad epochs after the best (epoch 2)
    assert res.stop_reason == "early_stopping" and res.epochs == 4
    assert res.best_epoch == 2 and res.best_metric == pytest.approx(0.7)
    assert len(read_metrics(tmp_path / "r")) == 4
    assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == 2
    # resuming an early-stopped run trains nothing more
    res2 = fit(
        _net(), train, one, loss_fn=_ce, val_step=val_step, config=config, run_dir=tmp_path / "r", resume=True, progress=False
    )
    assert res2.stop_reason == "early_stopping" and res2.epochs == 4 and len(res2.history) == 4


def test_frozen_parameters_unchanged_and_not_optimised(tmp_path) -> None:
    seed_everything(0, deterministic=False)
    model = _net()
    frozen = model[0]
    for p in frozen.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    head_before = model[3].weight.detach().clone()
    _, res = _train(tmp_path, "frozen", net=model, weight_decay=0.5)
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    assert not torch.equal(head_before, model[3].weight)
    opt = load_checkpoint(tmp_path / "frozen" / "last.pt")["optimizer"]
    n_opt = sum(len(g["params"]) for g in opt["param_groups"])
    assert n_opt == 2  # the head's weight and bias only
    doc = json.loads((tmp_path / "frozen" / "config.json").read_text())
    assert doc["frozen_parameters"] == sum(p.numel() for p in frozen.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        _train(tmp_path, "none", net=model)


def test_schedule_warmup_cosine_and_constant(tmp_path) -> None:
    _, res = _train(tmp_path, "cos", epochs=4, warmup_epochs=1, lr=0.01)
    lrs = [h["lr"] for h in res.history]  # lr of each epoch's last step; 5 steps per epoch
    assert lrs[0] == pytest.approx(0.01)  # warmup ends on the first epoch's last step
    assert lrs[1] > lrs[2] > lrs[3] > 0
    _, res = _train(tmp_path, "const", epochs=3, schedule="constant", lr=0.01)
    assert [h["lr"] for h in res.history] == pytest.approx([0.01] * 3)


def test_determinism_flags_restored_and_time_budget(tmp_path) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    _, res = _train(tmp_path, "budget", epochs=50, max_minutes=1e-6)
    assert torch.are_deterministic_algorithms_enabled() == before
    assert res.stop_reason == "time_budget" and res.epochs == 1


def test_errors(tmp_path) -> None:
    train, val = _loaders()
    with pytest.raises(ValueError, match="loss_fn"):
        fit(_net(), train, val, config=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(_net(), train, val, loss_fn=lambda o, y: o.sum() * math.nan, config=TrainConfig(epochs=1), progress=False)
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 1)), batch_size=2)
    with pytest.raises(ValueError, match="no batches"):
        fit(_net(), empty, None, loss_fn=_ce, config=TrainConfig(epochs=1))


def test_no_validation_keeps_last_as_best(tmp_path) -> None:
    train, _ = _loaders()
    res = fit(_net(), train, None, loss_fn=_ce, config=TrainConfig(epochs=2), run_dir=tmp_path / "r", progress=False)
    assert res.best_epoch == 2 and math.isnan(res.best_metric)
    assert math.isnan(read_metrics(tmp_path / "r")[0]["val_dice"])
