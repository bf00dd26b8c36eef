"""Object attributes that predict where SAM fails (Huang et al.): size, boundary complexity, contrast with the
surroundings, number of components, how well a box fits the object.

Masks are 2D ``(H, W)`` or 3D ``(Z, Y, X)`` (nonzero = object); images are the grey levels the model sees
(uint8 0..255 after the intensity preset; colour images reduced to luminance by the caller), same shape.
``spacing`` is in array-axis order, as in :mod:`medsamkit.metrics`. Attributes that are undefined for an object
are NaN, and say so below: the evaluation excludes them from correlations and counts them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .._arrays import as_bool_mask
from ..errors import InputError


def compactness(mask: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Boundary complexity as an isoperimetric ratio, 1 for a disk/ball and larger for irregular shapes.

    2D: perimeter² / (4π · area) (perimeter by scikit-image's 4-connected boundary estimate, in pixels; with
    anisotropic spacing the mask is measured in pixel units). 3D: surface³ / (36π · volume²), the surface from
    marching cubes in mm with ``spacing`` on the mask smoothed with a Gaussian of 0.7 voxel (on the raw voxel
    staircase the area is ~10 % too large: a digital ball would score 1.29; smoothed, 1.02 at radius 15 voxels;
    balls of radius < 8 voxels score below 1). NaN for an empty mask and for 3D objects too thin to have a
    surface after smoothing (single voxels, one-voxel lines).
    """
    m = as_bool_mask(mask)
    n = int(m.sum())
    if n == 0:
        return float("nan")
    if m.ndim == 2:
        from skimage.measure import perimeter

        p = float(perimeter(np.pad(m, 1), neighborhood=4))
        return p * p / (4 * math.pi * n) if p > 0 else 1.0
    if m.ndim == 3:
        from skimage.measure import marching_cubes, mesh_surface_area

        sp = tuple(float(s) for s in (spacing if spacing is not None else (1.0, 1.0, 1.0)))
        smooth = ndimage.gaussian_filter(np.pad(m, 3).astype(np.float32), 0.7)
        if smooth.max() <= 0.5:  # one voxel or a one-voxel-thin line: smoothing leaves no surface at 0.5
            return float("nan")
        verts, faces, _, _ = marching_cubes(smooth, 0.5, spacing=sp)
        area = float(mesh_surface_area(verts, faces))
        vol = n * float(np.prod(sp))
        return area**3 / (36 * math.pi * vol * vol)
    raise InputError(f"compactness needs a 2D or 3D mask, got shape {m.shape}")


def boundary(mask: np.ndarray) -> np.ndarray:
    """Object voxels with a face-connected background neighbour (outside the array counts as background)."""
    m = as_bool_mask(mask)
    inner = ndimage.binary_erosion(np.pad(m, 1))[(slice(1, -1),) * m.ndim]
    return m & ~inner


