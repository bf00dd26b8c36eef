"""``medsamkit autoseg``: prompt-free segmentation with a trained AutoSAM run (``medsamkit finetune --mode autosam``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import positive_int, say

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "autoseg": "segment an image without prompts with a trained AutoSAM run",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "autoseg",
        help=COMMANDS["autoseg"],
        description="Segment IMAGE with no prompt: the AutoSAM prompt generator of RUN_DIR (from `medsamkit finetune "
        "--mode autosam`) replaces the prompts of its base model. Writes a uint8 mask (1 = foreground) on the "
        "image's grid with a JSON sidecar. Volumes are segmented slice by slice along z (the intensity preset is "
        "fitted on the whole volume, as in training).",
    )
    p.add_argument("image", type=Path, help="input: PNG/JPEG/TIFF/BMP, NIfTI, NRRD, MHA, npz, a DICOM file or series folder")
    p.add_argument("--autosam", type=Path, required=True, metavar="RUN_DIR", help="AutoSAM run folder (or its adapter.pt)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output mask (.png for 2D; .nii.gz, .nrrd, .mha for volumes)")
    p.add_argument("--modality", help="override the modality the file states or that is guessed (CT, MR, ...)")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when a DICOM folder holds several")
    p.add_argument(
        "--backend",
        choices=("auto", "onnxruntime", "torch"),
        default="auto",
        help="engine of the image encoder (default auto: ONNX Runtime when installed); the rest runs in PyTorch",
    )
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..io import read_image, write_mask
    from ..io.writers import check_mask_fits, check_mask_output
    from ..predict.autoseg import AutoSegmenter, autoseg_image, autoseg_volume, load_autosam

    t0 = time.perf_counter()
    check_mask_output(args.output, [args.image, args.autosam])
    image = read_image(args.image, series_uid=args.series, modality=args.modality)
    check_mask_fits(image, args.output)
    model = load_autosam(args.autosam)
    seg = AutoSegmenter(model, backend=args.backend, threads=args.threads)
    if image.is_volume:
        mask = autoseg_volume(seg, image, args.modality, progress=not args.quiet and sys.stderr.isatty())
    else:
        mask = autoseg_image(seg, image, args.modality)
    info = model.adapter_info
    meta = {
        "model": f"{Path(str(info['base']['model'])).name}+autosam",
        "run": str(args.autosam),
        "adapter_epoch": info.get("epoch"),
        "prompt": "none (AutoSAM prompt generator)",
        "backend": seg.predictor.engine.backend,
    }
    write_mask(args.output, mask, like=image, names={1: "foreground"}, metadata=meta)
    if not args.quiet:
        say(f"{args.output}: {int(mask.sum())} foreground pixel(s) of {mask.size}; {time.perf_counter() - t0:.2f} s")
