"""Intensity presets: raw scanner values -> the uint8 picture SAM-family models see.

Every preset is computed from the **whole volume** (not per slice), so all slices share one mapping, and is
described by :meth:`IntensityPreset.describe` for the output's metadata.

* CT windows (level/width in HU): ``soft_tissue`` 40/400, ``lung`` -600/1500, ``bone`` 400/1800,
  ``brain`` 40/80, or any ``window`` L,W: clip to [L - W/2, L + W/2] and rescale to 0..255.
* ``percentile`` (MR, PET, other; MedSAM's preprocessing): clip to the 0.5 and 99.5 percentiles of the
  voxels > 0, rescale to 0..255; voxels <= 0 stay 0.
* ``passthrough``: uint8 data (RGB or grey pictures) is used as is.
* ``auto``: uint8 images -> passthrough (8-bit pictures are already windowed, whatever the modality; a
  soft-tissue window on 0..255 values would wreck them); CT -> soft_tissue; everything else -> percentile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, OptionError

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
PRESETS = ("auto", *CT_WINDOWS, "percentile", "passthrough", "window")


@dataclass(frozen=True)
class IntensityPreset:
    """A resolved preset: name plus the numbers it used (window limits or percentile values)."""

    name: str
    low: float | None = None
    high: float | None = None

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"preset": self.name}
        if self.name in CT_WINDOWS or self.name == "window":
            # a window preset always holds its low and high (resolve_preset sets them): hence the ignore
            d["window_level_width"] = [(self.low + self.high) / 2, self.high - self.low]  # type: ignore[operator]
            d["clip_hu"] = [self.low, self.high]
        elif self.name == "percentile":
            d["clip_0.5_99.5_pct_of_voxels_gt_0"] = [self.low, self.high]
        return d

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Map raw values to uint8 with this preset's numbers."""
        a = np.asarray(array)
        if self.name == "passthrough":
            return a.astype(np.uint8, copy=False)
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]  # set for every preset but passthrough
        f = np.clip(a.astype(np.float32), lo, hi)
        out = (f - lo) / max(hi - lo, 1e-8) * 255.0
        if self.name == "percentile":
            out[a <= 0] = 0
        return np.rint(out).astype(np.uint8)


def parse_window(text: str) -> tuple[float, float]:
    """``"LEVEL,WIDTH"`` -> (level, width); width must be positive."""
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"window {text!r}: expected LEVEL,WIDTH (two numbers, e.g. 40,400)") from None
    if width <= 0:
        raise OptionError(f"window {text!r}: WIDTH must be positive")
    return level, width


def resolve_preset(
    array: np.ndarray, modality: str | None, preset: str = "auto", window: tuple[float, float] | None = None
) -> IntensityPreset:
    """Choose and fit a preset for ``array`` (whole volume). ``window`` (level, width) overrides ``preset``.
    Raises ``InputError`` (a ``ValueError``) for NaN/inf values or an unknown preset."""
    a = np.asarray(array)
    if np.issubdtype(a.dtype, np.floating):
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise InputError(f"the image contains {bad} NaN or infinite voxels")
    if window is not None:
        level, width = window
        return IntensityPreset("window", level - width / 2, level + width / 2)
    if preset not in PRESETS or preset == "window":
        raise InputError(
            f"unknown intensity preset {preset!r}; use one of {', '.join(p for p in PRESETS if p != 'window')} or --window L,W"
        )
    if preset == "auto":
        if a.dtype == np.uint8:
            preset = "passthrough"
        elif (modality or "").upper() == "CT":
            preset = "soft_tissue"
        else:
            preset = "percentile"
    if preset in CT_WINDOWS:
        level, width = CT_WINDOWS[preset]
        return IntensityPreset(preset, level - width / 2, level + width / 2)
    if preset == "passthrough":
        if a.dtype != np.uint8:
            raise OptionError(f"preset passthrough needs uint8 data, the image is {a.dtype}; use percentile or a window")
        return IntensityPreset("passthrough")
    positive = a[a > 0]
    if positive.size == 0:
        return IntensityPreset("percentile", 0.0, 1.0)
    lo, hi = np.percentile(positive, [0.5, 99.5])
    return IntensityPreset("percentile", float(lo), float(hi))
