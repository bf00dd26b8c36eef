"""``medsamkit segment``: prompted segmentation of a 2D image."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import CliError, box_arg, point_arg, positive_int, say


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment objects from box/point prompts and write a label mask",
        description="Segment objects in a 2D image from box and/or point prompts and write a uint8 label "
        "mask the size of the input (label i for the i-th box; points only: label 1). Coordinates are pixel "
        "indices: x = column, y = row; box corners are inclusive.",
    )
    p.add_argument("image", type=Path, help="input image (PNG, JPEG, TIFF or BMP)")
    p.add_argument(
        "--box", type=box_arg, action="append", default=[], metavar="X0,Y0,X1,Y1", help="box prompt; repeat for several objects"
    )
    p.add_argument(
        "--point",
        type=point_arg,
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="point prompt; LABEL 1 = foreground (default), 0 = background; repeatable",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output mask (.png)")
    p.add_argument("--model", default="litemedsam", help="registered model (see `medsamkit models`)")
    p.add_argument("--checkpoint", type=Path, help="weight file to use for --model's architecture")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch"))
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    p.add_argument("--overlay", type=Path, help="also write an overlay PNG here")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..io import ImageReadError, read_image_2d, write_png
    from ..models import WeightsError
    from ..predict import Predictor, segment_2d

    if not args.box and not args.point:
        raise CliError("segment: give at least one --box or --point")
    if args.output.suffix.lower() != ".png":
        raise CliError(f"segment: -o {args.output}: 2D masks are written as .png")
    t0 = time.perf_counter()
    try:
        img = read_image_2d(args.image)
        predictor = Predictor(args.model, checkpoint=args.checkpoint, backend=args.backend, threads=args.threads)
        result = segment_2d(predictor, img, boxes=args.box, points=args.point)
    except (ImageReadError, WeightsError, ValueError) as e:
        raise CliError(str(e).splitlines()[0], code=1) from e
    write_png(args.output, result.labels)
    if args.overlay is not None:
        from ..viz import overlay_masks

        write_png(args.overlay, overlay_masks(img, result.labels, boxes=args.box, points=args.point))
    if not args.quiet:
        areas = ", ".join(f"{int(m.sum())} px (predicted IoU {s:.2f})" for m, s in zip(result.masks, result.scores))
        say(f"{args.output}: {len(result.masks)} object(s): {areas}; {time.perf_counter() - t0:.2f} s")
