"""SAMAug prior maps: ranges, overlaps, outer boundaries, the prior-file round trip (the augmented image and the
prior files themselves are tested with their home, tests/predict/test_unet.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medsamkit.predict.masks import rle_encode
from medsamkit.predict.unet import Priors, load_priors, save_priors
from medsamkit.samaug.priors import boundary_prior, outer_boundary, priors_from_records, segmentation_prior


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def rec(mask: np.ndarray, s: float, rle: bool = False) -> dict:
    return {"segmentation": rle_encode(mask) if rle else mask, "stability_score": s, "area": int(mask.sum())}


def four_neighbour_outside(filled: np.ndarray) -> np.ndarray:
    """Pixels of ``filled`` with an up/down/left/right neighbour inside the image that is not in ``filled``."""
    p = np.pad(filled, 1, constant_values=True)  # outside the image counts as inside
    out = ~p[:-2, 1:-1] | ~p[2:, 1:-1] | ~p[1:-1, :-2] | ~p[1:-1, 2:]
    return filled & out


# ------------------------------------------------------------------------------------------ segmentation prior


def test_segmentation_prior_is_the_max_stability_over_covering_masks():
    a = np.zeros((20, 30), bool)
    a[2:12, 2:20] = True
    b = np.zeros((20, 30), bool)
    b[8:18, 10:28] = True
    c = np.zeros((20, 30), bool)
    c[9:11, 11:13] = True  # inside the overlap, lower score: must not lower the max
    seg = segmentation_prior([rec(a, 0.6), rec(b, 0.9, rle=True), rec(c, 0.3)], (20, 30))
    assert seg.dtype == np.float32 and seg.shape == (20, 30)
    assert np.all(seg[a & ~b] == np.float32(0.6))
    assert np.all(seg[b] == np.float32(0.9))
    assert np.all(seg[~(a | b)] == 0)
    assert segmentation_prior([], (4, 5)).tolist() == np.zeros((4, 5)).tolist()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 6))
def test_segmentation_prior_matches_brute_force(seed, n):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 25, size=2)
    masks = rng.random((n, h, w)) < rng.random((n, 1, 1))
    scores = rng.random(n)
    seg = segmentation_prior([rec(m, float(s)) for m, s in zip(masks, scores)], (h, w))
    expect = np.zeros((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            cover = [np.float32(s) for m, s in zip(masks, scores) if m[y, x]]
            expect[y, x] = max(cover) if cover else 0.0
    assert np.array_equal(seg, expect)
    assert seg.min() >= 0 and seg.max() <= 1


# -------------------------------------------------------------------------------------------- boundary prior


def test_boundary_of_a_ring_is_its_outer_contour_only():
    outer, hole = disk(41, 41, 20, 20, 15), disk(41, 41, 20, 20, 6)
    ring = outer & ~hole
    b = boundary_prior([rec(ring, 0.8)], (41, 41))
    assert b.dtype == np.float32 and set(np.unique(b).tolist()) == {0.0, 1.0}
    bb = b.astype(bool)
    assert np.array_equal(bb, four_neighbour_outside(outer))  # the filled disk's contour, exactly
    assert not (bb & ndimage.binary_dilation(hole, iterations=3)).any()  # nothing near the hole
    assert not (bb & ~ring).any()  # only on mask pixels
    # the pixels around the hole do touch a non-mask pixel, and are still not boundary
    assert (four_neighbour_outside(ring) & ~bb).sum() > 0


def test_boundary_is_closed_and_only_on_mask_edges_for_random_blobs():
    rng = np.random.default_rng(3)
    for _ in range(10):
        m = ndimage.binary_opening(rng.random((40, 50)) < 0.55, iterations=1)
        filled = ndimage.binary_fill_holes(m)
        b = outer_boundary(m)
        assert np.array_equal(b, four_neighbour_outside(filled))
        assert not (b & ~filled).any()


def test_image_frame_is_not_a_boundary_and_thickness_grows_inwards():
    m = np.zeros((30, 40), bool)
    m[:, :25] = True  # touches the top, bottom and left edges
    b1 = outer_boundary(m, 1)
    assert np.array_equal(np.argwhere(b1)[:, 1], np.full(30, 24))  # only the right edge column
    b3 = outer_boundary(m, 3)
    assert np.array_equal(np.unique(np.argwhere(b3)[:, 1]), [22, 23, 24])
    d = disk(31, 31, 15, 15, 10)
    for t in (1, 2, 4):
        bt = outer_boundary(d, t)
        taxicab = ndimage.distance_transform_cdt(d, metric="taxicab")  # steps to the nearest pixel outside
        assert np.array_equal(bt, d & (taxicab <= t))
        assert not (bt & ~d).any()


def test_union_of_boundaries_and_bad_input():
    a, b = disk(30, 30, 10, 10, 6), disk(30, 30, 18, 18, 6)
    u = boundary_prior([rec(a, 0.5), rec(b, 0.99, rle=True)], (30, 30)).astype(bool)
    assert np.array_equal(u, outer_boundary(a) | outer_boundary(b))
    assert not boundary_prior([], (5, 6)).any()
    with pytest.raises(ValueError, match="shape"):
        boundary_prior([rec(a, 0.5)], (30, 31))
    with pytest.raises(ValueError, match="thickness"):
        boundary_prior([rec(a, 0.5)], (30, 30), thickness=0)
    with pytest.raises(ValueError, match="stability_score"):
        segmentation_prior([rec(a, 1.5)], (30, 30))
    with pytest.raises(ValueError, match="stability_score"):
        segmentation_prior([{"segmentation": a}], (30, 30))
    with pytest.raises(ValueError, match="segmentation"):
        segmentation_prior([{"stability_score": 0.5}], (30, 30))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        segmentation_prior([], (3,))


def test_priors_from_records_and_file_roundtrip(tmp_path):
    a = disk(25, 35, 12, 12, 8)
    p = priors_from_records([rec(a, 0.75)], (25, 35))
    assert isinstance(p, Priors) and p.n_masks == 1 and p.shape == (25, 35)
    assert p.stats["seg_coverage"] == pytest.approx(a.mean(), abs=1e-6)
    path = save_priors(tmp_path / "priors" / "c.npz", p, key="abc")
    with np.load(path) as z:
        assert z["seg_prior"].dtype == np.float32 and z["boundary_prior"].dtype == np.float32
        assert z["seg_prior"].shape == (25, 35)
    q, key = load_priors(path)
    assert key == "abc" and q.n_masks == 1
    assert np.array_equal(q.seg, p.seg) and np.array_equal(q.boundary, p.boundary)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read"):
        load_priors(bad)


def test_the_augmented_input_and_prior_files_are_still_importable_from_samaug():
    import medsamkit.predict.unet as unet
    import medsamkit.samaug as samaug
    import medsamkit.samaug.priors as priors

    for name in ("DEFAULT_ALPHA", "FORMAT_VERSION", "Priors", "augment_image", "augmented_channels", "load_priors"):
        assert getattr(priors, name) is getattr(unet, name) is getattr(samaug, name)
    assert priors.save_priors is unet.save_priors and priors.is_grey is unet.is_grey
    assert priors.MODES == samaug.MODES == unet.SAMAUG_MODES == ("add", "stack")
