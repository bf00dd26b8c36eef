"""Exact reorientation: an array moved from one voxel grid onto another that covers the same voxels in another
axis order or direction (a signed axis permutation), by permuting and flipping axes only, never resampling.

Conventions (those of :mod:`medsamkit.io.image`): a volume's array is ``array[k, j, i]`` = ``array[z, y, x]``
where (i, j, k) is the NIfTI/ITK voxel index; a grid places voxel (i, j, k) at LPS world millimetres
``affine_lps() @ (i, j, k, 1)``. Two grids are the same up to reorientation when every voxel centre of one is a
voxel centre of the other (to 1e-3 voxel) and both cover the same voxels: e.g. a NIfTI mask written in RAS order
(rows flipped) for a DICOM series stored in LPS order. Anything else (other spacing, a shift by part of a
voxel, a rotation that is not a multiple of 90 degrees, a different extent) is not an exact reorientation:
:func:`reorient_exact` returns None and the caller decides (refuse, warn, or resample through world
coordinates with :func:`medsamkit.io.writers.resample_like`).
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from .image import MedicalImage

TOLERANCE = 1e-3
"""How far (in voxels) a mapped voxel centre may lie from a whole voxel index and still count as on it."""


def reorient_exact(array: np.ndarray, source: MedicalImage, target: MedicalImage) -> np.ndarray | None:
    """``array`` (``(Z, Y, X)`` = ``[k, j, i]`` on ``source``'s voxel grid, any dtype) on ``target``'s voxel grid
    when the two grids are the same voxels up to a signed axis permutation (world positions from each image's
    spacing, origin and direction, see the module docstring), else None. The result is a C-contiguous
    ``(Z, Y, X)`` array of ``target.spatial_shape`` holding the same values as ``array``, each moved to the
    target voxel at the same world position; no value is interpolated. Volumes (3D grids) only."""
    if not (source.is_volume and target.is_volume):
        raise OptionError("reorient_exact works on volumes (3D grids)")
    t = np.linalg.inv(target.affine_lps()) @ source.affine_lps()  # source (i, j, k, 1) -> target (i, j, k, 1)
    lin, off = t[:3, :3], t[:3, 3]
    r = np.round(lin)
    if np.abs(lin - r).max() > TOLERANCE or np.abs(off - np.round(off)).max() > TOLERANCE:
        return None
    if sorted(np.abs(r).sum(axis=0).tolist()) != [1, 1, 1] or sorted(np.abs(r).sum(axis=1).tolist()) != [1, 1, 1]:
        return None
    target_size = target.spatial_shape[::-1]  # (i, j, k) sizes
    src_ijk = np.asarray(array).transpose(2, 1, 0)
    perm = [0, 0, 0]
    for a in range(3):  # source axis a -> target axis b, with sign s and offset o: n_b = s * m_a + o
        b = int(np.argmax(np.abs(r[:, a])))
        s, o = int(r[b, a]), int(round(off[b]))
        if src_ijk.shape[a] != target_size[b] or o != (0 if s > 0 else target_size[b] - 1):
            return None
        if s < 0:
            src_ijk = np.flip(src_ijk, axis=a)
        perm[b] = a
    return np.ascontiguousarray(src_ijk.transpose(perm).transpose(2, 1, 0))
