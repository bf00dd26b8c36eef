"""AutoSAM on files' images (:func:`autoseg_image`, :func:`autoseg_volume`): the model sees the pictures of
:mod:`medsamkit.preprocess.picture` (one rule for 2D, one mapping fitted on the whole volume), and the mask lies
on the image's grid. A recording stand-in for the segmenter keeps these tests free of a trained run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medsamkit.errors import InputError
from medsamkit.io import MedicalImage
from medsamkit.predict.autoseg import autoseg_image, autoseg_volume
from medsamkit.preprocess.picture import model_picture, volume_pictures


class Recorder:
    """Stands in for an AutoSegmenter: records each picture and returns ``picture > threshold`` as the mask."""

    def __init__(self, threshold: int = 127) -> None:
        self.pictures: list[np.ndarray] = []
        self.threshold = threshold

    def segment(self, picture: np.ndarray) -> SimpleNamespace:
        self.pictures.append(picture.copy())
        grey = picture if picture.ndim == 2 else picture[..., 0]
        return SimpleNamespace(mask=grey > self.threshold)


def test_2d_picture_is_the_model_picture() -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 65535, (12, 9, 4)).astype(np.uint16)  # 16-bit RGBA: alpha dropped, percentile window
    image = MedicalImage(rgba, (1.0, 1.0), (0.0, 0.0), np.eye(2), format="raster")
    rec = Recorder()
    mask = autoseg_image(rec, image)  # type: ignore[arg-type]
    expected, _ = model_picture(image)
    assert len(rec.pictures) == 1 and np.array_equal(rec.pictures[0], expected) and expected.shape == (12, 9, 3)
    assert mask.dtype == np.uint8 and mask.shape == (12, 9) and set(np.unique(mask)) <= {0, 1}
    ct = MedicalImage(rng.integers(-1000, 1000, (8, 8)).astype(np.int16), (1.0, 1.0), (0.0, 0.0), np.eye(2))
    rec = Recorder()
    autoseg_image(rec, ct, modality="CT")  # the modality given wins: the soft-tissue window
    assert np.array_equal(rec.pictures[0], model_picture(ct, modality="CT")[0])
    assert not np.array_equal(rec.pictures[0], model_picture(ct, modality="MR")[0])


def test_volume_slices_share_one_mapping_fitted_on_the_whole_volume() -> None:
    arr = np.zeros((3, 6, 5), np.int16)
    arr[0] = 100  # a dim slice: mapped with its own percentile it would be all bright (or all dark)
    arr[1] = 1000
    arr[2, :3] = 500
    image = MedicalImage(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), modality="MR")
    rec = Recorder()
    mask = autoseg_volume(rec, image)  # type: ignore[arg-type]
    pictures = volume_pictures(image)
    assert len(rec.pictures) == 3
    assert all(np.array_equal(got, pictures[z]) for z, got in enumerate(rec.pictures))
    assert rec.pictures[0].max() < rec.pictures[1].max()  # one mapping: the dim slice stays dim
    assert mask.dtype == np.uint8 and mask.shape == image.spatial_shape
    assert np.array_equal(mask, np.stack([p > 127 for p in pictures]).astype(np.uint8))


def test_volume_errors() -> None:
    flat = MedicalImage(np.zeros((4, 4, 3), np.uint8), (1.0, 1.0), (0.0, 0.0), np.eye(2))
    with pytest.raises(InputError, match="RGB volumes"):
        autoseg_volume(Recorder(), flat)  # type: ignore[arg-type]
