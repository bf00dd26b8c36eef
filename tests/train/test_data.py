"""Training data: input kinds and channels, resizing, seeded MONAI augmentation, priors, real data (the case
splits are tested in tests/data/test_splits.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medsamkit.data import load_dataset, split_cases
from medsamkit.train.data import (
    InputSpec,
    SegmentationDataset,
    load_case_priors,
    load_split_data,
    make_view,
    prepare_cases,
    resize_input,
    resize_mask,
    resize_probability,
    to_picture,
)
from tests.conftest import DATA, requires_shared
from tests.train.synth import make_dataset


@pytest.mark.parametrize(
    ("kind", "colour", "mode", "channels"),
    [
        ("raw", "grey", None, 1),
        ("raw", "rgb", None, 3),
        ("samaug", "grey", "add", 3),
        ("both", "grey", "add", 3),
        ("both", "grey", "stack", 3),
        ("both", "rgb", "stack", 5),
        ("samaug", "rgb", "stack", 5),
    ],
)
def test_views_have_the_spec_channels(kind, colour, mode, channels) -> None:
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, (20, 30) if colour == "grey" else (20, 30, 3), dtype=np.uint8)
    seg, bnd = rng.random((20, 30)).astype(np.float32), (rng.random((20, 30)) > 0.9).astype(np.float32)
    spec = InputSpec(kind=kind, colour=colour, size=16, mode=mode)
    assert spec.in_channels == channels
    for view in spec.views:
        x = make_view(pic, spec, view, (seg, bnd))
        assert x.shape == (channels, 20, 30) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    if kind == "both" and mode == "stack":
        raw = make_view(pic, spec, "raw")
        assert not raw[-2:].any()  # zero prior channels
        np.testing.assert_array_equal(raw[:-2], make_view(pic, spec, "samaug", (seg, bnd))[:-2])
        np.testing.assert_allclose(make_view(pic, spec, "samaug", (seg, bnd))[-2], seg)
    if kind == "both" and mode == "add" and colour == "grey":
        raw = make_view(pic, spec, "raw")
        np.testing.assert_array_equal(raw[0], raw[1])  # grey repeated to RGB
        np.testing.assert_array_equal(raw[0], pic / np.float32(255))


def test_view_errors() -> None:
    pic = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="priors"):
        make_view(pic, InputSpec(kind="samaug", colour="grey", size=8, mode="add"), "samaug")
    with pytest.raises(ValueError, match="grey"):
        make_view(np.zeros((8, 8, 3), np.uint8), InputSpec(kind="raw", colour="grey", size=8), "raw")
    with pytest.raises(ValueError, match="SAMAug mode"):
        InputSpec(kind="both", colour="grey", size=8)
    with pytest.raises(ValueError, match="input kind"):
        InputSpec(kind="mixed", colour="grey", size=8)


def test_resizing_and_pictures() -> None:
    x = np.zeros((2, 50, 70), np.float32)
    x[0, 10:30, 20:50] = 1.0
    x[1] = 0.25
    y = resize_input(x, 32)
    assert y.shape == (2, 32, 32) and y.dtype == np.float32
    np.testing.assert_allclose(y[1], 0.25, atol=1e-6)
    assert 0 < y[0].mean() < 1 and np.isclose(y[0].mean(), x[0].mean(), atol=0.02)  # area averaging keeps the mean
    up = resize_input(np.ones((3, 8, 8), np.float32), 32)
    assert up.shape == (3, 32, 32) and np.allclose(up, 1.0)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 20:50] = 1
    m = resize_mask(mask, 32)
    assert m.shape == (32, 32) and set(np.unique(m)) == {0, 1}
    assert abs(m.mean() - mask.mean()) < 0.03
    p = resize_probability(np.full((32, 32), 0.7), (50, 70))
    assert p.shape == (50, 70) and p.dtype == np.float32 and np.allclose(p, 0.7)
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
