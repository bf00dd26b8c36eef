"""MONAI networks for 2D pictures: every architecture maps (N, C, S, S) to (N, 2, S, S), the input spec's channels
and checks, and loading a trained network from a training checkpoint alone."""

from __future__ import annotations

import pytest
import torch

from medsamkit.models.unet import (
    CHECKPOINT_FORMAT,
    InputSpec,
    TrainedUNet,
    build_network,
    foreground_probability,
    load_unet,
    size_multiple,
)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("unet", {}),
        ("attentionunet", {"channels": (8, 16, 32), "strides": (2, 2)}),
        ("basicunet", {"channels": (8, 8, 16, 16, 32, 8)}),
        ("segresnet", {"channels": (8,)}),
    ],
)
def test_networks(arch, kwargs) -> None:
    net = build_network(arch, 5, 2, **kwargs)
    with torch.no_grad():
        out = net(torch.rand(2, 5, 32, 32))
    assert out.shape == (2, 2, 32, 32)


def test_network_errors_and_size_rules() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        build_network("resnet")
    with pytest.raises(ValueError, match="strides"):
        build_network("unet", channels=(8, 16, 32), strides=(2,))
    with pytest.raises(ValueError, match="in_channels"):
        build_network("unet", 0)
    assert size_multiple("unet") == 16 and size_multiple("unet", (2, 2)) == 4 and size_multiple("segresnet") == 8


def test_foreground_probability() -> None:
    two = torch.tensor([[[[0.0]], [[0.0]]], [[[2.0]], [[-1.0]]]])  # (2, 2, 1, 1)
    p = foreground_probability(two)
    assert p.shape == (2, 1, 1) and p[0].item() == pytest.approx(0.5) and p[1].item() == pytest.approx(1 / (1 + torch.e**3))
    assert foreground_probability(torch.zeros(1, 1, 2, 2)).eq(0.5).all()  # one channel: sigmoid


def test_input_spec_channels_and_checks() -> None:
    assert InputSpec(kind="raw", colour="rgb", size=32).in_channels == 3
    assert InputSpec(kind="both", colour="grey", size=32, mode="add").in_channels == 3
    assert InputSpec(kind="samaug", colour="rgb", size=32, mode="stack").in_channels == 5
    assert InputSpec(kind="both", colour="grey", size=8, mode="add").views == ("raw", "samaug")
    spec = InputSpec(kind="samaug", colour="grey", size=16, mode="stack", alpha=0.3, label=2)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="SAMAug mode"):
        InputSpec(kind="both", colour="grey", size=8)
    with pytest.raises(ValueError, match="input kind"):
        InputSpec(kind="mixed", colour="grey", size=8)
    with pytest.raises(ValueError, match="label"):
        InputSpec(kind="raw", colour="grey", size=8, label=0)


def _checkpoint(run, meta: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(**meta["network"])
    run.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "model": net.state_dict(), "epoch": 3, "meta": meta}, run / "best.pt")
    return net


def test_load_unet_rebuilds_the_network_from_the_checkpoint(tmp_path) -> None:
    spec = InputSpec(kind="raw", colour="grey", size=16)
    meta = {"task": "unet", "network": {"arch": "unet", "in_channels": 1, "channels": [4, 8], "strides": [2]}}
    meta["input"] = spec.to_dict()
    net = _checkpoint(tmp_path / "run", meta).eval()
    m = load_unet(tmp_path / "run")
    assert isinstance(m, TrainedUNet) and m.spec == spec and m.epoch == 3 and m.run_dir == tmp_path / "run"
    assert not m.network.training and m.device == torch.device("cpu")
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(m.network(x), net(x))
    with pytest.raises(ValueError, match="'best' or 'last'"):
        load_unet(tmp_path / "run", "final")
    with pytest.raises(FileNotFoundError, match="last.pt"):
        load_unet(tmp_path / "run", "last")
    _checkpoint(tmp_path / "other", {**meta, "task": "finetune"})
    with pytest.raises(ValueError, match="not of a U-Net run"):
        load_unet(tmp_path / "other")
