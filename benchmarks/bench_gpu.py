"""The predictor on a GPU (issue 17, item 5): encoder speed, parity and 3D propagation on ``--device`` (default cuda).

For each encoder precision (fp32; autocast bf16 and fp16 — fp16 on a GPU only) on the PyTorch backend:

* encoder ms per image (one image per call, and per slice in batches of 8), after warm-up;
* parity with the official LiteMedSAM pipeline on its 2D reference masks (../shared/reference/litemedsam), the rule
  of tests/predict/test_parity.py: Dice >= 0.98 for every box whose official mask has >= 100 px, <= 2 pixels
  differing below that, mean Dice >= 0.995;
* 3D propagation of the 60-slice organ of benchmarks/bench_volume.py's 100 x 512 x 512 phantom: seconds, slices/s
  and Dice against the CPU's fp32 ONNX Runtime masks of the same run.

Writes benchmarks/results/bench_gpu.json with the device's name. ``--device cpu`` runs the same script on the CPU
(fp32 and bf16): a dry run of the script, and bf16's parity where the CPU has bf16; the committed CPU run is
benchmarks/results/bench_gpu_on_cpu.json (``--out`` that file).

Usage: python benchmarks/bench_gpu.py [--device cuda] [--cases N] [--out benchmarks/results/bench_gpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_volume import box3d, dice, phantom  # noqa: E402  (benchmarks/)
from machine import cpu_flags, cpu_model  # noqa: E402

from medsamkit.io import read_image_2d  # noqa: E402
from medsamkit.predict import ObjectPrompt, Predictor, segment_volume  # noqa: E402

SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "litemedsam"
DATA = SHARED / "data" / "real"


def encoder_ms(p: Predictor, batch: int, repeats: int = 10) -> float:
    """Median ms per image of ``p.engine.encode`` on ``batch`` images per call (results copied back to the host)."""
    x = np.random.default_rng(0).normal(size=(batch, 3, 256, 256)).astype(np.float32)
    for _ in range(3):
        p.engine.encode(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p.engine.encode(x)  # returns a host array: the device work is finished when it returns
        times.append((time.perf_counter() - t0) * 1000 / batch)
    return round(float(np.median(times)), 2)


def parity(p: Predictor, limit: int | None) -> dict:
    """The parity rule on the official pipeline's 2D reference masks."""
    cases = [c for c in json.loads((REFERENCE / "manifest.json").read_text()) if c["dim"] == 2][:limit]
    scores, failures = [], []
    for case in cases:
        p.set_image(read_image_2d(DATA / case["image"]))  # as tests/predict/test_parity.py reads them
        official = np.load(REFERENCE / "segs" / f"{case['case']}.npz")["segs"]
        out = p.predict(boxes=np.array(case["boxes"], dtype=float))
        ours = np.zeros(official.shape, np.uint8)
        for i, m in enumerate(out.masks[:, 0], start=1):
            ours[m] = i
        for i in range(1, len(case["boxes"]) + 1):
            a, b = ours == i, official == i
            d = dice(a, b) if (a.any() or b.any()) else 1.0
            scores.append(d)
            if (b.sum() >= 100 and d < 0.98) or (b.sum() < 100 and int((a ^ b).sum()) > 2):
                failures.append(f"{case['case']} box {i}: Dice {d:.4f}")
    mean = float(np.mean(scores))
    return {
        "cases": len(cases),
        "boxes": len(scores),
        "mean_dice": round(mean, 5),
        "min_dice": round(float(np.min(scores)), 4),
        "failing_boxes": failures,
        "holds": not failures and mean >= 0.995,
    }


def propagation(p: Predictor, vol: np.ndarray, organ: np.ndarray, reference: np.ndarray | None) -> dict:
    prompt = [ObjectPrompt(label=1, box3d=box3d(organ))]
    t0 = time.perf_counter()
    seg = segment_volume(vol, prompt, p, preset="soft_tissue")
    s = time.perf_counter() - t0
    got = seg.labels == 1
    n = int(np.flatnonzero(organ.any(axis=(1, 2))).size)
    out = {"seconds": round(s, 2), "slices": n, "slices_per_s": round(n / s, 2), "dice_vs_truth": round(dice(got, organ), 4)}
    if reference is not None:
        out["dice_vs_cpu_fp32"] = round(dice(got, reference), 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cases", type=int, default=None, help="first N 2D reference cases (default all)")
    ap.add_argument("--skip-volume", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_gpu.json")
    args = ap.parse_args()
    import torch

    from medsamkit.models.backends import resolve_device

    dev = resolve_device(args.device)
    on_gpu = dev.startswith("cuda")
    result: dict = {
        "device": dev,
        "device_name": torch.cuda.get_device_name(dev) if on_gpu else cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "precisions": {},
    }
    vol = organ = reference = None
    if not args.skip_volume:
        vol, organ, _ = phantom()
        t0 = time.perf_counter()
        cpu = segment_volume(vol, [ObjectPrompt(label=1, box3d=box3d(organ))], Predictor("litemedsam"), preset="soft_tissue")
        reference = cpu.labels == 1
        result["cpu_onnxruntime_fp32_propagation_s"] = round(time.perf_counter() - t0, 2)
    for precision in ("fp32", "bf16", "fp16") if on_gpu else ("fp32", "bf16"):
        p = Predictor("litemedsam", backend="torch", device=dev, precision=precision)
        entry = {
            "encoder_ms": encoder_ms(p, 1),
            "encoder_ms_per_slice_batch8": encoder_ms(p, 8),
            "encode_batch": p.encode_batch,
            "parity": parity(p, args.cases),
        }
        if vol is not None and organ is not None:
            entry["propagation_60_slices"] = propagation(p, vol, organ, reference)
        result["precisions"][precision] = entry
        print(precision, json.dumps(entry)[:400], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
