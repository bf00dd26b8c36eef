"""File input/output: one reader for every format, mask writers that keep the source geometry.

``read_image(path)`` returns a :class:`MedicalImage` (array ``(Z, Y, X)`` or ``(Y, X[, C])`` + LPS geometry +
modality); ``write_mask(path, labels, like=image)`` writes NIfTI/NRRD/MHA/PNG/DICOM-SEG on that grid.
"""

from .dicom import DicomSegError, read_dicom_seg, read_dicom_series, write_dicom_seg
from .image import MedicalImage, guess_modality
from .image2d import RASTER_SUFFIXES, ImageReadError, read_image_2d, write_png
from .readers import MODALITIES, format_of, read_image
from .writers import MASK_SUFFIXES, resample_like, sidecar_path, to_sitk, write_mask

__all__ = [
    "MASK_SUFFIXES",
    "MODALITIES",
    "RASTER_SUFFIXES",
    "DicomSegError",
    "ImageReadError",
    "MedicalImage",
    "format_of",
    "guess_modality",
    "read_dicom_seg",
    "read_dicom_series",
    "read_image",
    "read_image_2d",
    "resample_like",
    "sidecar_path",
    "to_sitk",
    "write_dicom_seg",
    "write_mask",
    "write_png",
]
