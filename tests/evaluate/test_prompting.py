from __future__ import annotations

import numpy as np
import pytest

from medsamkit.evaluate.prompting import run_protocol_2d
from medsamkit.prompts import center_point, parse_protocol
from tests.conftest import dice, disk_image


@pytest.fixture(scope="module")
def two_blobs(predictor):
    """One object made of two separate disks (label 1), encoded once for the module."""
    img, a = disk_image(128, 160, 40, 40, 16, seed=3)
    _, b = disk_image(128, 160, 120, 95, 14, seed=3)
    img[b] = img[a].mean()
    predictor.set_image(img)
    emb, geom = predictor.get_image_embedding(), predictor.geometry
    return emb, geom, a | b, a


def use(predictor, blobs):
    predictor.set_embedding(blobs[0], blobs[1])


def run(predictor, gt, text, seed=0):
    return run_protocol_2d(predictor, gt, parse_protocol(text), np.random.default_rng(seed))


def test_component_boxes_beat_one_box_over_separate_parts(predictor, two_blobs):
    use(predictor, two_blobs)
    gt = two_blobs[2]
    per_part = run(predictor, gt, "box:components")[0]
    one = run(predictor, gt, "box")[0]
    assert len(per_part.prompt["boxes"]) == 2
    assert dice(per_part.mask, gt) > 0.85
    assert dice(per_part.mask, gt) > dice(one.mask, gt)


def test_oracle_is_an_upper_bound_of_the_other_multimask_choices(predictor, two_blobs):
    use(predictor, two_blobs)
    gt = two_blobs[3]
    for proto in ("point:centre", "points:2+1", "box-jitter:0.2"):
        oracle = run(predictor, gt, f"{proto}:select=oracle")[0]
        best = run(predictor, gt, f"{proto}:select=highest-iou")[0]
        assert dice(oracle.mask, gt) >= dice(best.mask, gt) - 1e-9
        assert oracle.prompt == best.prompt  # same seed, same prompt: only the choice differs


def test_iterative_starts_from_the_centre_click_and_records_each_step(predictor, two_blobs):
    use(predictor, two_blobs)
    gt = two_blobs[3]
    steps = run(predictor, gt, "iterative:3:farthest-error")
    assert [s.step for s in steps] == [0, 1, 2, 3]
    assert steps[0].prompt["points"] == [[*center_point(gt).astype(int).tolist(), 1]]
    for s in steps:
        assert s.mask.shape == gt.shape and "boxes" not in s.prompt
    boxed = run(predictor, gt, "iterative:2:random-error:start=box:mask")
    assert boxed[0].prompt["boxes"] and boxed[0].prompt["points"] == []


def test_uncertainty_is_zero_when_the_boxes_agree(predictor, two_blobs):
    use(predictor, two_blobs)
    gt = two_blobs[3]
    still = run(predictor, gt, "uncertainty:4:0")[0]
    assert still.uncertainty == pytest.approx(0.0, abs=1e-9)
    shaky = run(predictor, gt, "uncertainty:6:0.3")[0]
    assert shaky.uncertainty > still.uncertainty and shaky.uncertainty_map.shape == gt.shape
    assert len(shaky.prompt["boxes"]) == 6
    mild = run(predictor, gt, "uncertainty:6:0.05")[0]
    assert dice(mild.mask, gt) > 0.85 and mild.uncertainty < shaky.uncertainty


def test_prompts_outside_the_object_rules(predictor, two_blobs):
    use(predictor, two_blobs)
    with pytest.raises(ValueError, match="empty"):
        run(predictor, np.zeros_like(two_blobs[3]), "box")
    with pytest.raises(ValueError, match="does not match"):
        run(predictor, two_blobs[3][:10], "box")
