"""Model-family pipelines: geometry, coordinate maps, normalisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from medsamkit.preprocess import LiteMedSAMTransform, MedSAMTransform, SAMTransform, to_rgb_uint8, transform_for
from medsamkit.preprocess.transforms import SAM_PIXEL_MEAN, SAM_PIXEL_STD, longest_side_shape


def test_longest_side_rounding() -> None:
    assert longest_side_shape(393, 462, 256) == (218, 256)  # 393 * 256 / 462 = 217.8 -> 218
    assert longest_side_shape(512, 512, 256) == (256, 256)
    assert longest_side_shape(96, 96, 256) == (256, 256)
    assert longest_side_shape(1, 5000, 256) == (1, 256)  # never 0


def test_litemedsam_prepare_matches_official_recipe() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(10, 200, size=(393, 462, 3), dtype=np.uint8)
    x, g = LiteMedSAMTransform().prepare(img)
    assert x.shape == (1, 3, 256, 256) and x.dtype == np.float32
    assert g.original == (393, 462) and g.resized == (218, 256)
    small = cv2.resize(img, (256, 218), interpolation=cv2.INTER_AREA).astype(np.float64)
    ref = (small - small.min()) / (small.max() - small.min())
    assert np.abs(x[0, :, :218, :].transpose(1, 2, 0) - ref).max() < 1e-6
    assert (x[0, :, 218:, :] == 0).all()  # bottom padding
    assert x.min() == 0.0 and abs(x.max() - 1.0) < 1e-6


def test_litemedsam_grey_shortcut_equals_three_channels() -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(300, 170), dtype=np.uint8)
    t = LiteMedSAMTransform()
    a, _ = t.prepare(grey)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    small = cv2.resize(rgb, (145, 256), interpolation=cv2.INTER_AREA).astype(np.float64)
    ref = (small - small.min()) / (small.max() - small.min())
    assert np.abs(a[0, :, :, :145].transpose(1, 2, 0) - ref).max() < 1e-6


def test_litemedsam_boxes_truncate_points_do_not() -> None:
    t = LiteMedSAMTransform()
    _, g = t.prepare(np.zeros((393, 462), np.uint8))
    s = 256 / 462
    box = t.boxes_to_input(np.array([[206, 36, 305, 113]]), g)
    assert box.tolist() == [[int(206 * s), int(36 * s), int(305 * s), int(113 * s)]]
    pts = t.points_to_input(np.array([[206.0, 36.0]]), g)
    assert np.allclose(pts, [[206 * s, 36 * s]])


def test_litemedsam_logits_back_to_image() -> None:
    t = LiteMedSAMTransform()
    _, g = t.prepare(np.zeros((100, 50), np.uint8))
    assert g.resized == (256, 128)
    logits = -np.ones((2, 1, 256, 256), np.float32)
    logits[..., :128, :64] = 5  # top-left quarter of the *resized* region = top half, left half of the image
    out = t.logits_to_image(logits, g)
    assert out.shape == (2, 1, 100, 50)
    fg = out[0, 0] > 0
    assert fg[:49, :24].all() and not fg[51:, :].any() and not fg[:, 26:].any()


def test_sam_pipeline_geometry_and_normalisation() -> None:
    t = SAMTransform()
    img = np.full((300, 600, 3), 128, np.uint8)
    x, g = t.prepare(img)
    assert x.shape == (1, 3, 1024, 1024)
    assert g.resized == (512, 1024) and g.scale == (1024 / 600, 512 / 300)
    assert np.allclose(x[0, :, 0, 0], (128 - SAM_PIXEL_MEAN) / SAM_PIXEL_STD, atol=1e-5)
    assert (x[0, :, 512:, :] == 0).all()
    assert np.allclose(t.boxes_to_input(np.array([[0, 0, 599, 299]]), g), [[0, 0, 599 * 1024 / 600, 299 * 512 / 300]])
    out = t.logits_to_image(np.ones((1, 1, 256, 256), np.float32), g)
    assert out.shape == (1, 1, 300, 600)


def test_medsam_pipeline_stretches() -> None:
    pytest.importorskip("skimage")
    t = MedSAMTransform()
    img = np.tile(np.linspace(0, 255, 200).astype(np.uint8), (100, 1))
    x, g = t.prepare(img)
    assert x.shape == (1, 3, 1024, 1024) and g.resized == (1024, 1024)
    assert g.scale == (1024 / 200, 1024 / 100)
    assert abs(float(x.min())) < 1e-6 and abs(float(x.max()) - 1) < 1e-6
    assert t.logits_to_image(np.zeros((1, 1, 256, 256), np.float32), g).shape == (1, 1, 100, 200)


def test_transform_for() -> None:
    assert transform_for("litemedsam").input_size == 256
    assert transform_for("sam", 512).input_size == 512
    with pytest.raises(ValueError, match="unknown pipeline"):
        transform_for("nope")


@pytest.mark.parametrize(
    "arr, shape",
    [
        (np.zeros((5, 7), np.uint8), (5, 7, 3)),
        (np.zeros((5, 7, 1), np.uint8), (5, 7, 3)),
        (np.zeros((5, 7, 3), np.uint8), (5, 7, 3)),
        (np.zeros((5, 7, 4), np.uint8), (5, 7, 3)),
    ],
)
def test_to_rgb_uint8_shapes(arr: np.ndarray, shape: tuple[int, ...]) -> None:
    assert to_rgb_uint8(arr).shape == shape


def test_to_rgb_uint8_values() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 10
    rgba[..., 3] = 255
    assert (to_rgb_uint8(rgba)[..., 0] == 10).all() and (to_rgb_uint8(rgba)[..., 1] == 0).all()
    u16 = np.array([[0, 1000], [2000, 4000]], np.uint16)
    assert to_rgb_uint8(u16)[..., 0].tolist() == [[0, 64], [128, 255]]
    assert (to_rgb_uint8(np.full((3, 3), 7.5)) == 0).all()  # constant image


@pytest.mark.parametrize(
    "arr, msg",
    [
        (np.zeros((0, 4), np.uint8), "empty"),
        (np.zeros((4, 4, 2), np.uint8), "must be"),
        (np.zeros((2, 4, 4, 3), np.uint8), "must be"),
        (np.array([[np.nan, 1.0]]), "NaN"),
        (np.zeros((3, 3), bool), "not a real numeric"),
    ],
)
def test_to_rgb_uint8_rejects(arr: np.ndarray, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        to_rgb_uint8(arr)
