"""Surface (boundary) distance metrics of binary masks: HD95, Hausdorff, ASSD, NSD, and ``compute_metrics``.

Definitions match MONAI (``HausdorffDistanceMetric``, ``SurfaceDistanceMetric(symmetric=True)``,
``SurfaceDiceMetric(use_subvoxels=False)``, Euclidean distance):

* boundary of a mask = its foreground voxels with at least one face-connected background neighbour, where
  outside the array counts as background (MONAI's ``get_mask_edges``: erosion with the cross structure);
* directed distances = for each boundary voxel of one mask, the physical distance (in ``spacing`` units, e.g.
  mm) to the nearest boundary voxel of the other mask (exact: SciPy's Euclidean distance transform with
  ``sampling=spacing`` on the masks' common crop, or a k-d tree over the boundary voxels when that crop is
  large compared with the boundaries, e.g. a stray false positive far from the object).

``spacing`` is a sequence of voxel sizes in **array-axis order** (the order of ``mask.shape``: (y, x) for an
image, (z, y, x) for a volume). :class:`medsamkit.io.MedicalImage` stores spacing as (x, y, z), so pass
``image.spacing[::-1]``. A scalar is broadcast; None = 1.0 per axis (distances in voxels).

Empty-mask conventions (no NaN or inf is ever returned by the scalar metrics; MONAI returns NaN or inf for
these cases, we deliberately differ):

* ``hd95``, ``hausdorff``, ``assd``: both empty -> 0.0; exactly one empty -> the largest distance possible
  inside the grid, the length of its physical diagonal sqrt(sum(((n_i - 1) * s_i) ** 2)). It is finite, so
  averages stay defined; use the ``empty_pred`` / ``empty_gt`` flags of :func:`compute_metrics` to tell such
  rows apart.
* ``nsd``: both empty -> 1.0; exactly one empty -> 0.0.
* ``dice``, ``iou``, ``volume_difference``: see :mod:`medsamkit.metrics.overlap`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import KDTree

from ..errors import InputError
from ._inputs import SpacingLike, as_mask_pair, as_spacing
from .overlap import dice_from_counts, iou_from_counts, overlap_counts, volume_difference_from_counts

Box = list[tuple[int, int]]


def _bbox(m: np.ndarray) -> Box | None:
    """Half-open (lo, hi) per axis of the foreground of a bool array, or None when it is empty.
    Narrows one axis at a time, so only the first pass reads the whole array."""
    box: Box = []
    sub = m
    for ax in range(m.ndim):
        others = tuple(i for i in range(m.ndim) if i != ax)
        proj = np.any(sub, axis=others) if others else sub
        idx = np.flatnonzero(proj)
        if idx.size == 0:
            return None
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        sub = sub[(slice(None),) * ax + (slice(lo, hi),)]
        box.append((lo, hi))
    return box


def _crop_pad(m: np.ndarray, box: Box) -> np.ndarray:
    """``m`` cropped to ``box`` with a one-voxel margin of zeros on every side."""
    out = np.zeros([hi - lo + 2 for lo, hi in box], dtype=bool)
    out[(slice(1, -1),) * m.ndim] = m[tuple(slice(lo, hi) for lo, hi in box)]
    return out


def _boundary(padded: np.ndarray) -> np.ndarray:
    """Boundary voxels of a mask whose outermost layer is all zeros: foreground minus its erosion by the
    face-connected cross (equal to ``m & ~scipy.ndimage.binary_erosion(m)``)."""
    interior = padded.copy()
    for ax in range(padded.ndim):
        head = (slice(None),) * ax + (slice(1, None),)
        tail = (slice(None),) * ax + (slice(None, -1),)
        interior[head] &= padded[tail]
        interior[tail] &= padded[head]
    return padded & ~interior


# Above this many crop voxels per boundary voxel (thin or far-apart boundaries in a large crop), nearest
# boundary voxels are found with a k-d tree over the boundary coordinates instead of a distance transform of the
# whole crop: both are exact, and the tree's cost grows with the boundary size only (measured crossover ~10).
EDT_MAX_VOXELS_PER_POINT = 10.0


def _edge_distances(edge_p: np.ndarray, edge_g: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each True voxel of ``edge_p`` (C order) to the nearest True voxel of ``edge_g``, and back;
    both non-empty. The nearest voxels come from the exact Euclidean feature transform (``sampling=spacing``)
    or a k-d tree; either way the distance is evaluated from integer index offsets times the spacing."""
    cp, cg = np.nonzero(edge_p), np.nonzero(edge_g)
    if edge_p.size <= EDT_MAX_VOXELS_PER_POINT * (cp[0].size + cg[0].size):
        to_g = ndimage.distance_transform_edt(~edge_g, sampling=spacing, return_distances=False, return_indices=True)
        to_p = ndimage.distance_transform_edt(~edge_p, sampling=spacing, return_distances=False, return_indices=True)
        near_g = tuple(f[cp] for f in to_g)
        near_p = tuple(f[cg] for f in to_p)
    else:
        scale = np.asarray(spacing)
        pts_p, pts_g = np.stack(cp, axis=1) * scale, np.stack(cg, axis=1) * scale
        i = KDTree(pts_g).query(pts_p)[1]
        j = KDTree(pts_p).query(pts_g)[1]
        near_g = tuple(c[i] for c in cg)
        near_p = tuple(c[j] for c in cp)
    return _lengths(cp, near_g, spacing), _lengths(cg, near_p, spacing)


