"""Exact geometry or a refusal: DICOM series with missing slices, uneven spacing or gantry tilt."""

from __future__ import annotations

import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest

from medsamkit.errors import GeometryError
from medsamkit.io import DicomSegError, read_dicom_seg, read_image, write_mask
from medsamkit.io.geometry import check_grid_output, grid_problem, resample_uniform
from tests.conftest import DATA, requires_shared
from tests.dicom_series import write_series

DICOM_DIR = DATA / "totalseg_examples_3d" / "images" / "ct_dicom"
MISSING = (8, 9, 10)  # three slices removed from the 20-slice, 2 mm series


@pytest.fixture(scope="module")
def gapped(tmp_path_factory):
    """The real CT series (20 slices, 2 mm) and a copy with three middle slices removed."""
    full = read_image(DICOM_DIR)
    folder = tmp_path_factory.mktemp("gapped")
    for i, f in enumerate(full.meta["dicom_files"]):
        if i not in MISSING:
            shutil.copy(f, folder / f.name)
    return full, read_image(folder)


@requires_shared
def test_a_gap_is_named_and_grid_formats_are_refused(gapped, tmp_path) -> None:
    full, img = gapped
    assert grid_problem(full) is None and img.spatial_shape[0] == 17
    problem = grid_problem(img)
    assert "slices 7 and 8" in problem and "8 mm apart" in problem and "about 3 slice(s) missing" in problem
    mask = np.zeros(img.spatial_shape, np.uint8)
    mask[5:12, 200:300, 200:300] = 1
    for name in ("m.nii.gz", "m.nii", "m.nrrd", "m.mha"):
        with pytest.raises(GeometryError, match=r"8 mm apart.*DICOM-SEG \(\.dcm\).*--resample"):
            write_mask(tmp_path / name, mask, img)
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.json").exists()
    # DICOM-SEG keeps each frame's own source slice: exact
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the anonymised source's repaired UIDs
        write_mask(tmp_path / "m.dcm", mask, img)
    back, _ = read_dicom_seg(tmp_path / "m.dcm", img)
    assert np.array_equal(back, mask)


@requires_shared
def test_resampling_keeps_the_source_slices_and_their_positions(gapped, tmp_path) -> None:
    full, img = gapped
    res = resample_uniform(img)
    assert res.spatial_shape == full.spatial_shape and np.allclose(res.spacing, full.spacing)
    assert np.allclose(res.affine_ras(), full.affine_ras())  # the grid of the complete series
    kept = [i for i in range(20) if i not in MISSING]
    assert np.array_equal(res.array[kept], full.array[kept])  # source slices unchanged
    assert res.meta["resampled"]["interpolated_slices"] == list(MISSING)
    between = (res.array[MISSING[0]].astype(float) - full.array[7]) / (full.array[11].astype(float) - full.array[7] + 1e-9)
    assert np.allclose(np.median(between[np.abs(full.array[11] - full.array[7].astype(float)) > 50]), 0.25, atol=0.01)
    mask = np.zeros(res.spatial_shape, np.uint8)
    mask[12, 300, 250] = 1
    out = write_mask(tmp_path / "r.nii.gz", mask, res)
    nimg = nib.load(out)
    ijk = np.argwhere(np.asarray(nimg.dataobj) > 0)[0]
    world = nimg.affine @ [*ijk, 1]
    assert np.allclose(world[:3], full.voxel_to_world([250, 300, 12]))  # the voxel lands where slice 12 is
    side = (tmp_path / "r.nii.gz.json").read_text()
    assert "interpolated_slices" in side and "source_positions_mm" in side
    with pytest.raises(DicomSegError, match="lie on the source slices"):
        write_mask(tmp_path / "r.dcm", mask, res)


def test_uneven_spacing_without_missing_slices(tmp_path) -> None:
    folder = write_series(tmp_path / "s", n=6, positions={3: 6.5})  # 0, 2, 4, 6.5, 8, 10 mm
    img = read_image(folder)
    assert "the spacing varies" in grid_problem(img)
    with pytest.raises(GeometryError):
        check_grid_output(img, ".nrrd")
    res = resample_uniform(img)
    assert res.spatial_shape[0] == 6 and res.meta["resampled"]["interpolated_slices"] == [3]


def test_a_resampled_series_is_size_checked_before_it_is_allocated(tmp_path) -> None:
    """A position far off the others (here 100 m) would make the uniform grid 50,000 slices: refused by the
    size limit before the array exists."""
    from medsamkit.errors import LimitError

    img = read_image(write_series(tmp_path / "s", n=5, positions={4: 100000.0}))
    with pytest.raises(LimitError, match="50001 slices once resampled"):
        resample_uniform(img, max_bytes=64 << 20)
    assert resample_uniform(read_image(write_series(tmp_path / "ok", n=5, positions={4: 10.0})), max_bytes=64 << 20)


def test_gantry_tilt_is_refused_for_grid_formats_and_not_resampled(tmp_path) -> None:
    folder = write_series(tmp_path / "t", n=8, shear_mm=1.0)
    img = read_image(folder)
    assert img.meta["grid_problem_kind"] == "tilt" and "gantry tilt of about 26.6 degrees" in grid_problem(img)
    mask = np.zeros(img.spatial_shape, np.uint8)
    mask[3, 10, 10] = 1
    with pytest.raises(GeometryError, match="correct the tilt"):
        write_mask(tmp_path / "m.nii.gz", mask, img)
    with pytest.raises(GeometryError, match="uneven slice spacing only"):
        resample_uniform(img)
    write_mask(tmp_path / "m.dcm", mask, img)  # DICOM-SEG: per-frame positions, exact
    back, _ = read_dicom_seg(tmp_path / "m.dcm", img)
    assert np.array_equal(back, mask)


def test_mixed_orientation_and_duplicates_are_refused(tmp_path) -> None:
    from medsamkit.io import ImageReadError

    mixed = write_series(tmp_path / "o", n=5, orientations={2: [1, 0, 0, 0, 0, -1]})
    with pytest.raises(ImageReadError, match="another ImageOrientationPatient"):
        read_image(mixed)
    dup = write_series(tmp_path / "d", n=5, positions={3: 4.0})
    with pytest.raises(GeometryError, match="same position"):
        read_image(dup)
    sizes = write_series(tmp_path / "z", n=5, sizes={1: 16})
    with pytest.raises(ImageReadError, match="mixed series"):
        read_image(sizes)


def test_a_uniform_series_has_no_problem(tmp_path) -> None:
    img = read_image(write_series(tmp_path / "u", n=7))
    assert grid_problem(img) is None and resample_uniform(img) is img
    assert img.meta["slice_positions_mm"] == [2.0 * k for k in range(7)]


def test_positions_rounded_in_the_headers_are_one_grid(tmp_path) -> None:
    """0.625 mm slices whose positions are rounded to 0.1 mm (as some scanners write them) lie on one grid:
    accepted, with the step through the first and last slice (not the median of the rounded gaps, 0.6 mm,
    which would put the last slice 1.2 mm off); one slice missing of 60 is still found."""
    n = 60
    rounded = {k: round(0.625 * k, 1) for k in range(n)}
    img = read_image(write_series(tmp_path / "rounded", n=n, size=16, positions=rounded))
    assert grid_problem(img) is None
    assert img.spacing[2] == pytest.approx(rounded[n - 1] / (n - 1))
    assert img.spacing[2] * (n - 1) == pytest.approx(rounded[n - 1])
    missing = read_image(write_series(tmp_path / "missing", n=n, size=16, keep=[k for k in range(n) if k != 30]))
    assert "about 1 slice(s) missing" in grid_problem(missing)