def fractal_dimension(mask: np.ndarray) -> float:
    """Box-counting (Minkowski-Bouligand) dimension of the object's boundary: the slope of log N(s) against
    log(1/s), N(s) = boxes of side s (1, 2, 4, ... px) that contain boundary pixels. About 1 for a smooth
    curve in 2D (2 for a smooth surface in 3D), higher for ragged boundaries. NaN when the object is smaller
    than 4 px across (fewer than three box sizes to fit)."""
    b = boundary(mask)
    if not b.any():
        return float("nan")
    idx = np.nonzero(b)
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) for i in idx]
    b = b[tuple(slice(a, z + 1) for a, z in zip(lo, hi))]
    extent = max(b.shape)
    sizes = [2**k for k in range(int(math.log2(extent)) + 1)]  # 1, 2, 4, ... up to the object's extent
    if len(sizes) < 3:
        return float("nan")
    counts = []
    for s in sizes:
        pad = [(0, (-n) % s) for n in b.shape]
        q = np.pad(b, pad)
        shape: list[int] = []
        for n in q.shape:
            shape += [n // s, s]
        counts.append(int(q.reshape(shape).any(axis=tuple(range(1, 2 * q.ndim, 2))).sum()))
    slope = np.polyfit(np.log(1.0 / np.array(sizes, float)), np.log(np.array(counts, float)), 1)[0]
    return float(slope)


def ring(mask: np.ndarray, width: float | None = None) -> np.ndarray:
    """Background voxels within ``width`` voxels (Euclidean) of the object; default width: 10 % of the object's
    largest box side, at least 3 voxels."""
    m = as_bool_mask(mask)
    if width is None:
        idx = np.nonzero(m)
        width = max(3.0, 0.1 * max(int(i.max()) - int(i.min()) + 1 for i in idx)) if idx[0].size else 3.0
    outside = ndimage.distance_transform_edt(~m)
    return (outside > 0) & (outside <= width)


def contrast(image: np.ndarray, mask: np.ndarray, width: float | None = None) -> float:
    """Intensity contrast between the object and its surrounding ring (:func:`ring`): |mean inside - mean in
    the ring| / 255 for the uint8 model input, in 0..1. NaN when the object or its ring is empty."""
    m = as_bool_mask(mask)
    img = np.asarray(image, dtype=np.float64)
    if img.shape != m.shape:
        raise InputError(f"image shape {img.shape} does not match mask {m.shape}")
    r = ring(m, width)
    if not m.any() or not r.any():
        return float("nan")
    return abs(float(img[m].mean()) - float(img[r].mean())) / 255.0


def components(mask: np.ndarray) -> int:
    """Number of connected components (8-connected in 2D, 26-connected in 3D)."""
    m = as_bool_mask(mask)
    return int(ndimage.label(m, structure=np.ones((3,) * m.ndim, bool))[1])


def box_fill(mask: np.ndarray) -> float:
    """Object size / size of its tight box (1 for a rectangle, ~0.785 for a disk, small for thin or diagonal
    objects, which a box prompt describes badly). NaN for an empty mask."""
    m = as_bool_mask(mask)
    idx = np.nonzero(m)
    if idx[0].size == 0:
        return float("nan")
    box = np.prod([int(i.max()) - int(i.min()) + 1 for i in idx])
    return float(idx[0].size / box)


ATTRIBUTES = ("size_px", "size", "relative_size", "compactness", "fractal_dimension", "contrast", "components", "box_fill")


def object_attributes(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """All attributes of one object: ``size_px`` (pixels/voxels), ``size`` (mm² / mm³ with ``spacing``, else
    pixels), ``relative_size`` (fraction of the image), ``compactness``, ``fractal_dimension``, ``contrast``,
    ``components``, ``box_fill`` (see the functions of the same names)."""
    m = as_bool_mask(mask)
    img = np.asarray(image)
    if img.shape != m.shape:
        raise InputError(f"image shape {img.shape} does not match mask {m.shape}")
    n = int(m.sum())
    voxel = float(np.prod(spacing)) if spacing is not None else 1.0
    width = None
    if n:
        # every attribute depends only on the object and its ring: work on the object's box plus the ring's width
        # (exact - the ring is clipped at the image border either way - and ~10x faster on large images)
        idx = np.nonzero(m)
        lo = [int(i.min()) for i in idx]
        hi = [int(i.max()) for i in idx]
        width = max(3.0, 0.1 * max(b - a + 1 for a, b in zip(lo, hi)))
        margin = int(math.ceil(width)) + 2
        crop = tuple(slice(max(0, a - margin), min(s, b + margin + 1)) for a, b, s in zip(lo, hi, m.shape))
        m, img = m[crop], img[crop]
    return {
        "size_px": float(n),
        "size": n * voxel,
        "relative_size": n / mask_size(mask),
        "compactness": compactness(m, spacing),
        "fractal_dimension": fractal_dimension(m),
        "contrast": contrast(img, m, width),
        "components": float(components(m)),
        "box_fill": box_fill(m),
    }


def mask_size(mask: np.ndarray) -> int:
    """Number of pixels/voxels of the image grid of ``mask``."""
    return int(np.prod(np.shape(mask)))
