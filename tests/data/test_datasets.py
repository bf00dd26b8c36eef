"""Dataset loaders: folder / nnU-Net v2 / MSD layouts on tiny synthetic datasets, and the real sets in ../shared."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsamkit.data import Case, Dataset, case_id_of, load_case, load_dataset, modality_from_name
from medsamkit.io import ImageReadError, read_image, resample_like
from tests.conftest import DATA, requires_shared

# An oblique affine with anisotropic voxels and a flipped first axis: geometry bugs cannot hide behind identity.
_ROT = np.linalg.qr(np.array([[0.94, -0.29, 0.2], [0.31, 0.94, -0.1], [-0.16, 0.15, 0.98]]))[0]  # orthonormal
AFFINE = np.eye(4)
AFFINE[:3, :3] = _ROT @ np.diag([-0.8, 1.2, 2.5])
AFFINE[:3, 3] = [10.0, -20.0, 30.0]


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _nii(path: Path, data_ijk: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data_ijk, affine), path)
    return path


def _json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _labels_ijk(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def folder_2d(tmp_path: Path) -> Path:
    """images/{a.png, b.jpg, c.png, ._a.png, .DS_Store, notes.txt} + masks/{a.png, b.png, d.png}, labels.json."""
    root = tmp_path / "set2d"
    rng = np.random.default_rng(0)
    _png(root / "images" / "a.png", rng.integers(0, 255, (20, 30), dtype=np.uint8))
    _png(root / "images" / "b.jpg", rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
    _png(root / "images" / "c.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    (root / "images" / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "images" / ".DS_Store").write_bytes(b"\x00")
    (root / "images" / "notes.txt").write_text("not an image")
    mask_a = np.zeros((20, 30), np.uint8)
    mask_a[5:10, 5:15] = 1
    mask_a[12:18, 20:28] = 2
    _png(root / "masks" / "a.png", mask_a)
    mask_b = np.zeros((16, 24), np.uint8)
    mask_b[4:8, 4:8] = 1
    _png(root / "masks" / "b.png", np.stack([mask_b] * 3, axis=-1))  # grey label map stored as RGB
    _png(root / "masks" / "d.png", np.zeros((8, 8), np.uint8))
    (root / "masks" / "._b.png").write_bytes(b"junk")
    _json(root / "labels.json", {"0": "background", "1": "polyp", "2": "instrument"})
    (root / "SOURCE.md").write_text("# a synthetic set\n")
    return root


@pytest.fixture
def nnunet(tmp_path: Path) -> Path:
    """Dataset001_Prostate: 2 channels (T2, ADC), cases p000 and p001 labelled, p002 unlabelled."""
    root = tmp_path / "Dataset001_Prostate"
    _json(
        root / "dataset.json",
        {
            "channel_names": {"0": "T2", "1": "ADC"},
            "labels": {"background": 0, "peripheral": 1, "transition": 2},
            "numTraining": 2,
            "file_ending": ".nii.gz",
        },
    )
    shape = (6, 5, 4)
    for i, cid in enumerate(("p000", "p001", "p002")):
        for ch in (0, 1):
            _nii(root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz", np.full(shape, 100 * ch + i, np.float32))
        if cid != "p002":
            _nii(root / "labelsTr" / f"{cid}.nii.gz", _labels_ijk(shape, i))
    (root / "imagesTr" / "._p000_0000.nii.gz").write_bytes(b"junk")
    return root


@pytest.fixture
def msd(tmp_path: Path) -> Path:
    """Task01_BrainTumour-like: brain_001 is 4D (3 modalities), brain_002 is a plain 3D volume, brain_003 missing."""
    root = tmp_path / "Task01_BrainTumour"
    shape = (7, 6, 5)
    rng = np.random.default_rng(1)
    _nii(root / "imagesTr" / "brain_001.nii.gz", rng.integers(0, 1000, (*shape, 3)).astype(np.int16))
    _nii(root / "labelsTr" / "brain_001.nii.gz", _labels_ijk(shape, 1))
    _nii(root / "imagesTr" / "brain_002.nii.gz", rng.integers(0, 1000, shape).astype(np.int16))
    _nii(root / "labelsTr" / "brain_002.nii.gz", _labels_ijk(shape, 2))
    (root / "imagesTr" / "._brain_001.nii.gz").write_bytes(b"junk")
    _json(
        root / "dataset.json",
        {
            "name": "BRATS",
            "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd"},
            "labels": {"0": "background", "1": "edema", "2": "enhancing tumour"},
            "training": [
                {"image": "./imagesTr/brain_002.nii.gz", "label": "./labelsTr/brain_002.nii.gz"},
                {"image": "./imagesTr/brain_001.nii.gz", "label": "./labelsTr/brain_001.nii.gz"},
                {"image": "./imagesTr/brain_003.nii.gz", "label": "./labelsTr/brain_003.nii.gz"},
            ],
            "test": [],
        },
    )
    return root


def _folder_3d(root: Path, image_ijk: np.ndarray, mask_ijk: np.ndarray, mask_affine: np.ndarray = AFFINE) -> Path:
    _nii(root / "images" / "vol.nii.gz", image_ijk)
    _nii(root / "masks" / "vol.nii.gz", mask_ijk, mask_affine)
    return root


# ---------------------------------------------------------------------------------------------- folder layout


def test_folder_pairs_by_id_and_reports_leftovers(folder_2d: Path) -> None:
    ds = load_dataset(folder_2d)
    assert (ds.layout, ds.name, ds.root, ds.modality) == ("folder", "set2d", folder_2d, None)
    assert [c.id for c in ds] == ["a", "b"] and len(ds) == 2
    assert ds["b"].image.name == "b.jpg" and ds["b"].mask.name == "b.png"
    assert ds.labels == {1: "polyp", 2: "instrument"}
    assert all(c.labels == ds.labels and c.dataset == "set2d" and c.channel is None for c in ds)
    skipped = dict(ds.skipped)
    assert set(skipped) == {"images/c.png", "masks/d.png", "images/notes.txt"}
    assert "no mask" in skipped["images/c.png"] and "no image" in skipped["masks/d.png"]
    assert not any("._" in f or "DS_Store" in f for f, _ in ds.skipped)


def test_folder_load_case_2d(folder_2d: Path) -> None:
    ds = load_dataset(folder_2d)
    image, mask = load_case(ds["a"])
    assert image.spatial_shape == mask.shape == (20, 30) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1, 2}
    image, mask = load_case(ds["b"])  # RGB jpg image, grey mask stored as RGB: one channel kept
    assert image.array.shape == (16, 24, 3) and mask.shape == (16, 24) and mask.sum() == 16


def test_folder_colour_mask_with_differing_channels_fails(folder_2d: Path) -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[2:5, 2:5, 0] = 1
    _png(folder_2d / "masks" / "b.png", rgb)
    with pytest.raises(ValueError, match="case b.*channels differ"):
        load_case(load_dataset(folder_2d)["b"])


def test_folder_mask_shape_mismatch_names_shapes_and_case(folder_2d: Path) -> None:
    _png(folder_2d / "masks" / "a.png", np.zeros((21, 30), np.uint8))
    with pytest.raises(ValueError, match=r"case a: mask shape \(21, 30\).*\(20, 30\)"):
        load_case(load_dataset(folder_2d)["a"])


def test_folder_corrupt_image_raises_read_error_with_case_id(folder_2d: Path) -> None:
    (folder_2d / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageReadError, match="case a"):
        load_case(load_dataset(folder_2d)["a"])
    case = load_dataset(folder_2d)["b"]
    (folder_2d / "masks" / "b.png").unlink()
    with pytest.raises(ImageReadError, match="case b.*not found"):
        load_case(case)


def test_folder_dataset_json_modality_and_per_case_labels(folder_2d: Path) -> None:
    _json(folder_2d / "dataset.json", {"modality": {"0": "US"}})
    _json(folder_2d / "labels.json", {"a": {"1": "head", "2": "body"}, "b": {"1": "head"}})
    ds = load_dataset(folder_2d)
    assert ds.modality == "US" and all(c.modality == "US" for c in ds)
    assert ds["a"].labels == {1: "head", 2: "body"} and ds["b"].labels == {1: "head"}
    assert ds.labels == {}  # the cases' maps differ
    image, _ = load_case(ds["a"])
    assert (image.modality, image.modality_source) == ("US", "dataset")
    _json(folder_2d / "dataset.json", {"channel_names": {"0": "noNorm"}})
    assert load_dataset(folder_2d).modality is None
    assert load_dataset(folder_2d, modality="mri").modality == "MR"  # user override
    with pytest.raises(ValueError, match="unknown modality"):
        load_dataset(folder_2d, modality="sonar")


def test_folder_ambiguous_ids_and_non_dicom_subfolder(folder_2d: Path) -> None:
    _png(folder_2d / "images" / "a.jpg", np.zeros((20, 30), np.uint8))
    (folder_2d / "images" / "extra").mkdir()
    (folder_2d / "images" / "extra" / "readme.txt").write_text("x")
    ds = load_dataset(folder_2d)
    assert ds.ids == ["b"]
    skipped = dict(ds.skipped)
    assert "ambiguous" in skipped["images/a.png"] and "ambiguous" in skipped["images/a.jpg"]
    assert "not a DICOM series" in skipped["images/extra"]


def test_dataset_indexing_and_subset(folder_2d: Path) -> None:
    _png(folder_2d / "masks" / "c.png", np.zeros((8, 8), np.uint8))
    ds = load_dataset(folder_2d, name="demo")
    assert ds.ids == ["a", "b", "c"] and ds.name == "demo" and ds[0].dataset == "demo"
    assert ds[-1].id == "c" and ds["b"] is ds[1]
    with pytest.raises(KeyError, match="'zz'"):
        ds["zz"]
    with pytest.raises(TypeError):
        ds[1.5]  # type: ignore[index]
    sub = ds.subset(["c", "a"])
    assert isinstance(sub, Dataset) and sub.ids == ["a", "c"] and sub.labels == ds.labels
    assert ds.subset(limit=2).ids == ["a", "b"] and ds.subset(["c", "b"], limit=1).ids == ["b"]
    assert len(ds) == 3  # unchanged
    with pytest.raises(KeyError, match="'nope'"):
        ds.subset(["a", "nope"])
    assert "3 cases" in repr(ds)


def test_3d_masks_integer_checks(tmp_path: Path) -> None:
    img = np.zeros((6, 5, 4), np.int16)
    root = _folder_3d(tmp_path / "s", img, np.where(np.arange(120).reshape(6, 5, 4) % 7 == 0, 3.0, 0.0).astype(np.float32))
    _, mask = load_case(load_dataset(root)["vol"])  # float mask holding integers: fine
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 3} and mask.shape == (4, 5, 6)
    _nii(root / "masks" / "vol.nii.gz", np.full((6, 5, 4), 0.5, np.float32))
    with pytest.raises(ValueError, match="case vol.*non-integer"):
        load_case(load_dataset(root)["vol"])
    _nii(root / "masks" / "vol.nii.gz", np.full((6, 5, 4), -1, np.int16))
    with pytest.raises(ValueError, match="case vol.*negative"):
        load_case(load_dataset(root)["vol"])
    _nii(root / "masks" / "vol.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"case vol: mask shape \(3, 5, 6\).*\(4, 5, 6\)"):
        load_case(load_dataset(root)["vol"])


def test_3d_geometry_mismatch_warns(tmp_path: Path) -> None:
    shifted = AFFINE.copy()
    shifted[:3, 3] += [0.0, 0.0, 5.0]  # 5 mm off: not the same grid
    root = _folder_3d(tmp_path / "s", np.zeros((6, 5, 4), np.int16), _labels_ijk((6, 5, 4)), shifted)
    with pytest.warns(UserWarning, match="case vol: mask geometry differs"):
        image, mask = load_case(load_dataset(root)["vol"])
    assert mask.shape == image.spatial_shape


def test_3d_mask_on_flipped_permuted_grid_is_reoriented_exactly(tmp_path: Path) -> None:
    labels = _labels_ijk((6, 5, 4), seed=3)
    # the same voxels stored with axis j flipped and axes i/k swapped: new index (k, J-1-j, i)
    stored = np.flip(labels, axis=1).transpose(2, 1, 0)
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1, 4  # j -> 4 - j
    swap = np.eye(4)[[2, 1, 0, 3]]  # (k, j, i) -> (i, j, k)
    root = _folder_3d(tmp_path / "s", np.zeros((6, 5, 4), np.int16), stored, AFFINE @ flip @ swap)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, mask = load_case(load_dataset(root)["vol"])
    assert np.array_equal(mask, labels.transpose(2, 1, 0))
    assert np.array_equal(mask, resample_like(read_image(root / "masks" / "vol.nii.gz"), image))


# ---------------------------------------------------------------------------------------------- nnU-Net layout


def test_nnunet_layout(nnunet: Path) -> None:
    ds = load_dataset(nnunet)
    assert ds.layout == "nnunet" and ds.name == "Dataset001_Prostate"
    assert ds.ids == ["p000", "p001"]
    assert ds.labels == {1: "peripheral", 2: "transition"} and ds["p000"].labels == ds.labels
    assert ds.modality == "MR" and [c.image.name for c in ds] == ["p000_0000.nii.gz", "p001_0000.nii.gz"]
    assert ds["p001"].mask == nnunet / "labelsTr" / "p001.nii.gz"
    assert ds.skipped == [(f"imagesTr/p002_{c:04d}.nii.gz", "no label labelsTr/p002.nii.gz for case 'p002'") for c in (0, 1)]
    ds1 = load_dataset(nnunet, channel=1)
    assert [c.image.name for c in ds1] == ["p000_0001.nii.gz", "p001_0001.nii.gz"] and ds1.modality == "MR"
    image, mask = load_case(ds1["p001"])
    assert np.all(image.array == 101) and mask.shape == image.spatial_shape == (4, 5, 6)
    assert (image.modality, image.modality_source) == ("MR", "dataset")
    assert ds1[0].channel is None  # the file already is that channel


def test_nnunet_missing_channel(nnunet: Path) -> None:
    with pytest.raises(ValueError, match="channel 2 does not exist.*0: T2, 1: ADC"):
        load_dataset(nnunet, channel=2)
    (nnunet / "imagesTr" / "p001_0001.nii.gz").unlink()
    ds = load_dataset(nnunet, channel=1)
    assert ds.ids == ["p000"] and "channels found: 0000" in dict(ds.skipped)["labelsTr/p001.nii.gz"]


def test_nnunet_region_based_labels_rejected(nnunet: Path) -> None:
    meta = json.loads((nnunet / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    meta["regions_class_order"] = [1, 2]
    _json(nnunet / "dataset.json", meta)
    with pytest.raises(ValueError, match="region-based"):
        load_dataset(nnunet)


def test_nnunet_png_and_modality_names(tmp_path: Path) -> None:
    root = tmp_path / "Dataset120_Road"
    _json(
        root / "dataset.json",
        {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "road": 1}, "file_ending": ".png"},
    )
    _png(root / "imagesTr" / "img_7_0000.png", np.zeros((9, 11, 3), np.uint8))
    _png(root / "labelsTr" / "img_7.png", np.ones((9, 11), np.uint8))
    (root / "labelsTr" / "img_7.nii.gz").write_bytes(b"")
    ds = load_dataset(root)
    assert ds.ids == ["img_7"] and ds.modality is None and ds.labels == {1: "road"}
    assert [f for f, _ in ds.skipped] == ["labelsTr/img_7.nii.gz"]
    image, mask = load_case(ds[0])
    assert image.array.shape == (9, 11, 3) and mask.shape == (9, 11)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CT", "CT"),
        ("ct", "CT"),
        ("MRI", "MR"),
        ("T1", "MR"),
        ("t1gd", "MR"),
        ("T2w", "MR"),
        ("FLAIR", "MR"),
        ("adc", "MR"),
        ("noNorm", None),
        ("rescale_to_0_1", None),
        ("zscore", None),
        ("R", None),
        ("PET", "PT"),
        ("ultrasound", "US"),
        ("weird", None),
        (None, None),
    ],
)
def test_modality_from_name(name: str | None, expected: str | None) -> None:
    assert modality_from_name(name) == expected


# ---------------------------------------------------------------------------------------------- MSD layout


def test_msd_layout(msd: Path) -> None:
    ds = load_dataset(msd)
    assert ds.layout == "msd" and ds.ids == ["brain_001", "brain_002"]
    assert ds.labels == {1: "edema", 2: "enhancing tumour"} and ds.modality == "MR"
    assert all(c.channel == 0 for c in ds)
    assert [f for f, _ in ds.skipped] == ["imagesTr/brain_003.nii.gz"] and "missing" in ds.skipped[0][1]
    assert load_dataset(msd, channel=2)["brain_001"].channel == 2
    with pytest.raises(ValueError, match="channel 3 does not exist.*FLAIR"):
        load_dataset(msd, channel=3)


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_msd_4d_channel_matches_3d_file(msd: Path, tmp_path: Path, channel: int) -> None:
    four_d = nib.load(msd / "imagesTr" / "brain_001.nii.gz")
    # the 3D file carries the 4D file's header (sform, qform, pixdim), so the geometry must agree exactly
    nib.save(nib.Nifti1Image(np.asarray(four_d.dataobj)[..., channel], None, header=four_d.header), tmp_path / "one.nii.gz")
    ref = read_image(tmp_path / "one.nii.gz")
    image, mask = load_case(load_dataset(msd, channel=channel)["brain_001"])
    assert image.array.dtype == ref.array.dtype and np.array_equal(image.array, ref.array)
    assert image.spacing == ref.spacing and image.origin == ref.origin and np.array_equal(image.direction, ref.direction)
    assert np.allclose(image.affine_ras(), four_d.affine, atol=1e-5)
    assert image.modality == "MR" and mask.shape == image.spatial_shape == (5, 6, 7)


def test_msd_3d_case_and_channel_errors(msd: Path) -> None:
    image, mask = load_case(load_dataset(msd)["brain_002"])
    assert image.spatial_shape == mask.shape == (5, 6, 7)
    with pytest.raises(ImageReadError, match="case brain_002.*channel 1 does not exist"):
        load_case(load_dataset(msd, channel=1)["brain_002"])
    bad = Case("brain_001", msd / "imagesTr" / "brain_001.nii.gz", msd / "labelsTr" / "brain_001.nii.gz", "t", {}, None, 5)
    with pytest.raises(ImageReadError, match="case brain_001.*channel 5 does not exist"):
        load_case(bad)


def test_msd_accepts_dataset_json_path(msd: Path) -> None:
    ds = load_dataset(msd / "dataset.json", layout="msd")
    assert ds.root == msd and len(ds) == 2


# ---------------------------------------------------------------------------------------------- layout detection


def test_bad_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(ValueError, match=r"found images/, stuff.txt.*'folder'.*'nnunet'.*'msd'"):
        load_dataset(tmp_path)
    _json(tmp_path / "dataset.json", {"name": "x"})
    with pytest.raises(ValueError, match="neither 'training' nor 'channel_names'"):
        load_dataset(tmp_path)
    with pytest.raises(ValueError, match="unknown layout"):
        load_dataset(tmp_path, layout="bids")
    with pytest.raises(ValueError, match="needs a dataset.json"):
        load_dataset(tmp_path / "images", layout="msd")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="channel"):
        load_dataset(tmp_path, channel=-1)


def test_case_id_of() -> None:
    assert case_id_of("x/hippocampus_035.nii.gz") == "hippocampus_035"
    assert case_id_of("a.b.png") == "a.b" and case_id_of("ct_dicom") == "ct_dicom" and case_id_of("X.NII.GZ") == "X"


# ---------------------------------------------------------------------------------------------- real data


@requires_shared
def test_real_kvasir_jpg_png_pairs() -> None:
    ds = load_dataset(DATA / "kvasir_seg")
    assert len(ds) == 186 and ds.skipped == [] and ds.layout == "folder"
    assert all(c.image.suffix == ".jpg" and c.mask.suffix == ".png" and c.image.stem == c.mask.stem for c in ds)
    image, mask = load_case(ds[0])
    assert image.is_rgb and mask.shape == image.spatial_shape and set(np.unique(mask)) <= {0, 1}


@requires_shared
def test_real_msd_hippocampus() -> None:
    ds = load_dataset(DATA / "msd_hippocampus_mri_3d")
    assert len(ds) == 30 and ds.skipped == [] and ds[0].id == "hippocampus_035"
    assert set(ds.labels) <= {1, 2}  # the folder has no labels.json today (SOURCE.md: 1 anterior, 2 posterior)
    image, mask = load_case(ds["hippocampus_035"])
    assert image.is_volume and mask.shape == image.spatial_shape and set(np.unique(mask)) == {0, 1, 2}


@requires_shared
def test_real_totalseg_with_dicom_series_case() -> None:
    ds = load_dataset(DATA / "totalseg_examples_3d")
    assert ds.ids == ["ct_dicom", "ct_sm", "mr_sm"] and ds.skipped == []
    assert ds["ct_dicom"].image.is_dir() and ds["ct_dicom"].mask.name == "ct_dicom.nii.gz"
    assert ds["ct_sm"].labels[5] == "liver" and ds["mr_sm"].labels[10] == "lung_left"  # labels.json is per case
    assert ds.labels == {}  # CT and MR cases use different maps
    image, mask = load_case(ds["ct_sm"])
    assert image.spatial_shape == mask.shape == (30, 101, 122)
    # the DICOM case's NIfTI mask stores DICOM row j as 511 - j: load_case puts it on the series' grid exactly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, mask = load_case(ds["ct_dicom"])
    assert image.format == "dicom-series" and image.modality == "CT"
    assert mask.shape == image.spatial_shape == (20, 512, 512)
    assert np.array_equal(mask, resample_like(read_image(ds["ct_dicom"].mask), image))
