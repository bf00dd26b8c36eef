"""One 2D segmentation job: an image and its prompts in, a label mask out (used by the CLI, app and batch)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import MedsamkitWarning, PromptError
from .predictor import Predictor, check_prompts


@dataclass
class Segmentation2D:
    """labels: ``(H, W)`` uint8, 0 = background, i = the i-th prompt's object (later prompts overwrite earlier
    ones where they overlap, as the official MedSAM/LiteMedSAM scripts do). masks: ``(N, H, W)`` bool per
    prompt; scores: ``(N,)`` predicted IoU of each chosen mask. warnings: why the mask is empty when it was
    not the model's answer (also issued as :class:`~medsamkit.errors.MedsamkitWarning`), for callers that show
    them to a person (the web app)."""

    labels: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    warnings: list[str] = field(default_factory=list)


def segment_2d(
    predictor: Predictor,
    image: np.ndarray | None,
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] = (),
    multimask: bool | None = None,
) -> Segmentation2D:
    """Segment ``image`` (or the predictor's current image when None) from box and/or point prompts.

    boxes: inclusive ``(x0, y0, x1, y1)`` pixel corners, one object each (label i for box i).
    points: ``(x, y)`` or ``(x, y, label)`` with label 1 = foreground (default), 0 = background. With no box,
    all points form one prompt (label 1); with exactly one box they refine that box; with several boxes
    points are ambiguous and rejected.
    multimask: None = automatic (single output for box prompts; for point-only prompts the best of SAM's
    three multimask outputs by predicted IoU, SAM's advice for ambiguous clicks).
    """
    box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else None
    pts = labs = None
    if len(points):
        rows = [list(p) for p in points]
        if any(len(r) not in (2, 3) for r in rows):
            raise PromptError("each point must be (x, y) or (x, y, label)")
        pts = np.array([r[:2] for r in rows], dtype=np.float64)
        labs = np.array([r[2] if len(r) == 3 else 1 for r in rows], dtype=np.float64)
    if box_arr is None and pts is None:
        raise PromptError("give at least one box or point")
    if box_arr is not None and pts is not None and box_arr.shape[0] > 1:
        raise PromptError("points can refine a single box; with several boxes, run them separately")
    if box_arr is not None and box_arr.shape[0] > 255:
        raise PromptError(f"{box_arr.shape[0]} boxes: a uint8 label mask holds at most 255 objects")
    size = np.shape(image)[:2] if image is not None else predictor.image_size
    check_prompts(size, pts, labs, box_arr)  # also where the shortcuts below skip the model
    if image is not None:
        if is_constant(image):
            why = (
                f"the picture the model sees is constant (every pixel {_first_value(image)}; check the image and its "
                "intensity window): there is nothing to segment; the mask is empty"
            )
            warnings.warn(why, MedsamkitWarning, stacklevel=2)
            return _empty(size, box_arr.shape[0] if box_arr is not None else 1, why)
        predictor.set_image(image)
    if box_arr is None and labs is not None and not (labs == 1).any():
        why = (
            "the prompt has only background points (label 0): they say where the object is not, so the mask is empty; "
            "add a foreground point (label 1) or a box"
        )
        warnings.warn(why, MedsamkitWarning, stacklevel=2)
        return _empty(size, 1, why)
    use_multi = (box_arr is None) if multimask is None else multimask
    out = predictor.predict(point_coords=pts, point_labels=labs, boxes=box_arr, multimask=use_multi)
    masks, scores = out.best() if use_multi else (out.masks[:, 0], out.scores[:, 0])
    labels = np.zeros(predictor.image_size, dtype=np.uint8)
    for i, m in enumerate(masks, start=1):
        labels[m] = i
    return Segmentation2D(labels, masks, scores)


def is_constant(image: np.ndarray) -> bool:
    """True when every pixel of ``image`` (``(H, W)`` or ``(H, W, C)``, any numeric dtype) has the same value
    (per channel) - a picture with nothing in it for the model to segment."""
    a = np.asarray(image)
    if a.size == 0:
        return False
    flat = a.reshape(-1, a.shape[-1]) if a.ndim == 3 else a.reshape(-1, 1)
    return bool((flat == flat[0]).all())


def _first_value(image: np.ndarray) -> str:
    v = np.asarray(image).reshape(-1)[:1]
    return f"{v[0]:g}" if v.size and np.issubdtype(v.dtype, np.number) else "equal"


def _empty(size: tuple[int, ...], n: int, why: str) -> Segmentation2D:
    h, w = int(size[0]), int(size[1])
    return Segmentation2D(np.zeros((h, w), np.uint8), np.zeros((n, h, w), bool), np.zeros(n, np.float32), [why])