def _lengths(src: tuple[np.ndarray, ...], dst: tuple[np.ndarray, ...], spacing: tuple[float, ...]) -> np.ndarray:
    sq = np.zeros(src[0].size, dtype=np.float64)
    for a, b, s in zip(src, dst, spacing):
        sq += ((b - a) * s) ** 2
    return np.sqrt(sq)


def grid_diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Physical length of the diagonal of a voxel grid, centre to centre: the largest distance inside it."""
    return math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing)))


class _Surfaces:
    """Everything the metrics need from one pair of masks: voxel counts and both directed distance sets."""

    def __init__(self, pred: Any, gt: Any, spacing: SpacingLike) -> None:
        p, g = as_mask_pair(pred, gt)
        self.spacing = as_spacing(spacing, p.ndim)
        self.diagonal = grid_diagonal(p.shape, self.spacing)
        box_p, box_g = _bbox(p), _bbox(g)
        self.empty_pred, self.empty_gt = box_p is None, box_g is None
        self.n_pred = self.n_gt = self.n_inter = 0
        empty = np.zeros(0, dtype=np.float64)
        self.pred_to_gt, self.gt_to_pred = empty, empty
        boxes = [b for b in (box_p, box_g) if b is not None]
        if not boxes:
            return
        # every boundary voxel lies inside the union's bounding box; the zero margin makes the array's
        # outside count as background, so the crop changes nothing
        box = [(min(b[ax][0] for b in boxes), max(b[ax][1] for b in boxes)) for ax in range(p.ndim)]
        pc, gc = _crop_pad(p, box), _crop_pad(g, box)
        self.n_pred, self.n_gt, self.n_inter = overlap_counts(pc, gc)
        edge_p, edge_g = _boundary(pc), _boundary(gc)
        if self.empty_pred or self.empty_gt:
            # distance to the boundary of an empty mask is undefined: inf (as MONAI)
            self.pred_to_gt = np.full(np.count_nonzero(edge_p), np.inf)
            self.gt_to_pred = np.full(np.count_nonzero(edge_g), np.inf)
            return
        self.pred_to_gt, self.gt_to_pred = _edge_distances(edge_p, edge_g, self.spacing)

    @property
    def both_empty(self) -> bool:
        return self.empty_pred and self.empty_gt

    @property
    def one_empty(self) -> bool:
        return self.empty_pred != self.empty_gt

    def hausdorff(self, percentile: float = 100.0) -> float:
        if not 0.0 <= percentile <= 100.0:
            raise InputError(f"percentile must be in [0, 100], got {percentile}")
        if self.both_empty:
            return 0.0
        if self.one_empty:
            return self.diagonal
        if percentile == 100.0:
            return float(max(self.pred_to_gt.max(), self.gt_to_pred.max()))
        return float(max(np.percentile(self.pred_to_gt, percentile), np.percentile(self.gt_to_pred, percentile)))

    def assd(self) -> float:
        if self.both_empty:
            return 0.0
        if self.one_empty:
            return self.diagonal
        total = float(self.pred_to_gt.sum()) + float(self.gt_to_pred.sum())
        return total / (self.pred_to_gt.size + self.gt_to_pred.size)

    def nsd(self, tolerance: float) -> float:
        tol = float(tolerance)
        if not (math.isfinite(tol) and tol >= 0):
            raise InputError(f"tolerance must be finite and >= 0, got {tolerance}")
        if self.both_empty:
            return 1.0
        if self.one_empty:
            return 0.0
        hits = int(np.count_nonzero(self.pred_to_gt <= tol)) + int(np.count_nonzero(self.gt_to_pred <= tol))
        return hits / (self.pred_to_gt.size + self.gt_to_pred.size)


def surface_distances(pred: Any, gt: Any, spacing: SpacingLike = None) -> tuple[np.ndarray, np.ndarray]:
    """The two directed surface-distance sets, float64 1-D arrays in ``spacing`` units (e.g. mm):
    (pred boundary -> nearest gt boundary, gt boundary -> nearest pred boundary), one entry per boundary voxel
    in C order. spacing: array-axis order (see the module docstring).

    Empty masks: both empty -> two empty arrays; one empty -> the other mask's entries are inf (the empty
    mask has no boundary, so its own array is empty)."""
    s = _Surfaces(pred, gt, spacing)
    return s.pred_to_gt, s.gt_to_pred


def hd95(pred: Any, gt: Any, spacing: SpacingLike = None, percentile: float = 95.0) -> float:
    """Percentile Hausdorff distance: the larger of the ``percentile``-th percentiles (linear interpolation) of
    the two directed surface-distance sets (MONAI ``HausdorffDistanceMetric(percentile=95)``).
    Both empty -> 0.0; one empty -> the grid diagonal (module docstring)."""
    return _Surfaces(pred, gt, spacing).hausdorff(percentile)


def hausdorff(pred: Any, gt: Any, spacing: SpacingLike = None) -> float:
    """Hausdorff distance: the largest surface distance in either direction (:func:`hd95` at percentile 100)."""
    return _Surfaces(pred, gt, spacing).hausdorff(100.0)


def assd(pred: Any, gt: Any, spacing: SpacingLike = None) -> float:
    """Average symmetric surface distance: mean of both directed distance sets pooled together
    (MONAI ``SurfaceDistanceMetric(symmetric=True)``). Both empty -> 0.0; one empty -> the grid diagonal."""
    return _Surfaces(pred, gt, spacing).assd()


def nsd(pred: Any, gt: Any, tolerance: float, spacing: SpacingLike = None) -> float:
    """Normalised surface Dice at ``tolerance`` (same units as ``spacing``): the fraction of both masks'
    boundary voxels lying within ``tolerance`` (<=) of the other mask's boundary, in [0, 1]
    (MONAI ``SurfaceDiceMetric(class_thresholds=[tolerance])``). Both empty -> 1.0; one empty -> 0.0."""
    return _Surfaces(pred, gt, spacing).nsd(tolerance)


def compute_metrics(pred: Any, gt: Any, spacing: SpacingLike = None, nsd_tolerance: float = 2.0) -> dict[str, float | bool]:
    """All metrics of one object, computing the masks' crop and surface distances once.

    Returns ``dice, iou, nsd, hd95, assd`` (distances in ``spacing`` units), ``pred_size, gt_size`` (physical
    area/volume, count x prod(spacing)), ``volume_difference`` (signed, relative to gt) and ``empty_pred,
    empty_gt`` (bool). spacing: array-axis order; ``nsd_tolerance`` in the same units. Empty-mask conventions
    as in the module docstrings; every float is finite."""
    s = _Surfaces(pred, gt, spacing)
    voxel = float(np.prod(s.spacing))
    return {
        "dice": dice_from_counts(s.n_pred, s.n_gt, s.n_inter),
        "iou": iou_from_counts(s.n_pred, s.n_gt, s.n_inter),
        "nsd": s.nsd(nsd_tolerance),
        "hd95": s.hausdorff(95.0),
        "assd": s.assd(),
        "pred_size": s.n_pred * voxel,
        "gt_size": s.n_gt * voxel,
        "volume_difference": volume_difference_from_counts(s.n_pred, s.n_gt),
        "empty_pred": s.empty_pred,
        "empty_gt": s.empty_gt,
    }
