"""The Predictor on the real LiteMedSAM: coordinate conventions, prompts, batching, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.predict import Predictor, segment_2d
from tests.conftest import box_of, dice, disk_image


@pytest.mark.parametrize(
    "h, w, cx, cy, r, rgb",
    [
        (300, 500, 350, 120, 45, False),  # wide image, disk right of centre and high
        (500, 260, 70, 380, 40, True),  # tall RGB image, disk bottom-left
        (24, 40, 20, 12, 8, False),  # tiny image
        (1200, 900, 200, 950, 120, False),  # large image
    ],
)
def test_box_on_bright_disk_gives_the_disk(predictor, h, w, cx, cy, r, rgb) -> None:
    img, disk = disk_image(h, w, cx, cy, r, rgb=rgb)
    predictor.set_image(img)
    assert predictor.image_size == (h, w)
    out = predictor.predict(boxes=box_of(disk))
    assert out.masks.shape == (1, 1, h, w) and out.masks.dtype == bool
    assert out.scores.shape == (1, 1) and out.low_res_logits.shape == (1, 1, 256, 256)
    m = out.masks[0, 0]
    assert dice(m, disk) > (0.85 if h < 50 else 0.93)
    ys, xs = np.nonzero(m)
    assert abs(xs.mean() - cx) < 0.1 * r + 1 and abs(ys.mean() - cy) < 0.1 * r + 1  # x = column, y = row


def test_points_only_and_multimask(predictor) -> None:
    """LiteMedSAM (like MedSAM) was trained with box prompts: from points alone it returns small,
    low-confidence masks around the clicks. The mechanics still follow SAM: 3 multimask outputs, masks at
    the clicked object."""
    img, disk = disk_image(320, 400, 150, 200, 50)
    predictor.set_image(img)
    clicks = [[130, 200], [170, 200], [150, 180], [150, 220]]
    out = predictor.predict(point_coords=clicks, point_labels=[1, 1, 1, 1], multimask=True)
    assert out.masks.shape == (1, 3, 320, 400) and out.scores.shape == (1, 3)
    best, score = out.best()
    assert best.shape == (1, 320, 400) and score.shape == (1,)
    grown = disk_image(320, 400, 150, 200, 55)[1]
    assert best.sum() > 50 and not (best[0] & ~grown).any()  # all on the clicked disk
    assert (out.scores < 0.5).all()  # and the model knows it is unsure


def test_negative_point_and_mask_input_refinement(predictor) -> None:
    img, disk = disk_image(256, 256, 128, 128, 40)
    predictor.set_image(img)
    first = predictor.predict(boxes=[80, 80, 176, 176])
    again = predictor.predict(
        boxes=[80, 80, 176, 176], point_coords=[[128, 128], [20, 20]], point_labels=[1, 0], mask_input=first.low_res_logits[:, 0]
    )
    assert dice(again.masks[0, 0], disk) > 0.9
    assert not np.array_equal(first.low_res_logits, again.low_res_logits)


def test_many_boxes_in_one_call_equal_single_calls(predictor) -> None:
    img, _ = disk_image(300, 300, 80, 80, 30)
    img2, _ = disk_image(300, 300, 220, 200, 40, seed=3)
    img = np.maximum(img, img2)
    predictor.set_image(img)
    boxes = np.array([[50, 50, 110, 110], [180, 160, 260, 240], [0, 0, 299, 299]])
    together = predictor.predict(boxes=boxes, chunk_size=2)
    for i, b in enumerate(boxes):
        alone = predictor.predict(boxes=b)
        assert np.abs(alone.low_res_logits[0] - together.low_res_logits[i]).max() < 1e-3
        assert (alone.masks[0] != together.masks[i]).sum() <= 2


def test_points_shared_by_boxes_and_per_box_points(predictor) -> None:
    img, _ = disk_image(200, 200, 100, 100, 30)
    predictor.set_image(img)
    boxes = [[60, 60, 140, 140], [70, 70, 130, 130]]
    shared = predictor.predict(boxes=boxes, point_coords=[[100, 100]])
    per_box = predictor.predict(boxes=boxes, point_coords=[[[100, 100]], [[100, 100]]], point_labels=[[1], [1]])
    assert np.array_equal(shared.masks, per_box.masks)


def test_segment_2d_labels(predictor) -> None:
    img, d1 = disk_image(200, 300, 70, 100, 30)
    img2, d2 = disk_image(200, 300, 220, 100, 30, seed=5)
    img = np.maximum(img, img2)
    seg = segment_2d(predictor, img, boxes=[box_of(d1), box_of(d2)])
    assert seg.labels.dtype == np.uint8 and set(np.unique(seg.labels)) == {0, 1, 2}
    assert dice(seg.labels == 1, d1) > 0.9 and dice(seg.labels == 2, d2) > 0.9
    clicks = [[200, 100], [240, 100], [220, 80], [220, 120]]
    seg_p = segment_2d(predictor, None, points=clicks)  # points only: one object, label 1
    assert set(np.unique(seg_p.labels)) == {0, 1} and not (seg_p.labels.astype(bool) & ~d2).any()
    seg_b = segment_2d(predictor, None, boxes=[box_of(d2)], points=[[220, 100, 1]])  # a box refined by a click
    assert set(np.unique(seg_b.labels)) == {0, 1} and dice(seg_b.labels == 1, d2) > 0.9
    with pytest.raises(ValueError, match="several boxes"):
        segment_2d(predictor, None, boxes=[box_of(d1), box_of(d2)], points=[[1, 1]])


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"boxes": [10, 10, 400, 50]}, r"box 0 \(10, 10, 400, 50\) lies outside the 300x200 image"),
        ({"boxes": [-1, 10, 40, 50]}, "lies outside"),
        ({"boxes": [50, 10, 40, 50]}, "x0 <= x1"),
        ({"boxes": [10, 10, 40]}, "must be"),
        ({"boxes": [[10, 10, 40, np.nan]]}, "NaN"),
        ({"boxes": "a,b"}, "numeric"),
        ({"point_coords": [[300, 10]]}, r"point \(300, 10\) lies outside"),
        ({"point_coords": [[3, 10]], "point_labels": [2]}, "must be 1"),
        ({"point_coords": [[3, 10], [4, 4]], "point_labels": [1]}, "does not match"),
        ({"point_labels": [1]}, "without point_coords"),
        ({}, "at least one prompt"),
        ({"boxes": [10, 10, 40, 50], "mask_input": np.zeros((64, 64))}, "mask_input must be"),
        ({"boxes": [[1, 1, 5, 5], [2, 2, 6, 6]], "point_coords": np.zeros((3, 1, 2))}, "3 point sets for 2 boxes"),
    ],
)
def test_bad_prompts_raise_clear_errors(predictor, kwargs, msg) -> None:
    predictor.set_image(np.zeros((200, 300), np.uint8))
    with pytest.raises(ValueError, match=msg):
        predictor.predict(**kwargs)


def test_predict_before_set_image_and_bad_embedding() -> None:
    p = Predictor("litemedsam")
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(boxes=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="embedding must be"):
        p.set_embedding(np.zeros((1, 256, 32, 32)), None)  # type: ignore[arg-type]


def test_bad_images(predictor) -> None:
    with pytest.raises(ValueError, match="NaN"):
        predictor.set_image(np.full((10, 10), np.nan))
    with pytest.raises(ValueError, match="shape"):
        predictor.set_image(np.zeros((10, 10, 5), np.uint8))


def test_torch_backend_gives_the_same_masks(predictor, litemedsam_model) -> None:
    img, disk = disk_image(240, 330, 160, 110, 45, rgb=True)
    torch_p = Predictor(litemedsam_model, backend="torch")
    assert torch_p.engine.backend == "torch" and predictor.engine.backend == "onnxruntime"
    outs = []
    for p in (predictor, torch_p):
        p.set_image(img)
        outs.append(p.predict(boxes=box_of(disk), point_coords=[[160, 110]]))
    assert np.abs(outs[0].low_res_logits - outs[1].low_res_logits).max() < 1e-3
    assert (outs[0].masks != outs[1].masks).sum() <= 2
