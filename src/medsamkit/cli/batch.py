"""``medsamkit batch``: manifest-driven jobs on a Dask cluster (local by default), resumable."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .common import CliError, add_model_arguments, positive_int, say
from .everything import add_everything_options

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "batch": "run a job over a manifest on a Dask cluster (resumable)",
}


if TYPE_CHECKING:
    from ..batch import BatchSummary, DaskEngine, ManifestItem, ModelSpec

_Job = TypeVar("_Job")

SEGMENT_HELP = (
    "Segment every row of MANIFEST (CSV with a header, or JSONL) on a Dask cluster. Columns: image (required; "
    "relative paths resolve against the manifest's folder), box 'x0,y0,x1,y1', box3d 'x0,y0,z0,x1,y1,z1', point "
    "'x,y[,z][,label]' (several of each separated by ';'), slice, axis, label (names, ';'-separated), preset, "
    "window 'level,width', world, modality, series, ground_truth (a label mask: Dice etc. in the record), id, "
    "output (relative: inside OUT_DIR). Writes OUT_DIR/masks/<id>.png|.nii.gz, OUT_DIR/records/<id>.json, "
    "OUT_DIR/ledger.sqlite and OUT_DIR/summary.json. Re-running the command skips finished items and retries "
    "failed ones up to --max-retries."
)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--workers, --threads-per-worker, --scheduler, --dashboard, --max-in-flight."""
    g = p.add_argument_group("Dask cluster")
    g.add_argument("--workers", type=positive_int, metavar="N", help="local worker processes (default: cores / threads)")
    g.add_argument("--threads-per-worker", type=positive_int, metavar="T", help="CPU threads of each worker's model (default 1)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    g.add_argument("--dashboard", action="store_true", help="serve the Dask dashboard of the local cluster")
    g.add_argument("--max-in-flight", type=positive_int, metavar="K", help="items submitted at once (default 2 per worker)")


def uses_dask(args: argparse.Namespace) -> bool:
    return bool(args.scheduler or args.workers or args.threads_per_worker or args.dashboard or args.max_in_flight)


def engine_options(args: argparse.Namespace):
    from ..batch import EngineOptions

    if args.scheduler and args.workers:
        raise CliError(f"{args.command}: give --scheduler or --workers, not both")
    if args.scheduler and args.dashboard:
        raise CliError(f"{args.command}: --dashboard is for the local cluster; an existing scheduler serves its own")
    return EngineOptions(
        scheduler=args.scheduler,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        dashboard=args.dashboard,
        max_in_flight=args.max_in_flight,
    )


def _model_arguments(p: argparse.ArgumentParser, adapter: bool = False) -> None:
    # --threads is a worker's, among the run options
    add_model_arguments(
        p,
        adapter_help="a `medsamkit finetune` result, loaded on top of its base model (PyTorch backend unless --backend names one)"
        if adapter
        else None,
        threads_help=None,
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "batch",
        help=COMMANDS["batch"],
        description="Run segment, everything-mode or SAMAug jobs over manifests on a local Dask cluster or an "
        "existing scheduler (see docs/batch.md). Finished "
        "items are recorded in OUT_DIR/ledger.sqlite: re-running the same command skips them.",
    )
    jobs = p.add_subparsers(dest="job", metavar="JOB", parser_class=type(p))
    p.set_defaults(func=_usage)

    s = jobs.add_parser("segment", help="prompted segmentation of every manifest row", description=SEGMENT_HELP)
    s.add_argument("manifest", type=Path, help="CSV (with a header) or JSONL manifest")
    s.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="output folder")
    _model_arguments(s, adapter=True)
    _run_arguments(s)
    s.set_defaults(func=run_segment)

    e = jobs.add_parser(
        "everything",
        help="everything mode on every manifest row",
        description="Everything mode (as `medsamkit everything`) on the image of every row of MANIFEST (columns: "
        "image, id, preset, window). Writes OUT_DIR/everything/<id>_labels.png, _masks.json, _overlay.png, "
        "OUT_DIR/records/<id>.json, the ledger and summary.json; re-running skips finished items.",
    )
    e.add_argument("manifest", type=Path, help="CSV (with a header) or JSONL manifest")
    e.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="output folder")
    _model_arguments(e)
    add_everything_options(e.add_argument_group("everything mode (defaults: the model's)"))
    _run_arguments(e)
    e.set_defaults(func=run_everything)

    a = jobs.add_parser(
        "samaug",
        help="SAMAug preparation of every case of a dataset",
        description="SAMAug preparation (as `medsamkit samaug prepare`) of every case of DATASET (a dataset folder, or "
        "a CSV/JSONL manifest with image, mask and optional id, modality, channel columns). OUT_DIR becomes the same "
        "folder dataset (priors/, records/, images/, masks/); batch records go to OUT_DIR/batch_records/.",
    )
    a.add_argument("source", type=Path, metavar="DATASET", help="dataset folder or manifest")
    a.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="output folder")
    a.add_argument("--mode", choices=("add", "stack"), default="add", help="add (authors' code, default) or stack (paper)")
    a.add_argument("--alpha", type=float, default=None, help="add mode: weight of the priors in [0, 1] (default 0.5)")
    a.add_argument("--thickness", type=positive_int, default=1, help="boundary prior width in pixels (default 1)")
    a.add_argument("--layout", choices=("auto", "folder", "nnunet", "msd"), default="auto", help="dataset layout")
    a.add_argument("--limit", type=positive_int, help="only the first N cases of a dataset")
    _model_arguments(a)
    add_everything_options(a.add_argument_group("everything mode (defaults: the model's)"))
    _run_arguments(a)
    a.set_defaults(func=run_samaug)

    st = jobs.add_parser("status", help="item counts and failures of a batch output folder", description="Show a ledger.")
    st.add_argument("folder", type=Path, metavar="OUT_DIR")
    st.add_argument("--failures", type=int, default=20, metavar="N", help="show at most N failures (default 20)")
    st.set_defaults(func=run_status)


