"""segment_2d: the kept output's low-res logits, and the previous logits fed back as SAM's mask prompt."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.errors import MedsamkitWarning, PromptError
from medsamkit.predict import Predictor, segment_2d
from tests.conftest import box_of, dice, disk_image

IMG, DISK = disk_image(200, 300, 150, 100, 40)
IMG2, DISK2 = disk_image(200, 300, 240, 60, 25, seed=3)
TWO = np.maximum(IMG, IMG2)


@pytest.fixture(scope="module")
def disk_embedding(predictor: Predictor) -> tuple[np.ndarray, object]:
    return predictor.embed(IMG)  # encoded once for the module


@pytest.fixture
def on_disk(predictor: Predictor, disk_embedding: tuple) -> Predictor:
    predictor.set_embedding(*disk_embedding)
    return predictor


def test_logits_are_the_kept_outputs_of_the_predictor(predictor: Predictor) -> None:
    boxes = [box_of(DISK), box_of(DISK2)]
    seg = segment_2d(predictor, TWO, boxes=boxes)
    ref = predictor.predict(boxes=boxes)
    L = predictor.low_res
    assert seg.logits is not None and seg.logits.shape == (2, L, L) and seg.logits.dtype == np.float32
    assert np.array_equal(seg.logits, ref.low_res_logits[:, 0])
    assert np.array_equal(seg.masks, ref.masks[:, 0])
    # a lone click: the multimask output with the highest predicted IoU is kept, its logits with it
    seg_p = segment_2d(predictor, None, points=[[150, 100]])
    ref_p = predictor.predict(point_coords=[[150, 100]], multimask=True)
    k = int(ref_p.scores[0].argmax())
    assert seg_p.logits is not None and seg_p.logits.shape == (1, L, L)
    assert np.array_equal(seg_p.logits[0], ref_p.low_res_logits[0, k])
    assert np.array_equal(seg_p.masks[0], ref_p.masks[0, k])


def test_mask_input_changes_the_result(on_disk: Predictor) -> None:
    box = box_of(DISK)
    first = segment_2d(on_disk, None, boxes=[box])
    assert first.logits is not None and dice(first.masks[0], DISK) > 0.9
    # a negative click at the centre of a well-segmented disk: without the previous mask LiteMedSAM (box-trained)
    # carves the object up; with it the answer stays close to the previous mask
    corr = [[150, 100, 0]]
    plain = segment_2d(on_disk, None, boxes=[box], points=corr)
    fed = segment_2d(on_disk, None, boxes=[box], points=corr, mask_input=first.logits[0])
    assert fed.logits is not None and plain.logits is not None
    assert (fed.masks[0] != plain.masks[0]).sum() > 100
    assert not np.allclose(fed.logits, plain.logits, atol=1e-3)
    # exactly what the Predictor gives for the same prompts and mask prompt, single-mask output
    ref = on_disk.predict(boxes=box, point_coords=[[150, 100]], point_labels=[0], mask_input=first.logits[0])
    assert np.array_equal(fed.masks[0], ref.masks[0, 0]) and np.array_equal(fed.logits[0], ref.low_res_logits[0, 0])
    # (1, L, L) is the same as (L, L)
    fed3 = segment_2d(on_disk, None, boxes=[box], points=corr, mask_input=first.logits)
    assert np.array_equal(fed3.logits, fed.logits)  # type: ignore[arg-type]


def test_points_with_mask_input_use_the_single_mask_output(on_disk: Predictor) -> None:
    click = segment_2d(on_disk, None, points=[[150, 100]])  # a lone click: best of three
    assert click.logits is not None
    pts = [[150, 100, 1], [175, 100, 1]]
    fed = segment_2d(on_disk, None, points=pts, mask_input=click.logits[0])
    ref = on_disk.predict(point_coords=[p[:2] for p in pts], point_labels=[1, 1], mask_input=click.logits[0], outputs=[0])
    assert fed.logits is not None
    assert np.array_equal(fed.masks[0], ref.masks[0, 0]) and np.array_equal(fed.logits[0], ref.low_res_logits[0, 0])
    multi = segment_2d(on_disk, None, points=pts, mask_input=click.logits[0], multimask=True)  # still choosable
    ref_m = on_disk.predict(point_coords=[p[:2] for p in pts], mask_input=click.logits[0], multimask=True)
    assert np.array_equal(multi.masks[0], ref_m.best()[0][0])


@pytest.mark.parametrize(
    "mask_input, words",
    [
        (np.zeros((128, 128), np.float32), r"\(256, 256\) or \(1, 256, 256\) for this model; got shape \(128, 128\)"),
        (np.zeros((2, 256, 256), np.float32), r"got shape \(2, 256, 256\)"),
        (np.zeros((1, 1, 256, 256), np.float32), r"got shape \(1, 1, 256, 256\)"),
        (np.zeros(256, np.float32), r"got shape \(256,\)"),
        (np.zeros((256, 256), bool), "must be float low-res logits"),
        (np.zeros((256, 256), np.int32), "must be float low-res logits"),
        (np.full((256, 256), np.nan, np.float32), "NaN or infinite"),
    ],
)
def test_wrong_mask_input_is_refused(on_disk: Predictor, mask_input: np.ndarray, words: str) -> None:
    with pytest.raises(PromptError, match=words):
        segment_2d(on_disk, None, boxes=[box_of(DISK)], mask_input=mask_input)


def test_mask_input_with_several_boxes_is_refused(on_disk: Predictor) -> None:
    with pytest.raises(PromptError, match="one object"):
        segment_2d(on_disk, None, boxes=[box_of(DISK), box_of(DISK2)], mask_input=np.zeros((256, 256), np.float32))


def test_empty_shortcuts_have_no_logits_and_check_mask_input_first(on_disk: Predictor) -> None:
    predictor = on_disk
    flat = np.full((40, 60), 7, np.uint8)
    with pytest.warns(MedsamkitWarning, match="constant"):
        seg = segment_2d(predictor, flat, boxes=[[5, 5, 20, 20]], mask_input=np.zeros((256, 256), np.float32))
    assert seg.logits is None and not seg.labels.any()
    with pytest.raises(PromptError, match="got shape"):  # a wrong mask prompt is refused even where the model won't run
        segment_2d(predictor, flat, boxes=[[5, 5, 20, 20]], mask_input=np.zeros((64, 64), np.float32))
    with pytest.warns(MedsamkitWarning, match="only background points"):
        seg = segment_2d(predictor, None, points=[[10, 10, 0]])
    assert seg.logits is None
