"""Medical file I/O: geometry-exact round trips, DICOM series, DICOM-SEG, bad files."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medsamkit.io import (
    DicomSegError,
    ImageReadError,
    MedicalImage,
    read_dicom_seg,
    read_image,
    resample_like,
    sidecar_path,
    write_mask,
)
from tests.conftest import DATA, assert_valid_dicom, requires_shared

TOTALSEG = DATA / "totalseg_examples_3d"
DICOM_DIR = TOTALSEG / "images" / "ct_dicom"


def _same_geometry(a: str, b: str) -> None:
    ia, ib = sitk.ReadImage(a), sitk.ReadImage(b)
    assert ia.GetSize() == ib.GetSize()
    assert np.allclose(ia.GetSpacing(), ib.GetSpacing(), atol=1e-6)
    assert np.allclose(ia.GetOrigin(), ib.GetOrigin(), atol=1e-5)
    assert np.allclose(ia.GetDirection(), ib.GetDirection(), atol=1e-6)


@requires_shared
@pytest.mark.parametrize(
    "rel",
    [
        "msd_hippocampus_mri_3d/images/hippocampus_035.nii.gz",
        "brats2021_flair_edema_3d/images/BraTS2021_01646.nii.gz",
        "totalseg_examples_3d/images/ct_sm.nii.gz",
        "totalseg_examples_3d/images/mr_sm.nii.gz",  # LPS-like axis codes (L, P, S)
        "totalseg_examples_3d/masks/ct_dicom.nii.gz",  # flipped rows (L, A, S), sform only
    ],
)
def test_nifti_round_trip_keeps_affine_and_grid(rel: str, tmp_path) -> None:
    src = DATA / rel
    img = read_image(src)
    assert img.is_volume and img.array.ndim == 3
    ref = nib.load(src)
    assert img.array.shape == ref.shape[::-1]  # (z, y, x) = (k, j, i)
    assert np.allclose(img.affine_ras(), ref.affine, atol=1e-4)
    mask = (img.array > np.percentile(img.array, 60)).astype(np.uint8)
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        out = write_mask(tmp_path / f"mask{suffix}", mask, img, names={1: "bright"})
        _same_geometry(str(src), str(out))
        back = read_image(out)
        assert np.array_equal(back.array, mask)
        assert json.loads(sidecar_path(out).read_text())["labels"] == {"1": "bright"}
    assert np.array_equal(nib.load(tmp_path / "mask.nii.gz").affine, ref.affine)  # identical, not just close
    assert nib.load(tmp_path / "mask.nii.gz").get_data_dtype() == np.uint8


def test_non_axis_aligned_orientation_round_trip(tmp_path) -> None:
    """A rotated, anisotropic, oblique volume: world coordinates survive read -> write -> read."""
    theta = np.deg2rad(25)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.2, 3.0])
    affine[:3, 3] = [-40.0, 12.5, 80.0]
    data = np.random.default_rng(0).integers(-1000, 1000, size=(20, 30, 12)).astype(np.int16)
    src = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), src)
    img = read_image(src)
    assert np.allclose(img.affine_ras(), affine, atol=1e-5)
    ijk = np.array([3.0, 7.0, 5.0])
    assert np.allclose(img.voxel_to_world(ijk), affine[:3, :3] @ ijk + affine[:3, 3], atol=1e-4)
    assert np.allclose(img.world_to_voxel(img.voxel_to_world(ijk)), ijk, atol=1e-6)
    assert np.allclose(img.voxel_to_world(ijk, ras=False)[:2], -img.voxel_to_world(ijk)[:2])  # LPS vs RAS
    assert img.array[5, 7, 3] == data[3, 7, 5]  # array[z, y, x] = voxel (i, j, k)
    mask = (img.array > 0).astype(np.uint8)
    for suffix in (".nii.gz", ".nrrd"):
        out = write_mask(tmp_path / f"m{suffix}", mask, img)
        _same_geometry(str(src), str(out))


@requires_shared
def test_dicom_series_geometry_matches_its_nifti_mask() -> None:
    """The NIfTI label volume stores rows flipped relative to the DICOM pixel array; by geometry they agree."""
    dcm = read_image(DICOM_DIR)
    assert dcm.format == "dicom-series" and dcm.modality == "CT" and dcm.modality_source == "dicom"
    assert dcm.array.shape == (20, 512, 512) and dcm.array.dtype == np.int16
    assert np.allclose(dcm.spacing, (0.9765625, 0.9765625, 2.0))
    files = [p.name for p in dcm.meta["dicom_files"]]
    z = [float(pydicom.dcmread(DICOM_DIR / f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z)  # sorted by position
    m = read_image(TOTALSEG / "masks" / "ct_dicom.nii.gz")
    assert not np.allclose(m.direction, dcm.direction)  # stored differently ...
    lab = resample_like(m, dcm)  # ... but the same voxels in world space
    assert lab.shape == dcm.array.shape
    assert np.array_equal(lab, m.array[:, ::-1, :])  # exactly a row flip
    assert np.median(dcm.array[lab > 0]) > -100 > np.median(dcm.array[lab == 0])  # organs on body voxels


@requires_shared
def test_dicom_slices_sorted_by_position_not_name(tmp_path) -> None:
    files = sorted(DICOM_DIR.glob("*.dcm"))
    for i, f in enumerate(files):  # reverse the name order
        shutil.copy(f, tmp_path / f"{len(files) - i:03d}.dcm")
    assert np.array_equal(read_image(tmp_path).array, read_image(DICOM_DIR).array)


@requires_shared
def test_dicom_seg_round_trip_and_validator(tmp_path) -> None:
    dcm = read_image(DICOM_DIR)
    lab = resample_like(read_image(TOTALSEG / "masks" / "ct_dicom.nii.gz"), dcm)
    keep = [v for v in np.unique(lab) if v != 0][:3]
    mask = np.zeros_like(lab)
    for i, v in enumerate(keep, start=1):
        mask[lab == v] = i
    out = tmp_path / "seg.dcm"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_mask(out, mask, dcm, names={1: "spleen", 2: "kidney right", 3: "kidney left"})
    msgs = " | ".join(str(w.message) for w in caught)
    assert "empty StudyInstanceUID; generated" in msgs and "file meta" in msgs
    back, names = read_dicom_seg(out, dcm)
    assert np.array_equal(back, mask)
    assert names == {1: "spleen", 2: "kidney right", 3: "kidney left"}
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 20
    assert_valid_dicom(out)


@requires_shared
def test_dicom_seg_refusals(tmp_path) -> None:
    nifti = read_image(TOTALSEG / "images" / "ct_sm.nii.gz")
    with pytest.raises(DicomSegError, match="needs a DICOM series"):
        write_mask(tmp_path / "x.dcm", np.ones(nifti.spatial_shape, np.uint8), nifti)
    dcm = read_image(DICOM_DIR)
    with pytest.raises(DicomSegError, match="empty"):
        write_mask(tmp_path / "y.dcm", np.zeros(dcm.spatial_shape, np.uint8), dcm)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in sorted(DICOM_DIR.glob("*.dcm"))[:3]:
        ds = pydicom.dcmread(f)
        ds.file_meta.MediaStorageSOPInstanceUID = ""  # nothing left to repair from
        ds.save_as(broken / f.name, enforce_file_format=False)
    img = read_image(broken)
    with pytest.raises(DicomSegError, match="no SOPInstanceUID"):
        write_mask(tmp_path / "z.dcm", np.ones(img.spatial_shape, np.uint8), img)


def test_several_series_need_a_choice(tmp_path) -> None:
    from tests.dicom_series import write_series

    for uid, shift in (("1.2.3.4", 0.0), ("1.2.3.5", 100.0)):  # two 3-slice series in one folder
        write_series(tmp_path, n=3, size=8, positions={k: shift + 2.0 * k for k in range(3)}, uid=uid, prefix=f"{uid}-")
    with pytest.raises(ImageReadError, match=r"holds 2 DICOM series .*--series"):
        read_image(tmp_path)
    img = read_image(tmp_path, series_uid="1.2.3.5.200")
    assert img.array.shape == (3, 8, 8) and img.array[:, 4, 4].tolist() == [-1000, 900, 900]  # the ball: slices 1, 2
    assert img.origin[2] == 100.0 and img.spacing == (0.8, 0.8, 2.0)


@pytest.mark.parametrize("case", ["truncated", "empty_dir", "4d", "not_dicom_dir", "bad_npz", "vector"])
def test_bad_files_give_clear_errors(case: str, tmp_path) -> None:
    if case == "truncated":
        good = tmp_path / "good.nii.gz"
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((30, 30, 30)).astype(np.float32), np.eye(4)), good)
        raw = gzip.decompress(good.read_bytes())
        bad = tmp_path / "bad.nii.gz"
        bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
        path, msg = bad, "truncated or corrupt"
    elif case == "empty_dir":
        path, msg = tmp_path, "no DICOM image files"
    elif case == "4d":
        path = tmp_path / "t.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.float32), np.eye(4)), path)
        msg = "4D image"
    elif case == "not_dicom_dir":
        (tmp_path / "notes.txt").write_text("hello")
        path, msg = tmp_path, "no DICOM image files"
    elif case == "bad_npz":
        path = tmp_path / "x.npz"
        np.savez(path, a=np.zeros(3), b=np.zeros(3))
        msg = "expected a key 'imgs'"
    else:
        path = tmp_path / "v.nrrd"
        sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(path))
        msg = "vector/RGB volumes"
    with pytest.raises(ImageReadError, match=msg):
        read_image(path)


def test_npz_and_png_and_modality(tmp_path) -> None:
    np.savez(tmp_path / "v.npz", imgs=np.zeros((5, 6, 7), np.uint8), spacing=np.array([3.0, 1.0, 0.5]))
    v = read_image(tmp_path / "v.npz")
    assert v.is_volume and v.spacing == (0.5, 1.0, 3.0)  # MedSAM npz spacing is (z, y, x)
    np.savez(tmp_path / "thin.npz", imgs=np.zeros((3, 4, 4), np.int16), spacing=np.array([2.0, 1.0, 1.0]))
    assert read_image(tmp_path / "thin.npz").spatial_shape == (3, 4, 4)  # a volume 4 voxels wide, not RGBA
    np.savez(tmp_path / "rgb.npz", imgs=np.zeros((6, 7, 3), np.uint8))
    assert read_image(tmp_path / "rgb.npz").spatial_shape == (6, 7)
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), -1024, np.int16), np.eye(4)), ct)
    ctimg = read_image(ct)
    assert ctimg.modality == "CT" and ctimg.modality_source == "guess"
    assert read_image(ct, modality="mr").modality == "MR"
    with pytest.raises(ImageReadError, match="unknown modality"):
        read_image(ct, modality="xyz")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        (tmp_path / "a.xyz").write_text("x")
        read_image(tmp_path / "a.xyz")


def test_write_mask_checks(tmp_path) -> None:
    img = MedicalImage(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(ValueError, match="does not match"):
        write_mask(tmp_path / "m.nii.gz", np.zeros((3, 4, 6), np.uint8), img)
    with pytest.raises(ValueError, match="cannot be a PNG"):
        write_mask(tmp_path / "m.png", np.zeros((3, 4, 5), np.uint8), img)
    with pytest.raises(ValueError, match="unsupported mask format"):
        write_mask(tmp_path / "m.tif", np.zeros((3, 4, 5), np.uint8), img)
    out = write_mask(tmp_path / "from_array.nii.gz", np.ones((3, 4, 5), np.uint8), img)
    assert np.allclose(nib.load(out).affine, np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS identity is RAS diag(-1,-1,1)


def test_dicom_seg_labels_are_valid_lo_values(tmp_path) -> None:
    """Label names with DICOM's value separator, control characters and non-Latin-1 letters give a SEG that
    dciodvfy accepts (UTF-8 declared, 64-byte LO values) and that reads back with the letters kept."""
    from tests.dicom_series import write_series

    series = read_image(write_series(tmp_path / "series", n=8, size=32))
    mask = np.zeros(series.spatial_shape, np.uint8)
    mask[2:5, 8:16, 8:16], mask[4:7, 16:24, 16:24], mask[1, 1, 1] = 1, 2, 3
    out = tmp_path / "seg.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # attributes the synthetic series lacks are generated
        write_mask(out, mask, series, names={1: "Leber\\links\tÄö", 2: "肝臓" * 40, 3: "\x00\x01"})
    _, names = read_dicom_seg(out, series)
    assert names == {1: "Leber/links Äö", 2: "肝臓" * 10 + "肝", 3: "label 3"}
    assert pydicom.dcmread(out, stop_before_pixels=True).SpecificCharacterSet == "ISO_IR 192"
    assert_valid_dicom(out)


def test_decoder_messages_do_not_tell_where_the_file_lives(tmp_path) -> None:
    """The web app shows read errors to users: a decoder's message that quotes the absolute path is cut to the
    file name."""
    deep = tmp_path / "server" / "private" / "folder"
    deep.mkdir(parents=True)
    (deep / "b.nrrd").write_bytes(b"garbage")
    (deep / "c.nii.gz").write_bytes(gzip.compress(b"\x5c\x01" + bytes(100)))
    for name in ("b.nrrd", "c.nii.gz"):
        with pytest.raises(ImageReadError) as info:
            read_image(deep / name)
        msg = str(info.value)
        assert name in msg and "private" not in msg and str(tmp_path) not in msg, msg


def test_decoded_size_is_checked_before_decoding(tmp_path) -> None:
    """The size limit counts what the reader will hold (scaled NIfTI integers decode as float64; a single DICOM
    file counts its Rows x Columns) and says which limit applied."""
    from medsamkit.errors import LimitError
    from medsamkit.io.readers import declared_size
    from tests.dicom_series import write_series

    img = nib.Nifti1Image(np.linspace(-1024.0, 40000.5, 64 * 64 * 16).reshape(64, 64, 16), np.eye(4))
    img.set_data_dtype(np.int16)  # nibabel stores int16 with a scale factor
    scaled = tmp_path / "scaled.nii.gz"
    nib.save(img, scaled)
    assert nib.load(scaled).dataobj.slope != 1.0
    shape, dtype, nbytes = declared_size(scaled)
    assert dtype == np.float64 and nbytes == 64 * 64 * 16 * 8
    with pytest.raises(LimitError, match="the limit this caller sets") as info:
        read_image(scaled, max_bytes=nbytes - 1)
    assert "MEDSAMKIT_MAX_IMAGE_MB" not in str(info.value)
    assert read_image(scaled, max_bytes=nbytes).spatial_shape == (16, 64, 64)

    one = sorted(write_series(tmp_path / "series", n=1, size=64).glob("*.dcm"))[0]
    with pytest.raises(LimitError, match="64x64 pixels"):
        read_image(one, max_bytes=64 * 64 * 4 - 1)
    assert read_image(one, max_bytes=64 * 64 * 4).spatial_shape == (64, 64)