def _usage(args: argparse.Namespace) -> None:
    raise CliError("batch: choose a job: segment, everything, samaug or status (see medsamkit batch --help)")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-retries", type=int, default=2, metavar="R", help="retry a failed item in later runs up to R times (default 2)"
    )
    add_engine_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary on success")


def _start(args: argparse.Namespace, make_job: Callable[[str, ModelSpec], _Job]) -> tuple[DaskEngine, _Job]:
    """Engine and job for a batch command, then the run and its report."""
    from ..batch import DaskEngine, ModelSpec

    engine = DaskEngine(engine_options(args))
    adapter = getattr(args, "adapter", None)
    spec = ModelSpec(
        args.model,
        checkpoint=str(args.checkpoint.resolve()) if args.checkpoint else None,
        backend=args.backend,
        threads=engine.model_threads(),
        adapter=str(adapter.resolve()) if adapter is not None else None,
        device=args.device,
        precision=args.precision,
    )
    return engine, make_job(str(args.output.resolve()), spec)


def _run(
    args: argparse.Namespace,
    engine: DaskEngine,
    job: object,
    source: str | os.PathLike[str] | Sequence[ManifestItem],
) -> None:
    from ..batch import run_batch

    with engine:
        summary = run_batch(job, source, engine=engine, max_retries=args.max_retries, progress=not args.quiet)
    _report(summary, args.quiet)


def run_everything(args: argparse.Namespace) -> None:
    from ..batch import EverythingJob
    from .everything import options_from_args

    _check_common(args)
    options = options_from_args(args)
    engine, job = _start(args, lambda out, spec: EverythingJob(out, spec, options))
    _run(args, engine, job, args.manifest)


