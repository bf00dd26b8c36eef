from __future__ import annotations

import numpy as np
import pytest

from medsamkit.viz import label_colors, overlay_masks


def test_overlay_tints_labels_and_keeps_background() -> None:
    img = np.full((40, 60), 100, np.uint8)
    lab = np.zeros((40, 60), np.uint8)
    lab[10:20, 10:30] = 1
    lab[25:35, 35:55] = 2
    out = overlay_masks(img, lab, boxes=[[10, 10, 29, 19]], points=[[45, 30, 1], [5, 5, 0]])
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert (out[15, 20] != 100).any()  # inside label 1: tinted
    assert not np.array_equal(out[15, 20], out[30, 45])  # two labels, two colours
    assert (out[38, 2] == 100).all()  # untouched background


def test_overlay_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="does not match"):
        overlay_masks(np.zeros((10, 10), np.uint8), np.zeros((10, 11), np.uint8))


def test_label_colors_distinct() -> None:
    c = label_colors(30)
    assert c.shape == (30, 3)
    assert len({tuple(x) for x in c[:12]}) == 12
