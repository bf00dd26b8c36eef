from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medsamkit.prompts import (
    center_point,
    centroid_point,
    component_boxes,
    jitter_box,
    jitter_box_3d,
    mask_box,
    mask_box_3d,
    next_click,
    parse_protocol,
    positive_negative_points,
    random_points,
    ring_mask,
    shift_box,
)


def rect(h=40, w=60, r0=10, r1=20, c0=5, c1=35):
    m = np.zeros((h, w), bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


def test_boxes_are_inclusive_x_y():
    m = np.zeros((10, 20), bool)
    m[3, 7] = True
    assert mask_box(m).tolist() == [7, 3, 7, 3]
    assert mask_box(rect()).tolist() == [5, 10, 35, 20]
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((5, 5)))


def test_component_boxes_largest_first():
    m = rect()
    m[30:33, 50:52] = True  # small second component
    boxes = component_boxes(m)
    assert boxes.tolist() == [[5, 10, 35, 20], [50, 30, 51, 32]]
    # diagonal neighbours join under 8-connectivity only
    d = np.zeros((5, 5), bool)
    d[1, 1] = d[2, 2] = True
    assert len(component_boxes(d)) == 1 and len(component_boxes(d, connectivity=1)) == 2


def test_shift_box_only_grows_by_at_most_n_and_stays_inside():
    rng = np.random.default_rng(0)
    b = mask_box(rect())
    for _ in range(200):
        s = shift_box(b, 5, rng, (40, 60))
        assert (s[:2] <= b[:2]).all() and (s[2:] >= b[2:]).all()
        assert (b[:2] - s[:2] <= 5).all() and (s[2:] - b[2:] <= 5).all()
        assert s[0] >= 0 and s[1] >= 0 and s[2] <= 59 and s[3] <= 39
    # the draws cover 0..N on every side
    draws = np.array([shift_box(b, 3, rng, (40, 60)) - b for _ in range(300)])
    assert set(np.abs(draws[:, 0]).astype(int)) == {0, 1, 2, 3}


def test_jitter_box_relative_to_size():
    rng = np.random.default_rng(1)
    b = mask_box(rect())  # 31 x 11 px
    d = np.array([jitter_box(b, 0.1, rng, (400, 600)) - b for _ in range(500)])
    assert np.abs(d[:, [0, 2]]).max() <= round(0.1 * 31) and np.abs(d[:, [1, 3]]).max() <= round(0.1 * 11)
    assert np.abs(d[:, [0, 2]]).max() == 3  # the range is used
    assert (jitter_box(b, 0.0, rng, (40, 60)) == b).all()
    with pytest.raises(ValueError, match="jitter"):
        jitter_box(b, 1.5, rng, (40, 60))


def test_3d_boxes():
    m = np.zeros((6, 7, 8), bool)
    m[1:3, 2:5, 3:8] = True
    b = mask_box_3d(m)
    assert b.tolist() == [3, 2, 1, 7, 4, 2]
    j = jitter_box_3d(b, 0.3, np.random.default_rng(0), m.shape)
    assert (j >= 0).all() and j[3] <= 7 and j[4] <= 6 and j[5] <= 5


def test_centre_point_is_farthest_from_boundary():
    m = rect()
    x, y = center_point(m)
    assert m[int(y), int(x)]
    assert y == 15 and 10 <= x <= 30  # the middle row of the 11-row rectangle
    # an object touching the image border: the border counts as boundary
    e = np.zeros((20, 20), bool)
    e[:, :8] = True
    assert center_point(e)[0] == 3  # column 3 or 4 are equally far from the left border and the edge


def test_centroid_may_fall_outside_and_says_so():
    yy, xx = np.mgrid[:41, :41]
    r = np.hypot(yy - 20, xx - 20)
    ring = (r >= 10) & (r <= 15)
    c = centroid_point(ring)
    assert not c.inside and np.allclose(c.point, [20, 20])
    assert centroid_point(rect()).inside


