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
    them to a person (the web app). logits: ``(N, L, L)`` float32 low-res logits of each chosen mask in the
    model-input frame (``L = Predictor.low_res``, 256 for LiteMedSAM; ``Prediction.low_res_logits`` of the kept
    output): ``logits[i]`` is what to pass back as ``mask_input`` with the next prompt of object i on the same
    image. None when the model did not run (the empty shortcuts)."""

    labels: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    warnings: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None


def segment_2d(
    predictor: Predictor,
    image: np.ndarray | None,
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] = (),
    multimask: bool | None = None,
    mask_input: np.ndarray | None = None,
) -> Segmentation2D:
    """Segment ``image`` (or the predictor's current image when None) from box and/or point prompts.

    boxes: inclusive ``(x0, y0, x1, y1)`` pixel corners, one object each (label i for box i).
    points: ``(x, y)`` or ``(x, y, label)`` with label 1 = foreground (default), 0 = background. With no box,
    all points form one prompt (label 1); with exactly one box they refine that box; with several boxes
    points are ambiguous and rejected.
    multimask: None = automatic (SAM's advice, as the evaluation's ``select=auto``: one click alone, with no box
    and no ``mask_input``, is ambiguous and keeps the best of SAM's three multimask outputs by predicted IoU;
    everything else keeps the single-mask output).
    mask_input: the previous low-res logits of the same object on the same image (SAM's mask prompt), ``(L, L)``
    or ``(1, L, L)`` float with ``L = predictor.low_res``, in the model-input frame: the ``logits[0]`` of an
    earlier :class:`Segmentation2D` (or one output of ``Prediction.low_res_logits``) of an image of this size,
    given again with ALL that object's earlier prompts plus the new clicks. One object only (not with several
    boxes). Corrections then use SAM's single-mask output, as a click-trained decoder is trained for them.
    Raises :class:`~medsamkit.errors.PromptError` for prompts outside the image, a wrong ``mask_input``, etc.
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
    mask_in = None
    if mask_input is not None:
        if box_arr is not None and box_arr.shape[0] > 1:
            raise PromptError("mask_input belongs to one object: with several boxes, run them separately")
        mask_in = check_mask_input(mask_input, predictor.low_res)
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
    lone_click = box_arr is None and mask_in is None and pts is not None and len(pts) == 1
    use_multi = lone_click if multimask is None else multimask
    out = predictor.predict(point_coords=pts, point_labels=labs, boxes=box_arr, mask_input=mask_in, multimask=use_multi)
    kept = out.scores.argmax(axis=1) if use_multi else np.zeros(out.scores.shape[0], dtype=np.intp)
    objs = np.arange(out.scores.shape[0])
    masks, scores = out.masks[objs, kept], out.scores[objs, kept]
    logits = np.ascontiguousarray(out.low_res_logits[objs, kept], dtype=np.float32)
    labels = np.zeros(predictor.image_size, dtype=np.uint8)
    for i, m in enumerate(masks, start=1):
        labels[m] = i
    return Segmentation2D(labels, masks, scores, logits=logits)


def check_mask_input(mask_input: np.ndarray, low_res: int) -> np.ndarray:
    """``mask_input`` as ``(1, L, L)`` float32 low-res logits (model-input frame, ``L = low_res``), from
    ``(L, L)`` or ``(1, L, L)`` floats; :class:`~medsamkit.errors.PromptError` naming the problem for another
    shape, a non-float dtype (a boolean mask is not logits) or NaN/infinite values."""
    m = np.asarray(mask_input)
    if not np.issubdtype(m.dtype, np.floating):
        raise PromptError(
            f"mask_input must be float low-res logits (e.g. the previous Segmentation2D.logits[0]), got dtype {m.dtype}"
        )
    if m.ndim == 2:
        m = m[None]
    if m.shape != (1, low_res, low_res):
        raise PromptError(
            f"mask_input must be the low-res logits of one object, ({low_res}, {low_res}) or (1, {low_res}, {low_res}) "
            f"for this model; got shape {np.shape(mask_input)}"
        )
    if not np.isfinite(m).all():
        raise PromptError("mask_input contains NaN or infinite values")
    return m.astype(np.float32, copy=False)


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
    return Segmentation2D(np.zeros((h, w), np.uint8), np.zeros((n, h, w), bool), np.zeros(n, np.float32), [why], None)
