"""Training-time click sampling (prompts.clicks.sample_click / first_click): clicks land in the error region with the
right label, the farthest rule is the evaluation's, draws are seeded."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.errors import OptionError, PromptError
from medsamkit.prompts import center_point, error_regions, first_click, next_click, sample_click


def _disk(h: int = 48, w: int = 48, cx: float = 24, cy: float = 24, r: float = 10) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


@pytest.mark.parametrize("farthest_p", [0.0, 0.5, 1.0])
def test_clicks_land_in_the_error_region_with_its_label(farthest_p: float) -> None:
    gt = _disk()
    pred = _disk(cx=30)  # shifted: both a false-negative and a false-positive crescent
    fn, fp = error_regions(pred, gt)
    rng = np.random.default_rng(0)
    labels = set()
    for _ in range(200):
        c = sample_click(pred, gt, rng, farthest_p)
        assert c is not None
        assert fn[c.y, c.x] or fp[c.y, c.x]  # (x, y) = (column, row)
        assert c.positive == bool(fn[c.y, c.x])
        labels.add(c.positive)
    if farthest_p < 1.0:
        assert labels == {True, False}  # uniform draws hit both regions


def test_farthest_rule_matches_the_evaluation_and_random_draws_are_seeded() -> None:
    gt = _disk()
    pred = np.zeros_like(gt)
    pred[20:28, 20:28] = True
    pred[0:5, 0:5] = True  # a false positive in a corner
    for seed in range(5):
        assert sample_click(pred, gt, np.random.default_rng(seed), 1.0) == next_click(pred, gt, "farthest-error")
    a = [sample_click(pred, gt, np.random.default_rng(7), 0.0) for _ in range(3)]
    b = [sample_click(pred, gt, np.random.default_rng(7), 0.0) for _ in range(3)]
    assert a == b
    draws = {sample_click(pred, gt, np.random.default_rng(s), 0.0) for s in range(30)}
    assert len(draws) > 5  # random error pixels, not one fixed pixel


def test_no_error_gives_no_click_and_bad_probability_is_refused() -> None:
    gt = _disk()
    assert sample_click(gt, gt, np.random.default_rng(0), 0.5) is None
    with pytest.raises(OptionError, match="farthest_p"):
        sample_click(gt, gt, np.random.default_rng(0), 1.5)


def test_first_click_is_inside_the_object() -> None:
    gt = _disk(cx=15, cy=30, r=6)
    c = first_click(gt, np.random.default_rng(0), centre_p=1.0)
    assert c.positive and (c.x, c.y) == tuple(int(v) for v in center_point(gt))
    rng = np.random.default_rng(1)
    clicks = [first_click(gt, rng, centre_p=0.0) for _ in range(50)]
    assert all(c.positive and gt[c.y, c.x] for c in clicks)
    assert len({(c.x, c.y) for c in clicks}) > 10
    with pytest.raises(PromptError, match="empty"):
        first_click(np.zeros_like(gt), rng)
