"""Labelled datasets: the (image, ground-truth mask) cases of a dataset folder in one of three layouts (folder,
nnU-Net v2 raw, Medical Segmentation Decathlon), case loading, and splits by case.

``load_dataset(path)`` finds the cases of a dataset; ``load_case(case)`` reads one as ``(MedicalImage, mask)`` with
the mask an unsigned integer array of shape ``image.spatial_shape`` (0 = background). ``split_cases(ids)`` splits
case ids deterministically into train / val / test; ``run_split`` is a training run's split, kept in its
``split.json``.
"""

from .datasets import LAYOUTS, Case, Dataset, case_id_of, combine_datasets, load_case, load_dataset, modality_from_name
from .splits import Split, read_split, run_split, split_cases, write_split

__all__ = [
    "LAYOUTS",
    "Case",
    "Dataset",
    "Split",
    "case_id_of",
    "combine_datasets",
    "load_case",
    "load_dataset",
    "modality_from_name",
    "read_split",
    "run_split",
    "split_cases",
    "write_split",
]
