"""The format table (medsamkit.io.formats): one split of file names, one lookup, every mask ending writable."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsamkit.io import FORMATS, MASK_SUFFIXES, RASTER_SUFFIXES, MedicalImage, format_for, format_of, split_suffix, write_mask
from medsamkit.io.formats import by_name, by_suffix, mask_format
from medsamkit.io.raster import ImageReadError
from medsamkit.io.writers import mask_suffix
from tests.dicom_series import write_series


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.nii.gz", ("a", ".nii.gz")),
        ("A.NII.GZ", ("A", ".nii.gz")),
        ("Ct.Nii.Gz", ("Ct", ".nii.gz")),
        ("a.nii", ("a", ".nii")),
        ("x.tar.gz", ("x.tar", ".gz")),  # not a two-part ending of the table: only the last part
        ("scan.v2.PNG", ("scan.v2", ".png")),
        ("a.png.nii.gz", ("a.png", ".nii.gz")),
        ("noext", ("noext", "")),
        ("name.", ("name.", "")),
        (".hidden", (".hidden", "")),
        (".nii.gz", ("", ".nii.gz")),
        ("my.data/scan", ("scan", "")),  # dots of folders do not count
        ("my.data/CT.NII.GZ", ("CT", ".nii.gz")),
        ("case.nii.gz/IM0001", ("IM0001", "")),
    ],
)
def test_split_suffix(name: str, expected: tuple[str, str]) -> None:
    assert split_suffix(name) == expected
    assert split_suffix(Path(name)) == expected


def test_two_part_endings_of_the_table_count_as_one() -> None:
    multi = [s for f in FORMATS for s in f.suffixes if s.count(".") > 1]
    assert ".nii.gz" in multi
    for s in multi:
        assert split_suffix(f"case{s.upper()}") == ("case", s)


def test_every_suffix_is_lower_case_and_in_one_format_only() -> None:
    seen: list[str] = [s for f in FORMATS for s in f.suffixes]
    assert len(seen) == len(set(seen))
    assert all(s == s.lower() and s.startswith(".") for s in seen)
    for f in FORMATS:
        assert set(f.mask_suffixes) <= set(f.suffixes)
        assert f.kind in ("volume", "2d", "both")
        assert f.holds_masks == (f.writer is not None)
        assert by_name(f.name) is f
        for s in f.suffixes:
            assert by_suffix(s.upper()) is f


def test_public_suffix_lists_come_from_the_table() -> None:
    assert MASK_SUFFIXES == (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".dcm")  # the order of the messages
    assert RASTER_SUFFIXES == by_name("raster").suffixes
    assert mask_suffix("M.NII.GZ") == ".nii.gz" and mask_suffix("m.Nrrd") == ".nrrd" and mask_suffix("m") == ""
    assert mask_format("m.nhdr") is None and mask_format("m.NRRD") is by_name("nrrd")


def test_format_for(tmp_path) -> None:
    assert format_for("ct.nii.gz").name == "nifti"  # a file to be read: its ending decides
    assert format_for("ct.NHDR").name == "nrrd"
    assert format_for("x.bmp").name == "raster"
    assert format_for(tmp_path).name == "dicom-series"  # a folder
    assert format_of(tmp_path / "a.mhd") == "metaimage"
    dcm = tmp_path / "IM0001"
    dcm.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    assert format_for(dcm).name == "dicom"  # no ending: the DICOM magic
    (tmp_path / "s.dcm").write_bytes(b"x")
    assert format_for(tmp_path / "s.dcm").name == "dicom"


@pytest.mark.parametrize("name", ["notes.txt", "x.tar.gz", "noext", "missing.dcm"])
def test_format_for_unknown_raises_the_read_error(tmp_path, name: str) -> None:
    p = tmp_path / name
    if name != "missing.dcm":
        p.write_bytes(b"x")
    with pytest.raises(ImageReadError, match="unsupported file type") as e:
        format_for(p)
    assert str(e.value).startswith(f"{name}: unsupported file type {split_suffix(name)[1] or '(no suffix)'};")


def _volume() -> MedicalImage:
    return MedicalImage(np.zeros((3, 4, 5), np.int16), (0.5, 1.0, 2.0), (1.0, 2.0, 3.0), np.eye(3))


@pytest.mark.parametrize("suffix", MASK_SUFFIXES)
def test_every_mask_suffix_is_writable(tmp_path, suffix: str) -> None:
    lab3 = (np.arange(60).reshape(3, 4, 5) % 3).astype(np.uint8)
    if suffix == ".png":
        like = MedicalImage(np.zeros((4, 5), np.uint8), (1.0, 1.0), (0.0, 0.0), np.eye(2), format="raster")
        lab = lab3[0]
    elif suffix == ".dcm":
        from medsamkit.io import read_image

        like = read_image(write_series(tmp_path / "series", n=4, size=8))
        lab = (np.arange(np.prod(like.spatial_shape)).reshape(like.spatial_shape) % 2).astype(np.uint8)
    else:
        like, lab = _volume(), lab3
    out = write_mask(tmp_path / f"mask{suffix}", lab, like, names={1: "a", 2: "b"})
    assert out.is_file() and out.name == f"mask{suffix}"
    assert mask_format(out) is not None and mask_format(out).holds_masks
    if suffix == ".dcm":
        from medsamkit.io import read_dicom_seg

        back, _ = read_dicom_seg(out, like)
    else:
        from medsamkit.io import read_image

        back = read_image(out).array
    assert np.array_equal(back, lab)


def test_nifti_bytes_are_the_written_file(tmp_path) -> None:
    like = _volume()
    lab = (np.arange(60).reshape(3, 4, 5) % 4).astype(np.uint8)
    written = write_mask(tmp_path / "m.nii", lab, like)
    nifti = by_name("nifti")
    assert nifti.as_bytes(lab, like, ".nii") == written.read_bytes()
    gz = nifti.as_bytes(lab, like)
    assert gzip.decompress(gz) == written.read_bytes()
    img = nib.Nifti1Image.from_bytes(gzip.decompress(gz))
    assert np.array_equal(np.asanyarray(img.dataobj).transpose(2, 1, 0), lab)


def test_the_app_and_batch_choose_among_the_table() -> None:
    from medsamkit.app.sessions import SAVE_FORMATS, UPLOAD_SUFFIXES
    from medsamkit.batch.manifest import _ID_SUFFIXES

    assert all(by_suffix(s) is not None for s in (*UPLOAD_SUFFIXES, *_ID_SUFFIXES))
    assert set(SAVE_FORMATS.values()) <= set(MASK_SUFFIXES)