def test_random_and_negative_points():
    rng = np.random.default_rng(3)
    m = rect()
    pts = random_points(m, 5, rng).astype(int)
    assert m[pts[:, 1], pts[:, 0]].all() and len({tuple(p) for p in pts}) == 5
    coords, labels = positive_negative_points(m, 3, 4, rng, ring_width=4)
    c = coords.astype(int)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert m[c[:3, 1], c[:3, 0]].all() and not m[c[3:, 1], c[3:, 0]].any()
    ring = ring_mask(m, 4)
    assert ring[c[3:, 1], c[3:, 0]].all()
    with pytest.raises(ValueError, match="fills the image"):
        positive_negative_points(np.ones((5, 5)), 1, 1, rng)


masks = arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24)))


@settings(max_examples=300, deadline=None)
@given(pred=masks, gt_seed=st.integers(0, 2**31 - 1))
def test_farthest_error_click_lies_in_the_error_with_the_right_label(pred, gt_seed):
    rng = np.random.default_rng(gt_seed)
    gt = rng.random(pred.shape) < rng.random()
    click = next_click(pred, gt, "farthest-error")
    fn, fp = gt & ~pred, pred & ~gt
    if not (fn | fp).any():
        assert click is None
        return
    assert click is not None
    assert (fn if click.positive else fp)[click.y, click.x]
    # farthest: no error pixel of the clicked region is deeper inside it
    from medsamkit.prompts import interior_distance

    region = fn if click.positive else fp
    d = interior_distance(region)
    assert d[click.y, click.x] == d.max()
    other = interior_distance(fp if click.positive else fn)
    assert d.max() >= other.max()


@settings(max_examples=200, deadline=None)
@given(pred=masks, seed=st.integers(0, 2**31 - 1))
def test_random_error_click_lies_in_the_error_and_is_seeded(pred, seed):
    gt = np.roll(pred, 1, axis=0) | np.roll(pred, 2, axis=1)
    a = next_click(pred, gt, "random-error", np.random.default_rng(seed))
    b = next_click(pred, gt, "random-error", np.random.default_rng(seed))
    assert a == b
    if a is not None:
        fn, fp = gt & ~pred, pred & ~gt
        assert (fn if a.positive else fp)[a.y, a.x]


def test_first_farthest_click_on_empty_prediction_is_the_centre_point():
    m = rect()
    c = next_click(np.zeros_like(m), m, "farthest-error")
    assert c.positive and [c.x, c.y] == center_point(m).tolist()


def test_protocol_parsing_round_trips():
    for text, name in [
        ("box", "box"),
        ("box:components", "box:components"),
        ("box-shift:5", "box-shift:5"),
        ("box-jitter:10%", "box-jitter:0.1"),
        ("point:center", "point:centre"),
        ("points:3", "points:3"),
        ("points:3+2", "points:3+2"),
        ("iterative:5:farthest-error", "iterative:5:farthest-error"),
        ("iterative:5:random-error:mask:start=box:select=oracle", "iterative:5:random-error:start=box:mask:select=oracle"),
        ("uncertainty:8:0.1", "uncertainty:8:0.1"),
        ("box:select=highest-iou", "box:select=highest-iou"),
    ]:
        p = parse_protocol(text)
        assert p.name == name
        assert parse_protocol(p.name) == p
    assert parse_protocol("iterative:5:farthest-error").steps == 6
    assert parse_protocol("point:centre").multimask and not parse_protocol("box").multimask


@pytest.mark.parametrize(
    "text, message",
    [
        ("lasso", "unknown prompt protocol"),
        ("box-jitter:abc", "jitter ratio"),
        ("iterative:5:nearest", "click rule"),
        ("iterative:0:farthest-error", ">= 1"),
        ("points:3+x", "integer"),
        ("box:select=best", "select must be"),
        ("box:colour=red", "unknown option"),
        ("everything", "automatic mask generator"),
        ("", "empty"),
    ],
)
def test_protocol_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_protocol(text)
