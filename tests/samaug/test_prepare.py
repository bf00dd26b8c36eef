"""SAMAug dataset preparation on real Kvasir-SEG images with the bundled LiteMedSAM: files, caching, failures."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsamkit.data import Case, load_case, load_dataset
from medsamkit.io import read_image_2d
from medsamkit.predict.automatic import AutomaticMaskGenerator, EverythingResult, default_options
from medsamkit.predict.unet import augment_image, load_priors
from medsamkit.samaug.prepare import case_paths, prepare_case, prepare_dataset, priors_for_image
from medsamkit.samaug.priors import boundary_prior, segmentation_prior
from tests.conftest import DATA

KVASIR = DATA / "kvasir_seg"
pytestmark = pytest.mark.skipif(
    not (KVASIR / "images").is_dir(), reason=f"real data not found at {KVASIR} (set MEDSAMKIT_SHARED to the shared folder)"
)
N_REAL = 3


class CountingGenerator(AutomaticMaskGenerator):
    """The real generator, counting how often everything mode runs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def generate(self, image: np.ndarray, progress: Callable[[int, int], None] | None = None) -> EverythingResult:
        self.calls += 1
        return super().generate(image, progress)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A folder dataset: the first 3 Kvasir cases plus one whose image file is corrupt."""
    root = tmp_path_factory.mktemp("kvasir3")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    ids = sorted(p.stem for p in (KVASIR / "images").iterdir())[:N_REAL]
    for cid in ids:
        shutil.copy(KVASIR / "images" / f"{cid}.jpg", root / "images")
        shutil.copy(KVASIR / "masks" / f"{cid}.png", root / "masks")
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    shutil.copy(KVASIR / "masks" / f"{ids[0]}.png", root / "masks" / "broken.png")
    return root


def first_real(root: Path) -> str:
    return next(c for c in load_dataset(root).ids if c != "broken")


@pytest.fixture(scope="module")
def generator(predictor) -> CountingGenerator:
    return CountingGenerator(predictor, default_options("litemedsam", points_per_side=4))


@pytest.fixture(scope="module")
def prepared(dataset, generator, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("samaug_out")
    summary = prepare_dataset(dataset, out, generator, "add", progress=False)
    return out, summary


def test_first_run_writes_a_loadable_dataset_and_records_the_failure(dataset, prepared, generator):
    out, s = prepared
    assert s["counts"] == {"cases": N_REAL + 1, "computed": N_REAL, "cached": 0, "failed": 1, "masks": s["counts"]["masks"]}
    assert s["counts"]["masks"] > 0
    assert [f["case"] for f in s["failures"]] == ["broken"] and "ImageReadError" in s["failures"][0]["error"]
    assert generator.calls == N_REAL
    on_disk = json.loads((out / "samaug.json").read_text())
    assert on_disk["counts"] == s["counts"] and on_disk["mode"] == "add" and on_disk["options"]["points_per_side"] == 4
    assert len({r["key"] for r in on_disk["cases"].values() if r["key"]}) == N_REAL

    src = load_dataset(dataset)
    aug = load_dataset(out)
    assert aug.layout == "folder" and aug.ids == [c for c in src.ids if c != "broken"]
    for case in aug:
        image, mask = load_case(case)
        src_image, src_mask = load_case(src[case.id])
        assert image.array.shape == src_image.array.shape and image.array.dtype == np.uint8
        assert np.array_equal(mask, src_mask)
        assert np.array_equal(image.array[..., 0], src_image.array[..., 0])  # red channel untouched
        priors, key = load_priors(out / "priors" / f"{case.id}.npz")
        assert key == s["cases"][case.id]["key"]
        assert priors.seg.dtype == np.float32 and priors.seg.shape == mask.shape == priors.boundary.shape
        assert 0 <= priors.seg.min() and priors.seg.max() <= 1 and set(np.unique(priors.boundary)) <= {0.0, 1.0}
        assert np.array_equal(image.array, augment_image(src_image.array, priors.seg, priors.boundary, "add"))
        meta = json.loads((out / "records" / f"{case.id}.json").read_text())
        assert meta["key"] == key and len(meta["records"]) == priors.n_masks == s["cases"][case.id]["n_masks"]
        assert np.array_equal(segmentation_prior(meta["records"], mask.shape), priors.seg)  # RLE records rebuild it
        assert np.array_equal(boundary_prior(meta["records"], mask.shape), priors.boundary)
    assert not (out / "priors" / "broken.npz").exists()


def test_second_run_computes_nothing_and_restores_missing_outputs(dataset, prepared, generator):
    out, first = prepared
    before = generator.calls
    lost = out / "images" / f"{load_dataset(out).ids[0]}.png"
    kept = lost.read_bytes()
    lost.unlink()
    s = prepare_dataset(dataset, out, generator, "add", progress=False)
    assert generator.calls == before
    assert s["counts"]["cached"] == N_REAL and s["counts"]["computed"] == 0 and s["counts"]["failed"] == 1
    assert {k: v["key"] for k, v in s["cases"].items()} == {k: v["key"] for k, v in first["cases"].items()}
    assert lost.read_bytes() == kept  # rebuilt from the stored priors, without the model


def test_changed_option_or_mask_is_noticed(dataset, prepared, predictor, tmp_path):
    out, first = prepared
    case = load_dataset(dataset)[first_real(dataset)]
    same = CountingGenerator(predictor, default_options("litemedsam", points_per_side=4))
    assert prepare_case(same, case, out)["status"] == "cached" and same.calls == 0
    other = CountingGenerator(predictor, default_options("litemedsam", points_per_side=2))
    r = prepare_case(other, case, out)
    assert r["status"] == "computed" and other.calls == 1 and r["key"] != first["cases"][case.id]["key"]
    assert load_priors(out / "priors" / f"{case.id}.npz")[1] == r["key"]

    # a new ground truth for a cached case: no model work, but masks/ follows it
    moved = tmp_path / "ds"
    shutil.copytree(dataset, moved)
    m = np.asarray(Image.open(moved / "masks" / f"{case.id}.png")).copy()
    m[:5, :5] = 1 - m[:5, :5]
    Image.fromarray(m).save(moved / "masks" / f"{case.id}.png")
    moved_case = load_dataset(moved)[case.id]
    assert prepare_case(other, moved_case, out)["status"] == "cached" and other.calls == 1
    assert np.array_equal(np.asarray(Image.open(out / "masks" / f"{case.id}.png")), load_case(moved_case)[1])


def test_stack_mode_files_and_settings_guard(dataset, prepared, generator, tmp_path):
    out, _ = prepared
    with pytest.raises(ValueError, match="mode='add'"):
        prepare_dataset(dataset, out, generator, "stack", progress=False)
    stack_out = tmp_path / "stack"
    ds = load_dataset(dataset).subset([first_real(dataset)])
    s = prepare_dataset(ds, stack_out, generator, "stack", progress=False)
    assert s["counts"]["computed"] == 1 and s["alpha"] == 0.5
    cid = ds.ids[0]
    paths = case_paths(stack_out, cid, "stack")
    stacked = np.load(paths["stacked"])
    picture = read_image_2d(ds[0].image)
    priors, _ = load_priors(paths["priors"])
    assert stacked.dtype == np.float32 and stacked.shape == (*picture.shape[:2], 5)
    assert np.array_equal(stacked, augment_image(picture, priors.seg, priors.boundary, "stack"))
    assert np.array_equal(read_image_2d(paths["image"]), picture)  # images/ keeps the picture the model saw
    assert load_dataset(stack_out).ids == [cid]


def test_priors_for_image_and_bad_cases(generator, tmp_path):
    img = read_image_2d(sorted((KVASIR / "images").iterdir())[0])
    p = priors_for_image(generator, img)
    assert p.seg.shape == img.shape[:2] and p.n_masks == len(p.records) and p.stats["everything"]["masks"] == p.n_masks
    # a 3D case is refused before any model work
    import SimpleITK as sitk

    root = tmp_path / "vol"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16)), str(root / "images" / "v.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.uint8)), str(root / "masks" / "v.nii.gz"))
    before = generator.calls
    with pytest.raises(ValueError, match="2D"):
        prepare_case(generator, load_dataset(root)[0], tmp_path / "out")
    with pytest.raises(ValueError, match="mode"):
        prepare_case(generator, load_dataset(root)[0], tmp_path / "out", mode="concat")
    missing = Case("x", tmp_path / "nope.png", tmp_path / "nope_mask.png", "d", {}, None)
    with pytest.raises(OSError):
        prepare_case(generator, missing, tmp_path / "out")
    assert generator.calls == before
