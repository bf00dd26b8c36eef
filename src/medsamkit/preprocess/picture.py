"""The picture the model sees: one rule, used by every place that turns an image into the uint8 picture a
SAM-family model (or a viewer, an overlay, a training network) is given.

Input: a :class:`medsamkit.io.MedicalImage` (read duck-typed: ``array``, ``modality`` and, when present,
``is_volume``; ``preprocess`` sits below ``io`` in the import map) or a plain array with an optional modality.

The 2D rule (:func:`model_picture`, :func:`fit_picture`):

* **shapes**: ``(H, W)`` grey stays 2D (it is never repeated to RGB here; the model transform does that);
  ``(H, W, 1)`` is squeezed to ``(H, W)``; ``(H, W, 3)`` is RGB; a one-slice volume ``(1, H, W)`` (a
  MedicalImage whose ``is_volume`` is true) is its slice; longer volumes are refused (:class:`OptionError`),
  other shapes, empty, bool, complex and non-numeric arrays too (:class:`InputError`).
* **alpha**: ``(H, W, 4)`` RGBA loses its alpha channel *before* the intensity mapping is fitted (alpha is
  dropped, not composited): the picture is ``(H, W, 3)``. Every consumer dropped it anyway (the predictor's
  :func:`~medsamkit.preprocess.image2d.to_rgb_uint8`, the overlay, SAMAug's augmented image, the training
  pictures, the app); fitting a percentile window on the alpha values as well was a bug for non-uint8 RGBA.
* **intensity**: one :func:`~medsamkit.preprocess.intensity.resolve_preset` for grey and RGB alike: ``auto``
  keeps uint8 pictures as they are (``passthrough``), maps CT through the soft-tissue window and anything else
  (16-bit PNG/TIFF, float, MR, ...) through the 0.5-99.5 percentile of the values > 0; an explicit preset or
  ``window`` (level, width) is applied to grey and RGB pictures alike.
* **output**: uint8 ``(H, W)`` or ``(H, W, 3)``, C-contiguous, and the mapping's description
  (:meth:`IntensityPreset.describe`). A constant image gives a constant picture (uint8 unchanged; other
  dtypes all 0).

The volume rule (:func:`volume_pictures`): one :class:`IntensityPreset` fitted on the **whole** volume
``(Z, Y, X)`` and applied slice by slice (:class:`VolumePictures`), so every slice shares one mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, OptionError
from .intensity import IntensityPreset, resolve_preset

CHUNK_BYTES = 8 * 1024 * 1024  # float32 bytes of one block of slices in VolumePictures.all (~4 copies live)


def _array_and_modality(image: Any, modality: str | None) -> tuple[np.ndarray, str | None, bool]:
    """(array, modality, is_volume) of a MedicalImage-like object or an array; ``modality`` wins over the image's."""
    if hasattr(image, "array"):
        return np.asarray(image.array), modality or getattr(image, "modality", None), bool(getattr(image, "is_volume", False))
    return np.asarray(image), modality, False


def _check_values(arr: np.ndarray) -> None:
    if arr.size == 0:
        raise InputError(f"image is empty (shape {arr.shape})")
    if arr.dtype == bool or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"image dtype {arr.dtype} is not a real numeric type")


def image_plane(image: Any) -> np.ndarray:
    """The values the 2D picture is made of, before the intensity mapping: ``(H, W)`` grey or ``(H, W, 3)`` RGB
    (dtype as given; a view where possible). Applies the shape and alpha rules of the module docstring:
    ``(H, W, 1)`` squeezed, ``(H, W, 4)`` loses alpha, a one-slice volume is its slice. Raises
    :class:`OptionError` for a volume of several slices, :class:`InputError` for other shapes and bad dtypes."""
    arr, _, is_volume = _array_and_modality(image, None)
    if is_volume:
        if arr.ndim != 3 or arr.shape[0] != 1:
            n = arr.shape[0] if arr.ndim else 0
            raise OptionError(f"this works on 2D images; the input is a volume of {n} slices (shape {arr.shape})")
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InputError(f"expected a 2D image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    _check_values(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]  # the alpha rule: dropped, not composited
    return arr


def fit_picture(
    image: Any, preset: str = "auto", window: tuple[float, float] | None = None, modality: str | None = None
) -> tuple[np.ndarray, IntensityPreset]:
    """The plane of a 2D image (:func:`image_plane`) and the intensity mapping fitted on it (not yet applied).
    ``modality`` overrides the image's (``"CT"`` selects the soft-tissue window under ``auto``)."""
    _, modality, _ = _array_and_modality(image, modality)
    plane = image_plane(image)
    return plane, resolve_preset(plane, modality, preset, window)


def model_picture(
    image: Any, preset: str = "auto", window: tuple[float, float] | None = None, modality: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The picture the model sees for a 2D image (rules in the module docstring).

    image: a MedicalImage (2D, or a one-slice volume) or an array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
    ``(H, W, 4)`` of any real dtype. preset: an intensity preset name (``auto`` by default). window: (level,
    width), overrides ``preset``. modality: overrides the image's.
    Returns (uint8 ``(H, W)`` or ``(H, W, 3)`` C-contiguous picture, description of the intensity mapping)."""
    plane, fitted = fit_picture(image, preset, window, modality)
    return np.ascontiguousarray(fitted.apply(plane)), fitted.describe()


@dataclass(frozen=True)
class VolumePictures:
    """The pictures of a volume's slices along its first axis: ``array`` (raw values; ``(Z, Y, X)`` as
    :func:`volume_pictures` makes it, or a transposed view for another working axis) mapped slice by slice with
    ``preset``, fitted once on the whole volume. ``pictures[i]`` is the uint8 picture of ``array[i]``."""

    array: np.ndarray
    preset: IntensityPreset

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, z: int) -> np.ndarray:
        return self.preset.apply(self.array[z])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[z] for z in range(len(self)))

    def describe(self) -> dict[str, Any]:
        return self.preset.describe()

    def all(self, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
        """uint8 ``(Z, Y, X)``: every slice's picture, computed block of slices by block (the same values as
        applying the preset to the whole volume, with float32 working copies of about ``chunk_bytes``)."""
        out = np.empty(self.array.shape, np.uint8)
        per_slice = max(1, int(np.prod(self.array.shape[1:], dtype=np.int64)) * 4)
        step = max(1, chunk_bytes // per_slice)
        for k in range(0, len(self), step):
            out[k : k + step] = self.preset.apply(self.array[k : k + step])
        return out


def volume_pictures(
    image: Any, preset: str = "auto", window: tuple[float, float] | None = None, modality: str | None = None
) -> VolumePictures:
    """The per-slice form for a volume: a MedicalImage volume or a ``(Z, Y, X)`` array of any real dtype, with
    one :class:`IntensityPreset` fitted on all its voxels (``preset``/``window``/``modality`` as in
    :func:`model_picture`). Colour volumes and other shapes raise :class:`InputError`."""
    arr, modality, _ = _array_and_modality(image, modality)
    if arr.ndim != 3:
        raise InputError(f"expected a volume (Z, Y, X); got shape {arr.shape}")
    _check_values(arr)
    return VolumePictures(arr, resolve_preset(arr, modality, preset, window))
