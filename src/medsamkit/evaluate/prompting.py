"""Apply a prompt protocol to one object with a predictor: simulate the prompts from the ground truth, decode,
and return the mask of every recorded step.

2D: the predictor already holds the image (``set_image``/``set_embedding``); every protocol and object reuses
that one embedding. 3D (volume mode): prompts become :class:`~medsamkit.predict.volume.ObjectPrompt` for
slice propagation. Coordinates follow :mod:`medsamkit.prompts`: (x, y) = (column, row), inclusive boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PromptError
from ..predict.predictor import Predictor
from ..predict.volume import ObjectPrompt, PropagationOptions, segment_volume
from ..prompts import (
    PromptProtocol,
    center_point,
    centroid_point,
    component_masks,
    interior_distance,
    jitter_box,
    jitter_box_3d,
    mask_box,
    mask_box_3d,
    next_click,
    positive_negative_points,
    random_points,
    shift_box,
    shift_box_3d,
)


@dataclass
class StepResult:
    """One recorded result of a protocol on one object.

    step: 0 for the initial prompt, k after k correction clicks (iterative protocols).
    mask: the prediction, same shape as the ground truth, bool. predicted_iou: the model's IoU estimate of
    the kept output (mean over boxes for ``box:components``). prompt: the prompts given, JSON-able (boxes
    inclusive x0, y0, x1, y1; points x, y, label). uncertainty: the per-object score of ``uncertainty``
    protocols, else None.
    """

    step: int
    mask: np.ndarray
    predicted_iou: float | None
    prompt: dict[str, Any] = field(default_factory=dict)
    uncertainty: float | None = None
    uncertainty_map: np.ndarray | None = None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _decode(
    predictor: Predictor,
    protocol: PromptProtocol,
    gt: np.ndarray,
    *,
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
    targets: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Decode one prompt (or one per box) and keep an output by the protocol's selection rule. Returns the
    (united) mask, its predicted IoU and the kept low-res logits of the first prompt. ``targets``: the truth
    each prompt is judged against by the ``oracle`` rule (default: ``gt`` for all)."""
    select = protocol.select
    if select == "auto":  # SAM's advice: one click alone is ambiguous -> best of three; otherwise single output
        select = "highest-iou" if boxes is None and points is not None and len(points) == 1 else "first"
    outputs = [0] if select == "first" else [1, 2, 3]
    res = predictor.predict(point_coords=points, point_labels=labels, boxes=boxes, mask_input=mask_input, outputs=outputs)
    n = res.masks.shape[0]
    if select == "first":
        k = np.zeros(n, dtype=int)
    elif select == "highest-iou":
        k = res.scores.argmax(axis=1)
    else:  # oracle: the output closest to the truth
        truth = targets if targets is not None else [gt] * n
        k = np.array([int(np.argmax([_iou(m, truth[i]) for m in res.masks[i]])) for i in range(n)])
    rows = np.arange(n)
    masks = res.masks[rows, k]
    return np.any(masks, axis=0), float(res.scores[rows, k].mean()), res.low_res_logits[0, k[0]]


def _points_json(points: np.ndarray, labels: np.ndarray) -> list[list[float]]:
    return [[float(p[0]), float(p[1]), int(lab)] for p, lab in zip(points, labels)]


def run_protocol_2d(predictor: Predictor, gt: np.ndarray, protocol: PromptProtocol, rng: np.random.Generator) -> list[StepResult]:
    """Run ``protocol`` for the object ``gt`` (``(H, W)`` bool, non-empty) on the predictor's current image.

    Returns one :class:`StepResult` per recorded step (``protocol.steps``)."""
    gt = np.asarray(gt, dtype=bool)
    if gt.shape != predictor.image_size:
        raise PromptError(f"ground truth {gt.shape} does not match the image {predictor.image_size}")
    if not gt.any():
        raise PromptError("the object is empty: nothing to prompt")
    h, w = gt.shape
    kind = protocol.kind
    if kind in ("box", "box-shift", "box-jitter"):
        targets = None
        if kind == "box" and protocol.components:
            targets = component_masks(gt)  # each box's outputs are judged against its own component
            boxes = np.stack([mask_box(c) for c in targets])
        else:
            box = mask_box(gt)
            if kind == "box-shift":
                box = shift_box(box, protocol.shift, rng, (h, w))
            elif kind == "box-jitter":
                box = jitter_box(box, protocol.jitter, rng, (h, w))
            boxes = box[None]
        mask, piou, _ = _decode(predictor, protocol, gt, boxes=boxes, targets=targets)
        return [StepResult(0, mask, piou, {"boxes": boxes.tolist()})]
    if kind == "point":
        extra: dict[str, Any] = {}
        if protocol.point == "centre":
            pt = center_point(gt)
        elif protocol.point == "centroid":
            c = centroid_point(gt)
            pt = c.point
            extra["centroid_inside"] = c.inside
        else:
            pt = random_points(gt, 1, rng)[0]
        pts, labs = pt[None], np.ones(1, np.int64)
        mask, piou, _ = _decode(predictor, protocol, gt, points=pts, labels=labs)
        return [StepResult(0, mask, piou, {"points": _points_json(pts, labs), **extra})]
    if kind == "points":
        pts, labs = positive_negative_points(gt, protocol.positives, protocol.negatives, rng)
        mask, piou, _ = _decode(predictor, protocol, gt, points=pts, labels=labs)
        return [StepResult(0, mask, piou, {"points": _points_json(pts, labs)})]
    if kind == "iterative":
        return _iterative(predictor, gt, protocol, rng)
    if kind == "uncertainty":
        return [_uncertainty(predictor, gt, protocol, rng)]
    raise PromptError(f"protocol {protocol.name!r} is not available for 2D objects")


