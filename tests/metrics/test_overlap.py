"""Overlap and size metrics: MONAI parity, empty-mask conventions, sizes with spacing, inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medsamkit.metrics import compute_metrics, dice, iou, size, volume_difference
from tests.metrics.blobs import cases_2d, cases_3d


def monai_overlap(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    import torch
    from monai.metrics import DiceMetric, MeanIoU

    p = torch.as_tensor(pred[None, None].astype(np.float32))
    g = torch.as_tensor(gt[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        d = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, g)
        j = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p, g)
    return float(d.reshape(-1)[0]), float(j.reshape(-1)[0])


def test_monai_parity() -> None:
    z2, z3 = np.zeros((64, 80), bool), np.zeros((16, 40, 48), bool)
    extra = [("empty-both", z2, z2), ("empty-pred", z2, cases_2d()[0][2]), ("empty-gt", cases_3d()[0][1], z3)]
    for name, pred, gt in cases_2d() + cases_3d() + extra:
        d, j = monai_overlap(pred, gt)
        assert dice(pred, gt) == pytest.approx(d, rel=1e-6), name
        assert iou(pred, gt) == pytest.approx(j, rel=1e-6), name


def test_hand_computed() -> None:
    a = np.zeros((6, 7), bool)
    b = np.zeros((6, 7), bool)
    a[1:4, 1:5] = True  # 12 pixels
    b[2:5, 2:6] = True  # 12 pixels, 6 shared
    assert dice(a, b) == pytest.approx(12 / 24) and iou(a, b) == pytest.approx(6 / 18)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, ~a) == 0.0 and iou(a, ~a) == 0.0


def test_empty_conventions() -> None:
    z = np.zeros((5, 5), bool)
    m = z.copy()
    m[2, 2] = True
    assert dice(z, z) == iou(z, z) == 1.0
    assert dice(z, m) == dice(m, z) == iou(z, m) == iou(m, z) == 0.0
    assert volume_difference(z, z) == 0.0
    assert volume_difference(m, z) == 1.0  # empty gt: relative to the prediction
    assert volume_difference(z, m) == -1.0
    assert size(z, 2.0) == 0.0


def test_sizes_and_volume_difference() -> None:
    gt = np.zeros((4, 10, 12), np.uint8)
    gt[1:3, 2:7, 3:9] = 1  # 2 * 5 * 6 = 60 voxels
    pred = np.zeros_like(gt)
    pred[1:3, 2:8, 3:9] = 3  # 72 voxels, nonzero = foreground
    spacing = (5.0, 0.8, 0.7)
    voxel = 5.0 * 0.8 * 0.7
    assert size(gt) == 60.0
    assert size(gt, spacing) == pytest.approx(60 * voxel)
    assert size(gt, 2.0) == pytest.approx(60 * 8.0)
    assert volume_difference(pred, gt, spacing) == pytest.approx(0.2)
    assert volume_difference(gt, pred) == pytest.approx(-12 / 72)
    m = compute_metrics(pred, gt, spacing)
    assert m["pred_size"] == pytest.approx(72 * voxel) and m["gt_size"] == pytest.approx(60 * voxel)
    assert m["volume_difference"] == pytest.approx(0.2)
    assert m["dice"] == pytest.approx(120 / 132) and m["iou"] == pytest.approx(60 / 72)
    assert m["empty_pred"] is False and m["empty_gt"] is False


def test_any_dimension() -> None:
    assert dice(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])) == 0.5
    a = np.zeros((3, 3, 3, 3), bool)
    a[1, 1, 1, :2] = True
    assert iou(a, a) == 1.0 and size(a, (1, 2, 3, 4)) == 48.0


def test_torch_input() -> None:
    import torch

    _, pred, gt = cases_2d()[3]
    assert dice(torch.from_numpy(pred), torch.from_numpy(gt)) == dice(pred, gt)
    assert iou(torch.from_numpy(pred).float().requires_grad_(), gt.astype(np.int16)) == iou(pred, gt)
    assert size(torch.from_numpy(gt).to(torch.float16), (0.5, 0.5)) == pytest.approx(gt.sum() / 4)
    assert type(dice(torch.from_numpy(pred), gt)) is float


def test_bad_inputs() -> None:
    a = np.zeros((4, 5), bool)
    with pytest.raises(ValueError, match=r"pred \(4, 5\) and gt \(4, 6\)"):
        dice(a, np.zeros((4, 6)))
    with pytest.raises(ValueError, match="same shape"):
        iou(np.zeros(3), np.zeros((3, 1)))
    f = np.zeros((4, 5))
    f[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        dice(f, a)
    with pytest.raises(ValueError, match="NaN"):
        size(f)
    with pytest.raises(ValueError, match="one entry per array axis"):
        size(a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="finite and > 0"):
        volume_difference(a, a, (1.0, 0.0))
    with pytest.raises(ValueError, match="dtype"):
        dice(np.array(["a", "b"]), np.array(["a", "b"]))
