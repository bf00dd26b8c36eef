"""Surface-distance metrics: MONAI parity on realistic masks (both nearest-voxel searches), hand-computed cases,
empty-mask conventions, torch input and properties."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from medsamkit.metrics import assd, compute_metrics, dice, hausdorff, hd95, iou, nsd, surface_distances
from medsamkit.metrics import surface as surface_mod
from tests.metrics.blobs import cases_2d, cases_3d

SPACING_2D = (0.7, 1.3)
SPACING_3D = (3.0, 0.8, 0.8)
TOLERANCES = (1.0, 2.0, 3.1)


@pytest.fixture(params=["edt", "kdtree"])
def search(request, monkeypatch) -> str:
    """Run a test once with the distance-transform search and once with the k-d tree search forced."""
    monkeypatch.setattr(surface_mod, "EDT_MAX_VOXELS_PER_POINT", math.inf if request.param == "edt" else 0.0)
    return request.param


def monai_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, Any]:
    """MONAI's numbers for one pair (metric classes on (B=1, C=1, *spatial) float tensors) and its two directed
    distance sets (``get_edge_surface_distance``, float32, one entry per boundary voxel in C order)."""
    import torch
    from monai import metrics as mm
    from monai.metrics.utils import get_edge_surface_distance

    p = torch.as_tensor(pred[None, None].astype(np.float32))
    g = torch.as_tensor(gt[None, None].astype(np.float32))
    sp = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = {
            "dice": mm.DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, g),
            "iou": mm.MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p, g),
            "hd95": mm.HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p, g, spacing=sp),
            "hausdorff": mm.HausdorffDistanceMetric(include_background=True, percentile=None, reduction="none")(p, g, spacing=sp),
            "assd": mm.SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(p, g, spacing=sp),
        }
        for t in TOLERANCES:
            out[f"nsd@{t}"] = mm.SurfaceDiceMetric([t], include_background=True, reduction="none")(p, g, spacing=sp)
        _, dists, _ = get_edge_surface_distance(p[0, 0], g[0, 0], spacing=sp, symmetric=True)
    res: dict[str, Any] = {k: float(v.reshape(-1)[0]) for k, v in out.items()}
    res["distances"] = [d.numpy() for d in dists]
    return res


def ours(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    out = {
        "dice": dice(pred, gt),
        "iou": iou(pred, gt),
        "hd95": hd95(pred, gt, spacing),
        "hausdorff": hausdorff(pred, gt, spacing),
        "assd": assd(pred, gt, spacing),
    }
    for t in TOLERANCES:
        out[f"nsd@{t}"] = nsd(pred, gt, t, spacing)
    return out


def check_against_monai(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> None:
    got_dists = surface_distances(pred, gt, spacing)
    # NSD counts distances <= tolerance; MONAI rounds distances to float32, so a distance within float32
    # precision of a tolerance could be counted differently: make sure the case is well posed
    d = np.concatenate(got_dists)
    for t in TOLERANCES:
        assert np.min(np.abs(d - t)) > 1e-5, f"a distance equals the tolerance {t}: pick another"
    expected, got = monai_metrics(pred, gt, spacing), ours(pred, gt, spacing)
    # same boundary voxels in the same (C) order, same distances
    for ref, mine in zip(expected.pop("distances"), got_dists):
        assert ref.shape == mine.shape
        np.testing.assert_allclose(mine, ref, rtol=1e-6, atol=1e-6)
    # HD95: torch.quantile on MONAI's float32 distances also rounds the rank q * (n - 1) to float32, which moves
    # the result by up to ~n * 6e-8 of the gap between neighbouring distances (a few 1e-6 relative here); the
    # same quantile in float64 on MONAI's distances is our number to rounding
    import torch

    ref_hd95 = max(float(torch.quantile(torch.as_tensor(r, dtype=torch.float64), 0.95)) for r in got_dists)
    assert got["hd95"] == pytest.approx(ref_hd95, rel=1e-12, abs=1e-12)
    assert got.pop("hd95") == pytest.approx(expected.pop("hd95"), rel=1e-4)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)
    m = compute_metrics(pred, gt, spacing, nsd_tolerance=TOLERANCES[1])
    for k in ("dice", "iou", "assd"):
        assert m[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-6), k
    assert m["hd95"] == hd95(pred, gt, spacing)
    assert m["nsd"] == pytest.approx(expected[f"nsd@{TOLERANCES[1]}"], rel=1e-6)


@pytest.mark.parametrize("case", cases_2d(), ids=lambda c: c[0])
def test_monai_parity_2d(case, search) -> None:
    _, pred, gt = case
    check_against_monai(pred, gt, SPACING_2D)


@pytest.mark.parametrize("case", cases_3d(), ids=lambda c: c[0])
def test_monai_parity_3d(case, search) -> None:
    _, pred, gt = case
    check_against_monai(pred, gt, SPACING_3D)


def test_monai_parity_isotropic_default_spacing() -> None:
    _, pred, gt = cases_2d()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import torch
        from monai.metrics import compute_hausdorff_distance

        # bool tensors, no spacing: distances in voxels
        p, g = torch.as_tensor(pred[None, None]), torch.as_tensor(gt[None, None])
        ref = compute_hausdorff_distance(p, g, include_background=True)
    assert hausdorff(pred, gt) == pytest.approx(float(ref), rel=1e-6)
    assert hd95(pred, gt, 1.0) == hd95(pred, gt) and hd95(pred, gt, (1, 1)) == hd95(pred, gt)


# ---------------------------------------------------------------- hand-computed cases


def test_both_empty() -> None:
    z = np.zeros((10, 20), bool)
    m = compute_metrics(z, z, SPACING_2D)
    assert m == {
        "dice": 1.0,
        "iou": 1.0,
        "nsd": 1.0,
        "hd95": 0.0,
        "assd": 0.0,
        "pred_size": 0.0,
        "gt_size": 0.0,
        "volume_difference": 0.0,
        "empty_pred": True,
        "empty_gt": True,
    }
    assert hausdorff(z, z) == 0.0 and assd(z, z) == 0.0 and nsd(z, z, 0.0) == 1.0
    a, b = surface_distances(z, z)
    assert a.shape == b.shape == (0,)


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty_2d(empty_side: str) -> None:
    full = np.zeros((10, 20), bool)
    full[3:6, 4:9] = True
    z = np.zeros_like(full)
    pred, gt = (z, full) if empty_side == "pred" else (full, z)
    # grid diagonal: 9 rows of 0.7 mm and 19 columns of 1.3 mm -> sqrt(6.3^2 + 24.7^2) = sqrt(649.78)
    diagonal = 25.49078264
    m = compute_metrics(pred, gt, SPACING_2D, nsd_tolerance=1000.0)
    assert m["hd95"] == pytest.approx(diagonal) and m["assd"] == pytest.approx(diagonal)
    assert hausdorff(pred, gt, SPACING_2D) == pytest.approx(diagonal)
    assert m["dice"] == m["iou"] == m["nsd"] == 0.0
    assert m["empty_pred"] is (empty_side == "pred") and m["empty_gt"] is (empty_side == "gt")
    assert m["volume_difference"] == (-1.0 if empty_side == "pred" else 1.0)
    assert m["pred_size" if empty_side == "gt" else "gt_size"] == pytest.approx(15 * 0.7 * 1.3)
    assert all(math.isfinite(v) for v in m.values())
    d_pred, d_gt = surface_distances(pred, gt, SPACING_2D)
    nonempty = d_pred if empty_side == "gt" else d_gt
    assert nonempty.size == 12 and np.all(np.isinf(nonempty))  # 3x5 rectangle: 12 boundary pixels
    assert (d_gt if empty_side == "gt" else d_pred).size == 0


def test_one_empty_3d_diagonal() -> None:
    gt = np.zeros((4, 6, 8), bool)
    gt[1, 2, 3] = True
    # sqrt((3 * 5)^2 + (5 * 0.8)^2 + (7 * 0.8)^2) = sqrt(225 + 16 + 31.36)
    assert hd95(np.zeros_like(gt), gt, (5.0, 0.8, 0.8)) == pytest.approx(math.sqrt(272.36))
    assert assd(gt, np.zeros_like(gt), (5.0, 0.8, 0.8)) == pytest.approx(16.50333300)


def test_single_pixel_vs_itself() -> None:
    m = np.zeros((7, 9), bool)
    m[0, 4] = True  # on the border, too
    r = compute_metrics(m, m, SPACING_2D, nsd_tolerance=0.0)
    assert r["dice"] == r["iou"] == r["nsd"] == 1.0 and r["hd95"] == r["assd"] == 0.0
    assert surface_distances(m, m, SPACING_2D)[0].tolist() == [0.0]


@pytest.mark.parametrize("axis", [0, 1])
def test_single_pixel_vs_neighbour(axis: int) -> None:
    pred = np.zeros((7, 9), bool)
    pred[3, 4] = True
    gt = np.roll(pred, 1, axis=axis)
    s = SPACING_2D[axis]
    assert dice(pred, gt) == 0.0 and iou(pred, gt) == 0.0
    assert hausdorff(pred, gt, SPACING_2D) == pytest.approx(s)
    assert hd95(pred, gt, SPACING_2D) == pytest.approx(s)
    assert assd(pred, gt, SPACING_2D) == pytest.approx(s)
    assert nsd(pred, gt, s - 0.01, SPACING_2D) == 0.0
    assert nsd(pred, gt, s, SPACING_2D) == 1.0  # <= tolerance
    assert nsd(pred, gt, s + 0.01, SPACING_2D) == 1.0
    other = SPACING_2D[1 - axis]
    assert nsd(pred, gt, other, SPACING_2D) == (1.0 if other >= s else 0.0)


@pytest.mark.parametrize("axis", [0, 1])
def test_offset_squares(axis: int) -> None:
    """Two 10x10 squares 3 pixels apart along ``axis`` (0.5 mm there, 1.0 mm across). Each directed set, by hand:
    14 x 0 (shared edge rows), 2 x 0.5, 4 x 1.0, 16 x 1.5 (the far side, corners of the near side)."""
    gt = np.zeros((30, 30), bool)
    gt[10:20, 10:20] = True
    pred = np.roll(gt, 3, axis=1)
    spacing = (1.0, 0.5)
    if axis == 0:
        gt, pred, spacing = gt.T, pred.T, spacing[::-1]
    d_pred, d_gt = surface_distances(pred, gt, spacing)
    expected = [0.0] * 14 + [0.5] * 2 + [1.0] * 4 + [1.5] * 16
    assert sorted(d_pred.tolist()) == expected and sorted(d_gt.tolist()) == expected
    assert hausdorff(pred, gt, spacing) == 1.5
    assert hd95(pred, gt, spacing) == 1.5  # rank 0.95 * 35 = 33.25 lies among the 1.5s
    assert hd95(pred, gt, spacing, percentile=50) == 1.0  # ranks 17 and 18
    assert hd95(pred, gt, spacing, percentile=45) == pytest.approx(0.875)  # rank 15.75: 0.5 + 0.75 * (1.0 - 0.5)
    assert assd(pred, gt, spacing) == pytest.approx(29 / 36)
    assert nsd(pred, gt, 1.0, spacing) == pytest.approx(20 / 36)
    assert nsd(pred, gt, 1.49, spacing) == pytest.approx(20 / 36)
    assert nsd(pred, gt, 1.5, spacing) == 1.0
    assert dice(pred, gt) == pytest.approx(2 * 70 / 200)


def test_3d_slice_thickness() -> None:
    """A box moved by one slice (5 mm) or one in-plane voxel (0.8 mm): the far face sets the Hausdorff distance."""
    spacing = (5.0, 0.8, 0.8)
    gt = np.zeros((10, 16, 16), bool)
    gt[2:6, 4:12, 4:12] = True
    assert hausdorff(np.roll(gt, 1, axis=0), gt, spacing) == 5.0
    assert hd95(np.roll(gt, 1, axis=0), gt, spacing) == 5.0  # the whole 64-voxel top face of 184 is 5 mm off
    assert hausdorff(np.roll(gt, 1, axis=2), gt, spacing) == pytest.approx(0.8)
    assert hd95(gt, gt, spacing) == 0.0
    a, b = np.zeros_like(gt), np.zeros_like(gt)
    a[0, 0, 0] = b[1, 1, 1] = True
    assert hausdorff(a, b, spacing) == pytest.approx(math.sqrt(25 + 0.64 + 0.64))
    assert nsd(a, b, 5.1, spacing) == 0.0 and nsd(a, b, 5.2, spacing) == 1.0


def test_1d_masks() -> None:
    pred = np.array([0, 1, 1, 1, 0, 0, 0, 0])
    gt = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    # boundaries: pred {1, 3}, gt {3, 6}; distances pred->gt {2, 0}, gt->pred {0, 3}, spacing 2
    assert surface_distances(pred, gt, 2.0)[0].tolist() == [4.0, 0.0]
    assert surface_distances(pred, gt, [2.0])[1].tolist() == [0.0, 6.0]
    assert hausdorff(pred, gt, 2.0) == 6.0 and assd(pred, gt, 2.0) == 2.5


# ---------------------------------------------------------------- inputs


def test_torch_input_matches_numpy() -> None:
    import torch

    _, pred, gt = cases_3d()[0]
    expected = compute_metrics(pred, gt, SPACING_3D)
    for conv in (
        lambda a: torch.from_numpy(a),
        lambda a: torch.from_numpy(a.astype(np.float32)).requires_grad_(True),
        lambda a: torch.from_numpy(a.astype(np.uint8)),
        lambda a: torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16),
    ):
        assert compute_metrics(conv(pred), conv(gt), SPACING_3D) == expected
    spacing_t = torch.tensor(SPACING_3D, dtype=torch.float64)
    assert compute_metrics(torch.from_numpy(pred), gt.astype(np.int64) * 7, spacing_t) == expected
    d_t = surface_distances(torch.from_numpy(pred), torch.from_numpy(gt), SPACING_3D)
    d_n = surface_distances(pred, gt, SPACING_3D)
    assert all(isinstance(x, np.ndarray) and np.array_equal(x, y) for x, y in zip(d_t, d_n))


def test_returns_plain_floats() -> None:
    _, pred, gt = cases_2d()[0]
    m = compute_metrics(pred, gt, SPACING_2D)
    assert all(type(m[k]) is float for k in m if not k.startswith("empty")) and type(m["empty_pred"]) is bool
    assert type(hd95(pred, gt)) is float and type(assd(pred, gt)) is float and type(nsd(pred, gt, 1)) is float


def test_bad_inputs() -> None:
    a = np.zeros((8, 9), bool)
    with pytest.raises(ValueError, match=r"\(8, 9\).*\(9, 8\)"):
        hd95(a, a.T)
    with pytest.raises(ValueError, match="one entry per array axis"):
        compute_metrics(a, a, (1.0, 1.0, 1.0))
    for bad in ((0.0, 1.0), (1.0, -2.0), (1.0, math.nan), (math.inf, 1.0)):
        with pytest.raises(ValueError, match="finite and > 0"):
            assd(a, a, bad)
    f = a.astype(np.float32)
    f[2, 3] = np.nan
    with pytest.raises(ValueError, match="pred contains 1 NaN"):
        compute_metrics(f, a)
    with pytest.raises(ValueError, match="gt contains 1 NaN"):
        surface_distances(a, f)
    with pytest.raises(ValueError, match="percentile"):
        hd95(a, a, percentile=101)
    with pytest.raises(ValueError, match="tolerance"):
        nsd(a, a, -1.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        hausdorff(np.array(1), np.array(1))


# ---------------------------------------------------------------- properties


def brute_force_distances(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs reference: boundaries by SciPy erosion (outside = background), distances by broadcasting."""
    pts = [np.argwhere(m & ~ndimage.binary_erosion(m)) * np.asarray(spacing) for m in (pred, gt)]
    dist = np.sqrt(((pts[0][:, None, :] - pts[1][None, :, :]) ** 2).sum(-1))
    return dist.min(axis=1), dist.min(axis=0)


