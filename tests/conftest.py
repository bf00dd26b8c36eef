"""Shared fixtures. Real-data tests read ../shared (override with MEDSAMKIT_SHARED) and skip when it is absent."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one thread each, no oversubscription
    os.environ.setdefault("MEDSAMKIT_THREADS", "1")

SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data" / "real"
REFERENCE = SHARED / "reference" / "litemedsam"
MODELS_DOC = SHARED / "models"

requires_shared = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared data not found at {DATA} (set MEDSAMKIT_SHARED to the shared folder)"
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """With MEDSAMKIT_REQUIRE_SHARED set (CI sets it), a missing ../shared stops the run instead of skipping the
    real-data and parity tests."""
    if os.environ.get("MEDSAMKIT_REQUIRE_SHARED"):
        missing = [str(p) for p in (DATA, REFERENCE / "manifest.json") if not p.exists()]
        if missing:
            raise pytest.UsageError(f"MEDSAMKIT_REQUIRE_SHARED is set but {', '.join(missing)} is missing")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """With MEDSAMKIT_REQUIRE_SHARED set, a test skipped for want of shared data fails instead."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MEDSAMKIT_REQUIRE_SHARED") and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if str(SHARED) in reason or "MEDSAMKIT_SHARED" in reason or "shared data" in reason:
            report.outcome = "failed"
            report.longrepr = f"MEDSAMKIT_REQUIRE_SHARED is set, but the test was skipped: {reason}"


@pytest.fixture(scope="session")
def predictor():
    """The bundled LiteMedSAM on the default backend (ONNX Runtime)."""
    from medsamkit.predict import Predictor

    return Predictor("litemedsam")


@pytest.fixture(scope="session")
def encode_file(predictor):
    """Set a real image file on the shared predictor, encoding each file once per test session."""
    from medsamkit.io import read_image_2d

    cache: dict[Path, tuple] = {}

    def _set(path: Path) -> np.ndarray:
        image = read_image_2d(path)
        if path not in cache:
            predictor.set_image(image)
            cache[path] = (predictor.get_image_embedding(), predictor.geometry)
        predictor.set_embedding(*cache[path])
        return image

    return _set


@pytest.fixture(scope="session")
def litemedsam_model():
    """The bundled LiteMedSAM as a PyTorch module."""
    from medsamkit.models import load

    return load("litemedsam")


def disk_image(h: int, w: int, cx: float, cy: float, r: float, rgb: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disk (centre column cx, row cy) on a noisy dark background: (image uint8, mask bool)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    img = rng.normal(40, 8, size=(h, w))
    img[mask] = rng.normal(200, 8, size=int(mask.sum()))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rgb:
        img = np.stack([img, (img * 0.8).astype(np.uint8), img], axis=-1)
    return img, mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum() + b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def box_of(mask: np.ndarray) -> list[int]:
    """Inclusive (x0, y0, x1, y1) of a mask's pixels."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def one_line_error(capsys, code: int, expect_code: int) -> str:
    """The CLI's stderr after a failing call: exactly one line, no traceback, with the expected exit code."""
    err = capsys.readouterr().err.strip()
    assert code == expect_code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def assert_valid_dicom(path: Path) -> None:
    """dciodvfy (Debian dicom3tools) reports no error for ``path``; skipped where it is not installed unless
    MEDSAMKIT_REQUIRE_DCIODVFY is set (CI sets it)."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("MEDSAMKIT_REQUIRE_DCIODVFY"):
            pytest.fail("dciodvfy (Debian dicom3tools) is required here but not installed")
        pytest.skip("dciodvfy (Debian package dicom3tools) not installed")
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (training tests on a shared 2-core machine), then restore the count."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
