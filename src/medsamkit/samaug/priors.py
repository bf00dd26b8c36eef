"""SAMAug prior maps from everything-mode masks, and the augmented network input built from them.

SAMAug (Zhang et al., MICCAI 2023) runs SAM in everything mode on an image and turns the masks into two maps on
the image's pixel grid, then trains a segmentation network on the image augmented with them:

* **segmentation prior** (:func:`segmentation_prior`): every mask's pixels take the mask's stability score;
  where masks overlap the highest score wins; pixels covered by no mask are 0. float32 in [0, 1].
* **boundary prior** (:func:`boundary_prior`): the union of the *outer* boundaries of the masks. For each mask
  its holes are filled first (a hole = a background region, 4-connected, that does not reach the image edge),
  then a pixel of the filled mask is a boundary pixel when one of its 4 neighbours (up, down, left, right) lies
  outside the filled mask. This is a closed 8-connected contour one pixel wide, on the mask's own pixels; hole
  edges are never boundary. The image frame is not a boundary: pixels outside the image count as inside the
  mask, so a mask touching the image edge gets no contour along it. ``thickness`` t > 1 widens the contour
  inwards: mask pixels within t 4-neighbour steps of the outside. float32 in {0, 1}.

:func:`augment_image` puts the priors into the image, in one of two modes:

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

Prior files (the contract with the training and batch modules): ``<samaug_dir>/priors/<case_id>.npz`` holding
float32 ``(H, W)`` arrays ``seg_prior`` and ``boundary_prior`` on the source image's grid, plus ``n_masks`` and
the preparation's content ``key`` (see :func:`save_priors` / :func:`load_priors`).
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .._files import atomic_write_bytes
from ..errors import FileInputError, OptionError
from ..preprocess.image2d import to_rgb_uint8

#: version of the prior maps' definition and of the files written by :mod:`medsamkit.samaug`; part of every
#: preparation key, so a change of definition recomputes old outputs
FORMAT_VERSION = 1
MODES = ("add", "stack")
#: weight of the priors in ``"add"`` mode (0.5: the authors' ``channel + 255 * prior``, halved into 0..255)
DEFAULT_ALPHA = 0.5

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbourhood


def record_mask(record: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` bool mask of an everything-mode record (``segmentation`` as a bool array or COCO RLE
    dict). Raises ``InputError`` (a ``ValueError``) when it is missing or not of ``shape``."""
    if not isinstance(record, dict) or "segmentation" not in record:
        raise OptionError("an everything-mode record must be a dict with a 'segmentation' entry")
    seg = record["segmentation"]
    if isinstance(seg, dict):
        from ..predict.masks import rle_decode

        m = rle_decode(seg)
    else:
        m = np.asarray(seg)
        if m.dtype != bool:
            if not np.issubdtype(m.dtype, np.number) or not np.isin(m, (0, 1)).all():
                raise OptionError(f"record segmentation must be a bool mask or COCO RLE, got {m.dtype} values")
            m = m.astype(bool)
    if m.shape != tuple(shape):
        raise OptionError(f"record mask has shape {m.shape}, expected {tuple(shape)}")
    return m


def _shape(shape: Sequence[int]) -> tuple[int, int]:
    s = tuple(int(v) for v in shape)
    if len(s) != 2 or min(s) < 1:
        raise OptionError(f"shape must be (H, W) with H, W >= 1, got {tuple(shape)}")
    return s  # type: ignore[return-value]


def _stability(record: dict[str, Any], i: int) -> float:
    try:
        s = float(record["stability_score"])
    except (KeyError, TypeError, ValueError):
        raise OptionError(f"record {i} has no numeric 'stability_score'") from None
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        raise OptionError(f"record {i}: stability_score must be in [0, 1], got {s}")
    return s


def segmentation_prior(records: Sequence[dict[str, Any]], shape: Sequence[int]) -> np.ndarray:
    """Segmentation prior map ``(H, W)`` float32 in [0, 1]: at each pixel the highest stability score of the
    records' masks covering it, 0 where no mask does. ``shape`` = (H, W) of the image the masks belong to."""
    hw = _shape(shape)
    out = np.zeros(hw, dtype=np.float32)
    for i, r in enumerate(records):
        s = np.float32(_stability(r, i))
        m = record_mask(r, hw)
        np.maximum(out, np.where(m, s, np.float32(0)), out=out)
    return out


def outer_boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Outer boundary ``(H, W)`` bool of one mask, as defined in the module docstring: pixels of the
    hole-filled mask within ``thickness`` 4-neighbour steps of a pixel outside it (the image frame is not
    outside)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise OptionError(f"mask must be 2D (H, W), got shape {m.shape}")
    if isinstance(thickness, bool) or not isinstance(thickness, (int, np.integer)) or thickness < 1:
        raise OptionError(f"thickness must be an integer >= 1, got {thickness!r}")
    if not m.any():
        return m.copy()
    filled = ndimage.binary_fill_holes(m, structure=_CROSS)
    inner = ndimage.binary_erosion(filled, structure=_CROSS, iterations=int(thickness), border_value=1)
    return filled & ~inner


def boundary_prior(records: Sequence[dict[str, Any]], shape: Sequence[int], thickness: int = 1) -> np.ndarray:
    """Boundary prior map ``(H, W)`` float32 in {0, 1}: the union of the records' outer boundaries
    (:func:`outer_boundary`; holes' edges excluded, image frame excluded, ``thickness`` pixels wide, inwards)."""
    hw = _shape(shape)
    out = np.zeros(hw, dtype=bool)
    for r in records:
        out |= outer_boundary(record_mask(r, hw), thickness)
    return out.astype(np.float32)


@dataclass
class Priors:
    """The two prior maps of one image and what made them.

    seg: ``(H, W)`` float32 in [0, 1] (:func:`segmentation_prior`); boundary: ``(H, W)`` float32 in {0, 1}
    (:func:`boundary_prior`); n_masks: how many everything-mode masks went in; stats: counters and timings
    (everything mode's, coverage fractions); records: the masks themselves when kept (not saved in the npz)."""

    seg: np.ndarray
    boundary: np.ndarray
    n_masks: int
    stats: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.seg.shape)  # type: ignore[return-value]


def priors_from_records(records: Sequence[dict[str, Any]], shape: Sequence[int], thickness: int = 1) -> Priors:
    """Both prior maps of everything-mode ``records`` on an image of ``shape`` (H, W), with coverage stats:
    ``seg_coverage`` (fraction of pixels under some mask), ``boundary_fraction``, ``mean_stability``."""
    hw = _shape(shape)
    recs = list(records)
    seg = segmentation_prior(recs, hw)
    bnd = boundary_prior(recs, hw, thickness)
    stabs = [float(r["stability_score"]) for r in recs]
    stats = {
        "seg_coverage": round(float((seg > 0).mean()), 6),
        "boundary_fraction": round(float(bnd.mean()), 6),
        "mean_stability": round(float(np.mean(stabs)), 6) if stabs else None,
        "thickness": int(thickness),
    }
    return Priors(seg, bnd, len(recs), stats)


# ------------------------------------------------------------------------------------------------ augmentation


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
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
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
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
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


# ------------------------------------------------------------------------------------------------------- files


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
