"""Small synthetic DICOM CT series for tests: a bright ball in a dark box, one file per slice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom


def write_series(
    folder: Path,
    n: int = 10,
    size: int = 32,
    spacing: float = 2.0,
    *,
    keep: Sequence[int] | None = None,
    shear_mm: float = 0.0,
    orientations: dict[int, Sequence[float]] | None = None,
    sizes: dict[int, int] | None = None,
    positions: dict[int, float] | None = None,
    uid: str = "1.2.826.0.1.3680043.8.498.1",
    prefix: str = "slice",
) -> Path:
    """Write slices ``k`` of ``range(n)`` (only those in ``keep`` when given) into ``folder`` as CT DICOM files
    (16-bit, HU = stored value - 1024), axial, ``spacing`` mm apart along z. shear_mm: slice k is moved by
    k * shear_mm along y (a gantry tilt); orientations/sizes/positions: per-slice overrides of
    ImageOrientationPatient, Rows=Columns and the z position. Pixel (row r, col c) of slice k: 1024 + 900 inside
    a ball of radius size/4 around the volume's centre, else 24. Files are ``<prefix><k:03d>.dcm``. Returns
    ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in keep if keep is not None else range(n):
        m = (sizes or {}).get(k, size)
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = f"{uid}.{k + 1}"
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", f"{uid}.{k + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = f"{uid}.100", f"{uid}.200", f"{uid}.300"
        ds.Modality, ds.PatientID, ds.PatientName, ds.InstanceNumber = "CT", "medsamkit-test", "Test^Phantom", k + 1
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID, ds.SeriesNumber = "", "", "1", 1
        ds.Manufacturer = "medsamkit tests"
        ds.Rows = ds.Columns = m
        ds.ImageOrientationPatient = list((orientations or {}).get(k, [1, 0, 0, 0, 1, 0]))
        z = (positions or {}).get(k, spacing * k)
        ds.ImagePositionPatient = [0.0, shear_mm * k, z]
        ds.PixelSpacing = [0.8, 0.8]
        ds.SliceThickness = spacing
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        rr, cc = np.mgrid[0:m, 0:m]
        ball = (rr - m / 2) ** 2 + (cc - m / 2) ** 2 + ((k - n / 2) * spacing / 0.8) ** 2 <= (m / 4) ** 2
        ds.PixelData = np.where(ball, 1024 + 900, 24).astype(np.uint16).tobytes()
        ds.save_as(folder / f"{prefix}{k:03d}.dcm", enforce_file_format=True)
    return folder
