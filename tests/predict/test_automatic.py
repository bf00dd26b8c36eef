"""Everything mode, the algorithm (:mod:`medsamkit.predict.automatic` and the mask helpers of
:mod:`medsamkit.predict.masks`): NMS, RLE, stability, grids, crops, the box pyramid and the generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medsamkit.predict.automatic import (
    AutomaticMaskGenerator,
    EverythingOptions,
    _inside_prompt_box,
    box_pyramid,
    crop_boxes,
    default_options,
    point_grid,
)
from medsamkit.predict.masks import (
    box_iou_matrix,
    box_nms,
    mask_boxes,
    remove_small_regions,
    rle_decode,
    rle_encode,
    stability_score,
)
from tests.conftest import dice, disk_image


def test_stability_score_is_the_iou_of_the_two_thresholded_masks():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(5, 40, 30)).astype(np.float32)
    for thr, off in [(0.0, 1.0), (0.5, 2.0)]:
        got = stability_score(logits, thr, off)
        for i in range(5):
            hi, lo = logits[i] > thr + off, logits[i] > thr - off
            assert got[i] == pytest.approx((hi & lo).sum() / (hi | lo).sum(), rel=1e-6)
    assert stability_score(np.full((1, 4, 4), -10.0))[0] == 0.0


def brute_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        ok = True
        for k in keep:
            a, b = boxes[i], boxes[k]
            iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
            ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
            if inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 25),
    seed=st.integers(0, 2**31 - 1),
    thr=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9]),
)
def test_box_nms_matches_brute_force(n, seed, thr):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 40, size=(n, 2))
    wh = rng.integers(0, 20, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(float)
    scores = rng.choice([0.5, 0.7, 0.9], size=n) if seed % 2 else rng.random(n)  # ties half of the time
    assert box_nms(boxes, scores, thr).tolist() == brute_nms(boxes.tolist(), scores.tolist(), thr)


def test_box_iou_counts_pixels_inclusively():
    a = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.float64)
    iou = box_iou_matrix(a, a)
    assert iou[0, 0] == 1 and iou[0, 1] == pytest.approx(1 / 4)


@settings(max_examples=100, deadline=None)
@given(m=arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_rle_round_trip(m):
    rle = rle_encode(m)
    assert sum(rle["counts"]) == m.size and rle["size"] == list(m.shape)
    assert (rle_decode(rle) == m).all()


def test_rle_is_column_major_starting_with_zeros():
    m = np.array([[1, 0], [1, 1]], bool)  # column-major: 1, 1, 0, 1
    assert rle_encode(m)["counts"] == [0, 2, 1, 1]


def test_mask_boxes_and_small_regions():
    m = np.zeros((3, 10, 12), bool)
    m[0, 2:5, 3:7] = True
    m[1, 9, 11] = True
    assert mask_boxes(m).tolist() == [[3, 2, 6, 4], [11, 9, 11, 9], [0, 0, 0, 0]]
    blob = np.zeros((20, 20), bool)
    blob[2:12, 2:12] = True
    blob[5, 5] = False  # a 1-pixel hole
    blob[17, 17] = True  # a 1-pixel island
    filled, changed = remove_small_regions(blob, 4, "holes")
    assert changed and filled[5, 5]
    cleaned, changed = remove_small_regions(filled, 4, "islands")
    assert changed and not cleaned[17, 17] and cleaned[5, 5]
    assert not remove_small_regions(cleaned, 4, "islands")[1]  # nothing small left


def test_point_grid_and_crops():
    g = point_grid(4)
    assert g.shape == (16, 2) and g.min() == 0.125 and g.max() == 0.875
    boxes, layers = crop_boxes((100, 200), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 200, 100] and layers == [0, 1, 1, 1, 1]
    # layer-1 crops cover the image and overlap
    cover = np.zeros((100, 200), int)
    for x0, y0, x1, y1 in boxes[1:]:
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1 and cover.max() >= 2


def test_generator_records_are_consistent(predictor):
    img, _ = disk_image(96, 96, 48, 48, 20)
    # permissive thresholds: LiteMedSAM's point-prompt outputs score low (it was trained with boxes)
    opts = EverythingOptions(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="rle")
    res = AutomaticMaskGenerator(predictor, opts).generate(img)
    assert res.stats["prompts"] == 16 and res.stats["decoded_masks"] == 48
    assert res.records, res.stats
    areas = [r["area"] for r in res.records]
    assert areas == sorted(areas, reverse=True)
    kept_boxes = []
    for r in res.records:
        m = rle_decode(r["segmentation"])
        assert m.sum() == r["area"] > 0
        x0, y0, w, h = r["bbox"]
        assert mask_boxes(m[None])[0].tolist() == [x0, y0, x0 + w - 1, y0 + h - 1]
        kept_boxes.append([x0, y0, x0 + w - 1, y0 + h - 1])
    # after NMS no two kept boxes overlap more than the threshold
    iou = box_iou_matrix(torch.tensor(kept_boxes), torch.tensor(kept_boxes)).numpy()
    np.fill_diagonal(iou, 0)
    assert iou.max(initial=0) <= opts.box_nms_thresh
    labels = res.label_image()
    assert labels.shape == img.shape and labels.max() == len(res.records)


def test_box_pyramid_levels_and_costs():
    # sides 4/n, 8/n, ... 1, grid spacing a quarter of the side, capped at n per side
    assert box_pyramid(32) == [(1 / 8, 32), (1 / 4, 16), (1 / 2, 8), (1.0, 4)]
    assert sum(g * g for _, g in box_pyramid(32)) == 1360
    assert sum(g * g for _, g in box_pyramid(16)) == 336
    assert box_pyramid(1) == [(1.0, 1)]
    assert box_pyramid(8, (0.5,)) == [(0.5, 8)]
    with pytest.raises(ValueError, match="box_sizes"):
        EverythingOptions(prompt_mode="boxes", box_sizes=(0.0,))
    with pytest.raises(ValueError, match="prompt_mode"):
        EverythingOptions(prompt_mode="grid")


def test_default_options_per_model():
    lite = default_options("litemedsam", points_per_side=8)
    assert lite.prompt_mode == "boxes" and not lite.multimask_output and lite.points_per_side == 8
    sam = default_options("sam_vit_b")
    assert sam == EverythingOptions()  # SAM's own defaults
    with pytest.raises(TypeError):
        default_options("litemedsam", no_such_option=1)


def test_inside_prompt_box_rule():
    prompt = np.array([[10, 10, 50, 50]] * 4, float)
    masks = np.array([[20, 20, 40, 40], [10, 20, 40, 40], [20, 20, 40, 50], [11.5, 11.5, 48, 48]], float)
    assert _inside_prompt_box(masks, prompt, (256, 256), 1.0).tolist() == [True, False, False, True]
    # sides on the image border do not count: an object cut by the image edge is still kept
    on_border = np.array([[0, 0, 50, 50]], float)
    assert _inside_prompt_box(np.array([[0, 0, 30, 30]], float), on_border, (256, 256), 1.0).tolist() == [True]


def test_box_mode_finds_a_disk_with_the_bundled_model(predictor):
    img, disk = disk_image(128, 160, 70, 60, 22)
    # thresholds off: on this noisy synthetic disk the best mask (Dice 0.88) has stability 0.69
    opts = default_options("litemedsam", points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    res = AutomaticMaskGenerator(predictor, opts).generate(img)
    assert res.stats["prompts"] == sum(g * g for _, g in box_pyramid(8))
    assert res.stats["decoded_masks"] == res.stats["prompts"]  # single output per box
    best = max(
        dice(rle_decode(r["segmentation"]) if isinstance(r["segmentation"], dict) else r["segmentation"], disk)
        for r in res.records
    )
    assert best > 0.85, res.stats
    for r in res.records:
        assert r["predicted_iou"] >= opts.pred_iou_thresh and r["stability_score"] >= opts.stability_score_thresh
        x0, y0, x1, y1 = r["prompt_box"]
        bx, by, bw, bh = r["bbox"]
        assert x0 <= bx and y0 <= by and bx + bw - 1 <= x1 + 1 and by + bh - 1 <= y1 + 1


def test_skip_covered_decodes_fewer_prompts(predictor):
    img, _ = disk_image(128, 128, 64, 64, 30)
    full = AutomaticMaskGenerator(predictor, default_options("litemedsam", points_per_side=8)).generate(img)
    fast = AutomaticMaskGenerator(predictor, default_options("litemedsam", points_per_side=8, skip_covered=True)).generate(img)
    assert fast.stats["prompts_skipped"] > 0
    assert fast.stats["prompts"] + fast.stats["prompts_skipped"] == full.stats["prompts"]


def test_decode_chunk_bounds_memory_not_results(predictor):
    """``decode_chunk`` only splits a batch for the decoder: the same records whatever its size."""
    from medsamkit.errors import OptionError

    img, _ = disk_image(96, 96, 48, 48, 20)
    base = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "output_mode": "rle"}
    big = AutomaticMaskGenerator(predictor, EverythingOptions(**base, decode_chunk=64)).generate(img)
    small = AutomaticMaskGenerator(predictor, EverythingOptions(**base, decode_chunk=3)).generate(img)
    assert big.records and big.records == small.records
    assert EverythingOptions().decode_chunk == 8 and EverythingOptions().points_per_batch == 64
    with pytest.raises(OptionError, match="decode_chunk"):
        EverythingOptions(decode_chunk=0)
