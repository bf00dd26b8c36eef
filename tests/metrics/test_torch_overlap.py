"""Batch-first torch Dice: one number per sample, the numpy Dice's values and empty-mask conventions, the
network-output rule of segmentation_dice, shape errors, and no torch import for ``import medsamkit.metrics``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from medsamkit.metrics import batch_dice, dice, segmentation_dice
from tests.metrics.blobs import cases_2d, cases_3d


def test_batch_dice_equals_the_numpy_dice_per_sample() -> None:
    rng = np.random.default_rng(0)
    pred = rng.random((6, 17, 23)) > 0.6
    gt = rng.random((6, 17, 23)) > 0.5
    pred[1] = False  # pred empty
    gt[2] = False  # gt empty
    pred[3] = gt[3] = False  # both empty
    pred[4] = gt[4]  # identical
    d = batch_dice(torch.from_numpy(pred), torch.from_numpy(gt))
    assert d.shape == (6,) and d.dtype == torch.float64
    assert d.tolist() == [dice(p, g) for p, g in zip(pred, gt)]  # exactly, not approximately
    assert d[1] == 0.0 and d[2] == 0.0 and d[3] == 1.0 and d[4] == 1.0


@pytest.mark.parametrize("cases", [cases_2d, cases_3d], ids=["2d", "3d"])
def test_batch_dice_on_blobs_matches_numpy(cases) -> None:
    for _, pred, gt, *_ in cases():
        got = batch_dice(torch.from_numpy(np.asarray(pred))[None], torch.from_numpy(np.asarray(gt))[None])
        assert got.item() == dice(pred, gt)


def test_nonzero_is_foreground_for_any_dtype() -> None:
    a = torch.tensor([[0.0, 0.3, -2.0, 0.0]])  # nonzero: positions 1, 2
    b = torch.tensor([[0, 0, 7, 7]], dtype=torch.uint8)  # nonzero: positions 2, 3
    assert batch_dice(a, b).item() == 0.5
    assert batch_dice(a != 0, b > 0).item() == 0.5


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        batch_dice(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="batch-first"):
        batch_dice(torch.zeros(4), torch.zeros(4))


def test_segmentation_dice_conventions() -> None:
    target = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 1
    target[1, 0, 0, 0] = 1
    logits = torch.zeros(3, 2, 4, 4)
    logits[:, 1, :2] = 1.0  # predicts the top two rows in every sample
    d = segmentation_dice(logits, target)
    assert d.tolist() == pytest.approx([1.0, 2 * 1 / (8 + 1), 0.0])
    assert segmentation_dice(torch.full((1, 1, 4, 4), -1.0), torch.zeros(1, 4, 4)).item() == 1.0  # both empty
    np.testing.assert_allclose(segmentation_dice(logits[:, 1:] - 0.5, target).numpy(), d.numpy())  # one channel: logit > 0
    # the same numbers as batch_dice of the foreground masks (argmax class != 0)
    assert torch.equal(d, batch_dice(logits.argmax(dim=1) > 0, target[:, 0] > 0))
    with pytest.raises(ValueError, match="does not match"):
        segmentation_dice(logits, torch.zeros(3, 4, 5))


def test_import_of_metrics_does_not_import_torch() -> None:
    code = "import sys, medsamkit.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
