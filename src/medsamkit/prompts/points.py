"""Point prompts simulated from a ground-truth mask.

Points are returned as ``(x, y)`` = (column, row) pixel indices of the 2D mask ``(H, W)``, the convention of
:class:`medsamkit.predict.Predictor`. Labels: 1 = foreground (positive), 0 = background (negative).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import OptionError, PromptError
from ._checks import as_mask


def _nonempty(mask: np.ndarray) -> np.ndarray:
    m = as_mask(mask, ndim=2)
    if not m.any():
        raise PromptError("the mask is empty: no point can be placed in it")
    return m


def interior_distance(mask: np.ndarray, sampling: tuple[float, ...] | None = None) -> np.ndarray:
    """Euclidean distance of each foreground pixel to the nearest background pixel, where everything outside
    the image counts as background (so a pixel on the image border has distance 1 pixel). Same shape as
    ``mask`` (2D or 3D), float; in pixels, or in mm with ``sampling`` (voxel size per array axis)."""
    m = as_mask(mask)
    return ndimage.distance_transform_edt(np.pad(m, 1), sampling=sampling)[(slice(1, -1),) * m.ndim]


def center_point(mask: np.ndarray) -> np.ndarray:
    """The interior point farthest from the object's boundary (maximum of :func:`interior_distance`; ties go
    to the first pixel in row-major order). Always inside the mask. Returns ``(2,)`` float (x, y)."""
    d = interior_distance(_nonempty(mask))
    r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    return np.array([c, r], dtype=np.float64)


@dataclass(frozen=True)
class Centroid:
    """The mean position of the foreground pixels, ``point`` = (x, y) in (sub)pixel units, and whether the
    pixel it falls on belongs to the object (it does not for rings, crescents, several components)."""

    point: np.ndarray
    inside: bool


def centroid_point(mask: np.ndarray) -> Centroid:
    """Centroid of the mask (centre of mass); may fall outside the object: check ``inside``."""
    m = _nonempty(mask)
    rows, cols = np.nonzero(m)
    x, y = float(cols.mean()), float(rows.mean())
    inside = bool(m[int(round(y)), int(round(x))])
    return Centroid(np.array([x, y]), inside)


def random_points(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct foreground pixels drawn uniformly (with replacement only when the object has fewer than
    ``k`` pixels). Returns ``(k, 2)`` float (x, y)."""
    if k < 1:
        raise OptionError(f"number of points must be >= 1, got {k}")
    m = _nonempty(mask)
    rows, cols = np.nonzero(m)
    idx = rng.choice(rows.size, size=k, replace=rows.size < k)
    return np.stack([cols[idx], rows[idx]], axis=1).astype(np.float64)


def ring_mask(mask: np.ndarray, width: float | None = None) -> np.ndarray:
    """Background pixels within ``width`` pixels (Euclidean) of the object: the "dilated ring" where negative
    points are drawn. Default width: 10 % of the larger side of the object's box, at least 3 pixels."""
    m = _nonempty(mask)
    if width is None:
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        width = max(3.0, 0.1 * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    if width <= 0:
        raise OptionError(f"ring width must be > 0 pixels, got {width}")
    outside = ndimage.distance_transform_edt(~m)
    return (outside > 0) & (outside <= width)


def positive_negative_points(
    mask: np.ndarray, k: int, m: int, rng: np.random.Generator, ring_width: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` random positive points inside the object and ``m`` random negative points in the ring around it
    (:func:`ring_mask`). Returns coords ``(k + m, 2)`` float (x, y) and labels ``(k + m,)`` (1, then 0)."""
    if m < 0:
        raise OptionError(f"number of negative points must be >= 0, got {m}")
    pos = random_points(mask, k, rng)
    if m == 0:
        return pos, np.ones(k, dtype=np.int64)
    ring = ring_mask(mask, ring_width)
    if not ring.any():
        raise PromptError("the object fills the image: there is no background around it for negative points")
    neg = random_points(ring, m, rng)
    return np.concatenate([pos, neg]), np.concatenate([np.ones(k, np.int64), np.zeros(m, np.int64)])
