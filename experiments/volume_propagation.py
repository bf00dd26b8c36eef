"""Compare 3D propagation variants against the official LiteMedSAM 3D procedure on the 3D sets of
../shared/data/real (3D box from the ground truth per label, as in ../shared/reference/litemedsam).

Usage: python experiments/volume_propagation.py [--sets msd_hippocampus_mri_3d,...] [--variants official,default]
Slice embeddings are cached on disk (--cache), so variants share the encoder work.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from medsamkit.io import read_image
from medsamkit.predict import Predictor
from medsamkit.predict.cache import EmbeddingCache
from medsamkit.predict.volume import ObjectPrompt, PropagationOptions, segment_volume

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"
REF = SHARED / "reference" / "litemedsam"

VARIANTS = {
    "official": dict(method="official"),
    "default": dict(method="medsamkit", options=PropagationOptions()),
    "m4": dict(method="medsamkit", options=PropagationOptions(box_margin=4)),
    "m5": dict(method="medsamkit", options=PropagationOptions(box_margin=5)),
    "m6": dict(method="medsamkit", options=PropagationOptions(box_margin=6)),
    "m6_fb0.85": dict(method="medsamkit", options=PropagationOptions(box_margin=6, fit_threshold=0.85)),
    "m3_fb0.85": dict(method="medsamkit", options=PropagationOptions(fit_threshold=0.85)),
    "single": dict(method="medsamkit", options=PropagationOptions(output_selection="single")),
    "fit_always": dict(method="medsamkit", options=PropagationOptions(fit_threshold=1.01)),
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum() + b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def cases(sets: list[str]) -> list[dict]:
    """Reference cases (their boxes) plus the other cases of each set (boxes from the ground truth)."""
    ref = {c["image"]: c for c in json.loads((REF / "manifest.json").read_text()) if c["dim"] == 3}
    out = []
    for s in sets:
        for img in sorted((DATA / s / "images").glob("*.nii.gz")):
            rel = f"{s}/images/{img.name}"
            if rel in ref:
                c = ref[rel]
                out.append(
                    {
                        "set": s,
                        "image": rel,
                        "mask": c["mask"],
                        "labels": c["labels"],
                        "boxes": c["boxes"],
                        "official_ref": c["official_dice_vs_gt"],
                        "preset": "soft_tissue" if "CT" in c["preset"] else "percentile",
                    }
                )
            elif s == "msd_hippocampus_mri_3d":
                gt = read_image(DATA / s / "masks" / img.name).array
                labels, boxes = [], []
                for v in (1, 2):
                    zz, yy, xx = np.nonzero(gt == v)
                    if zz.size:
                        labels.append(v)
                        boxes.append([int(xx.min()), int(yy.min()), int(zz.min()), int(xx.max()), int(yy.max()), int(zz.max())])
                out.append(
                    {
                        "set": s,
                        "image": rel,
                        "mask": f"{s}/masks/{img.name}",
                        "labels": labels,
                        "boxes": boxes,
                        "official_ref": None,
                        "preset": "percentile",
                    }
                )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="msd_hippocampus_mri_3d,brats2021_flair_edema_3d,totalseg_examples_3d")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cache", default=str(ROOT / "experiments" / ".embedding-cache"))
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "volume_propagation.json"))
    ap.add_argument("--limit", type=int, default=0, help="at most this many cases per set (0 = all)")
    args = ap.parse_args()
    predictor = Predictor("litemedsam", cache=EmbeddingCache(max_bytes=2 << 30, disk_dir=args.cache, disk_max_bytes=None))
    variants = args.variants.split(",")
    rows = []
    per_set_counts: dict[str, int] = {}
    for c in cases(args.sets.split(",")):
        if args.limit and per_set_counts.get(c["set"], 0) >= args.limit:
            continue
        per_set_counts[c["set"]] = per_set_counts.get(c["set"], 0) + 1
        img = read_image(DATA / c["image"])
        gt = read_image(DATA / c["mask"]).array
        prompts = [ObjectPrompt(label=i + 1, box3d=b) for i, b in enumerate(c["boxes"])]
        for v in variants:
            t = time.perf_counter()
            seg = segment_volume(img, prompts, predictor, preset=c["preset"], **VARIANTS[v])
            for i, lab in enumerate(c["labels"]):
                rows.append(
                    {
                        "set": c["set"],
                        "case": Path(c["image"]).name,
                        "label": lab,
                        "variant": v,
                        "dice": dice(seg.labels == i + 1, gt == lab),
                        "seconds": time.perf_counter() - t,
                        "official_ref": c["official_ref"][i] if c["official_ref"] else None,
                    }
                )
        print(
            c["image"],
            {
                v: round(np.mean([r["dice"] for r in rows if r["case"] == Path(c["image"]).name and r["variant"] == v]), 3)
                for v in variants
            },
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\nper-set mean Dice (objects):")
    for s in dict.fromkeys(r["set"] for r in rows):
        line = {v: round(float(np.mean([r["dice"] for r in rows if r["set"] == s and r["variant"] == v])), 4) for v in variants}
        print(f"  {s}: {line}")


if __name__ == "__main__":
    main()
