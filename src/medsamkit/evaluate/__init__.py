"""Evaluation on labelled data: dataset loaders (folder, nnU-Net v2 raw, Medical Segmentation Decathlon), the
runner that applies prompt protocols to every object, summaries and the HTML report.

``load_dataset(path)`` finds the (image, ground-truth mask) cases of a dataset; ``load_case(case)`` reads one as
``(MedicalImage, mask)`` with the mask an unsigned integer array of shape ``image.spatial_shape`` (0 = background).
``run_evaluation(datasets, out_dir, protocols)`` is what ``medsamkit evaluate`` calls; ``evaluate_case`` is its
per-case work (a pure function of the case, the protocols, the predictor and the settings).
"""

from .analysis import auroc, spearman, summarize
from .datasets import LAYOUTS, Case, Dataset, case_id_of, load_case, load_dataset, modality_from_name
from .runner import COLUMNS, CaseResult, EvalConfig, EvaluationRun, evaluate_case, read_rows, run_evaluation
from .store import load_masks

__all__ = [
    "COLUMNS",
    "LAYOUTS",
    "Case",
    "CaseResult",
    "Dataset",
    "EvalConfig",
    "EvaluationRun",
    "auroc",
    "case_id_of",
    "evaluate_case",
    "load_case",
    "load_dataset",
    "load_masks",
    "modality_from_name",
    "read_rows",
    "run_evaluation",
    "spearman",
    "summarize",
]
