"""File input/output: one reader for every format, mask writers that keep the source geometry.

``read_image(path)`` returns a :class:`MedicalImage` (array ``(Z, Y, X)`` or ``(Y, X[, C])`` + LPS geometry +
modality); ``write_mask(path, labels, like=image)`` writes NIfTI/NRRD/MHA/PNG/DICOM-SEG on that grid. The formats, their
file endings and their readers/writers are one table, :mod:`medsamkit.io.formats`; :func:`reorient_exact` moves an
array between grids that differ by axis flips/permutations only (:mod:`medsamkit.io.orient`).
"""

from .dicom import DicomSegError, read_dicom_seg, read_dicom_series, write_dicom_seg
from .formats import FORMATS, MASK_SUFFIXES, RASTER_SUFFIXES, Format, format_for, split_suffix
from .image import MedicalImage, guess_modality
from .masks import read_mask
from .orient import reorient_exact
from .raster import ImageReadError, read_image_2d, write_png
from .readers import MODALITIES, format_of, read_image
from .segments import CATEGORIES, TYPES, Segment
from .writers import resample_like, sidecar_path, to_sitk, write_mask

__all__ = [
    "CATEGORIES",
    "FORMATS",
    "TYPES",
    "Segment",
    "read_mask",
    "MASK_SUFFIXES",
    "MODALITIES",
    "RASTER_SUFFIXES",
    "DicomSegError",
    "Format",
    "ImageReadError",
    "MedicalImage",
    "format_for",
    "format_of",
    "guess_modality",
    "read_dicom_seg",
    "read_dicom_series",
    "read_image",
    "read_image_2d",
    "reorient_exact",
    "resample_like",
    "sidecar_path",
    "split_suffix",
    "to_sitk",
    "write_dicom_seg",
    "write_mask",
    "write_png",
]
