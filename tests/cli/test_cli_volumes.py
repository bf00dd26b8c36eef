"""``medsamkit segment`` on volumes: geometry of the written masks, DICOM-SEG, world coordinates, errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medsamkit.cli.main import main
from medsamkit.io import read_image, sidecar_path
from tests.cli.test_cli import _one_line_error
from tests.conftest import DATA, requires_shared
from tests.predict.test_volume import ellipsoid_volume


def _sitk_geometry(im) -> tuple:
    return (
        im.GetSize(),
        np.round(im.GetSpacing(), 6).tolist(),
        np.round(im.GetOrigin(), 4).tolist(),
        np.round(im.GetDirection(), 6).tolist(),
    )


def _dicom_series_sitk(folder):
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return r.Execute()


@requires_shared
@pytest.mark.parametrize(
    "rel, box3d, preset",
    [
        ("msd_hippocampus_mri_3d/images/hippocampus_035.nii.gz", "6,27,10,26,41,13", "auto"),
        ("brats2021_flair_edema_3d/images/BraTS2021_01646.nii.gz", "43,32,60,83,98,62", "auto"),
        ("totalseg_examples_3d/images/ct_sm.nii.gz", "10,22,12,43,57,14", "auto"),
        ("totalseg_examples_3d/images/mr_sm.nii.gz", "25,50,6,43,66,8", "percentile"),
    ],
)
def test_volume_masks_lie_on_the_source_grid(rel, box3d, preset, tmp_path, capsys) -> None:
    src = DATA / rel
    out = tmp_path / "mask.nii.gz"
    rc = main(["segment", str(src), "--box3d", box3d, "--preset", preset, "--label", "target", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert _sitk_geometry(sitk.ReadImage(str(out))) == _sitk_geometry(sitk.ReadImage(str(src)))
    assert np.array_equal(nib.load(out).affine, nib.load(src).affine)
    mask = read_image(out).array
    z0, z1 = int(box3d.split(",")[2]), int(box3d.split(",")[5])
    assert mask.any() and not mask[:z0].any() and not mask[z1 + 1 :].any()  # within the box's slices
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["labels"] == {"1": "target"} and meta["intensity"]["preset"] in ("percentile", "soft_tissue")
    assert meta["objects"][0]["voxels"] == int((mask == 1).sum())


@requires_shared
def test_dicom_series_to_nifti_and_dicom_seg(tmp_path, capsys) -> None:
    folder = DATA / "totalseg_examples_3d" / "images" / "ct_dicom"
    box = "200,250,8,300,330,11"
    nii = tmp_path / "m.nii.gz"
    assert main(["segment", str(folder), "--box3d", box, "-o", str(nii), "-q"]) == 0, capsys.readouterr().err
    assert _sitk_geometry(sitk.ReadImage(str(nii))) == _sitk_geometry(_dicom_series_sitk(folder))
    seg = tmp_path / "m.dcm"
    capsys.readouterr()
    assert main(["segment", str(folder), "--box3d", box, "-o", str(seg), "-q", "--label", "liver part"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("medsamkit: warning:") and "empty StudyInstanceUID; generated" in line for line in err)
    ds = pydicom.dcmread(seg)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "liver part"
    assert json.loads(sidecar_path(seg).read_text())["intensity"]["preset"] == "soft_tissue"  # CT from DICOM Modality


def test_world_coordinates_equal_voxel_coordinates(tmp_path, capsys) -> None:
    vol, mask = ellipsoid_volume()
    affine = np.diag([-1.5, 1.0, 2.0, 1.0])  # x flipped and anisotropic
    affine[:3, 3] = [30.0, -20.0, 5.0]
    src = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), src)
    z, y, x = np.nonzero(mask)
    lo, hi = np.array([x.min(), y.min(), z.min()]), np.array([x.max(), y.max(), z.max()])
    w_lo, w_hi = affine[:3, :3] @ lo + affine[:3, 3], affine[:3, :3] @ hi + affine[:3, 3]
    args = ["segment", str(src), "--preset", "soft_tissue", "-q"]
    assert main([*args, "--box3d", ",".join(map(str, [*lo, *hi])), "-o", str(tmp_path / "a.nii.gz")]) == 0
    assert (
        main([*args, "--world", "--box3d", ",".join(f"{v:.3f}" for v in [*w_lo, *w_hi]), "-o", str(tmp_path / "b.nii.gz")]) == 0
    )
    a, b = read_image(tmp_path / "a.nii.gz").array, read_image(tmp_path / "b.nii.gz").array
    assert a.any() and np.array_equal(a, b)


@pytest.mark.parametrize(
    "extra, code, fragment",
    [
        (["--box", "1,1,5,5"], 2, "needs --slice"),
        (["--box3d", "0,0,0,90,10,5"], 2, "outside the 80x72x24 volume"),
        (["--box3d", "0,0,0,1,1"], 2, "X0,Y0,Z0,X1,Y1,Z1"),
        (["--point", "3,4"], 2, "X,Y,Z"),
        (["--box3d", "0,0,0,5,5,5", "--window", "40"], 2, "LEVEL,WIDTH"),
        (["--box3d", "0,0,0,5,5,5", "--preset", "abdomen"], 2, "unknown intensity preset"),
        (["--box3d", "0,0,0,5,5,5", "--overlay", "x.png"], 2, "--overlay is for 2D"),
        (["--box3d", "0,0,0,5,5,5", "-o", "out.png"], 2, "cannot be a PNG"),
        (["--box3d", "0,0,0,5,5,5", "-o", "out.dcm"], 2, "needs a DICOM series"),
    ],
)
def test_volume_errors_are_one_line(extra, code, fragment, tmp_path, capsys) -> None:
    vol, _ = ellipsoid_volume()
    src = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), src)
    if "-o" not in extra:
        extra = [*extra, "-o", str(tmp_path / "m.nii.gz")]
    else:
        extra = [str(tmp_path / e) if e.startswith("out.") else e for e in extra]
    rc = main(["segment", str(src), *extra])
    assert fragment in _one_line_error(capsys, rc, code)


def test_bad_volume_files_are_one_line(tmp_path, capsys) -> None:
    nan = np.zeros((8, 8, 4), np.float32)
    nan[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    rc = main(["segment", str(tmp_path / "nan.nii.gz"), "--box3d", "0,0,0,3,3,2", "-o", str(tmp_path / "m.nii.gz")])
    assert "NaN" in _one_line_error(capsys, rc)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "t.nii.gz")
    rc = main(["segment", str(tmp_path / "t.nii.gz"), "--box3d", "0,0,0,3,3,2", "-o", str(tmp_path / "m.nii.gz")])
    assert "4D image" in _one_line_error(capsys, rc)
    (tmp_path / "empty").mkdir()
    rc = main(["segment", str(tmp_path / "empty"), "--box3d", "0,0,0,3,3,2", "-o", str(tmp_path / "m.nii.gz")])
    assert "no DICOM image files" in _one_line_error(capsys, rc)


def test_several_boxes_on_one_slice_are_distinct_objects(tmp_path, capsys) -> None:
    """Two --box on --slice used to get label 1 both (and failed with 'labels must be distinct'): now 1 and 2."""
    a, ma = ellipsoid_volume(shape=(5, 72, 120), centre=(2, 36, 30), radii=(1.5, 14, 18))
    b, mb = ellipsoid_volume(shape=(5, 72, 120), centre=(2, 36, 90), radii=(1.5, 14, 18), seed=1)
    vol = np.where(mb, b, a)
    src = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), src)
    boxes = []
    for m in (ma, mb):
        ys, xs = np.nonzero(m[2])
        boxes += ["--box", f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"]
    out = tmp_path / "m.nii.gz"
    rc = main(
        [
            "segment",
            str(src),
            *boxes,
            "--slice",
            "2",
            "--preset",
            "soft_tissue",
            "--label",
            "left",
            "--label",
            "right",
            "-o",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    lab = read_image(out).array
    assert set(np.unique(lab[2])) == {0, 1, 2}
    assert (lab[2][ma[2]] == 1).mean() > 0.8 and (lab[2][mb[2]] == 2).mean() > 0.8
    info = json.loads(sidecar_path(out).read_text())
    assert info["labels"] == {"1": "left", "2": "right"}


@requires_shared
def test_gapped_dicom_series_exact_or_refused(tmp_path, capsys) -> None:
    """Three slices removed from the real 2 mm CT series: NIfTI output is refused (it would be 6 mm off after
    the gap), DICOM-SEG is exact, and --resample writes NIfTI on the complete series' grid."""
    import shutil

    src = DATA / "totalseg_examples_3d" / "images" / "ct_dicom"
    full = read_image(src)
    gapped = tmp_path / "gapped"
    gapped.mkdir()
    for i, f in enumerate(full.meta["dicom_files"]):
        if i not in (8, 9, 10):
            shutil.copy(f, gapped / f.name)
    box = ["--box3d", "200,180,12,300,300,14", "--preset", "soft_tissue", "-q"]  # slices 15..17 of the full series
    assert main(["segment", str(gapped), *box, "-o", str(tmp_path / "m.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "8 mm apart" in err and "DICOM-SEG" in err and "--resample" in err and not (tmp_path / "m.nii.gz").exists()
    assert main(["segment", str(gapped), *box, "-o", str(tmp_path / "m.dcm")]) == 0, capsys.readouterr().err
    box_full = ["--box3d", "200,180,15,300,300,17", "--preset", "soft_tissue", "-q"]  # the same slices on the full grid
    assert main(["segment", str(gapped), *box_full, "--resample", "-o", str(tmp_path / "r.nii.gz")]) == 0
    res = nib.load(tmp_path / "r.nii.gz")
    assert res.shape == (512, 512, 20) and np.allclose(res.affine, full.affine_ras())
    from medsamkit.io import read_dicom_seg

    seg, _ = read_dicom_seg(tmp_path / "m.dcm", read_image(gapped))
    lab = np.asarray(res.dataobj).transpose(2, 1, 0)
    # the same physical slices, the same voxels: gapped slice k >= 8 is slice k + 3 of the complete grid
    assert seg[12:15].any() and np.array_equal(seg[12:15] > 0, lab[15:18] > 0)
    assert not seg[:12].any() and not seg[15:].any() and not lab[:15].any() and not lab[18:].any()
