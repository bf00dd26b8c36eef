"""Intensity presets: monotonic, volume-level, recorded."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.preprocess.intensity import CT_WINDOWS, parse_window, resolve_preset


@pytest.mark.parametrize("name", sorted(CT_WINDOWS))
def test_ct_windows(name: str) -> None:
    level, width = CT_WINDOWS[name]
    hu = np.linspace(-2000, 3000, 5001).astype(np.float32)
    p = resolve_preset(hu, "CT", name)
    out = p.apply(hu)
    assert out.dtype == np.uint8
    assert np.all(np.diff(out.astype(int)) >= 0)  # monotonic
    assert out[hu <= level - width / 2].max() == 0 and out[hu >= level + width / 2].min() == 255
    assert p.describe() == {
        "preset": name,
        "window_level_width": [level, width],
        "clip_hu": [level - width / 2, level + width / 2],
    }


def test_auto_and_explicit_window() -> None:
    vol = np.random.default_rng(0).normal(0, 300, (4, 20, 20))
    assert resolve_preset(vol, "CT").name == "soft_tissue"
    assert resolve_preset(vol, "MR").name == "percentile"
    assert resolve_preset(vol.astype(np.uint8), None).name == "passthrough"
    w = resolve_preset(vol, "CT", "lung", window=parse_window("50,350"))
    assert w.name == "window" and w.describe()["window_level_width"] == [50.0, 350.0]
    with pytest.raises(ValueError, match="LEVEL,WIDTH"):
        parse_window("40")
    with pytest.raises(ValueError, match="positive"):
        parse_window("40,-3")
    with pytest.raises(ValueError, match="unknown intensity preset"):
        resolve_preset(vol, "CT", "abdomen")


def test_percentile_is_volume_level_and_keeps_zero() -> None:
    rng = np.random.default_rng(1)
    vol = rng.gamma(2.0, 100.0, (10, 32, 32)).astype(np.float32)
    vol[:, :4] = 0  # background
    vol[0] *= 0.1  # a dark slice
    p = resolve_preset(vol, "MR", "percentile")
    positive = vol[vol > 0]
    assert p.low == pytest.approx(np.percentile(positive, 0.5)) and p.high == pytest.approx(np.percentile(positive, 99.5))
    out = p.apply(vol)
    assert (out[:, :4] == 0).all()
    # one mapping for all slices: the dark slice stays dark (a per-slice rescale would brighten it)
    assert out[0].mean() < 0.5 * out[1:].mean()
    order = np.argsort(vol.ravel())
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_nan_is_refused() -> None:
    vol = np.zeros((2, 3, 3), np.float32)
    vol[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite voxels"):
        resolve_preset(vol, "MR")


def test_auto_keeps_8bit_ct_pictures_as_they_are():
    # an 8-bit CT slice (PNG) is already windowed: 'auto' must not apply an HU window to 0..255 values
    pic = np.arange(256, dtype=np.uint8).reshape(16, 16)
    fitted = resolve_preset(pic, "CT")
    assert fitted.name == "passthrough"
    assert (fitted.apply(pic) == pic).all()
    assert resolve_preset(pic.astype(np.int16) - 1000, "CT").name == "soft_tissue"
