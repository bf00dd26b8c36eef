"""``medsamkit everything``: automatic masks of everything in a 2D image (SAM's everything mode)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import BACKEND_CHOICES, BACKEND_HELP, CliError, add_device_arguments, model_predictor, numbers_arg, positive_int, say

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "everything": "automatic masks of everything in a 2D image (point/box grid, filtered by predicted IoU and stability)",
}


if TYPE_CHECKING:
    from ..predict.automatic import EverythingOptions


def add_parser(sub) -> None:
    p = sub.add_parser(
        "everything",
        help=COMMANDS["everything"],
        description="Everything mode: prompt the model with a regular grid (points for SAM, a box pyramid for the "
        "box-trained LiteMedSAM), keep masks with high predicted IoU and stability score, remove duplicates by box NMS. "
        "Writes OUT_DIR/<stem>_labels.png (uint16 labels, largest mask first), <stem>_masks.json (records with COCO "
        "RLE masks, bbox XYWH, area, predicted_iou, stability_score, point_coords) and <stem>_overlay.png.",
    )
    p.add_argument("image", type=Path, help="2D image: PNG/JPEG/TIFF/BMP, a 2D NIfTI/NRRD/MHA/npz or a DICOM file")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--model", default="litemedsam", help="model name from `medsamkit models` (default litemedsam)")
    p.add_argument("--checkpoint", type=Path, help="weights file for --model (default: the registry's)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    add_device_arguments(p)
    add_everything_options(p)
    p.add_argument("--preset", default="auto", help="intensity preset for non-RGB images (see `medsamkit segment`)")
    p.add_argument(
        "--window",
        type=lambda s: numbers_arg(s, (2,), "LEVEL,WIDTH"),
        metavar="LEVEL,WIDTH",
        help="intensity window (overrides --preset)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_everything_options(p: argparse.ArgumentParser) -> None:
    """The everything-mode options (also used by `medsamkit batch everything/samaug`); unset ones keep the
    model's defaults (:func:`options_from_args`)."""
    p.add_argument("--points-per-side", type=positive_int, help="grid size n (default 32; the cost grows with n^2)")
    p.add_argument("--points-per-batch", type=positive_int, help="prompts decoded together (default 64)")
    p.add_argument("--prompt-mode", choices=("points", "boxes"), help="grid prompts (default: the model's; boxes for litemedsam)")
    p.add_argument("--pred-iou-thresh", type=float, help="minimum predicted IoU")
    p.add_argument("--stability-thresh", type=float, help="minimum stability score")
    p.add_argument("--nms-thresh", type=float, help="box NMS IoU threshold (default 0.7)")
    p.add_argument("--crop-layers", type=int, help="crop layers (0 = whole image only; each layer has 4x the crops)")
    p.add_argument("--min-region-area", type=int, help="remove islands/holes smaller than this many pixels")
    p.add_argument("--skip-covered", action="store_true", help="skip grid prompts already inside an accepted mask")


def options_from_args(args: argparse.Namespace) -> EverythingOptions:
    """EverythingOptions: the model's defaults, then the options given on the command line."""
    from ..predict.automatic import default_options

    mapping = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "prompt_mode": args.prompt_mode,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_thresh,
        "box_nms_thresh": args.nms_thresh,
        "crop_n_layers": args.crop_layers,
        "min_mask_region_area": args.min_region_area,
        "skip_covered": True if args.skip_covered else None,
    }
    overrides = {k: v for k, v in mapping.items() if v is not None}
    if overrides.get("prompt_mode") == "points" and "multimask_output" not in overrides:
        overrides["multimask_output"] = True
    return default_options(args.model, **overrides)


def run(args: argparse.Namespace) -> None:
    from ..predict.jobs import everything_file

    if not args.image.exists():
        raise CliError(f"{args.image}: no such file or folder")
    opts = options_from_args(args)
    summary = everything_file(
        lambda: model_predictor(args),
        args.image,
        args.output,
        opts,
        preset=args.preset,
        window=tuple(args.window) if args.window else None,
        model_name=args.model,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        t = summary["timings"]
        say(
            f"{summary['masks']} masks from {summary['stats']['prompts']} prompts in {t['generate_s']:.1f} s "
            f"-> {summary['labels']}, {summary['records']}, {summary['overlay']}"
        )
    sys.stdout.flush()
