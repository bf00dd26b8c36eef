"""predict.jobs, the file jobs: segment_file checks everything that can be checked before the model loads;
everything_file takes 2D images only."""

from __future__ import annotations

import warnings
from typing import NoReturn

import nibabel as nib
import numpy as np
import pytest

from medsamkit.errors import FileInputError, GeometryError
from medsamkit.predict.automatic import default_options
from medsamkit.predict.jobs import SegmentRequest, everything_file, segment_file
from tests.dicom_series import write_series


def no_model() -> NoReturn:
    raise AssertionError("the model was loaded for a request that was bound to fail")


def test_ground_truth_problems_are_found_before_the_model_loads(tmp_path) -> None:
    gapped = write_series(tmp_path / "gapped", n=10, keep=[0, 1, 2, 6, 7, 8, 9])  # slices 3-5 missing
    truth = tmp_path / "truth.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 7), np.uint8), np.eye(4)), truth)
    request = SegmentRequest(image=gapped, output=tmp_path / "seg.dcm", boxes3d=[[4, 4, 1, 20, 20, 5]], ground_truth=truth)
    with warnings.catch_warnings(), pytest.raises(GeometryError, match="surface metrics"):
        warnings.simplefilter("ignore", UserWarning)
        segment_file(no_model, request)
    volume = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 100, (24, 20, 6)).astype(np.int16), np.eye(4)), volume)
    request = SegmentRequest(image=volume, output=tmp_path / "m.nii.gz", boxes3d=[[2, 2, 1, 12, 12, 4]], ground_truth=truth)
    with pytest.raises(FileInputError, match=r"grid \(7, 32, 32\) differs"):
        segment_file(no_model, request)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gapped", "truth.nii.gz", "v.nii.gz"]  # nothing written


def test_segment_2d_checks_prompts_also_where_it_skips_the_model() -> None:
    """A blank picture gives an empty mask without the model, but a prompt outside it is still an error."""
    from medsamkit.errors import MedsamkitWarning, PromptError
    from medsamkit.predict.segment import segment_2d

    class Untouchable:
        def __getattr__(self, name: str) -> NoReturn:
            raise AssertionError(f"the predictor was used ({name})")

    blank = np.zeros((40, 50), np.uint8)
    with pytest.raises(PromptError, match="lies outside"):
        segment_2d(Untouchable(), blank, boxes=[[0, 0, 9999, 10]])
    with pytest.warns(MedsamkitWarning, match="constant"):
        result = segment_2d(Untouchable(), blank, boxes=[[5, 5, 20, 20]])
    assert result.labels.shape == (40, 50) and not result.labels.any() and result.warnings


def test_everything_file_refuses_volumes(tmp_path, predictor):
    import nibabel as nib

    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 5), np.int16), np.eye(4)), p)
    with pytest.raises(ValueError, match="2D images"):
        everything_file(predictor, p, tmp_path / "o", default_options("litemedsam", points_per_side=2))
