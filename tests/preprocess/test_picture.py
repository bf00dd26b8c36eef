"""The one rule for the picture the model sees (medsamkit.preprocess.picture): grey stays 2D, alpha is dropped
(before the intensity mapping is fitted), 16-bit and float go through the ``auto`` preset (percentile, CT
soft-tissue window), a constant image gives a constant picture, volumes share one mapping per volume."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsamkit.errors import InputError, OptionError
from medsamkit.io import MedicalImage, read_image
from medsamkit.preprocess.intensity import resolve_preset
from medsamkit.preprocess.picture import fit_picture, image_plane, model_picture, volume_pictures


def _image(arr: np.ndarray, modality: str | None = None) -> MedicalImage:
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):  # a volume (Z, Y, X)
        return MedicalImage(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), modality=modality)
    return MedicalImage(arr, (1.0, 1.0), (0.0, 0.0), np.eye(2), modality=modality)


def _rng_image(shape: tuple[int, ...], dtype: type, high: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, high, shape).astype(dtype)


def test_grey_uint8_is_kept_2d_and_unchanged() -> None:
    grey = _rng_image((20, 30), np.uint8, 256)
    for given in (grey, grey[..., None], _image(grey)):
        pic, how = model_picture(given)
        assert pic.shape == (20, 30) and pic.dtype == np.uint8 and pic.flags.c_contiguous
        assert np.array_equal(pic, grey) and how == {"preset": "passthrough"}


def test_alpha_is_dropped_not_composited() -> None:
    rgba = _rng_image((12, 16, 4), np.uint8, 256)
    rgba[..., 3] = 0  # fully transparent: compositing would change the picture, dropping does not
    pic, how = model_picture(rgba)
    assert pic.shape == (12, 16, 3) and np.array_equal(pic, rgba[..., :3]) and how == {"preset": "passthrough"}
    # 16-bit RGBA: the percentile window is fitted on the colour channels only (alpha used to widen it)
    rgba16 = _rng_image((12, 16, 4), np.uint16, 4000)
    rgba16[..., 3] = 65535
    pic16, how16 = model_picture(rgba16)
    assert np.array_equal(pic16, model_picture(rgba16[..., :3])[0])
    assert how16 == resolve_preset(rgba16[..., :3], None).describe()


def test_rgba_png_file(tmp_path) -> None:
    rgba = _rng_image((10, 14, 4), np.uint8, 256)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pic, _ = model_picture(read_image(tmp_path / "a.png"))
    assert np.array_equal(pic, rgba[..., :3])


def test_16_bit_grey_through_the_auto_preset() -> None:
    img16 = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 150).astype(np.uint16)
    pic, how = model_picture(img16)
    fitted = resolve_preset(img16, None, "auto")
    assert fitted.name == "percentile" and how == fitted.describe()
    assert pic.shape == (20, 20) and pic.dtype == np.uint8 and np.array_equal(pic, fitted.apply(img16))
    assert pic[0, 0] == 0 and pic.max() == 255  # values <= 0 stay 0; the 99.5th percentile is white
    # CT (the image's modality, or the argument's) maps through the soft-tissue window -160..240 HU
    ct = np.array([[-1000, -160, 40, 240, 3000]], np.int16)
    expect = np.array([[0, 0, 128, 255, 255]], np.uint8)
    assert np.array_equal(model_picture(_image(ct, "CT"))[0], expect)
    assert np.array_equal(model_picture(ct, modality="CT")[0], expect)
    assert model_picture(_image(ct, "MR"), modality="CT")[1]["preset"] == "soft_tissue"


def test_rgb_goes_through_an_explicit_preset_or_window() -> None:
    """One rule for grey and colour: an explicit window is applied to RGB too (segment/everything used to
    ignore it for colour images while evaluation and the app applied it), and 16-bit RGB goes through the
    auto preset like 16-bit grey (segment/everything used to hand it on unmapped, then min-max scaled)."""
    rgb = _rng_image((8, 9, 3), np.uint8, 256)
    pic, how = model_picture(rgb, window=(100.0, 100.0))
    assert how["preset"] == "window"
    f = np.clip(rgb.astype(np.float32), 50, 150)
    assert np.array_equal(pic, np.rint((f - 50) / 100 * 255).astype(np.uint8))
    rgb16 = _rng_image((8, 9, 3), np.uint16, 60000)
    pic16, how16 = model_picture(rgb16)
    assert pic16.shape == (8, 9, 3) and how16["preset"] == "percentile"
    assert np.array_equal(pic16, resolve_preset(rgb16, None).apply(rgb16))


def test_constant_images() -> None:
    assert np.array_equal(model_picture(np.full((5, 6), 7, np.uint8))[0], np.full((5, 6), 7, np.uint8))
    for const in (np.full((5, 6), 1234, np.uint16), np.zeros((5, 6), np.float32), np.full((5, 6, 3), 9.5)):
        pic, _ = model_picture(const)
        assert pic.dtype == np.uint8 and pic.shape == const.shape and not pic.any()


def test_shapes_volumes_and_dtypes() -> None:
    vol1 = _rng_image((1, 6, 7), np.int16, 500)
    assert np.array_equal(model_picture(_image(vol1))[0], model_picture(vol1[0])[0])
    with pytest.raises(OptionError, match="2D images"):
        model_picture(_image(_rng_image((3, 6, 7), np.int16, 500)))
    for bad in (np.zeros((2, 3, 4, 5)), np.zeros((4, 5, 2)), np.zeros((0, 5)), np.zeros((4, 5), bool), np.zeros((4, 5), complex)):
        with pytest.raises(InputError):
            model_picture(bad)
    with pytest.raises(InputError, match="NaN"):
        model_picture(np.array([[1.0, np.nan]]))
    plane, fitted = fit_picture(_rng_image((4, 5, 4), np.uint8, 256))
    assert plane.shape == (4, 5, 3) and fitted.name == "passthrough"
    assert image_plane(np.zeros((4, 5, 1))).shape == (4, 5)


def test_volume_pictures_share_one_mapping() -> None:
    vol = np.random.default_rng(1).normal(300, 200, (7, 10, 11)).astype(np.float32)
    vol[3] += 2000  # one bright slice: a per-slice fit would differ from the volume's
    pics = volume_pictures(_image(vol, "MR"))
    fitted = resolve_preset(vol, "MR")
    assert len(pics) == 7 and pics.preset == fitted and pics.describe() == fitted.describe()
    assert all(np.array_equal(pics[z], fitted.apply(vol[z])) for z in range(7))
    assert not np.array_equal(pics[0], model_picture(vol[0])[0])
    whole = fitted.apply(vol)
    assert np.array_equal(pics.all(), whole) and np.array_equal(pics.all(chunk_bytes=1), whole)
    assert np.array_equal(np.stack(list(pics)), whole)
    ct = volume_pictures(vol.astype(np.int16), window=(40.0, 400.0))
    assert ct.preset.name == "window" and volume_pictures(_image(vol, "CT")).preset.name == "soft_tissue"
    with pytest.raises(InputError, match="volume"):
        volume_pictures(np.zeros((4, 5)))
    with pytest.raises(InputError):
        volume_pictures(np.zeros((2, 4, 5), bool))
