"""``read_image(channel=)``: one channel of a multi-channel 4D NIfTI (the MSD layout: channel last) read as the
3D volume a NIfTI with the same header would be; single images accept channel 0 only."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsamkit.io import ImageReadError, read_image
from medsamkit.io.readers import nifti_channels

# oblique, anisotropic, one axis flipped: a geometry taken from the wrong axes cannot pass unnoticed
_ROT = np.linalg.qr(np.array([[0.94, -0.29, 0.2], [0.31, 0.94, -0.1], [-0.16, 0.15, 0.98]]))[0]
AFFINE = np.eye(4)
AFFINE[:3, :3] = _ROT @ np.diag([-0.8, 1.2, 2.5])
AFFINE[:3, 3] = [10.0, -20.0, 30.0]
SHAPE_IJK = (7, 6, 5)


@pytest.fixture
def four_d(tmp_path: Path) -> Path:
    """A 4D NIfTI of 3 channels (``(i, j, k, c)`` = 7 x 6 x 5 x 3, int16), each channel distinct."""
    data = np.random.default_rng(0).integers(0, 1000, (*SHAPE_IJK, 3)).astype(np.int16)
    data[..., 1] += 2000
    data[..., 2] = -data[..., 2]
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_channel_equals_the_3d_file_with_the_same_header(four_d: Path, tmp_path: Path, channel: int) -> None:
    img4 = nib.load(four_d)
    one = tmp_path / "one.nii.gz"  # the 3D file carries the 4D file's header (sform, qform, pixdim)
    nib.save(nib.Nifti1Image(np.asarray(img4.dataobj)[..., channel], None, header=img4.header), one)
    ref = read_image(one)
    image = read_image(four_d, channel=channel)
    assert image.array.dtype == ref.array.dtype and np.array_equal(image.array, ref.array)
    # array[k, j, i]: the file's (i, j, k) reversed
    assert image.spatial_shape == SHAPE_IJK[::-1]
    assert np.array_equal(image.array, np.asarray(img4.dataobj)[..., channel].transpose(2, 1, 0))
    assert image.spacing == ref.spacing and image.origin == ref.origin and np.array_equal(image.direction, ref.direction)
    assert np.allclose(image.affine_ras(), img4.affine, atol=1e-5)
    assert image.meta["channel"] == channel and image.format == "nifti" and image.is_volume
    assert image.modality == ref.modality and image.modality_source == "guess"


def test_channel_errors_and_single_images(four_d: Path, tmp_path: Path) -> None:
    assert nifti_channels(four_d) == 3
    with pytest.raises(ImageReadError, match=r"brain.nii.gz: channel 3 does not exist; the image has 3 channels \(0..2\)"):
        read_image(four_d, channel=3)
    with pytest.raises(ImageReadError, match="4D image .*give one 3D volume"):
        read_image(four_d)  # without a channel a 4D file of several volumes is refused, as before
    three_d = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE_IJK, np.int16), AFFINE), three_d)
    assert nifti_channels(three_d) == 1
    plain = read_image(three_d)
    zero = read_image(three_d, channel=0)  # channel 0 of a single image is the image
    assert np.array_equal(zero.array, plain.array) and "channel" not in zero.meta
    with pytest.raises(ImageReadError, match="three.nii.gz holds a single image; channel 1 does not exist"):
        read_image(three_d, channel=1)
    png = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 5), np.uint8)).save(png)
    assert read_image(png, channel=0).spatial_shape == (4, 5)
    with pytest.raises(ImageReadError, match="p.png holds a single image; channel 2 does not exist"):
        read_image(png, channel=2)


def test_channel_of_a_corrupt_file_is_a_read_error(four_d: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(four_d.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="cannot read cut.nii.gz"):
        read_image(cut, channel=1)
