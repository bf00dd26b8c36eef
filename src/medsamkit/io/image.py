"""The image object every reader returns: voxels plus the geometry that places them in the patient.

Axis order (numpy, like SimpleITK): a volume is ``array[z, y, x]`` = ``array[k, j, i]`` where (i, j, k) is the
NIfTI/ITK voxel index; a 2D image is ``array[y, x]`` (or ``[y, x, c]`` for colour). Geometry follows ITK:
``spacing`` and ``origin`` are given in (i, j, k) order, ``origin`` is the world position of voxel (0, 0, 0) and
``direction`` has one column per voxel axis; world coordinates are **LPS** millimetres (DICOM/ITK), and
:meth:`MedicalImage.affine_ras` gives the NIfTI-style RAS affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class MedicalImage:
    """Voxels + geometry + modality.

    array: ``(Z, Y, X)`` volume, ``(Y, X)`` grey or ``(Y, X, C)`` colour 2D image (dtype as stored, after
    DICOM/NIfTI rescale slope/intercept).
    spacing, origin: per voxel axis in (x, y[, z]) = (i, j[, k]) order, mm; origin in LPS world mm.
    direction: ``(d, d)`` matrix, column a = world (LPS) direction of voxel axis a.
    modality: "CT", "MR", "PT", "US", ... or None; ``modality_source`` says where it came from
    ("dicom", "guess", "user", "none").
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    modality: str | None = None
    modality_source: str = "none"
    source: Path | None = None
    format: str = "array"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return len(self.spacing) == 3

    @property
    def is_rgb(self) -> bool:
        return not self.is_volume and self.array.ndim == 3

    @property
    def spacing_unit(self) -> str:
        """``"mm"`` when the file gives a physical spacing, ``"px"`` when it does not (PNG/JPEG/TIFF, an npz
        without ``spacing``, a DICOM image without PixelSpacing): then ``spacing`` is 1 per pixel."""
        return "px" if self.format == "raster" or self.meta.get("spacing_known") is False else "mm"

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the voxel grid in array order: (Z, Y, X) or (Y, X)."""
        return tuple(self.array.shape[: len(self.spacing)])

    def affine_lps(self) -> np.ndarray:
        """``(d+1, d+1)`` matrix mapping (i, j[, k], 1) to LPS world mm."""
        d = len(self.spacing)
        a = np.eye(d + 1)
        a[:d, :d] = np.asarray(self.direction, float) @ np.diag(self.spacing)
        a[:d, d] = self.origin
        return a

    def affine_ras(self) -> np.ndarray:
        """4x4 NIfTI-style affine mapping (i, j, k, 1) to RAS world mm (volumes only)."""
        if not self.is_volume:
            raise ValueError("a RAS affine is defined for volumes")
        a = self.affine_lps()
        a[:3, :] = LPS_TO_RAS @ a[:3, :]
        return a

    def voxel_to_world(self, ijk: np.ndarray, ras: bool = True) -> np.ndarray:
        """(..., d) voxel indices (i, j[, k]) -> world mm (RAS by default, LPS with ``ras=False``)."""
        a = self.affine_ras() if (ras and self.is_volume) else self.affine_lps()
        p = np.asarray(ijk, float)
        return p @ a[:-1, :-1].T + a[:-1, -1]

    def world_to_voxel(self, xyz: np.ndarray, ras: bool = True) -> np.ndarray:
        """(..., d) world mm (RAS by default) -> continuous voxel indices (i, j[, k])."""
        a = self.affine_ras() if (ras and self.is_volume) else self.affine_lps()
        inv = np.linalg.inv(a)
        p = np.asarray(xyz, float)
        return p @ inv[:-1, :-1].T + inv[:-1, -1]

    def with_array(self, array: np.ndarray, **changes: Any) -> MedicalImage:
        """The same geometry carrying another array of the same spatial shape (e.g. a mask)."""
        if tuple(array.shape[: len(self.spacing)]) != self.spatial_shape:
            raise ValueError(f"array shape {array.shape} does not match the image grid {self.spatial_shape}")
        fields = {**self.__dict__, "array": array, **changes}
        return MedicalImage(**fields)

    def describe(self) -> str:
        sp = "x".join(f"{s:g}" for s in self.spacing)
        shape = "x".join(str(s) for s in reversed(self.spatial_shape))
        return f"{self.format} {shape} voxels (x,y[,z]) at {sp} mm, modality {self.modality or 'unknown'}"


def guess_modality(array: np.ndarray) -> str:
    """A guess from intensities when the file does not say: ``CT`` when values look like Hounsfield units
    (air around -1000 present, integer-valued, within -1100..4000), else ``MR``."""
    a = np.asarray(array)
    if a.size == 0:
        return "MR"
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    sample = a.ravel()[:: max(1, a.size // 100_000)].astype(np.float64)
    integer_valued = bool(np.all(np.mod(sample, 1) == 0))
    if -1100 <= lo <= -500 and hi <= 4000 and integer_valued:
        return "CT"
    return "MR"
