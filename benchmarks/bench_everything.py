"""Speed of everything mode (bundled LiteMedSAM, 2 threads) for 16x16 and 32x32 grids on real 2D images, the
split of its cost, and what prompt reduction (``skip_covered``) saves and loses.

For each image and grid size: seconds per image (encode + decode + filters + NMS + upscaling, as
``AutomaticMaskGenerator.generate`` reports them), prompts, masks. Then the same with ``skip_covered``: prompts
skipped, seconds, and mask recall = the fraction of the full grid's masks that a reduced-grid mask matches with
IoU >= 0.8. Targets (issue 5): 32x32 <= 45 s per image, 16x16 <= 12 s; the official SAM generator with
LiteMedSAM takes ~198 s for 32x32 on this machine type.

Usage: python benchmarks/bench_everything.py [--images 6] [--out benchmarks/results/bench_everything.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

THREADS = 2
os.environ["MEDSAMKIT_THREADS"] = str(THREADS)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import torch_matmul_gflops  # noqa: E402

from medsamkit.io.raster import read_image_2d  # noqa: E402
from medsamkit.predict import Predictor  # noqa: E402
from medsamkit.predict.automatic import AutomaticMaskGenerator, default_options  # noqa: E402
from medsamkit.predict.masks import rle_decode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared")) / "data" / "real"
SETS = ("kvasir_seg", "glas_gland_histo", "busi_breast_us")
OFFICIAL_32_S = 198.0  # the official SAM generator with LiteMedSAM, 32x32 grid, this machine type (issue 5)


def images(per_set: int) -> list[Path]:
    out = []
    for s in SETS:
        files = sorted(p for p in (DATA / s / "images").iterdir() if not p.name.startswith("."))
        out += files[:: max(1, len(files) // per_set)][:per_set]
    return out


def masks_of(records: list[dict]) -> np.ndarray:
    return np.stack([rle_decode(r["segmentation"]) for r in records]) if records else np.zeros((0, 1, 1), bool)


def recall(full: np.ndarray, reduced: np.ndarray, thr: float = 0.8) -> float:
    """Fraction of ``full`` masks with an IoU >= thr match among ``reduced`` masks."""
    if len(full) == 0:
        return 1.0
    if len(reduced) == 0:
        return 0.0
    a = full.reshape(len(full), -1).astype(np.float32)
    b = reduced.reshape(len(reduced), -1).astype(np.float32)
    inter = a @ b.T
    iou = inter / (a.sum(1)[:, None] + b.sum(1)[None, :] - inter)
    return float((iou.max(1) >= thr).mean())


def cli_everything(path: Path) -> dict[str, Any]:
    """One ``medsamkit everything`` process with the default options on ``path`` (the first Kvasir image, 570x531):
    wall time and peak RSS. Target (issue 17): <= 1.5 GB."""
    import tempfile

    from machine import run_measured

    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "medsamkit.cli.main", "everything", str(path), "-o", d, "-q"]
        wall, peak = run_measured(cmd, env={**os.environ, "MEDSAMKIT_THREADS": str(THREADS)})
    return {"image": f"{path.parent.parent.name}/{path.name}", "wall_s": round(wall, 1), "peak_rss_mb": round(peak)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6, help="images in all (split over kvasir, glas, busi)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_everything.json")
    args = ap.parse_args()
    paths = images(max(1, args.images // len(SETS)))
    predictor = Predictor("litemedsam", threads=THREADS)
    gflops_before = torch_matmul_gflops(THREADS)
    rows = []
    for path in paths:
        img = read_image_2d(path)
        predictor.set_image(img)  # warm-up (first-call overheads), not timed
        for n in (16, 32):
            res = {}
            for skip in (False, True):
                gen = AutomaticMaskGenerator(
                    predictor, default_options("litemedsam", points_per_side=n, skip_covered=skip, output_mode="rle")
                )
                t0 = time.perf_counter()
                out = gen.generate(img)
                res[skip] = (time.perf_counter() - t0, out)
            (t_full, full), (t_skip, red) = res[False], res[True]
            row = {
                "image": f"{path.parent.parent.name}/{path.name}",
                "shape": list(img.shape[:2]),
                "grid": n,
                "seconds": round(t_full, 2),
                "prompts": full.stats["prompts"],
                "masks": full.stats["masks"],
                "split_s": {k: full.stats[k] for k in ("encode_s", "decode_s", "filter_s", "nms_s", "upscale_s")},
                "decode_ms_per_prompt": round(1000 * full.stats["decode_s"] / full.stats["prompts"], 1),
                "skip_covered": {
                    "seconds": round(t_skip, 2),
                    "prompts": red.stats["prompts"],
                    "skipped": red.stats["prompts_skipped"],
                    "masks": red.stats["masks"],
                    "recall_vs_full": round(recall(masks_of(full.records), masks_of(red.records)), 3),
                },
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    gflops_after = torch_matmul_gflops(THREADS)
    cli = cli_everything(paths[0])
    print(f"medsamkit everything {paths[0].name}, one process: {cli['wall_s']:.1f} s, peak RSS {cli['peak_rss_mb']:.0f} MB")
    summary = {}
    for n in (16, 32):
        rs = [r for r in rows if r["grid"] == n]
        summary[f"{n}x{n}"] = {
            "mean_seconds": round(float(np.mean([r["seconds"] for r in rs])), 2),
            "max_seconds": round(float(np.max([r["seconds"] for r in rs])), 2),
            "mean_decode_ms_per_prompt": round(float(np.mean([r["decode_ms_per_prompt"] for r in rs])), 1),
            "mean_share_decode": round(float(np.mean([r["split_s"]["decode_s"] / r["seconds"] for r in rs])), 3),
            "mean_share_encode": round(float(np.mean([r["split_s"]["encode_s"] / r["seconds"] for r in rs])), 3),
            "mean_masks": round(float(np.mean([r["masks"] for r in rs])), 1),
            "skip_covered_mean_seconds": round(float(np.mean([r["skip_covered"]["seconds"] for r in rs])), 2),
            "skip_covered_mean_prompt_fraction": round(
                float(np.mean([r["skip_covered"]["prompts"] / r["prompts"] for r in rs])), 3
            ),
            "skip_covered_mean_recall": round(float(np.mean([r["skip_covered"]["recall_vs_full"] for r in rs])), 3),
        }
    doc = {
        "threads": THREADS,
        "model": "litemedsam",
        "backend": predictor.engine.backend,
        "matmul_gflops_before_after": [gflops_before, gflops_after],
        "official_sam_generator_32x32_s": OFFICIAL_32_S,
        "summary": summary,
        "cli_everything_default_options": cli,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(json.dumps({"summary": summary, "matmul_gflops": [gflops_before, gflops_after]}, indent=1))


if __name__ == "__main__":
    main()
