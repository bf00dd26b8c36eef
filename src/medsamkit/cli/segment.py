"""``medsamkit segment``: prompted segmentation of a 2D image or a 3D volume."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import adapter_predictor, add_model_arguments, box_arg, model_predictor, numbers_arg, say

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "segment": "segment objects in a 2D image or a 3D volume from box/point prompts",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help=COMMANDS["segment"],
        description="Segment objects from box and/or point prompts and write a label mask on the input's grid "
        "(label i for the i-th box; points only: one object, label 1). Coordinates are voxel/pixel indices: "
        "x = column (NIfTI i), y = row (j), z = slice (k); boxes are inclusive. Volumes: a 2D --box on --slice "
        "along --axis, or --box3d, or --point X,Y,Z on one slice; the object is propagated slice by slice.",
    )
    p.add_argument("image", type=Path, help="input: PNG/JPEG/TIFF/BMP, NIfTI, NRRD, MHA, npz, a DICOM file or series folder")
    p.add_argument(
        "--box",
        type=box_arg,
        action="append",
        default=[],
        metavar="X0,Y0,X1,Y1",
        help="box prompt (2D image, or on --slice of a volume); repeat for several objects",
    )
    p.add_argument(
        "--box3d",
        type=lambda s: numbers_arg(s, (6,), "X0,Y0,Z0,X1,Y1,Z1"),
        action="append",
        default=[],
        metavar="X0,Y0,Z0,X1,Y1,Z1",
        help="3D box prompt (volumes); repeat for several objects",
    )
    p.add_argument(
        "--point",
        type=lambda s: numbers_arg(s, (2, 3, 4), "X,Y[,LABEL] or X,Y,Z[,LABEL]"),
        action="append",
        default=[],
        metavar="X,Y[,Z][,LABEL]",
        help="point prompt; LABEL 1 = foreground (default), 0 = background; repeatable",
    )
    p.add_argument(
        "--slice",
        type=int,
        help="slice of the 2D --box in a volume: segmented there, then propagated slice by slice both ways until "
        "the object ends (a --box3d bounds the extent instead)",
    )
    p.add_argument(
        "--axis",
        choices=("z", "y", "x"),
        default="z",
        help="slicing axis for volumes (default z); a 2D --box on an axis-y slice is in (x, z), on x in (y, z)",
    )
    p.add_argument(
        "--world",
        action="store_true",
        help="--box3d/--point coordinates are world millimetres (RAS, as NIfTI/3D Slicer), not voxel indices",
    )
    p.add_argument(
        "--preset", default="auto", help="intensity preset: auto, soft_tissue, lung, bone, brain, percentile, passthrough"
    )
    p.add_argument("--window", metavar="LEVEL,WIDTH", help="explicit CT window, e.g. 40,400 (overrides --preset)")
    p.add_argument("--modality", help="override the modality the file states or that is guessed (CT, MR, ...)")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when a DICOM folder holds several")
    p.add_argument(
        "--resample",
        action="store_true",
        help="a DICOM series with missing or unevenly spaced slices: resample it onto a uniform grid (first and last "
        "slice kept, missing slices interpolated) so the mask can be NIfTI/NRRD/MHA; without it only -o .dcm is exact",
    )
    p.add_argument("--label", action="append", default=[], metavar="NAME", help="name of each object, in order")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output mask: .png (2D: label values 0, 1, 2... - dark in image viewers, see --overlay); .nii.gz, .nii, "
        ".nrrd, .mha, or .dcm (DICOM-SEG, DICOM input) for volumes. An input is never overwritten",
    )
    add_model_arguments(
        p,
        adapter_help="a `medsamkit finetune` result, loaded on top of its base model (PyTorch backend unless --backend "
        "names one)",
    )
    p.add_argument(
        "--embedding-cache",
        type=Path,
        metavar="DIR",
        help="keep slice embeddings in DIR so a later command on the same image skips the encoder (at most 4 GiB; "
        "the least recently used entries are deleted first)",
    )
    p.add_argument("--overlay", type=Path, help="also write an overlay PNG here (2D inputs)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..predict.jobs import SegmentRequest, segment_file
    from ..preprocess.intensity import parse_window

    t0 = time.perf_counter()
    request = SegmentRequest(
        image=args.image,
        output=args.output,
        boxes=args.box,
        boxes3d=args.box3d,
        points=args.point,
        slice_index=args.slice,
        axis=args.axis,
        world=args.world,
        names=args.label,
        preset=args.preset,
        window=None if args.window is None else parse_window(args.window),
        modality=args.modality,
        series=args.series,
        overlay=args.overlay,
        resample=args.resample,
    )
    show = not args.quiet and sys.stderr.isatty()
    record = segment_file(lambda: _predictor(args), request, model_name=None if args.adapter else args.model, progress=show)
    if args.quiet:
        return
    objects = record["objects"]
    if record["kind"] == "2d":
        areas = ", ".join(f"{o['pixels']} px (predicted IoU {o['predicted_iou']:.2f})" for o in objects)
        see = f"; picture in {args.overlay}" if args.overlay else "; add --overlay FILE.png for a picture"
        say(
            f"{args.output}: {len(objects)} object(s): {areas}; {time.perf_counter() - t0:.2f} s "
            f"(label values 1..{len(objects)} on 0: dark in an image viewer{see})"
        )
    else:
        desc = ", ".join(f"label {o['label']}: {o['voxels']} voxels on slices {o['slices']}" for o in objects)
        say(f"{args.output}: {desc}; {time.perf_counter() - t0:.1f} s")


def _predictor(args: argparse.Namespace):
    from ..predict.cache import EmbeddingCache

    # the folder is the store; within this process segment_volume shares slice embeddings between objects itself
    cache = EmbeddingCache(max_bytes=64 << 20, disk_dir=args.embedding_cache) if args.embedding_cache else None
    if args.adapter is not None:
        return adapter_predictor(args, cache)[0]
    return model_predictor(args, cache)
