"""Mask tools for annotation. Every function takes a bool mask ``(Z, Y, X)`` (a 2D image as one slice) and returns
a new bool mask of the same shape; slices are ``mask[k]`` (axis 0). ``spacing`` is the voxel size in mm as
``(z, y, x)`` (the order of the array's axes, not NIfTI's x, y, z); connectivity is face-connected (6 neighbours in
3D, 4 in a slice).

- :func:`fill_between_slices`: shape-based interpolation of the empty slices between annotated ones (the signed
  distance maps of the two nearest annotated slices, blended by distance; Raya & Udupa 1990, as 3D Slicer's
  "Fill between slices" fills gaps), so an annotator draws every few slices.
- :func:`fill_holes`: background enclosed by the mask (per slice, or in 3D).
- :func:`keep_largest` / :func:`remove_small`: connected components.
- :func:`smooth`: median filter of the mask, per slice, radius in pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError

_FACE_3D = ndimage.generate_binary_structure(3, 1)
_FACE_2D = ndimage.generate_binary_structure(2, 1)


def _check(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InputError(f"a mask of shape (Z, Y, X) is needed, got shape {m.shape}")
    return m.astype(bool, copy=False)


def annotated_slices(mask: np.ndarray) -> list[int]:
    """The slices (axis 0) holding any voxel of ``mask``, ascending."""
    return [int(k) for k in np.flatnonzero(_check(mask).any(axis=(1, 2)))]


def _signed_distance(plane: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """Signed distance (mm) to the boundary of a 2D mask: negative inside, positive outside. Beyond the array's
    edge is background (a mask cut off by the edge, or by a crop around it, ends there)."""
    if not plane.any():
        return np.full(plane.shape, np.inf)
    padded = np.pad(plane, 1)
    outside = ndimage.distance_transform_edt(~padded, sampling=sampling)
    inside = ndimage.distance_transform_edt(padded, sampling=sampling)
    return np.asarray(outside - inside, np.float64)[1:-1, 1:-1]


def fill_between_slices(mask: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Fill every empty slice lying between two annotated slices of ``mask`` (axis 0) by shape-based interpolation:
    at slice ``k`` between annotated ``a < k < b`` the object is where ``(1 - t) d_a + t d_b < 0``, ``t = (k - a) /
    (b - a)``, ``d`` the signed distance maps in mm (in-plane ``spacing``). Annotated slices, and slices outside the
    first..last annotated one, are returned as they are. Needs at least two annotated slices."""
    m = _check(mask)
    keys = annotated_slices(m)
    if len(keys) < 2:
        raise InputError(f"filling between slices needs the segment on at least two slices; it is on {len(keys)}")
    out = m.copy()
    sampling = (float(spacing[1]), float(spacing[2]))
    for a, b in zip(keys, keys[1:]):
        if b - a < 2:
            continue
        da, db = _signed_distance(m[a], sampling), _signed_distance(m[b], sampling)
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            out[k] = (1 - t) * da + t * db < 0
    return out


def fill_holes(mask: np.ndarray, per_slice: bool = True) -> np.ndarray:
    """The mask with the background it encloses filled: in each slice (``per_slice``, holes as seen on a slice) or
    in 3D (cavities closed on every side)."""
    m = _check(mask)
    if not per_slice:
        return np.asarray(ndimage.binary_fill_holes(m, structure=_FACE_3D))
    return np.stack([np.asarray(ndimage.binary_fill_holes(p, structure=_FACE_2D)) if p.any() else p for p in m])


def _components(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components in 3D: labels and the size of each (index 0 = background, size 0)."""
    lab, n = ndimage.label(m, structure=_FACE_3D)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab, sizes


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Only the largest face-connected island of the mask (3D); an empty mask stays empty."""
    m = _check(mask)
    if not m.any():
        return m.copy()
    lab, sizes = _components(m)
    return lab == int(np.argmax(sizes))


def remove_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """The mask without its face-connected islands (3D) of fewer than ``min_voxels`` voxels."""
    if min_voxels < 1:
        raise InputError(f"min_voxels must be at least 1, got {min_voxels}")
    m = _check(mask)
    if not m.any():
        return m.copy()
    lab, sizes = _components(m)
    return (sizes >= min_voxels)[lab] & m


def smooth(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """The mask median-filtered in each slice with a ``(2 radius + 1)`` square window (pixels): removes spurs and
    one-pixel gaps, rounds corners; slices without the mask stay empty."""
    if not 1 <= radius <= 10:
        raise InputError(f"the smoothing radius must be 1..10 pixels, got {radius}")
    m = _check(mask)
    size = 2 * radius + 1
    return np.stack([ndimage.median_filter(p.astype(np.uint8), size=size, mode="constant") > 0 if p.any() else p for p in m])
