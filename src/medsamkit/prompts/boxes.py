"""Box prompts simulated from a ground-truth mask.

Boxes are ``(x0, y0, x1, y1)`` float arrays with **inclusive** pixel corners, x = column, y = row (the
convention of :class:`medsamkit.predict.Predictor`): a one-pixel object at row r, column c has the box
``(c, r, c, r)``. Every function returns boxes clipped to the image, so they are valid prompts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import OptionError, PromptError
from ._checks import as_mask


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight inclusive box ``(4,)`` of the foreground of a 2D mask ``(H, W)``; ``ValueError`` when empty."""
    m = as_mask(mask, ndim=2)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        raise PromptError("the mask is empty: no box can be derived from it")
    cols = np.flatnonzero(m.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def component_masks(mask: np.ndarray, connectivity: int = 2) -> list[np.ndarray]:
    """The connected components of a 2D mask as boolean masks, largest first (ties: top-left first).

    connectivity: 1 = edge-connected (4-neighbourhood), 2 = also diagonal (8-neighbourhood, default).
    """
    m = as_mask(mask, ndim=2)
    structure = ndimage.generate_binary_structure(2, connectivity)
    lab, n = ndimage.label(m, structure=structure)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    order = sorted(range(n), key=lambda i: -sizes[i])  # stable: equal sizes keep label (raster) order
    return [lab == i + 1 for i in order]


def component_boxes(mask: np.ndarray, connectivity: int = 2) -> np.ndarray:
    """One tight inclusive box per connected component, ``(N, 4)``, largest component first."""
    return np.array([mask_box(c) for c in component_masks(mask, connectivity)], dtype=np.float64).reshape(-1, 4)


def clip_box(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Clip ``box`` (``(4,)`` or ``(N, 4)``) to an image of ``shape`` = (H, W), keeping x0 <= x1, y0 <= y1."""
    h, w = shape
    b = np.array(box, dtype=np.float64)
    b[..., [0, 2]] = np.clip(b[..., [0, 2]], 0, w - 1)
    b[..., [1, 3]] = np.clip(b[..., [1, 3]], 0, h - 1)
    lo = np.minimum(b[..., :2], b[..., 2:])
    hi = np.maximum(b[..., :2], b[..., 2:])
    return np.concatenate([lo, hi], axis=-1)


def shift_box(box: np.ndarray, max_shift: int, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """MedSAM's ``bbox_shift``: each side moved outwards by an independent random integer in ``0..max_shift``
    pixels (MedSAM draws ``randint(0, bbox_shift)`` per side), then clipped to the image ``(H, W)``."""
    if max_shift < 0:
        raise OptionError(f"bbox shift must be >= 0 pixels, got {max_shift}")
    d = rng.integers(0, max_shift + 1, size=4).astype(np.float64)
    b = np.asarray(box, dtype=np.float64) + d * np.array([-1, -1, 1, 1])
    return clip_box(b, shape)


def jitter_box(box: np.ndarray, ratio: float, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Relative jitter (Huang et al.'s box perturbation): each coordinate moves by a uniform random offset in
    ``[-ratio, +ratio]`` times the box width (x0, x1) or height (y0, y1), rounded to whole pixels, then the box
    is clipped to the image ``(H, W)`` and re-ordered so that x0 <= x1, y0 <= y1. The box can shrink or grow."""
    if not 0 <= ratio < 1:
        raise OptionError(f"jitter ratio must be in [0, 1), got {ratio}")
    b = np.asarray(box, dtype=np.float64)
    w = b[2] - b[0] + 1
    h = b[3] - b[1] + 1
    scale = np.array([w, h, w, h])
    d = np.rint(rng.uniform(-ratio, ratio, size=4) * scale)
    return clip_box(b + d, shape)


def jitter_box_3d(box: np.ndarray, ratio: float, rng: np.random.Generator, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """:func:`jitter_box` for a 3D box ``(x0, y0, z0, x1, y1, z1)`` (inclusive voxel indices) in a volume of
    ``shape_zyx`` = (Z, Y, X)."""
    if not 0 <= ratio < 1:
        raise OptionError(f"jitter ratio must be in [0, 1), got {ratio}")
    b = np.asarray(box, dtype=np.float64)
    ext = b[3:] - b[:3] + 1
    d = np.rint(rng.uniform(-ratio, ratio, size=6) * np.concatenate([ext, ext]))
    return clip_box_3d(b + d, shape_zyx)


def shift_box_3d(box: np.ndarray, max_shift: int, rng: np.random.Generator, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """:func:`shift_box` for a 3D box ``(x0, y0, z0, x1, y1, z1)``; every face moves outwards by 0..max_shift."""
    if max_shift < 0:
        raise OptionError(f"bbox shift must be >= 0 voxels, got {max_shift}")
    d = rng.integers(0, max_shift + 1, size=6).astype(np.float64)
    return clip_box_3d(np.asarray(box, np.float64) + d * np.array([-1, -1, -1, 1, 1, 1]), shape_zyx)


def mask_box_3d(mask: np.ndarray) -> np.ndarray:
    """Tight inclusive 3D box ``(x0, y0, z0, x1, y1, z1)`` of a ``(Z, Y, X)`` mask; ``ValueError`` when empty."""
    m = as_mask(mask, ndim=3)
    if not m.any():
        raise PromptError("the mask is empty: no box can be derived from it")
    z = np.flatnonzero(m.any(axis=(1, 2)))
    y = np.flatnonzero(m.any(axis=(0, 2)))
    x = np.flatnonzero(m.any(axis=(0, 1)))
    return np.array([x[0], y[0], z[0], x[-1], y[-1], z[-1]], dtype=np.float64)


def clip_box_3d(box: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    z, y, x = shape_zyx
    b = np.asarray(box, dtype=np.float64).copy()
    hi = np.array([x - 1, y - 1, z - 1], dtype=np.float64)
    b[:3] = np.clip(b[:3], 0, hi)
    b[3:] = np.clip(b[3:], 0, hi)
    return np.concatenate([np.minimum(b[:3], b[3:]), np.maximum(b[:3], b[3:])])
