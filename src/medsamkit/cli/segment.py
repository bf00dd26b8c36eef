"""``medsamkit segment``: prompted segmentation of a 2D image or a 3D volume."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .common import CliError, box_arg, numbers_arg, positive_int, say

AXIS_FRAME = {"z": "x,y", "y": "x,z", "x": "y,z"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment objects in a 2D image or a 3D volume from box/point prompts",
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
    p.add_argument("--slice", type=int, help="slice index of the 2D --box in a volume")
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
    p.add_argument("--label", action="append", default=[], metavar="NAME", help="name of each object, in order")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output mask: .png (2D); .nii.gz, .nii, .nrrd, .mha, or .dcm (DICOM-SEG, DICOM input) for volumes",
    )
    p.add_argument("--model", default="litemedsam", help="registered model (see `medsamkit models`)")
    p.add_argument("--checkpoint", type=Path, help="weight file to use for --model's architecture")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch"))
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    p.add_argument(
        "--embedding-cache",
        type=Path,
        metavar="DIR",
        help="keep slice embeddings in DIR so a later command on the same image skips the encoder",
    )
    p.add_argument("--overlay", type=Path, help="also write an overlay PNG here (2D inputs)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..io import ImageReadError, read_image
    from ..io.dicom import DicomSegError
    from ..models import WeightsError

    if not (args.box or args.box3d or args.point):
        raise CliError("segment: give at least one --box, --box3d or --point")
    window = None
    if args.window is not None:
        from ..preprocess.intensity import parse_window

        try:
            window = parse_window(args.window)
        except ValueError as e:
            raise CliError(f"segment: --{e}") from e
    t0 = time.perf_counter()
    try:
        image = read_image(args.image, series_uid=args.series, modality=args.modality)
        if image.is_volume:
            _run_volume(args, image, window, t0)
        else:
            _run_2d(args, image, window, t0)
    except (ImageReadError, WeightsError, DicomSegError, ValueError) as e:
        raise CliError(str(e).strip().splitlines()[0], code=1) from e


def _predictor(args: argparse.Namespace):
    from ..predict import Predictor
    from ..predict.cache import EmbeddingCache

    cache = EmbeddingCache(disk_dir=args.embedding_cache) if args.embedding_cache else None
    return Predictor(args.model, checkpoint=args.checkpoint, backend=args.backend, threads=args.threads, cache=cache)


def _names(args: argparse.Namespace, n: int) -> dict[int, str]:
    if len(args.label) > n:
        raise CliError(f"segment: {len(args.label)} --label names for {n} object(s)")
    return {i + 1: name for i, name in enumerate(args.label)}


def _run_2d(args: argparse.Namespace, image, window, t0: float) -> None:
    from ..io import write_mask
    from ..predict import segment_2d
    from ..preprocess.intensity import resolve_preset

    if args.box3d or args.slice is not None or args.world:
        raise CliError("segment: --box3d, --slice and --world are for volumes; this input is a 2D image")
    if args.output.suffix.lower() != ".png":
        raise CliError(f"segment: -o {args.output}: 2D masks are written as .png")
    points = []
    for v in args.point:
        if len(v) == 4:
            raise CliError("segment: 2D points are X,Y or X,Y,LABEL")
        if len(v) == 3 and v[2] not in (0.0, 1.0):
            raise CliError(f"segment: point {v}: LABEL must be 1 (foreground) or 0 (background)")
        points.append(v if len(v) == 3 else v + [1.0])
    arr = image.array
    preset_info = {"preset": "passthrough"}
    if image.is_rgb or (arr.dtype == np.uint8 and window is None and args.preset == "auto"):
        picture = arr
    else:
        fitted = resolve_preset(arr, image.modality, args.preset, window)
        picture, preset_info = fitted.apply(arr), fitted.describe()
    predictor = _predictor(args)
    result = segment_2d(predictor, picture, boxes=args.box, points=points)
    n = len(result.masks)
    write_mask(
        args.output,
        result.labels,
        image,
        names=_names(args, n),
        metadata={
            "model": args.model,
            "backend": predictor.engine.backend,
            "intensity": preset_info,
            "boxes_xyxy_inclusive": args.box,
            "points_xy_label": points,
            "predicted_iou": [round(float(s), 4) for s in result.scores],
        },
    )
    if args.overlay is not None:
        from ..io import write_png
        from ..viz import overlay_masks

        write_png(args.overlay, overlay_masks(picture, result.labels, boxes=args.box, points=points))
    if not args.quiet:
        areas = ", ".join(f"{int(m.sum())} px (predicted IoU {s:.2f})" for m, s in zip(result.masks, result.scores))
        say(f"{args.output}: {n} object(s): {areas}; {time.perf_counter() - t0:.2f} s")


def _to_voxel(image, values: list[float], world: bool) -> list[float]:
    if not world:
        return values
    return [float(v) for v in np.rint(image.world_to_voxel(np.asarray(values, float)))]


def _run_volume(args: argparse.Namespace, image, window, t0: float) -> None:
    from ..io import write_mask
    from ..predict.volume import ObjectPrompt, segment_volume

    if args.overlay is not None:
        raise CliError("segment: --overlay is for 2D inputs")
    prompts: list[ObjectPrompt] = []
    if args.box:
        if args.slice is None:
            raise CliError("segment: a --box on a volume needs --slice (or use --box3d)")
        if args.world:
            raise CliError("segment: --world applies to --box3d and --point; give the 2D --box in voxels")
        prompts += [ObjectPrompt(label=len(prompts) + 1, box=b, slice_index=args.slice) for b in args.box]
    for b in args.box3d:
        if args.world:
            a, c = _to_voxel(image, b[:3], True), _to_voxel(image, b[3:], True)
            b = [min(a[0], c[0]), min(a[1], c[1]), min(a[2], c[2]), max(a[0], c[0]), max(a[1], c[1]), max(a[2], c[2])]
        prompts.append(ObjectPrompt(label=len(prompts) + 1, box3d=b))
    if args.point:
        if prompts:
            raise CliError("segment: on volumes, --point makes its own object; do not mix it with --box/--box3d")
        pts = []
        for v in args.point:
            if len(v) == 2:
                raise CliError(f"segment: volume points need X,Y,Z[,LABEL]; got {v}")
            label = v[3] if len(v) == 4 else 1.0
            pts.append(_to_voxel(image, v[:3], args.world) + [label])
        prompts.append(ObjectPrompt(label=1, points=pts))
    if len(prompts) > 255:
        raise CliError("segment: at most 255 objects fit in a uint8 label mask")
    names = _names(args, len(prompts))
    for p in prompts:
        p.name = names.get(p.label)
    predictor = _predictor(args)
    show = not args.quiet and sys.stderr.isatty()
    seg = segment_volume(image, prompts, predictor, axis=args.axis, preset=args.preset, window=window, progress=show)
    meta = {
        "model": args.model,
        "backend": predictor.engine.backend,
        "intensity": seg.preset.describe() if seg.preset else None,
        "axis": args.axis,
        "axis_frame_of_2d_boxes": AXIS_FRAME[args.axis],
        "prompts": [{k: v for k, v in p.__dict__.items() if v is not None} for p in prompts],
        "objects": seg.objects,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_mask(args.output, seg.labels, image, names=names or {p.label: f"object {p.label}" for p in prompts}, metadata=meta)
    if not args.quiet:
        desc = ", ".join(f"label {o['label']}: {o['voxels']} voxels on slices {o['slices']}" for o in seg.objects)
        say(f"{args.output}: {desc}; {time.perf_counter() - t0:.1f} s")