def _iterative(predictor: Predictor, gt: np.ndarray, protocol: PromptProtocol, rng: np.random.Generator) -> list[StepResult]:
    box = mask_box(gt)[None] if protocol.start == "box" else None
    clicks: list[tuple[int, int, int]] = []
    if box is None:
        first = next_click(np.zeros_like(gt), gt, protocol.rule, rng)
        assert first is not None  # the object is not empty
        clicks.append((first.x, first.y, first.label))
    steps: list[StepResult] = []
    low = None
    for step in range(protocol.clicks + 1):
        if step > 0:
            click = next_click(steps[-1].mask, gt, protocol.rule, rng)
            if click is None:  # no error left: the result stays as it is
                prev = steps[-1]
                steps.append(StepResult(step, prev.mask, prev.predicted_iou, {**prev.prompt, "converged": True}))
                continue
            clicks.append((click.x, click.y, click.label))
        pts = np.array([c[:2] for c in clicks], np.float64) if clicks else None
        labs = np.array([c[2] for c in clicks], np.int64) if clicks else None
        mask_in = low if (protocol.mask_input and low is not None) else None
        mask, piou, low = _decode(predictor, protocol, gt, boxes=box, points=pts, labels=labs, mask_input=mask_in)
        prompt: dict[str, Any] = {"points": [list(c) for c in clicks]}
        if box is not None:
            prompt["boxes"] = box.tolist()
        steps.append(StepResult(step, mask, piou, prompt))
    return steps


def _uncertainty(predictor: Predictor, gt: np.ndarray, protocol: PromptProtocol, rng: np.random.Generator) -> StepResult:
    """SAM-U style: K jittered boxes -> per-pixel mean and variance of the foreground probability. The kept
    mask is mean probability > 0.5 (the "robust" mask); the score is the summed variance divided by the
    expected area (sum of mean probabilities): 0 when all K masks agree, larger when they disagree."""
    h, w = gt.shape
    tight = mask_box(gt)
    boxes = np.stack([jitter_box(tight, protocol.jitter, rng, (h, w)) for _ in range(protocol.samples)])
    res = predictor.predict(boxes=boxes, outputs=[0], return_logits=True)
    assert res.logits is not None
    prob = 1.0 / (1.0 + np.exp(-np.clip(res.logits[:, 0], -30, 30)))
    mean = prob.mean(axis=0)
    var = prob.var(axis=0)
    score = float(var.sum() / max(float(mean.sum()), 1.0))
    return StepResult(
        0, mean > 0.5, float(res.scores[:, 0].mean()), {"boxes": boxes.tolist()}, uncertainty=score, uncertainty_map=var
    )


VOLUME_KINDS = ("box", "box-shift", "box-jitter", "point", "points")


def run_protocol_3d(
    predictor: Predictor,
    image: Any,
    gt: np.ndarray,
    protocol: PromptProtocol,
    rng: np.random.Generator,
    *,
    preset: str = "auto",
    window: tuple[float, float] | None = None,
    options: PropagationOptions | None = None,
) -> list[StepResult]:
    """Volume mode: simulate a 3D prompt for the object ``gt`` (``(Z, Y, X)`` bool) and segment it by slice
    propagation along z (:func:`~medsamkit.predict.volume.segment_volume`). Boxes: the object's 3D box
    (tight, shifted or jittered; a shift of N moves every face by 0..N voxels, also along z); points: on the
    slice through the object's deepest interior voxel (distances in mm with the image's spacing)."""
    gt = np.asarray(gt, dtype=bool)
    if (
        protocol.kind not in VOLUME_KINDS
        or (protocol.kind == "box" and protocol.components)
        or protocol.select != ("first" if protocol.kind.startswith("box") else "auto")
    ):
        raise PromptError(
            f"protocol {protocol.name!r} is not available in volume mode (use one of {', '.join(VOLUME_KINDS)} with "
            "default selection, or evaluate slice by slice)"
        )
    if not gt.any():
        raise PromptError("the object is empty: nothing to prompt")
    prompt: dict[str, Any]
    if protocol.kind.startswith("box"):
        box = mask_box_3d(gt)
        if protocol.kind == "box-shift":
            box = shift_box_3d(box, protocol.shift, rng, gt.shape)
        elif protocol.kind == "box-jitter":
            box = jitter_box_3d(box, protocol.jitter, rng, gt.shape)
        obj = ObjectPrompt(label=1, box3d=box.tolist())
        prompt = {"box3d": box.tolist()}
    else:
        spacing = getattr(image, "spacing", None)
        sampling = tuple(float(s) for s in reversed(spacing)) if spacing is not None and len(spacing) == 3 else None
        z = int(np.unravel_index(int(np.argmax(interior_distance(gt, sampling))), gt.shape)[0])
        sl = gt[z]
        if protocol.kind == "point":
            if protocol.point == "centre":
                pts = center_point(sl)[None]
            elif protocol.point == "centroid":
                pts = centroid_point(sl).point[None]
            else:
                pts = random_points(sl, 1, rng)
            labs = np.ones(1, np.int64)
        else:
            pts, labs = positive_negative_points(sl, protocol.positives, protocol.negatives, rng)
        points = [[float(p[0]), float(p[1]), float(z), int(lab)] for p, lab in zip(pts, labs)]
        obj = ObjectPrompt(label=1, points=points)
        prompt = {"points3d": points}
    seg = segment_volume(image, [obj], predictor, axis="z", preset=preset, window=window, options=options)
    rec = seg.objects[0]
    piou = rec.get("mean_predicted_iou")
    return [StepResult(0, seg.labels == 1, float(piou) if piou is not None else None, prompt)]
