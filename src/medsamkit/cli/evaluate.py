"""``medsamkit evaluate``: a model on labelled datasets under simulated prompt protocols -> CSV, summary, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .batch import engine_options, uses_dask
from .common import CliError, add_model_arguments, positive_int, say

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "evaluate": "evaluate a model on labelled datasets with simulated prompts",
}


DEFAULT_PROTOCOLS = ("box",)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help=COMMANDS["evaluate"],
        description="Evaluate a model on one or more labelled datasets (folders with images/ + masks/, nnU-Net raw "
        "datasets, Medical Segmentation Decathlon tasks). Every label of every case is one object; each --prompt "
        "protocol simulates prompts from its ground truth. Writes RUN_DIR/results.csv (one row per object, protocol "
        "and step), summary.json and report.html; re-running the same command skips finished cases.",
        epilog="Protocols: box, box:components, box-shift:N, box-jitter:R (e.g. 0.1), point:centre, point:centroid, "
        "point:random, points:K, points:K+M, iterative:N:farthest-error|random-error[:mask][:start=box], "
        "uncertainty:K:R; option select=first|highest-iou|oracle (e.g. point:centre:select=oracle).",
    )
    p.add_argument("dataset", type=Path, nargs="+", help="dataset folder(s)")
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="PROTOCOL",
        help="prompt protocol (repeatable; default: box). See below.",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt simulation (default 0)")
    p.add_argument(
        "--mode",
        choices=("slices", "volume"),
        default="slices",
        help="3D cases: evaluate each axial slice as a 2D object (default) or whole volumes by propagation",
    )
    p.add_argument(
        "--min-slice-pixels", type=positive_int, default=1, help="slices mode: skip slices where the object has fewer pixels"
    )
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (pixels for PNG/JPEG); default 2")
    p.add_argument("--limit", type=positive_int, help="only the first N cases of each dataset")
    p.add_argument(
        "--modality",
        help="modality of all cases when the files do not say: CT, MR, PT, US, XR or OTHER (CT windows non-8-bit images)",
    )
    p.add_argument(
        "--layout", choices=("auto", "folder", "nnunet", "msd"), default="auto", help="dataset layout (default: detect)"
    )
    p.add_argument("--channel", type=int, default=0, help="nnU-Net/MSD: which image channel to use (default 0)")
    p.add_argument(
        "--preset", default="auto", help="intensity preset for non-8-bit images: auto, soft_tissue, lung, bone, brain, percentile"
    )
    p.add_argument("--window", metavar="LEVEL,WIDTH", help="explicit CT window, e.g. 40,400 (overrides --preset)")
    p.add_argument(
        "--no-masks", action="store_true", help="do not keep the predicted masks (the report then has no worst-case pictures)"
    )
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    add_model_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from .batch import add_engine_arguments

    add_engine_arguments(p)  # --workers/--threads-per-worker/--scheduler: cases run on Dask, results as above
    p.set_defaults(func=run)


def _interval(dice: dict) -> str:
    """``"[low, high] over N pictures "`` from a summary cell (empty when it has no interval)."""
    iv = dice.get("interval95")
    return f"[{iv[0]}, {iv[1]}] over {dice['units']} pictures " if iv else ""


def run(args: argparse.Namespace) -> None:
    from ..data import load_dataset
    from ..evaluate import EvalConfig, run_evaluation
    from ..preprocess.intensity import parse_window
    from ..prompts import parse_protocol

    protocols = args.prompt or list(DEFAULT_PROTOCOLS)
    for text in protocols:
        parse_protocol(text)
    window = parse_window(args.window) if args.window else None
    config = EvalConfig(
        seed=args.seed,
        mode=args.mode,
        nsd_tolerance=args.nsd_tolerance,
        preset=args.preset,
        window=window,
        min_slice_pixels=args.min_slice_pixels,
        save_masks=not args.no_masks,
    )
    datasets = []
    for path in args.dataset:
        datasets.append(load_dataset(path, layout=args.layout, channel=args.channel, modality=args.modality))
    for d in datasets:
        if d.skipped:
            say(f"medsamkit: {d.name}: {len(d.skipped)} file(s) skipped (e.g. {d.skipped[0][0]}: {d.skipped[0][1]})")
        if not len(d):
            raise CliError(f"{d.root}: no (image, mask) cases found")
    kwargs = dict(
        model=args.model,
        checkpoint=args.checkpoint,
        backend=args.backend,
        threads=args.threads,
        device=args.device,
        precision=args.precision,
        config=config,
        limit=args.limit,
        progress=not args.quiet,
        report=not args.no_report,
    )
    if uses_dask(args):
        from ..batch import DaskEngine, ModelSpec, evaluate_mapper

        engine = DaskEngine(engine_options(args))
        spec = ModelSpec(
            args.model,
            checkpoint=str(args.checkpoint.resolve()) if args.checkpoint else None,
            backend=args.backend,
            threads=engine.model_threads(),
            device=args.device,
            precision=args.precision,
        )
        with engine:  # the cluster starts only when a case is left to compute
            run_ = run_evaluation(datasets, args.output, protocols, map_cases=evaluate_mapper(engine, spec), **kwargs)
    else:
        run_ = run_evaluation(datasets, args.output, protocols, **kwargs)
    s = run_.summary
    for e in s["table"]:
        if e["dataset"] == "all" and (e["final"] or e["step"] == 0):
            step = f" step {e['step']}" if e["step"] else ""
            print(
                f"{e['protocol']}{step}: Dice {e['dice']['mean']} {_interval(e['dice'])}(median {e['dice']['median']}, "
                f"n={e['n']}), "
                f"NSD {e['nsd_mean']}, HD95 median {e['hd95_median']}"
            )
    say(
        f"medsamkit: {s['run']['cases']} cases ({run_.computed} evaluated, {run_.skipped} already done), {s['objects']} objects, "
        f"{s['errors']} error rows, {s['run']['wall_s']} s -> {run_.out_dir}/results.csv, summary.json"
        + ("" if args.no_report else ", report.html")
    )
    failed = s["errors"] - s.get("invalid", 0)
    if failed:
        cases = sorted({f"{e['dataset']}/{e['case']}" for e in s.get("error_examples", []) if e.get("status") == "error"})
        shown = f" ({', '.join(cases[:5])}{', ...' if len(cases) > 5 else ''})" if cases else ""
        raise CliError(
            f"evaluate: {failed} result row(s) failed{shown}; the rest is kept in {run_.out_dir} and a re-run retries them",
            code=3,
        )
