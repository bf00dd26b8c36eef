"""``medsamkit demo``: the bundled model on the bundled example image."""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

from .common import BACKEND_CHOICES, BACKEND_HELP, SubParsers, say

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "demo": "segment the bundled example with the bundled LiteMedSAM",
}


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser(
        "demo",
        help=COMMANDS["demo"],
        description="Segment the bundled breast-ultrasound example (BUSI, CC0) with the bundled LiteMedSAM "
        "from its ground-truth box; write mask.png, overlay.png and result.json (with Dice).",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("medsamkit-demo"), help="output folder")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from ..io import read_image_2d, write_png
    from ..predict import Predictor, segment_2d
    from ..viz import overlay_masks

    root = resources.files("medsamkit.assets") / "demo"
    meta = json.loads((root / "demo.json").read_text())
    with resources.as_file(root / meta["image"]) as p_img, resources.as_file(root / meta["mask"]) as p_gt:
        image = read_image_2d(p_img)
        truth = read_image_2d(p_gt) > 0
    t0 = time.perf_counter()
    predictor = Predictor("litemedsam", backend=args.backend)
    t1 = time.perf_counter()
    result = segment_2d(predictor, image, boxes=[meta["box"]])
    t2 = time.perf_counter()
    pred = result.labels > 0
    dice = 2 * np.logical_and(pred, truth).sum() / max(int(pred.sum() + truth.sum()), 1)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    write_png(out / "mask.png", result.labels)
    write_png(out / "overlay.png", overlay_masks(image, result.labels, boxes=[meta["box"]]))
    info = {
        "image": meta["image"],
        "source": meta["source"],
        "license": meta["license"],
        "box_xyxy_inclusive": meta["box"],
        "model": "litemedsam",
        "backend": predictor.engine.backend,
        "dice_vs_ground_truth": round(float(dice), 4),
        "predicted_iou": round(float(result.scores[0]), 4),
        "seconds_model_load": round(t1 - t0, 3),
        "seconds_segment": round(t2 - t1, 3),
    }
    (out / "result.json").write_text(json.dumps(info, indent=2) + "\n")
    say(
        f"demo: {meta['modality']} image {image.shape[1]}x{image.shape[0]}, box {meta['box']} -> "
        f"Dice {dice:.3f} vs ground truth ({predictor.engine.backend}, {t2 - t1:.2f} s)"
    )
    say(f"wrote {out / 'mask.png'}, {out / 'overlay.png'}, {out / 'result.json'}")
