"""``medsamkit samaug prepare``: SAMAug prior maps and augmented images for a labelled 2D dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError, SubParsers, add_model_arguments, model_predictor, positive_int, say

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "samaug": "SAMAug: everything-mode prior maps and augmented training images",
}


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser(
        "samaug",
        help=COMMANDS["samaug"],
        description="SAMAug (Zhang et al., MICCAI 2023): run everything mode on every image of a dataset and build "
        "the segmentation prior (stability scores of the masks) and boundary prior (their outer contours).",
    )
    actions = p.add_subparsers(dest="samaug_command", metavar="ACTION", parser_class=type(p))
    prep = actions.add_parser(
        "prepare",
        help="prepare an augmented dataset folder",
        description="Write OUT/priors/<case>.npz (seg_prior, boundary_prior), OUT/records/<case>.json (the masks), "
        "OUT/images/<case>.png and OUT/masks/<case>.png (so OUT is itself a folder dataset) and OUT/samaug.json. "
        "Mode add puts the priors into the green and blue channels (convex blend, never clipped); mode stack "
        "keeps the picture in images/ and writes the stacked float32 input [image, seg, boundary] to "
        "OUT/stacked/<case>.npy. Re-running skips cases whose inputs and settings did not change.",
    )
    prep.add_argument("dataset", type=Path, help="dataset folder (images/ + masks/, nnU-Net raw or MSD; 2D images)")
    prep.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    prep.add_argument("--mode", choices=("add", "stack"), default="add", help="add (authors' code, default) or stack (paper)")
    prep.add_argument("--alpha", type=float, default=None, help="add mode: weight of the priors in [0, 1] (default 0.5)")
    prep.add_argument("--thickness", type=positive_int, default=1, help="boundary prior width in pixels (default 1)")
    add_model_arguments(prep)
    prep.add_argument("--points-per-side", type=positive_int, help="everything mode's prompt grid (default: the model's)")
    prep.add_argument("--limit", type=positive_int, help="only the first N cases")
    prep.add_argument("--layout", choices=("auto", "folder", "nnunet", "msd"), default="auto", help="dataset layout")
    prep.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=run_prepare)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> None:
    raise CliError(f"{p.prog}: choose an action: prepare (see --help)")


def run_prepare(args: argparse.Namespace) -> None:
    from ..data import load_dataset
    from ..predict.automatic import AutomaticMaskGenerator, default_options
    from ..predict.unet import DEFAULT_ALPHA
    from ..samaug.prepare import prepare_dataset

    alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
    if args.alpha is not None and args.mode != "add":
        raise CliError("--alpha applies to --mode add only")
    if not 0.0 <= alpha <= 1.0:
        raise CliError(f"--alpha must be in [0, 1], got {alpha}")
    ds = load_dataset(args.dataset, layout=args.layout)
    if not len(ds):
        raise CliError(f"{ds.root}: no (image, mask) cases found")
    overrides = {} if args.points_per_side is None else {"points_per_side": args.points_per_side}
    options = default_options(args.model, **overrides)
    predictor = model_predictor(args)
    generator = AutomaticMaskGenerator(predictor, options)
    s = prepare_dataset(
        ds,
        args.output,
        generator,
        args.mode,
        progress=not args.quiet,
        alpha=alpha,
        thickness=args.thickness,
        limit=args.limit,
    )
    c = s["counts"]
    print(
        f"samaug {s['mode']}: {c['cases']} cases ({c['computed']} computed, {c['cached']} cached, {c['failed']} failed), "
        f"{c['masks']} masks, {s['wall_s']} s -> {args.output}"
    )
    if s["failures"]:
        for f in s["failures"]:
            say(f"medsamkit: samaug: case {f['case']} failed: {f['error']}")
        ids = ", ".join(f["case"] for f in s["failures"][:5]) + (", ..." if len(s["failures"]) > 5 else "")
        raise CliError(f"{len(s['failures'])} case(s) failed ({ids}); see {Path(args.output) / 'samaug.json'}", code=3)
