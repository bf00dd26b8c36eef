"""U-Net inference: a trained MONAI network (:mod:`medsamkit.models.unet`) applied to a 2D image, with or
without SAMAug priors; the network inputs it is given; the SAMAug augmented picture and prior files.

**Prediction.** :func:`predict_unet` gives the foreground probability (float32 ``(H, W)`` on the original image's
grid; the network's ``S x S`` probability map resized back bilinearly): a ``raw`` model sees the raw picture, a
``samaug`` model the augmented one (priors needed), a ``both`` model the mean of the two (SAMAug's test-time
ensemble; priors needed) or, with ``ensemble=False``, the augmented input when priors are given and the raw one
when they are not (:func:`views_for`). The picture is :func:`medsamkit.preprocess.picture.model_picture`'s
(``auto`` preset), as in training. :class:`UNetSegmenter` is the same model as a segmenter for
:func:`medsamkit.evaluate.runner.evaluate_case`: a pixel is foreground where the probability is above the
threshold (0.5: the argmax of the two classes).

**Network inputs** (:func:`make_view`, :func:`resize_input`, :func:`resize_probability`): float32 ``(C, S, S)``
in [0, 1] (uint8 / 255); a view is made on the picture's own grid, then resized to ``S x S`` without keeping the
aspect ratio (area averaging when both sides shrink, bilinear otherwise); probabilities go back bilinearly. A
``raw`` view of a ``both`` model has the augmented view's channels (add mode: grey repeated to RGB; stack mode:
two zero prior channels). The training side (:mod:`medsamkit.train.data`) builds its inputs with these.

**SAMAug** (Zhang et al., MICCAI 2023; the prior maps themselves are :mod:`medsamkit.samaug.priors`'):
:func:`augment_image` puts a picture's two prior maps into it, in one of two modes:

* ``"add"`` (the authors' code adds the priors into the green and blue channels): uint8 ``(H, W, 3)``; red is
  the image's red channel unchanged, green = ``rint((1 - alpha) * G + alpha * 255 * seg)``, blue =
  ``rint((1 - alpha) * B + alpha * 255 * boundary)``. A convex blend of two values in 0..255 stays in 0..255,
  so no value is ever clipped (the authors' plain addition saturated images to "all green", their issue #3).
  The default ``alpha = 0.5`` is exactly their sum ``G + 255 * seg`` halved into the uint8 range. Grey images
  are repeated to R = G = B first.
* ``"stack"`` (the paper's text: priors as extra input channels): float32 ``(H, W, C)`` in [0, 1]: a grey
  image gives ``[grey, seg, boundary]`` (C = 3), an RGB image ``[R, G, B, seg, boundary]`` (C = 5); the image
  channels are the uint8 values / 255.

Images that are not uint8 are first made uint8 by :func:`medsamkit.preprocess.image2d.to_rgb_uint8`'s rule
(linear min..max over the whole image -> 0..255), which is also what everything mode does to them; an alpha
channel is dropped. Grey versus RGB is decided by the array's shape: ``(H, W)`` and ``(H, W, 1)`` are grey,
``(H, W, 3)`` and ``(H, W, 4)`` are RGB.

Prior files (the contract between ``medsamkit samaug prepare``, training, batch jobs and prediction):
``<samaug_dir>/priors/<case_id>.npz`` holding float32 ``(H, W)`` arrays ``seg_prior`` and ``boundary_prior`` on
the source image's grid, plus ``n_masks`` and the preparation's content ``key`` (:func:`save_priors` /
:func:`load_priors`).
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from .._files import atomic_write_bytes
from ..errors import FileInputError, OptionError
from ..models.unet import InputSpec, TrainedUNet, foreground_probability, load_unet
from ..preprocess.image2d import to_rgb_uint8
from ..preprocess.picture import model_picture

#: version of the prior maps' definition and of the prior files; part of every SAMAug preparation key, so a
#: change of definition recomputes old outputs
FORMAT_VERSION = 1
SAMAUG_MODES = ("add", "stack")
#: weight of the priors in ``"add"`` mode (0.5: the authors' ``channel + 255 * prior``, halved into 0..255)
DEFAULT_ALPHA = 0.5


# --------------------------------------------------------------------------------------------- SAMAug priors


@dataclass
class Priors:
    """The two prior maps of one image and what made them.

    seg: ``(H, W)`` float32 in [0, 1] (the segmentation prior); boundary: ``(H, W)`` float32 in {0, 1} (the
    boundary prior); n_masks: how many everything-mode masks went in; stats: counters and timings (everything
    mode's, coverage fractions); records: the masks themselves when kept (not saved in the npz)."""

    seg: np.ndarray
    boundary: np.ndarray
    n_masks: int
    stats: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the image (and of both maps)."""
        return tuple(self.seg.shape)


def _check_prior(prior: Any, name: str, hw: tuple[int, int]) -> np.ndarray:
    p = np.asarray(prior)
    if p.dtype != bool and (not np.issubdtype(p.dtype, np.number) or np.iscomplexobj(p)):
        raise OptionError(f"{name} must be a real-valued (H, W) array, got dtype {p.dtype}")
    if p.shape != hw:
        raise OptionError(f"{name} has shape {p.shape}, the image is {hw[0]} x {hw[1]} (H, W)")
    f = p.astype(np.float64)
    if not np.isfinite(f).all():
        raise OptionError(f"{name} contains NaN or infinite values")
    lo, hi = float(f.min()), float(f.max())
    if lo < 0.0 or hi > 1.0:
        raise OptionError(f"{name} values must be in [0, 1], got {lo:g}..{hi:g}")
    return f


def is_grey(image: np.ndarray) -> bool:
    """True for ``(H, W)`` and ``(H, W, 1)`` arrays (grey), False for ``(H, W, 3|4)`` (RGB[A]); other shapes
    raise ``ValueError``."""
    a = np.asarray(image)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
        return True
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return False
    raise OptionError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {a.shape}")


def augmented_channels(mode: str, grey: bool) -> int:
    """Channels of :func:`augment_image`'s output: 3 in ``"add"`` mode; 3 (grey) or 5 (RGB) in ``"stack"``."""
    if mode not in SAMAUG_MODES:
        raise OptionError(f"mode must be one of {', '.join(SAMAUG_MODES)}, got {mode!r}")
    return 3 if mode == "add" or grey else 5


def augment_image(
    image: np.ndarray,
    seg_prior: np.ndarray,
    boundary_prior: np.ndarray,
    mode: str = "add",
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """The SAMAug network input of ``image`` with its prior maps (rules in the module docstring).

    image: ``(H, W)``, ``(H, W, 1)`` grey or ``(H, W, 3|4)`` RGB[A]; uint8, or another real dtype (min-max
    scaled to uint8 first). seg_prior, boundary_prior: ``(H, W)``, finite, in [0, 1].
    mode ``"add"``: uint8 ``(H, W, 3)`` = (R, blend(G, seg), blend(B, boundary)) with blend(c, p) =
    ``rint((1 - alpha) * c + alpha * 255 * p)``, ``alpha`` in [0, 1]; never clips.
    mode ``"stack"``: float32 ``(H, W, 3)`` [grey, seg, boundary] or ``(H, W, 5)`` [R, G, B, seg, boundary] in
    [0, 1]; ``alpha`` is not used. Bad shapes, modes, alpha or prior values raise ``ValueError``.
    """
    if mode not in SAMAUG_MODES:
        raise OptionError(f"mode must be one of {', '.join(SAMAUG_MODES)}, got {mode!r}")
    arr = np.asarray(image)
    grey = is_grey(arr)
    rgb = to_rgb_uint8(arr)  # validates dtype/values; uint8 kept, else min-max to 0..255; alpha dropped
    hw = rgb.shape[:2]
    seg = _check_prior(seg_prior, "seg_prior", hw)
    bnd = _check_prior(boundary_prior, "boundary_prior", hw)
    if mode == "stack":
        base = rgb[..., :1] if grey else rgb
        chans = [base.astype(np.float32) / np.float32(255.0), seg[..., None], bnd[..., None]]
        return np.concatenate(chans, axis=2).astype(np.float32)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise OptionError(f"alpha must be a number in [0, 1], got {alpha!r}")
    a = float(alpha)
    if not (math.isfinite(a) and 0.0 <= a <= 1.0):
        raise OptionError(f"alpha must be in [0, 1], got {alpha!r}")
    out = rgb.copy()
    out[..., 1] = _blend(rgb[..., 1], seg, a)
    out[..., 2] = _blend(rgb[..., 2], bnd, a)
    return out


def _blend(channel: np.ndarray, prior: np.ndarray, alpha: float) -> np.ndarray:
    """``rint((1 - alpha) * channel + alpha * 255 * prior)`` as uint8: a convex combination of two values in
    0..255, so it lies in 0..255 (up to float rounding, which rint absorbs) and nothing is clipped."""
    v = np.rint((1.0 - alpha) * channel.astype(np.float64) + alpha * 255.0 * prior)
    return v.astype(np.uint8)


def save_priors(path: str | os.PathLike[str], priors: Priors, key: str = "") -> Path:
    """Write ``priors`` atomically as npz: float32 ``seg_prior`` and ``boundary_prior`` ``(H, W)``, int
    ``n_masks`` and the string ``key`` (the preparation's content key; "" when none)."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        seg_prior=np.asarray(priors.seg, dtype=np.float32),
        boundary_prior=np.asarray(priors.boundary, dtype=np.float32),
        n_masks=np.int64(priors.n_masks),
        key=np.str_(key),
        format_version=np.int64(FORMAT_VERSION),
    )
    return atomic_write_bytes(path, buf.getvalue())


def load_priors(path: str | os.PathLike[str]) -> tuple[Priors, str]:
    """Read a prior file written by :func:`save_priors`: ``(Priors, key)``. Raises ``InputError`` (a ``ValueError``) when the
    file is unreadable or lacks the two maps; files of other writers need only ``seg_prior`` and
    ``boundary_prior`` (key "" and n_masks -1 then)."""
    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise FileInputError(f"cannot read prior file {p}: {' '.join(str(e).split())[:160]}") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise FileInputError(f"cannot read prior file {p}: not an npz archive")
    with z:
        if "seg_prior" not in z or "boundary_prior" not in z:
            raise FileInputError(f"{p.name}: a prior file needs arrays seg_prior and boundary_prior, found {sorted(z.keys())}")
        try:
            seg = np.asarray(z["seg_prior"], dtype=np.float32)
            bnd = np.asarray(z["boundary_prior"], dtype=np.float32)
            n = int(z["n_masks"]) if "n_masks" in z else -1
            key = str(z["key"]) if "key" in z else ""
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            raise FileInputError(f"cannot read prior file {p}: {' '.join(str(e).split())[:160]}") from e
    if seg.ndim != 2 or seg.shape != bnd.shape:
        raise OptionError(f"{p.name}: seg_prior {seg.shape} and boundary_prior {bnd.shape} must be the same (H, W)")
    return Priors(seg, bnd, n), key


def as_priors(priors: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(seg_prior, boundary_prior)`` float32 ``(H, W)`` each from a :class:`Priors`, a ``(seg, boundary)``
    pair, a mapping with ``seg_prior``/``boundary_prior`` or the path of a prior npz (:func:`load_priors`)."""
    if isinstance(priors, (str, os.PathLike)):
        loaded, _ = load_priors(priors)
        return loaded.seg, loaded.boundary
    if hasattr(priors, "seg") and hasattr(priors, "boundary"):
        return np.asarray(priors.seg, np.float32), np.asarray(priors.boundary, np.float32)
    if isinstance(priors, Mapping):
        if "seg_prior" in priors and "boundary_prior" in priors:
            return np.asarray(priors["seg_prior"], np.float32), np.asarray(priors["boundary_prior"], np.float32)
        raise OptionError(f"a priors mapping needs 'seg_prior' and 'boundary_prior', got {', '.join(map(str, priors))}")
    if isinstance(priors, (tuple, list)) and len(priors) == 2:
        return np.asarray(priors[0], np.float32), np.asarray(priors[1], np.float32)
    raise OptionError(
        f"priors must be a Priors object, a (seg, boundary) pair, a mapping or an npz path, not {type(priors).__name__}"
    )


# -------------------------------------------------------------------------------------------- network inputs


def _as_colour(picture: np.ndarray, colour: str) -> np.ndarray:
    if colour == "rgb":
        return to_rgb_uint8(picture)
    if picture.ndim != 2:
        raise OptionError(f"the model takes grey pictures; got a colour image of shape {picture.shape}")
    return picture


def make_view(picture: np.ndarray, spec: InputSpec, view: str, priors: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One network input on the picture's own grid: float32 ``(C, H, W)`` in [0, 1] with ``C =
    spec.in_channels``. picture: uint8 ``(H, W)`` or ``(H, W, 3)``. view "raw" or "samaug" (needs ``priors``,
    ``(H, W)`` each, in [0, 1])."""
    pic = _as_colour(np.asarray(picture), spec.colour)
    if view == "raw":
        img = (pic[..., None] if pic.ndim == 2 else pic).astype(np.float32) / np.float32(255.0)
        chans = img.shape[2]
        if spec.kind != "raw":
            if spec.mode == "add" and chans == 1:
                img = np.repeat(img, 3, axis=2)
            elif spec.mode == "stack":
                img = np.concatenate([img, np.zeros((*img.shape[:2], 2), np.float32)], axis=2)
    elif view == "samaug":
        if spec.kind == "raw":
            raise OptionError("a model trained on raw inputs has no augmented view")
        if priors is None:
            raise OptionError("the augmented (SAMAug) input needs the image's priors")
        seg, bnd = priors
        mode = cast(str, spec.mode)  # kind "samaug"/"both": InputSpec holds "add" or "stack"
        out = augment_image(pic, seg, bnd, mode=mode, alpha=spec.alpha)
        img = out.astype(np.float32) / np.float32(255.0) if out.dtype == np.uint8 else out.astype(np.float32)
    else:
        raise OptionError(f"unknown view {view!r}; use 'raw' or 'samaug'")
    if img.shape[2] != spec.in_channels:
        raise OptionError(f"the {view} input has {img.shape[2]} channels, the model takes {spec.in_channels}")
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def resize_input(x: np.ndarray, size: int) -> np.ndarray:
    """``(C, H, W)`` float32 -> ``(C, size, size)``: area averaging when both sides shrink, bilinear otherwise."""
    c, h, w = x.shape
    if (h, w) == (size, size):
        return x.astype(np.float32, copy=True)
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    out = np.empty((c, size, size), np.float32)
    for i in range(c):  # cv2 resizes at most 4 channels at once
        out[i] = cv2.resize(np.ascontiguousarray(x[i], dtype=np.float32), (size, size), interpolation=interp)
    return out


def resize_probability(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(S, S)`` float probabilities -> ``(H, W)`` float32 bilinearly (pixel centres), clipped to [0, 1]."""
    h, w = shape
    p: np.ndarray = np.asarray(prob, np.float32)
    if p.shape != (h, w):
        p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(p, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------ prediction


def views_for(spec: InputSpec, have_priors: bool, ensemble: bool) -> tuple[str, ...]:
    """The inputs a model of ``spec`` is applied to (rules in the module docstring); ValueError when priors are
    needed but missing."""
    if spec.kind == "raw":
        return ("raw",)
    if spec.kind == "samaug":
        if not have_priors:
            raise OptionError(
                "this model was trained on SAMAug-augmented inputs: give the image's priors (priors= / --priors / --samaug-dir)"
            )
        return ("samaug",)
    if ensemble:
        if not have_priors:
            raise OptionError(
                "this model was trained on both raw and augmented inputs; its test-time ensemble needs the image's priors "
                "(priors= / --priors / --samaug-dir), or use ensemble=False (--no-ensemble) for the raw input alone"
            )
        return ("raw", "samaug")
    return ("samaug",) if have_priors else ("raw",)


def predict_unet(
    model: TrainedUNet | str | os.PathLike[str],
    image: Any,
    priors: Any = None,
    *,
    ensemble: bool = True,
    modality: str | None = None,
) -> np.ndarray:
    """Foreground probability of a 2D image: float32 ``(H, W)`` in [0, 1] on the image's own grid.

    model: a :class:`~medsamkit.models.unet.TrainedUNet` or a run folder (``best.pt`` is loaded). image:
    ``(H, W)``, ``(H, W, 1|3|4)`` array or a 2D :class:`~medsamkit.io.MedicalImage`, made uint8 by the ``auto``
    preset as in training (give ``modality`` "CT" for a raw CT slice). priors: the image's SAMAug priors (a
    :class:`Priors`, ``(seg, boundary)`` pair, mapping or npz path; ``(H, W)`` each). Which inputs are used: see
    the module docstring.
    """
    m = model if isinstance(model, TrainedUNet) else load_unet(model)
    picture = model_picture(image, modality=modality)[0]
    views = views_for(m.spec, priors is not None, ensemble)
    pri = None
    if "samaug" in views:
        pri = as_priors(priors)
        if pri[0].shape != picture.shape[:2] or pri[1].shape != picture.shape[:2]:
            raise OptionError(
                f"priors are {pri[0].shape} and {pri[1].shape}, the image is {picture.shape[0]} x {picture.shape[1]} (H, W)"
            )
    return predict_views(m, picture, views, pri)


def predict_views(
    model: TrainedUNet, picture: np.ndarray, views: Sequence[str], priors: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """The mean foreground probability of ``model`` over ``views`` of a picture (uint8 ``(H, W)`` or
    ``(H, W, 3)``; ``priors`` ``(H, W)`` each for the "samaug" view): float32 ``(H, W)`` in [0, 1]."""
    import torch

    x = np.stack([resize_input(make_view(picture, model.spec, v, priors), model.spec.size) for v in views])
    with torch.inference_mode():
        logits = model.network(torch.from_numpy(x).to(model.device))
        prob = foreground_probability(logits).mean(dim=0).float().cpu().numpy()
    return resize_probability(prob, picture.shape[:2])


class UNetSegmenter:
    """A trained U-Net as a segmenter of the evaluation runner (:class:`medsamkit.evaluate.runner.Segmenter`):
    ``segment(picture)`` -> bool ``(H, W)``, foreground where the mean probability over ``views`` (e.g. ("raw",),
    ("samaug",) or ("raw", "samaug")) is above ``threshold``. priors: one image's ``(seg, boundary)`` maps, needed
    for the "samaug" view; ``case_id`` names that image in messages. A U-Net is a model of 2D images: it is not
    applied to the slices of a volume (``slices = False``)."""

    slices = False

    def __init__(
        self,
        model: TrainedUNet,
        views: Sequence[str],
        priors: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        threshold: float = 0.5,
        case_id: str = "",
    ) -> None:
        self.model = model
        self.views = tuple(views)
        self.priors = priors
        self.threshold = float(threshold)
        self.case_id = case_id

    def segment(self, picture: np.ndarray) -> np.ndarray:
        """bool ``(H, W)`` mask of a uint8 picture ``(H, W)`` or ``(H, W, 3)``."""
        if self.priors is not None and self.priors[0].shape != picture.shape[:2]:
            where = f"case {self.case_id}: " if self.case_id else ""
            raise OptionError(f"{where}priors are {self.priors[0].shape}, the image is {picture.shape[:2]}")
        return predict_views(self.model, picture, self.views, self.priors) > self.threshold
