"""The shipped click-aware decoder (litemedsam-interactive) on real held-in data (its training sets: HC18, BUSI):
one click at an object's centre gives a mask of that object, where the wheel's box-trained decoder does not, and a
correction click with the previous mask fed back costs at most a little on average.

Floors are set from what was measured (2 cores, ONNX Runtime; see the note on each) with a margin."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsamkit.metrics import dice
from medsamkit.predict import Predictor
from medsamkit.predict.segment import segment_2d
from medsamkit.prompts import center_point, mask_box, next_click
from tests.conftest import DATA, requires_shared

pytestmark = requires_shared


def _cases(name: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for f in sorted((DATA / name / "images").iterdir())[:n]:
        img = np.asarray(Image.open(f))
        mask = np.asarray(Image.open(DATA / name / "masks" / f"{f.stem}.png")) > 0
        out.append((img, mask))
    return out


@pytest.fixture(scope="module")
def held_in() -> list[tuple[np.ndarray, np.ndarray]]:
    return _cases("busi_breast_us", 4) + _cases("hc18_fetal_head_us", 4)


def test_a_centre_click_segments_the_object(held_in) -> None:
    new, old = Predictor("litemedsam-interactive"), Predictor("litemedsam")
    d_new, d_old = [], []
    for img, gt in held_in:
        x, y = center_point(gt)
        d_new.append(dice(segment_2d(new, img, points=[[x, y, 1]]).masks[0], gt))
        d_old.append(dice(segment_2d(old, img, points=[[x, y, 1]]).masks[0], gt))
    # measured (shipped 4-epoch decoder): new mean 0.661 (per image 0.30-0.91), old 0.002
    assert np.mean(d_new) >= 0.6 and min(d_new) >= 0.25
    assert np.mean(d_new) > np.mean(d_old) + 0.3


def test_a_correction_click_with_the_mask_fed_back_helps(held_in) -> None:
    p = Predictor("litemedsam-interactive")
    before, after = [], []
    for img, gt in held_in:
        box = mask_box(gt)
        first = segment_2d(p, img, boxes=[box])
        click = next_click(first.masks[0], gt, "farthest-error")
        if click is None:
            continue
        assert first.logits is not None
        second = segment_2d(p, None, boxes=[box], points=[[click.x, click.y, click.label]], mask_input=first.logits[0])
        before.append(dice(first.masks[0], gt))
        after.append(dice(second.masks[0], gt))
    assert len(after) >= 6
    # measured (shipped 4-epoch decoder): box 0.9345 -> box + 1 click 0.9249; per image -0.054 .. +0.018. Held-in
    # images whose box is already good: the first click may cost a little (the evaluation's pooled first step is
    # -0.003, docs/model_card_litemedsam_interactive.md) but must not derail the mask, as the box-trained decoder's
    # clicks do (0.834 -> 0.783 after one click, docs/evaluation.md)
    assert np.mean(after) >= np.mean(before) - 0.02
    assert min(a - b for a, b in zip(after, before)) >= -0.1
