"""U-Net inference: the network inputs (views, channels, resizing), which inputs a model takes, predictions on the
image's own grid and the test-time ensemble, the segmenter of the evaluation runner, and SAMAug's augmented
image (no clipping, channel layout) and prior files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medsamkit.models.unet import InputSpec, TrainedUNet, build_network, foreground_probability
from medsamkit.predict.unet import (
    DEFAULT_ALPHA,
    Priors,
    UNetSegmenter,
    as_priors,
    augment_image,
    augmented_channels,
    load_priors,
    make_view,
    predict_unet,
    predict_views,
    resize_input,
    resize_probability,
    save_priors,
    views_for,
)
from medsamkit.preprocess.image2d import to_rgb_uint8


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield


def tiny_unet(kind: str = "raw", colour: str = "grey", mode: str | None = None, size: int = 16) -> TrainedUNet:
    """An untrained, seeded two-level U-Net in eval mode (the numbers do not matter, the conventions do)."""
    spec = InputSpec(kind=kind, colour=colour, size=size, mode=mode)
    torch.manual_seed(0)
    net = build_network("unet", spec.in_channels, 2, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    return TrainedUNet(net, spec)


# ---------------------------------------------------------------------------------------------- network inputs


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
    with pytest.raises(ValueError, match="no augmented view"):
        make_view(pic, InputSpec(kind="raw", colour="grey", size=8), "samaug", (pic / 255.0, pic / 255.0))
    with pytest.raises(ValueError, match="unknown view"):
        make_view(pic, InputSpec(kind="raw", colour="grey", size=8), "augmented")


def test_resizing() -> None:
    x = np.zeros((2, 50, 70), np.float32)
    x[0, 10:30, 20:50] = 1.0
    x[1] = 0.25
    y = resize_input(x, 32)
    assert y.shape == (2, 32, 32) and y.dtype == np.float32
    np.testing.assert_allclose(y[1], 0.25, atol=1e-6)
    assert 0 < y[0].mean() < 1 and np.isclose(y[0].mean(), x[0].mean(), atol=0.02)  # area averaging keeps the mean
    up = resize_input(np.ones((3, 8, 8), np.float32), 32)
    assert up.shape == (3, 32, 32) and np.allclose(up, 1.0)
    p = resize_probability(np.full((32, 32), 0.7), (50, 70))
    assert p.shape == (50, 70) and p.dtype == np.float32 and np.allclose(p, 0.7)
    assert resize_probability(np.full((4, 4), 1.5), (4, 4)).max() == 1.0  # clipped to [0, 1]


def test_priors_in_every_form(tmp_path) -> None:
    seg, bnd = np.full((3, 4), 0.5, np.float32), np.zeros((3, 4), np.float32)
    path = save_priors(tmp_path / "p.npz", Priors(seg, bnd, 2), key="k")
    for form in (Priors(seg, bnd, 2), (seg, bnd), [seg, bnd], {"seg_prior": seg, "boundary_prior": bnd}, path, str(path)):
        s, b = as_priors(form)
        assert s.dtype == np.float32 and np.array_equal(s, seg) and np.array_equal(b, bnd)
    with pytest.raises(ValueError, match="seg_prior"):
        as_priors({"seg": seg})
    with pytest.raises(ValueError, match="npz path"):
        as_priors(3)


# -------------------------------------------------------------------------------------------------- prediction


def test_views_rules() -> None:
    raw = InputSpec(kind="raw", colour="grey", size=32)
    aug = InputSpec(kind="samaug", colour="grey", size=32, mode="add")
    both = InputSpec(kind="both", colour="grey", size=32, mode="add")
    assert views_for(raw, True, True) == ("raw",)
    assert views_for(aug, True, False) == ("samaug",)
    assert views_for(both, True, True) == ("raw", "samaug")
    assert views_for(both, False, False) == ("raw",)
    with pytest.raises(ValueError, match="SAMAug-augmented"):
        views_for(aug, False, True)
    with pytest.raises(ValueError, match="ensemble"):
        views_for(both, False, True)


def test_probability_on_the_image_grid() -> None:
    m = tiny_unet(size=16)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    prob = predict_unet(m, image)
    assert prob.shape == (20, 30) and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    # the network's S x S probability, resized back bilinearly
    x = resize_input(make_view(image, m.spec, "raw"), 16)[None]
    with torch.no_grad():
        small = foreground_probability(m.network(torch.from_numpy(x)))[0].numpy()
    np.testing.assert_array_equal(prob, resize_probability(small, (20, 30)))
    # at the network's size nothing is resized; (H, W, 1) and the 16-bit rule go through the picture step
    same = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    with torch.no_grad():
        direct = foreground_probability(m.network(torch.from_numpy(make_view(same, m.spec, "raw")[None])))[0].numpy()
    np.testing.assert_allclose(predict_unet(m, same[..., None]), np.clip(direct, 0, 1), atol=1e-7)
    with pytest.raises(ValueError, match="grey"):
        predict_unet(m, np.repeat(image[..., None], 3, axis=2))


def test_both_model_ensemble_is_the_mean_of_its_two_inputs() -> None:
    m = tiny_unet("both", "grey", "stack")
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    priors = (rng.random((24, 24)).astype(np.float32), (rng.random((24, 24)) > 0.8).astype(np.float32))
    ens = predict_unet(m, image, priors)
    raw = predict_unet(m, image, None, ensemble=False)
    aug = predict_unet(m, image, priors, ensemble=False)
    np.testing.assert_allclose(ens, (raw + aug) / 2, atol=1e-6)
    np.testing.assert_array_equal(raw, predict_views(m, image, ("raw",)))
    with pytest.raises(ValueError, match="priors"):
        predict_unet(m, image)
    with pytest.raises(ValueError, match="priors are"):
        predict_unet(m, image, (np.zeros((5, 5), np.float32), np.zeros((5, 5), np.float32)))


def test_segmenter_thresholds_the_probability() -> None:
    m = tiny_unet("samaug", "grey", "add")
    rng = np.random.default_rng(2)
    picture = rng.integers(0, 256, (18, 22), dtype=np.uint8)
    priors = (rng.random((18, 22)).astype(np.float32), np.zeros((18, 22), np.float32))
    prob = predict_views(m, picture, ("samaug",), priors)
    for t in (0.5, float(np.median(prob))):
        mask = UNetSegmenter(m, ("samaug",), priors, threshold=t).segment(picture)
        assert mask.dtype == bool and mask.shape == (18, 22) and np.array_equal(mask, prob > t)
    assert UNetSegmenter.slices is False  # a model of 2D images, not applied to the slices of a volume
    with pytest.raises(ValueError, match="case c7: priors are"):
        UNetSegmenter(m, ("samaug",), priors, case_id="c7").segment(picture[:10])


# ---------------------------------------------------------------------------------------- SAMAug prior files


def test_prior_file_roundtrip(tmp_path) -> None:
    seg = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    bnd = (seg > 0.5).astype(np.float32)
    path = save_priors(tmp_path / "priors" / "c.npz", Priors(seg, bnd, 3), key="abc")
    with np.load(path) as z:
        assert z["seg_prior"].dtype == np.float32 and int(z["format_version"]) == 1
    q, key = load_priors(path)
    assert key == "abc" and q.n_masks == 3 and q.shape == (3, 4)
    assert np.array_equal(q.seg, seg) and np.array_equal(q.boundary, bnd)
    np.savez(tmp_path / "other.npz", seg_prior=seg, boundary_prior=bnd)  # another writer: the two maps suffice
    other, key = load_priors(tmp_path / "other.npz")
    assert key == "" and other.n_masks == -1
    np.savez(tmp_path / "half.npz", seg_prior=seg)
    with pytest.raises(ValueError, match="boundary_prior"):
        load_priors(tmp_path / "half.npz")
    np.savez(tmp_path / "shapes.npz", seg_prior=seg, boundary_prior=bnd[:2])
    with pytest.raises(ValueError, match="same"):
        load_priors(tmp_path / "shapes.npz")


# --------------------------------------------------------------------------------------------- augment_image


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    alpha=st.one_of(st.sampled_from([0.0, 1.0, DEFAULT_ALPHA]), st.floats(0.0, 1.0)),
    grey=st.booleans(),
    extreme=st.sampled_from(["random", "white", "black"]),
)
def test_add_mode_never_clips_and_equals_the_unclipped_formula(seed, alpha, grey, extreme):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 30, size=2)
    shape = (h, w) if grey else (h, w, 3)
    img = {"random": rng.integers(0, 256, size=shape), "white": np.full(shape, 255), "black": np.zeros(shape)}[extreme]
    img = img.astype(np.uint8)
    seg = rng.choice([0.0, 1.0, rng.random()], size=(h, w)) * (rng.random((h, w)) < 0.7)
    bnd = (rng.random((h, w)) < 0.3).astype(np.float32)
    out = augment_image(img, seg.astype(np.float32), bnd, "add", alpha)
    rgb = np.repeat(img[..., None], 3, axis=2) if grey else img
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    assert np.array_equal(out[..., 0], rgb[..., 0])  # red unchanged
    for c, prior in ((1, seg.astype(np.float32).astype(np.float64)), (2, bnd.astype(np.float64))):
        formula = (1 - alpha) * rgb[..., c].astype(np.float64) + alpha * 255.0 * prior
        assert formula.min() >= 0.0 and formula.max() <= 255.0 + 1e-9  # nothing to clip
        assert np.array_equal(out[..., c], np.rint(formula).astype(np.int64))  # uint8 holds it unchanged


def test_add_mode_on_a_white_image_and_defaults():
    img = np.full((4, 5, 3), 255, np.uint8)
    ones, zeros = np.ones((4, 5)), np.zeros((4, 5))
    assert np.all(augment_image(img, ones, ones) == 255)  # prior 1 on white stays 255, not pushed past
    out = augment_image(img, zeros, zeros)
    assert np.all(out[..., 0] == 255) and np.all(out[..., 1:] == round((1 - DEFAULT_ALPHA) * 255))
    assert np.array_equal(augment_image(img, ones, ones, alpha=0.0), img)


def test_stack_mode_channel_layout():
    rng = np.random.default_rng(1)
    seg = rng.random((6, 7)).astype(np.float32)
    bnd = (rng.random((6, 7)) < 0.5).astype(np.float32)
    grey = rng.integers(0, 256, size=(6, 7), dtype=np.uint8)
    g = augment_image(grey, seg, bnd, "stack")
    assert g.dtype == np.float32 and g.shape == (6, 7, 3) and augmented_channels("stack", grey=True) == 3
    assert np.allclose(g[..., 0], grey / 255.0) and np.array_equal(g[..., 1], seg) and np.array_equal(g[..., 2], bnd)
    assert np.array_equal(augment_image(grey[..., None], seg, bnd, "stack"), g)
    rgba = rng.integers(0, 256, size=(6, 7, 4), dtype=np.uint8)
    c = augment_image(rgba, seg, bnd, "stack")
    assert c.shape == (6, 7, 5) and augmented_channels("stack", grey=False) == 5
    assert np.allclose(c[..., :3], rgba[..., :3] / 255.0)  # alpha dropped
    assert np.array_equal(c[..., 3], seg) and np.array_equal(c[..., 4], bnd)
    assert 0.0 <= c.min() and c.max() <= 1.0
    assert augmented_channels("add", grey=False) == 3


def test_non_uint8_images_use_the_min_max_rule():
    rng = np.random.default_rng(2)
    img16 = rng.integers(100, 4000, size=(8, 9)).astype(np.uint16)
    seg, bnd = np.zeros((8, 9)), np.zeros((8, 9))
    expect = to_rgb_uint8(img16)
    assert np.array_equal(augment_image(img16, seg, bnd, "add", 0.0), expect)
    assert np.allclose(augment_image(img16, seg, bnd, "stack")[..., 0], expect[..., 0] / 255.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seg_prior": np.zeros((5, 5))}, "seg_prior has shape"),
        ({"boundary_prior": np.full((4, 5), np.nan)}, "NaN"),
        ({"seg_prior": np.full((4, 5), 1.2)}, r"in \[0, 1\]"),
        ({"boundary_prior": -np.ones((4, 5))}, r"in \[0, 1\]"),
        ({"mode": "concat"}, "mode"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"image": np.zeros((4, 5, 2), np.uint8)}, "image must be"),
        ({"image": np.zeros((2, 4, 5, 3), np.uint8)}, "image must be"),
        ({"image": np.full((4, 5), np.inf)}, "NaN or infinite"),
    ],
)
def test_augment_image_rejects_bad_input(kwargs, match):
    args = {"image": np.zeros((4, 5, 3), np.uint8), "seg_prior": np.zeros((4, 5)), "boundary_prior": np.zeros((4, 5))}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        augment_image(**args)
