"""Batch jobs on Dask: manifest-driven, resumable, one model per worker (see docs/batch.md).

Nothing below this package imports Dask; the per-item work is the same library function the single-process
commands use (:func:`medsamkit.predict.jobs.segment_file`, :func:`medsamkit.evaluate.runner.evaluate_case`).
"""

from .cluster import DaskEngine, EngineOptions, ModelSpec
from .kinds import EverythingJob, SamaugJob, SegmentJob, dataset_items, evaluate_mapper
from .ledger import Ledger
from .manifest import ManifestItem, read_manifest, safe_stem
from .run import BatchSummary, run_batch

__all__ = [
    "BatchSummary",
    "DaskEngine",
    "EngineOptions",
    "EverythingJob",
    "Ledger",
    "ManifestItem",
    "ModelSpec",
    "SamaugJob",
    "SegmentJob",
    "dataset_items",
    "evaluate_mapper",
    "read_manifest",
    "run_batch",
    "safe_stem",
]