def run_samaug(args: argparse.Namespace) -> None:
    from ..batch import SamaugJob, dataset_items
    from ..predict.unet import DEFAULT_ALPHA
    from ..samaug.prepare import check_out_dir
    from .everything import options_from_args

    _check_common(args)
    alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
    if args.alpha is not None and args.mode != "add":
        raise CliError("batch samaug: --alpha applies to --mode add only")
    if not 0.0 <= alpha <= 1.0:
        raise CliError(f"batch samaug: --alpha must be in [0, 1], got {alpha}")
    options = options_from_args(args)
    source = args.source
    if source.is_dir():
        from ..data import load_dataset

        ds = load_dataset(source, layout=args.layout)
        if args.limit is not None:
            ds = ds.subset(limit=args.limit)
        if not len(ds):
            raise CliError(f"{ds.root}: no (image, mask) cases found")
        check_out_dir(args.output, ds.root)
        source = dataset_items(ds)
    elif args.limit is not None:
        raise CliError("batch samaug: --limit applies to a dataset folder")
    engine, job = _start(
        args, lambda out, spec: SamaugJob(out, spec, options, mode=args.mode, alpha=float(alpha), thickness=args.thickness)
    )
    _run(args, engine, job, source)


def _check_common(args: argparse.Namespace) -> None:
    if args.max_retries < 0:
        raise CliError(f"batch {args.job}: --max-retries must be >= 0")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise CliError(f"batch {args.job}: checkpoint not found: {args.checkpoint}")
    if getattr(args, "adapter", None) is not None:
        from ..models.adapted import read_adapter

        mode = read_adapter(args.adapter)["mode"]  # a missing or foreign file: one error here, not one per item
        if mode == "autosam":
            raise CliError(
                f"batch {args.job}: {args.adapter} is an AutoSAM run: it segments without prompts (use `medsamkit autoseg`)"
            )


def run_segment(args: argparse.Namespace) -> None:
    from ..batch import SegmentJob

    _check_common(args)
    engine, job = _start(args, SegmentJob)
    _run(args, engine, job, args.manifest)


def _report(summary: BatchSummary, quiet: bool) -> None:
    s = summary
    failed_now = s.states.get("failed", 0)
    if not quiet or failed_now:
        parts = [f"{s.items} items", f"{s.done} done now", f"{s.failed} failed", f"{s.already_done} already done"]
        if s.exhausted:
            parts.append(f"{s.exhausted} failed earlier past --max-retries")
        if s.pending:
            parts.append(f"{s.pending} pending")
        if s.duplicates:
            parts.append(f"{s.duplicates} duplicate rows ignored")
        speed = ""
        if s.cluster_started:
            speed = f"; {s.wall_s:.1f} s (cluster start {s.startup_s:.1f} s, model load {s.warm_s:.1f} s)"
            if s.items_per_s:
                speed += f", {s.items_per_s:.2f} items/s on {s.workers} worker(s)"
            if s.item_s_mean:
                speed += f", {s.item_s_mean:.2f} s per item on a worker"
        else:
            speed = "; nothing to compute"
        say(f"medsamkit: batch {s.job}: {', '.join(parts)}{speed} -> {s.out_dir}/summary.json")
        for f in s.failures[:10]:
            say(f"  failed: {f['id']} (line {f['line']}, {f['image']}): {f['error']}")
        if len(s.failures) > 10:
            say(f"  ... and {failed_now - 10} more (see summary.json or `medsamkit batch status`)")
    if failed_now:
        raise CliError(
            f"batch {s.job}: {failed_now} item(s) failed; finished items are kept, re-running retries the failed ones",
            code=3,
        )


def run_status(args: argparse.Namespace) -> None:
    from ..batch import Ledger

    path = args.folder / "ledger.sqlite"
    if not path.is_file():
        raise CliError(f"batch status: no ledger in {args.folder}")
    with Ledger(path) as ledger:
        job = ledger.job()
        counts = ledger.counts()
        runs = ledger.runs()
        failures = ledger.items(state="failed", limit=args.failures)
    print(f"job: {job.get('kind')} {json.dumps(job.get('settings', {}), sort_keys=True)}; {len(runs)} run(s)")
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    for r in failures:
        image = json.loads(r["payload"]).get("image")
        print(f"failed: {r['id']} (line {r['line']}, {image}; {r['failures']} failure(s)): {r['error']}")