masks = arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 11)))
spacings = st.tuples(st.floats(0.2, 3.0), st.floats(0.2, 3.0))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), spacing=spacings, tols=st.tuples(st.floats(0, 5), st.floats(0, 5)), q=st.floats(0, 100))
def test_properties(data, spacing, tols, q) -> None:
    pred = data.draw(masks)
    gt = data.draw(arrays(bool, st.just(pred.shape)))
    d = dice(pred, gt)
    j = iou(pred, gt)
    assert 0.0 <= d <= 1.0 and 0.0 <= j <= 1.0
    assert d == dice(gt, pred) and j == iou(gt, pred)
    assert j == pytest.approx(d / (2.0 - d), abs=1e-12)
    h95, h = hd95(pred, gt, spacing), hausdorff(pred, gt, spacing)
    assert 0.0 <= hd95(pred, gt, spacing, percentile=q) <= h95 + 1e-12 or q > 95
    assert 0.0 <= h95 <= h + 1e-12 and h == hausdorff(gt, pred, spacing)
    assert 0.0 <= assd(pred, gt, spacing) <= h + 1e-12
    lo, hi = sorted(tols)
    n_lo, n_hi = nsd(pred, gt, lo, spacing), nsd(pred, gt, hi, spacing)
    assert 0.0 <= n_lo <= n_hi <= 1.0
    if pred.any() and gt.any():
        ref_p, ref_g = brute_force_distances(pred, gt, spacing)
        got_p, got_g = surface_distances(pred, gt, spacing)
        np.testing.assert_allclose(got_p, ref_p, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_g, ref_g, rtol=1e-12, atol=1e-12)
        assert h == pytest.approx(max(ref_p.max(), ref_g.max()), abs=1e-12)
    m = compute_metrics(pred, gt, spacing, nsd_tolerance=hi)
    assert (m["dice"], m["iou"], m["nsd"], m["hd95"]) == (d, j, n_hi, h95)
