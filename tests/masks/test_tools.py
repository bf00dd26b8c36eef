"""Mask tools (:mod:`medsamkit.masks.tools`) on shapes whose answer is known: discs interpolated between slices,
rings filled, islands kept or removed, spurs smoothed."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.errors import InputError
from medsamkit.masks import fill_between_slices, fill_holes, keep_largest, remove_small, smooth


def disc(r: float, shape=(64, 64), c=(32, 32)) -> np.ndarray:
    y, x = np.ogrid[: shape[0], : shape[1]]
    return (y - c[0]) ** 2 + (x - c[1]) ** 2 <= r * r


def test_fill_between_slices_interpolates_the_shape():
    m = np.zeros((9, 64, 64), bool)
    m[1], m[5], m[8] = disc(6), disc(14), disc(14, c=(32, 40))
    out = fill_between_slices(m)
    assert np.array_equal(out[[0, 1, 5, 8]], m[[0, 1, 5, 8]])  # annotated slices and those outside stay
    area = out.sum(axis=(1, 2))
    # radius grows linearly 6 -> 14 over slices 1..5: slice 3 has radius ~10
    assert abs(area[3] - np.pi * 100) / (np.pi * 100) < 0.06 and area[2] < area[3] < area[4]
    # same radius, shifted centre: the middle slice sits halfway
    ys, xs = np.nonzero(out[6])
    assert abs(xs.mean() - (32 + 8 / 3)) < 1 and abs(ys.mean() - 32) < 0.5
    # distances are in mm: a uniform in-plane scale changes no boundary, an anisotropic one does
    assert np.array_equal(fill_between_slices(m, spacing=(2.5, 2.0, 2.0)), out)
    assert not np.array_equal(fill_between_slices(m, spacing=(1.0, 1.0, 3.0))[3], out[3])
    with pytest.raises(InputError, match="at least two"):
        fill_between_slices(m[:3])


def test_fill_between_slices_does_not_depend_on_the_crop():
    """Shapes touching the array's edge (a D cut flat, a square filling its box): filling inside their bounding box
    gives what filling the whole slice gives (the edge is background, as outside the crop)."""
    m = np.zeros((5, 64, 64), bool)
    m[0] = disc(14) & (np.arange(64)[None, :] <= 32)  # a D: flat on its right side
    m[4, 20:44, 20:44] = True  # a square
    whole = fill_between_slices(m)
    ys, xs = np.nonzero(m.any(axis=0))
    box = (slice(None), slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    assert whole[1:4].any(axis=(1, 2)).all() and np.array_equal(fill_between_slices(m[box]), whole[box])
    assert whole[2].sum() < max(m[0].sum(), m[4].sum())


def test_fill_holes_per_slice_and_in_3d():
    ring = disc(12) & ~disc(5)
    m = np.stack([ring, np.zeros_like(ring)])
    assert np.array_equal(fill_holes(m)[0], disc(12)) and not fill_holes(m)[1].any()
    # a hollow ball: in 3D its cavity is enclosed; a tube open at both ends is not
    z, y, x = np.ogrid[:20, :20, :20]
    r2 = (z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2
    shell = (r2 <= 64) & (r2 > 16)
    assert fill_holes(shell, per_slice=False).sum() == (r2 <= 64).sum()
    tube = np.broadcast_to(ring[None], (5, 64, 64))
    assert np.array_equal(fill_holes(tube, per_slice=False), tube) and fill_holes(tube).sum() == 5 * disc(12).sum()


def test_islands():
    m = np.zeros((4, 32, 32), bool)
    m[0:2, 2:8, 2:8] = True  # 72 voxels
    m[3, 20:22, 20:22] = True  # 4 voxels
    m[1, 20:25, 2:4] = True  # 10 voxels, touching nothing
    assert keep_largest(m).sum() == 72 and keep_largest(m)[0, 2, 2]
    assert remove_small(m, 5).sum() == 82 and not remove_small(m, 5)[3].any()
    assert remove_small(m, 1).sum() == m.sum() and not keep_largest(np.zeros((1, 4, 4), bool)).any()
    with pytest.raises(InputError):
        remove_small(m, 0)
    with pytest.raises(InputError, match="shape"):
        keep_largest(m[0])


def test_smooth_removes_spurs_and_keeps_the_body():
    m = np.zeros((2, 40, 40), bool)
    m[0, 10:30, 10:30] = True
    m[0, 19, 30:38] = True  # a one-pixel spur
    out = smooth(m, 1)
    assert not out[0, 19, 31:38].any() and out[0, 12:28, 12:28].all() and not out[1].any()
    with pytest.raises(InputError, match="radius"):
        smooth(m, 0)
