"""Training data: the train set of each input kind, mask resizing, seeded MONAI augmentation, priors, real data
(the case splits are tested in tests/data/test_splits.py, the network inputs in tests/predict/test_unet.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medsamkit.data import load_dataset, split_cases
from medsamkit.models.unet import InputSpec
from medsamkit.train.data import (
    SegmentationDataset,
    load_case_priors,
    load_split_data,
    prepare_cases,
    resize_mask,
    to_picture,
)
from tests.conftest import DATA, requires_shared
from tests.train.synth import make_dataset


def test_mask_resizing_and_pictures() -> None:
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 20:50] = 1
    m = resize_mask(mask, 32)
    assert m.shape == (32, 32) and set(np.unique(m)) == {0, 1}
    assert abs(m.mean() - mask.mean()) < 0.03
    img16 = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
    pic = to_picture(img16)
    assert pic.dtype == np.uint8 and pic.shape == (10, 10) and pic.max() == 255
    rgba = np.zeros((4, 5, 4), np.uint8)
    assert to_picture(rgba).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="2D image"):
        to_picture(np.zeros((2, 3, 4, 5)))


def test_both_doubles_the_train_set_and_channels_agree(tmp_path) -> None:
    data, samaug = make_dataset(tmp_path, n=10, size=(40, 56), rgb=True, mode="stack")
    split = split_cases(load_dataset(data).ids, 0.2, 0.2, seed=0)
    spec, parts = load_split_data(data, split, "both", size=32, samaug_dir=samaug)
    assert spec.colour == "rgb" and spec.mode == "stack" and spec.in_channels == 5
    train = SegmentationDataset(parts["train"], spec, augment=True, seed=0)
    assert len(train) == 2 * len(split.train) == 12
    assert [train[i]["view"] for i in range(2)] == ["raw", "samaug"]
    for i in range(len(train)):
        item = train[i]
        assert item["image"].shape == (5, 32, 32) and item["image"].dtype == torch.float32
        assert item["label"].shape == (1, 32, 32) and item["label"].dtype == torch.int64
    val = SegmentationDataset(parts["val"], spec, ensemble=True)
    assert len(val) == len(split.val) and val[0]["image"].shape == (2, 5, 32, 32)
    _, raw_parts = load_split_data(data, split, "raw", size=32)
    assert len(SegmentationDataset(raw_parts["train"], InputSpec(kind="raw", colour="rgb", size=32))) == 6


def test_augmentation_moves_image_priors_and_mask_together_and_is_seeded(tmp_path) -> None:
    data, samaug = make_dataset(tmp_path, n=3, mode="stack")
    ds = load_dataset(data)
    # make the picture and the seg prior the mask itself, so any misalignment shows
    pictures = {}
    for case in ds:
        mask = np.asarray(Image.open(case.mask)) > 0
        pictures[case.id] = ((mask * 255).astype(np.uint8), mask.astype(np.uint8))
        np.savez(
            samaug / "priors" / f"{case.id}.npz",
            seg_prior=mask.astype(np.float32),
            boundary_prior=np.zeros(mask.shape, np.float32),
        )
    spec = InputSpec(kind="both", colour="grey", size=64, mode="stack")  # the images' size: no resampling
    cases = prepare_cases(ds.cases, spec, samaug, pictures)
    train = SegmentationDataset(cases, spec, augment=True, seed=7)
    changed = 0
    for epoch in range(4):
        train.set_epoch(epoch)
        for i in range(len(train)):
            item = train[i]
            label = item["label"][0].numpy()
            img = item["image"].numpy()
            np.testing.assert_array_equal(img[0] > 0.5, label > 0)  # intensity changes are mild
            if item["view"] == "samaug":
                np.testing.assert_array_equal(img[1], label.astype(np.float32))  # priors: no intensity change
            else:
                assert not img[1:].any()
            changed += not np.array_equal(label, cases[i // 2].target)
            again = train[i]
            assert torch.equal(again["image"], item["image"]) and torch.equal(again["label"], item["label"])
    assert changed > 5  # flips/rotations happen
    train.set_epoch(0)
    a = [train[i]["image"] for i in range(len(train))]
    train.set_epoch(1)
    b = [train[i]["image"] for i in range(len(train))]
    assert any(not torch.equal(x, y) for x, y in zip(a, b))


def test_priors_missing_or_mismatched(tmp_path) -> None:
    data, samaug = make_dataset(tmp_path, n=4, mode="add")
    ds = load_dataset(data)
    (samaug / "priors" / "c01.npz").unlink()
    with pytest.raises(FileNotFoundError, match="c01"):
        load_case_priors(samaug, "c01")
    spec = InputSpec(kind="samaug", colour="grey", size=32, mode="add")
    with pytest.raises(FileNotFoundError, match="c01"):
        prepare_cases(ds.cases, spec, samaug)
    np.savez(
        samaug / "priors" / "c01.npz", seg_prior=np.zeros((10, 10), np.float32), boundary_prior=np.zeros((10, 10), np.float32)
    )
    with pytest.raises(ValueError, match="priors are 10 x 10"):
        prepare_cases(ds.cases, spec, samaug)
    with pytest.raises(ValueError, match="samaug_dir"):
        prepare_cases(ds.cases, spec, None)
    (samaug / "samaug.json").unlink()
    with pytest.raises(FileNotFoundError, match="samaug.json"):
        load_split_data(data, split_cases(ds.ids, 0.25, 0.0), "samaug", size=32, samaug_dir=samaug)


def test_one_label_target(tmp_path) -> None:
    data, _ = make_dataset(tmp_path, n=3)
    ds = load_dataset(data)
    mask = np.asarray(Image.open(ds.cases[0].mask)).copy()
    mask[:5, :5] = 2
    Image.fromarray(mask).save(ds.cases[0].mask)
    cases = prepare_cases(ds.cases[:1], InputSpec(kind="raw", colour="grey", size=64, label=2))
    assert cases[0].target.sum() == 25
    cases = prepare_cases(ds.cases[:1], InputSpec(kind="raw", colour="grey", size=64))
    assert cases[0].target.sum() == (mask > 0).sum()


@requires_shared
@pytest.mark.parametrize("name", ["busi_breast_us", "kvasir_seg"])
def test_real_datasets_load(name) -> None:
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    ds = load_dataset(root).subset(limit=5)
    split = split_cases(ds.ids, 0.2, 0.0, seed=0)
    spec, parts = load_split_data(ds, split, "raw", size=64)
    assert spec.colour == ("grey" if name == "busi_breast_us" else "rgb")
    assert len(parts["train"]) == 4 and len(parts["val"]) == 1
    for c in parts["train"]:
        x = c.views["raw"]
        assert x.shape == (spec.in_channels, 64, 64) and 0 <= x.min() and x.max() <= 1 and x.std() > 0.01
        assert 0 < c.target.mean() < 1  # every case has an object, none is all object
