"""Seeded mask pairs for the metric tests: realistic predictions (shifted, dilated, eroded, noisy edges, stray
false positives, a different object) of smooth random blobs, some cut by the array border."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def blob(shape: tuple[int, ...], seed: int, sigma: float = 4.0, level: float = 1.0) -> np.ndarray:
    """Smoothed Gaussian noise above ``level`` standard deviations: a few irregular blobs, bool."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return f > level * f.std()


def shift(m: np.ndarray, offset: tuple[int, ...]) -> np.ndarray:
    """``m`` moved by ``offset`` voxels, filling with background (no wrap-around)."""
    out = np.zeros_like(m)
    src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, m.shape))
    dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, m.shape))
    out[dst] = m[src]
    return out


def variants(gt: np.ndarray, seed: int) -> list[tuple[str, np.ndarray]]:
    """Plausible predictions of ``gt``."""
    rng = np.random.default_rng(seed)
    nd = gt.ndim
    edge = gt ^ ndimage.binary_erosion(gt)
    noisy = gt ^ (ndimage.binary_dilation(edge) & (rng.random(gt.shape) < 0.3))
    stray = gt.copy()
    stray[tuple(slice(n - 3, n - 1) for n in gt.shape)] = True  # a small false positive in the far corner
    return [
        ("shifted", shift(gt, tuple(int(v) for v in rng.integers(-3, 4, nd)))),
        ("dilated", ndimage.binary_dilation(gt, iterations=2)),
        ("eroded", ndimage.binary_erosion(gt)),
        ("noisy_edge", noisy),
        ("stray_fp", stray),
        ("other_object", blob(gt.shape, seed + 1000, sigma=3.0)),
    ]


def cases_2d() -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for seed in (0, 1):
        gt = blob((64, 80), seed)
        out += [(f"2d-s{seed}-{name}", pred, gt) for name, pred in variants(gt, seed)]
    # a half disk cut by the left border, predicted a bit too large
    yy, xx = np.mgrid[0:48, 0:40]
    gt = (yy - 24) ** 2 + xx**2 <= 15**2
    out.append(("2d-border-disk", (yy - 23) ** 2 + (xx + 1) ** 2 <= 17**2, gt))
    return out


def cases_3d() -> list[tuple[str, np.ndarray, np.ndarray]]:
    gt = blob((16, 40, 48), 7, sigma=3.0)
    return [(f"3d-{name}", pred, gt) for name, pred in variants(gt, 7)]
