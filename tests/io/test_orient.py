"""Exact reorientation (:func:`medsamkit.io.orient.reorient_exact`): signed axis permutations are undone voxel
for voxel, in agreement with resampling through world coordinates; anything that would need interpolation is
refused (None)."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsamkit.io import MedicalImage, read_image, resample_like
from medsamkit.io.orient import reorient_exact

_ROT = np.linalg.qr(np.array([[0.94, -0.29, 0.2], [0.31, 0.94, -0.1], [-0.16, 0.15, 0.98]]))[0]
AFFINE = np.eye(4)  # NIfTI (RAS) affine: oblique, anisotropic, first axis flipped
AFFINE[:3, :3] = _ROT @ np.diag([-0.8, 1.2, 2.5])
AFFINE[:3, 3] = [10.0, -20.0, 30.0]
SHAPE_IJK = (6, 5, 4)


def _labels_ijk(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5, SHAPE_IJK).astype(np.uint8)


def _stored(labels_ijk: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored in another axis order/direction, and the affine that keeps them in place: new axis
    b is old axis ``perm[b]``, flipped where ``flips[b]``."""
    data = labels_ijk.transpose(perm)
    m = np.zeros((4, 4))  # new (i, j, k, 1) -> old (i, j, k, 1)
    m[3, 3] = 1
    for b, a in enumerate(perm):
        if flips[b]:
            data = np.flip(data, axis=b)
            m[a, b], m[a, 3] = -1, SHAPE_IJK[a] - 1
        else:
            m[a, b] = 1
    return np.ascontiguousarray(data), AFFINE @ m


def _save(path: Path, data_ijk: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data_ijk, affine), path)
    return path


@pytest.mark.parametrize(
    ("perm", "flips"),
    [((0, 1, 2), (False, True, False)), ((2, 1, 0), (False, True, False)), ((1, 2, 0), (True, False, True))],
)
def test_signed_permutations_are_undone_exactly(tmp_path: Path, perm: tuple[int, ...], flips: tuple[bool, ...]) -> None:
    labels = _labels_ijk()
    target = read_image(_save(tmp_path / "image.nii.gz", np.zeros(SHAPE_IJK, np.int16), AFFINE))
    data, affine = _stored(labels, perm, flips)
    source = read_image(_save(tmp_path / "mask.nii.gz", data, affine))
    out = reorient_exact(source.array, source, target)
    assert out is not None and out.flags.c_contiguous and out.dtype == source.array.dtype
    assert np.array_equal(out, labels.transpose(2, 1, 0))  # array[k, j, i] of the target grid
    assert np.array_equal(out, resample_like(source, target))  # what resampling through world mm gives


def test_every_signed_permutation_round_trips() -> None:
    """On synthetic grids (no file): all 48 signed permutations of the axes come back to the target grid."""
    arr_ijk = np.arange(np.prod(SHAPE_IJK)).reshape(SHAPE_IJK)
    target = MedicalImage(np.zeros(SHAPE_IJK[::-1]), (0.8, 1.2, 2.5), (1.0, 2.0, 3.0), _ROT)
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            data, _ = _stored(arr_ijk, perm, flips)
            m = np.zeros((4, 4))
            m[3, 3] = 1
            for b, a in enumerate(perm):
                m[a, b], m[a, 3] = (-1, SHAPE_IJK[a] - 1) if flips[b] else (1, 0)
            lps = target.affine_lps() @ m
            spacing = tuple(float(v) for v in np.linalg.norm(lps[:3, :3], axis=0))
            source = MedicalImage(data.transpose(2, 1, 0), spacing, tuple(lps[:3, 3]), lps[:3, :3] / spacing)
            out = reorient_exact(source.array, source, target)
            assert out is not None and np.array_equal(out, arr_ijk.transpose(2, 1, 0)), (perm, flips)


def test_what_needs_interpolation_is_refused() -> None:
    target = MedicalImage(np.zeros(SHAPE_IJK[::-1]), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    arr = np.zeros(SHAPE_IJK[::-1])

    def source(
        spacing: tuple[float, ...] = (1.0, 1.0, 2.0),
        origin: tuple[float, ...] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
        shape: tuple[int, ...] = SHAPE_IJK[::-1],
    ) -> MedicalImage:
        return MedicalImage(np.zeros(shape), spacing, origin, np.eye(3) if direction is None else direction)

    assert reorient_exact(arr, source(), target) is not None  # the same grid: unchanged
    assert np.array_equal(reorient_exact(arr + 7, source(), target), arr + 7)
    assert reorient_exact(arr, source(origin=(0.5, 0.0, 0.0)), target) is None  # half a voxel off
    assert reorient_exact(arr, source(origin=(1.0, 0.0, 0.0)), target) is None  # a whole voxel off: other extent
    assert reorient_exact(arr, source(spacing=(1.0, 1.0, 1.0)), target) is None  # other spacing
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    assert reorient_exact(arr, source(direction=np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])), target) is None  # 30 deg
    small = np.zeros((4, 5, 5))
    assert reorient_exact(small, source(shape=small.shape), target) is None  # fewer voxels
    with pytest.raises(ValueError, match="volumes"):
        flat = MedicalImage(np.zeros((5, 6)), (1.0, 1.0), (0.0, 0.0), np.eye(2))
        reorient_exact(flat.array, flat, flat)
