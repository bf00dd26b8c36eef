"""Evaluation on labelled data: the runner that applies prompt protocols to every object, summaries and the HTML
report.

The datasets it runs on (folder, nnU-Net v2 raw, Medical Segmentation Decathlon) are :mod:`medsamkit.data`'s:
``load_dataset(path)`` finds the (image, ground-truth mask) cases of a dataset, ``load_case(case)`` reads one; both
are importable from here too. ``run_evaluation(datasets, out_dir, protocols)`` is what ``medsamkit evaluate`` calls;
``evaluate_case`` is its per-case work (a pure function of the case, the protocols, the predictor and the settings).
A :class:`Segmenter` (AutoSAM, a U-Net: no prompt, one mask per picture) is evaluated the same way under the
protocol ``auto``; the training side's evaluations (``medsamkit.train``) go through ``evaluate_case`` too.

Iterative protocols are scored per object as the CVPR 2025 interactive challenge does (``interactive_records``:
DSC-AUC, NSD-AUC, final DSC/NSD; ``interactive_auc``); ``bootstrap_mean`` / ``paired_bootstrap`` give percentile
bootstrap intervals of means and paired differences, resampled by unit (e.g. image) and optionally by stratum
(``compare_protocols``: two protocols on the same objects, per dataset, resampled by picture);
``seed_image_bootstrap`` resamples training seeds and test images together, and ``verdict`` words what an interval
of a difference supports ("better", "no difference shown", "worse").
"""

from ..data import LAYOUTS, Case, Dataset, case_id_of, load_case, load_dataset, modality_from_name
from .analysis import (
    Interval,
    auroc,
    bootstrap_mean,
    compare_protocols,
    format_interval,
    interactive_table,
    paired_bootstrap,
    seed_image_bootstrap,
    spearman,
    summarize,
    verdict,
)
from .interactive import (
    NSD_MIN_DICE,
    InteractiveRecord,
    challenge_nsd,
    interactive_auc,
    interactive_record,
    interactive_records,
)
from .runner import (
    AUTO,
    COLUMNS,
    CaseResult,
    EvalConfig,
    EvaluationRun,
    Segmenter,
    evaluate_case,
    read_rows,
    run_evaluation,
)
from .store import load_masks, write_csv

__all__ = [
    "AUTO",
    "COLUMNS",
    "LAYOUTS",
    "Case",
    "CaseResult",
    "Dataset",
    "EvalConfig",
    "EvaluationRun",
    "InteractiveRecord",
    "Interval",
    "NSD_MIN_DICE",
    "Segmenter",
    "auroc",
    "bootstrap_mean",
    "case_id_of",
    "challenge_nsd",
    "compare_protocols",
    "evaluate_case",
    "format_interval",
    "interactive_auc",
    "interactive_record",
    "interactive_records",
    "interactive_table",
    "load_case",
    "load_dataset",
    "load_masks",
    "modality_from_name",
    "paired_bootstrap",
    "read_rows",
    "run_evaluation",
    "seed_image_bootstrap",
    "spearman",
    "summarize",
    "verdict",
    "write_csv",
]
