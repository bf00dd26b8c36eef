"""Tiny synthetic 2D datasets for the training tests: bright disks on noisy backgrounds (folder layout) and
fabricated SAMAug prior files next to them (the priors see the disk, blurred, plus a false object)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from tests.conftest import disk_image


def make_dataset(
    root: Path, n: int = 12, size: tuple[int, int] = (64, 64), rgb: bool = False, mode: str = "add", seed: int = 0
) -> tuple[Path, Path]:
    """``root/data`` (images/ + masks/, case ids c00..) and ``root/samaug`` (samaug.json + priors/<id>.npz)."""
    data, samaug = root / "data", root / "samaug"
    for d in (data / "images", data / "masks", samaug / "priors"):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        r = rng.uniform(0.12, 0.22) * min(h, w)
        cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
        img, mask = disk_image(h, w, cx, cy, r, rgb=rgb, seed=seed * 1000 + i)
        cid = f"c{i:02d}"
        Image.fromarray(img).save(data / "images" / f"{cid}.png")
        Image.fromarray(mask.astype(np.uint8)).save(data / "masks" / f"{cid}.png")
        seg = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 1.5), 0, 1) * 0.9
        seg[: h // 6, : w // 6] = 0.5  # a false "object" in a corner
        bnd = (mask & ~ndimage.binary_erosion(mask)).astype(np.float32)
        np.savez(samaug / "priors" / f"{cid}.npz", seg_prior=seg.astype(np.float32), boundary_prior=bnd)
    (samaug / "samaug.json").write_text(json.dumps({"mode": mode, "alpha": 0.5}))
    return data, samaug
