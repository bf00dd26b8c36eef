"""End-to-end speed of `medsamkit evaluate`: 60 HC18 fetal-head ultrasound images with box prompts, 2 threads.

Runs the CLI as a fresh process (python start, model load, reading, encoding once per image, decoding, metrics,
attributes, CSV/summary/HTML report) into an empty folder and reports wall seconds per image (target: <= 1.5 s).
A second run adds three more prompt protocols (box-jitter, centre point, 3 iterative clicks) into another empty
folder: the encoder still runs once per image, so the extra cost per image is decoding + metrics only.
Needs ../shared/data/real (or MEDSAMKIT_SHARED).

Usage: python benchmarks/bench_evaluate.py [--out benchmarks/results/bench_evaluate.json] [--images 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import torch_matmul_gflops  # benchmarks/machine.py (scripts run from their folder)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
HC18 = SHARED / "data" / "real" / "hc18_fetal_head_us"
THREADS = 2


def evaluate(out: Path, images: int, protocols: list[str]) -> dict:
    cmd = [sys.executable, "-m", "medsamkit.cli.main", "evaluate", str(HC18), "--limit", str(images), "-o", str(out), "-q"]
    cmd += [a for p in protocols for a in ("--prompt", p)]
    cmd += ["--modality", "US", "--threads", str(THREADS)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"evaluate failed: {proc.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    table = {
        e["protocol"] + (f"@{e['step']}" if e["step"] else ""): e["dice"]["mean"]
        for e in summary["table"]
        if e["dataset"] == "all"
    }
    decode = {e["protocol"]: e["time_s_mean"] for e in summary["table"] if e["dataset"] == "all" and e["final"]}
    return {
        "protocols": protocols,
        "images": images,
        "wall_s": round(wall, 2),
        "s_per_image": round(wall / images, 3),
        "loop_s": summary["run"]["wall_s"],
        "encode_s_mean": summary["timing"]["encode_s_mean"],
        "images_encoded": summary["timing"]["images_encoded"],
        "prompt_time_s_mean": decode,
        "dice_mean": table,
        "errors": summary["errors"],
    }


def matmul_probe() -> float:
    return torch_matmul_gflops(THREADS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_evaluate.json")
    ap.add_argument("--images", type=int, default=60)
    args = ap.parse_args()
    if not HC18.is_dir():
        raise SystemExit(f"HC18 not found at {HC18} (set MEDSAMKIT_SHARED)")
    # warm the ONNX export cache so that the timed runs measure what a user's second command costs
    with tempfile.TemporaryDirectory() as tmp:
        evaluate(Path(tmp) / "warm", 1, ["box"])
    results: dict = {"matmul_gflops_before": matmul_probe()}
    with tempfile.TemporaryDirectory() as tmp:
        results["box"] = evaluate(Path(tmp) / "box", args.images, ["box"])
        print(json.dumps(results["box"], indent=1))
        several = ["box", "box-jitter:0.1", "point:centre", "iterative:3:farthest-error:start=box"]
        results["four_protocols"] = evaluate(Path(tmp) / "four", args.images, several)
        print(json.dumps(results["four_protocols"], indent=1))
    results["matmul_gflops_after"] = matmul_probe()
    results["threads"] = THREADS
    results["target_s_per_image"] = 1.5
    results["peak_rss_children_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"box: {results['box']['s_per_image']} s/image (target <= 1.5); wrote {args.out}")


if __name__ == "__main__":
    main()
