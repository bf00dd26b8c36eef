"""Fuzzing the readers (slow target: ``make test-slow``): valid files of every format, mutated by hypothesis
(bytes flipped, cut, inserted, headers rewritten), must either read or fail with a
:class:`~medsamkit.errors.MedsamkitError` - never another exception, a hang or a crash - and never allocate
more than the decoded-size limit."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medsamkit.errors import MedsamkitError
from medsamkit.io import read_image

pytestmark = pytest.mark.slow
LIMIT = 64 << 20  # bytes: any decoded image over this is refused from its header


def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    vol = rng.integers(-100, 100, (6, 10, 12)).astype(np.int16)
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for suffix in (".nii.gz", ".nii"):
            nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), folder / f"v{suffix}")
        for suffix in (".nrrd", ".mha"):
            sitk.WriteImage(sitk.GetImageFromArray(vol), str(folder / f"v{suffix}"))
        with open(folder / "v.npz", "wb") as f:
            np.savez(f, imgs=vol, spacing=np.array([2.0, 1.0, 1.0]))
        for suffix, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".tif", "TIFF"), (".bmp", "BMP")):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buf, format=fmt)
            (folder / f"i{suffix}").write_bytes(buf.getvalue())
        for p in folder.iterdir():
            out[p.name] = p.read_bytes()
    return out


SEEDS = _seed_files()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "header-int"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # a large number written over the first 400 bytes (dimension fields, sizes, offsets)
            at = min(at, 400)
            data[at : at + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return name, bytes(data)


@settings(
    max_examples=int(os.environ.get("MEDSAMKIT_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutated())
def test_mutated_files_read_or_fail_cleanly(case: tuple[str, bytes]) -> None:
    name, data = case
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(data)
        try:
            img = read_image(p, max_bytes=LIMIT)
        except MedsamkitError as e:
            assert str(e).strip() and "\n" not in str(e).strip(), repr(e)
            return
        assert img.array.nbytes <= LIMIT
        assert img.array.dtype.kind in "biuf"
