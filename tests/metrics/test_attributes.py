from __future__ import annotations

import math

import numpy as np
import pytest

from medsamkit.metrics.attributes import (
    box_fill,
    compactness,
    components,
    contrast,
    fractal_dimension,
    object_attributes,
)


def disk(n=201, r=80):
    yy, xx = np.mgrid[:n, :n]
    return (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= r * r


def test_compactness_is_about_one_for_a_disk_and_larger_for_ragged_shapes():
    assert compactness(disk()) == pytest.approx(1.0, abs=0.12)
    star = disk().copy()
    star[::6, :] = False  # comb teeth make a long boundary
    assert compactness(star) > 5
    ball = np.zeros((41, 41, 41), bool)
    z, y, x = np.mgrid[:41, :41, :41]
    ball[(z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 15**2] = True
    assert compactness(ball) == pytest.approx(1.0, abs=0.15)
    # anisotropic spacing: a ball in mm stored with 2 mm slices
    squashed = ((z[::2] - 20) ** 2 + (y[::2] - 20) ** 2 + (x[::2] - 20) ** 2) <= 15**2
    assert compactness(squashed, (2.0, 1.0, 1.0)) == pytest.approx(1.0, abs=0.2)
    assert math.isnan(compactness(np.zeros((5, 5))))


def test_fractal_dimension_of_smooth_and_ragged_boundaries():
    smooth = fractal_dimension(disk(401, 180))
    assert 0.9 < smooth < 1.15
    rng = np.random.default_rng(0)
    ragged = disk(401, 180) & (rng.random((401, 401)) < 0.6)  # speckled: the boundary fills an area
    assert fractal_dimension(ragged) > 1.5
    assert math.isnan(fractal_dimension(np.ones((2, 2))))  # too small to fit


def test_contrast_components_and_box_fill():
    m = disk(101, 30)
    img = np.where(m, 200.0, 50.0)
    assert contrast(img, m) == pytest.approx(150 / 255)
    assert contrast(np.full(m.shape, 90.0), m) == 0.0
    two = m.copy()
    two[:5, :5] = True
    assert components(m) == 1 and components(two) == 2
    sq = np.zeros((10, 10), bool)
    sq[2:6, 3:9] = True
    assert box_fill(sq) == 1.0
    assert box_fill(m) == pytest.approx(math.pi * 30**2 / 61**2, abs=0.01)  # disk of radius 30 in its 61-px box
    a = object_attributes(img, m, spacing=(0.5, 0.5))
    assert a["size_px"] == m.sum() and a["size"] == pytest.approx(m.sum() * 0.25)
    assert a["relative_size"] == pytest.approx(m.sum() / m.size)
    with pytest.raises(ValueError, match="does not match"):
        contrast(img[:50], m)


def test_tiny_3d_objects_have_undefined_shape_attributes_not_errors():
    one = np.zeros((5, 5, 5), bool)
    one[2, 2, 2] = True
    assert math.isnan(compactness(one))
    line = np.zeros((5, 9, 5), bool)
    line[2, :, 2] = True
    assert math.isnan(compactness(line))
    a = object_attributes(np.zeros(one.shape), one, (3.0, 1.0, 1.0))
    assert a["size"] == 3.0 and math.isnan(a["fractal_dimension"]) and a["components"] == 1


def test_fractal_dimension_is_defined_from_4_px_across():
    sq = np.zeros((12, 12), bool)
    sq[2:9, 2:9] = True  # 7 px across: box sizes 1, 2, 4
    assert not math.isnan(fractal_dimension(sq))
    assert math.isnan(fractal_dimension(sq[2:5, 2:5]))


def test_object_attributes_on_the_cropped_box_equal_the_whole_image():
    rng = np.random.default_rng(4)
    img = rng.random((120, 150)) * 255
    yy, xx = np.mgrid[:120, :150]
    blobs = [((yy - 60) / 25) ** 2 + ((xx - 70) / 40) ** 2 <= 1, (yy < 30) & (xx < 20)]  # inside, and at a corner
    for m in blobs:
        a = object_attributes(img, m)
        assert a["contrast"] == contrast(img, m)
        assert a["compactness"] == compactness(m)
        assert a["fractal_dimension"] == fractal_dimension(m)
        assert a["components"] == components(m) and a["box_fill"] == box_fill(m)
        assert a["relative_size"] == m.sum() / m.size
