"""2D raster images (PNG, JPEG, TIFF, BMP) read and written by :mod:`medsamkit.io.raster`."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from medsamkit.io import ImageReadError, read_image_2d, write_png


def test_png_modes(tmp_path) -> None:
    grey = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert np.array_equal(read_image_2d(tmp_path / "g.png"), grey)
    rgb = np.stack([grey, grey[::-1], grey], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.array_equal(read_image_2d(tmp_path / "c.png"), rgb)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 200, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert read_image_2d(tmp_path / "a.png").shape == (20, 30, 4)
    u16 = (np.arange(20 * 30, dtype=np.uint16) * 100).reshape(20, 30)
    Image.fromarray(u16).save(tmp_path / "w.png")
    got = read_image_2d(tmp_path / "w.png")
    assert got.dtype == np.uint16 and np.array_equal(got, u16)
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    assert read_image_2d(tmp_path / "p.png").shape == (20, 30, 3)
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    assert read_image_2d(tmp_path / "la.png").shape == (20, 30)


def test_jpeg_bmp_tiff(tmp_path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.jpg")
    assert read_image_2d(tmp_path / "x.jpg").shape == (16, 24, 3)
    Image.fromarray(img).save(tmp_path / "x.bmp")
    assert np.array_equal(read_image_2d(tmp_path / "x.bmp"), img)
    f32 = np.random.default_rng(1).random((16, 24)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f32)
    assert np.allclose(read_image_2d(tmp_path / "f.tif"), f32)
    planar = np.stack([f32, f32, f32]).astype(np.float32)
    tifffile.imwrite(tmp_path / "p.tiff", planar, planarconfig="separate", photometric="rgb")
    assert read_image_2d(tmp_path / "p.tiff").shape == (16, 24, 3)


@pytest.mark.parametrize(
    "name, content, msg",
    [
        ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "cannot read broken.png"),
        ("broken.tif", b"II*\x00garbage", "cannot read broken.tif"),
        ("scan.nii.gz", b"x", "unsupported 2D image type"),
        ("noext", b"x", "unsupported 2D image type"),
    ],
)
def test_bad_files(tmp_path, name: str, content: bytes, msg: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=msg):
        read_image_2d(tmp_path / name)


def test_missing_and_folder_and_multiframe(tmp_path) -> None:
    with pytest.raises(ImageReadError, match="not found"):
        read_image_2d(tmp_path / "nothing.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image_2d(tmp_path / "dir.png")
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 100)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="2 frames"):
        read_image_2d(tmp_path / "stack.tif")


def test_write_png_atomic_and_checked(tmp_path) -> None:
    mask = np.zeros((5, 6), np.uint8)
    mask[1:3, 2:4] = 2
    out = write_png(tmp_path / "sub" / "m.png", mask)
    assert np.array_equal(np.asarray(Image.open(out)), mask)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.png"]
    with pytest.raises(ValueError, match="expects uint8"):
        write_png(tmp_path / "x.png", mask.astype(np.int32))


def test_tiffs_read_by_tifffile_are_size_checked_first(tmp_path) -> None:
    """A float64 TIFF (which PIL cannot decode) goes through tifffile; its size comes from the tags and is
    checked before the pixels are decoded, like every other format."""
    from medsamkit.errors import LimitError

    tifffile.imwrite(tmp_path / "f.tif", np.random.default_rng(0).random((300, 400)))
    assert read_image_2d(tmp_path / "f.tif").shape == (300, 400)
    with pytest.raises(LimitError, match="300x400 float64 values take 960,000 bytes"):
        read_image_2d(tmp_path / "f.tif", max_bytes=300 * 400 * 8 - 1)
