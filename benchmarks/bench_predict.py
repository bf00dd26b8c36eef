"""Speed of the 2D prompted predictor on this machine (LiteMedSAM, CPU).

Prints, in one run and on 2 threads:
  * an fp32 matmul GFLOP/s probe, and the encoder floor it implies (encoder FLOPs / probe);
  * encoder ms (ONNX Runtime, the default, and eager PyTorch) and the ratio to that floor;
  * decode ms per prompt (one prompt per call, and 8 boxes in one call);
  * end-to-end ms per 2D case: 20 real cases of ../shared/data/real in one process after warm-up
    (read the file, encode, decode the ground-truth boxes, masks at full resolution);
  * process wall time of one `medsamkit segment` call (new process, ONNX export already cached);
  * peak RSS of this process and of the CLI process.

Usage: python benchmarks/bench_predict.py [--shared PATH] [--out benchmarks/results/bench_predict.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
os.environ["MEDSAMKIT_THREADS"] = str(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(THREADS)

from medsamkit.io import read_image_2d  # noqa: E402
from medsamkit.models import load  # noqa: E402
from medsamkit.models.backends.torch_engine import TorchEngine  # noqa: E402
from medsamkit.predict import Predictor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def matmul_probe() -> dict[str, float]:
    """Best fp32 GFLOP/s of a 2048^3 matmul on THREADS threads, in PyTorch and in ONNX Runtime (MLAS)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = 2048
    flops = 2 * n**3
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch_rate = flops / min(_timed(lambda: torch.mm(a, b)) for _ in range(8)) / 1e9
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "probe",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "AB"],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"A": a.numpy(), "B": b.numpy()}
    ort_rate = flops / min(_timed(lambda: sess.run(None, feed)) for _ in range(8)) / 1e9
    return {"torch": torch_rate, "onnxruntime": ort_rate, "best": max(torch_rate, ort_rate)}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def count_flops(model) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            emb = model.encode(x)
        enc = fc.get_total_flops()
        prep = model.prepare_decoder(emb)
        coords, labels = torch.tensor([[[10.0, 10.0], [100.0, 120.0]]]), torch.tensor([[2.0, 3.0]])
        with FlopCounterMode(display=False) as fc:
            model.decode_prepared(prep, coords, labels)
        dec = fc.get_total_flops()
    return enc / 1e9, dec / 1e9


def real_cases(shared: Path, n: int) -> list[tuple[Path, list[list[int]]]]:
    """n real 2D cases (round-robin over the sets) with one box per label from the ground truth."""
    data = shared / "data" / "real"
    per_set = []
    for d in sorted(data.iterdir()):
        imgs = sorted(p for p in (d / "images").glob("*") if p.suffix in (".png", ".jpg")) if d.is_dir() else []
        if imgs:
            per_set.append((d, imgs))
    cases, k = [], 0
    while len(cases) < n:
        for d, imgs in per_set:
            if k < len(imgs) and len(cases) < n:
                img = imgs[k]
                mask = read_image_2d(next((d / "masks").glob(img.stem + ".*")))
                boxes = []
                for v in np.unique(mask)[1:]:
                    ys, xs = np.nonzero(mask == v)
                    boxes.append([int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())])
                cases.append((img, boxes))
        k += 1
    return cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_predict.json")
    args = ap.parse_args()

    r = {
        "threads": THREADS,
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
    }
    import onnxruntime

    r["onnxruntime"] = onnxruntime.__version__

    probe = matmul_probe()
    r["matmul_gflops"] = probe["best"]
    r["matmul_gflops_torch"], r["matmul_gflops_onnxruntime"] = probe["torch"], probe["onnxruntime"]
    model = load("litemedsam")
    enc_gflop, dec_gflop = count_flops(model)
    r["encoder_gflop"], r["decoder_gflop_per_prompt"] = enc_gflop, dec_gflop
    r["encoder_floor_ms"] = 1000 * enc_gflop / r["matmul_gflops"]
    r["decoder_floor_ms"] = 1000 * dec_gflop / r["matmul_gflops"]

    ort_p = Predictor("litemedsam")  # default backend
    torch_p = Predictor(engine=TorchEngine(model, threads=THREADS))
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    r["encoder_ms_onnxruntime"] = median_ms(lambda: ort_p.engine.encode(x), 7, 2)
    r["encoder_ms_torch_eager"] = median_ms(lambda: torch_p.engine.encode(x), 3, 1)
    r["encoder_ratio_to_floor"] = r["encoder_ms_onnxruntime"] / r["encoder_floor_ms"]

    img = (np.random.default_rng(1).random((512, 512)) * 255).astype(np.uint8)
    ort_p.set_image(img)
    torch_p.set_image(img)
    emb = ort_p.get_image_embedding()
    r["prepare_ms_onnxruntime"] = median_ms(lambda: ort_p.engine.prepare(emb), 11, 2)
    box = [[100, 120, 300, 330]]
    boxes8 = [[20 + 10 * i, 30 + 5 * i, 200 + 20 * i, 220 + 15 * i] for i in range(8)]
    r["decode_ms_per_prompt_single"] = median_ms(lambda: ort_p.predict(boxes=box), 21, 3)
    r["decode_ms_per_prompt_batch8"] = median_ms(lambda: ort_p.predict(boxes=boxes8), 7, 2) / 8
    r["decode_ms_per_prompt_torch_eager"] = median_ms(lambda: torch_p.predict(boxes=box), 7, 1)
    # a correction click with the click-trained decoder: box + 2 clicks + the previous low-res logits as mask prompt
    # (no decoder preparation can be reused: the mask prompt changes the image tokens), same image embedding
    inter = Predictor("litemedsam-interactive")
    inter.set_image(img)
    prev = inter.predict(boxes=box).low_res_logits[0, :1]
    pts, labs = np.array([[200.0, 220.0], [120.0, 140.0]]), np.array([1, 0])
    click = lambda: inter.predict(point_coords=pts, point_labels=labs, boxes=box, mask_input=prev)  # noqa: E731
    r["decode_ms_per_click_interactive"] = median_ms(click, 21, 3)
    r["decode_ms_per_click_interactive_no_mask"] = median_ms(
        lambda: inter.predict(point_coords=pts, point_labels=labs, boxes=box), 21, 3
    )

    if (args.shared / "data" / "real").is_dir():
        cases = real_cases(args.shared, 20)

        def run_case(path: Path, boxes):
            ort_p.set_image(read_image_2d(path))
            return ort_p.predict(boxes=boxes).masks

        run_case(*cases[0])
        t = time.perf_counter()
        for path, boxes in cases:
            run_case(path, boxes)
        r["end_to_end_ms_per_case"] = 1000 * (time.perf_counter() - t) / len(cases)
        r["end_to_end_cases"] = len(cases)
        r["end_to_end_boxes"] = sum(len(b) for _, b in cases)

        demo = ROOT / "src" / "medsamkit" / "assets" / "demo" / "busi_malignant_10.png"
        cli = [
            sys.executable,
            "-m",
            "medsamkit.cli.main",
            "segment",
            str(demo),
            "--box",
            "206,36,305,113",
            "-o",
            "/tmp/medsamkit_bench_mask.png",
            "-q",
            "--threads",
            str(THREADS),
        ]
        subprocess.run(cli, check=True)  # warm-up (ONNX export cached, files in page cache)
        walls = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run(cli, check=True)
            walls.append(time.perf_counter() - t)
        r["cli_wall_s"] = statistics.median(walls)
        # peak RSS of one CLI process, measured from a small launcher (a fork of this big process would
        # count our own memory as the child's)
        launcher = (
            "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        out = subprocess.run([sys.executable, "-c", launcher, *cli], check=True, capture_output=True, text=True)
        r["peak_rss_mb_cli_process"] = int(out.stdout.split()[-1]) / 1024
    r["peak_rss_mb_bench_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    lines = [
        f"fp32 matmul probe ({THREADS} threads, 2048^3): {r['matmul_gflops']:.1f} GFLOP/s "
        f"(ONNX Runtime {r['matmul_gflops_onnxruntime']:.1f}, PyTorch {r['matmul_gflops_torch']:.1f})",
        f"encoder: {r['encoder_gflop']:.1f} GFLOP -> floor {r['encoder_floor_ms']:.0f} ms",
        f"encoder ONNX Runtime: {r['encoder_ms_onnxruntime']:.0f} ms = {r['encoder_ratio_to_floor']:.2f} x floor "
        f"(target <= 2.0, stretch 1.5); eager PyTorch {r['encoder_ms_torch_eager']:.0f} ms",
        f"decoder preparation per image (with the encoder, once): {r['prepare_ms_onnxruntime']:.1f} ms",
        f"decoder: {r['decoder_gflop_per_prompt']:.2f} GFLOP/prompt (standard form) -> floor {r['decoder_floor_ms']:.0f} ms; "
        f"decode + mask to full size {r['decode_ms_per_prompt_single']:.1f} ms (1 prompt/call), "
        f"{r['decode_ms_per_prompt_batch8']:.1f} ms/prompt (8 boxes/call) (target <= 35); "
        f"eager PyTorch {r['decode_ms_per_prompt_torch_eager']:.0f} ms; litemedsam-interactive correction click (box + 2 "
        f"clicks + mask prompt) {r['decode_ms_per_click_interactive']:.1f} ms, without the mask "
        f"{r['decode_ms_per_click_interactive_no_mask']:.1f} ms (target <= 35)",
    ]
    if "end_to_end_ms_per_case" in r:
        lines += [
            f"end to end: {r['end_to_end_ms_per_case']:.0f} ms per 2D case ({r['end_to_end_cases']} real cases, "
            f"{r['end_to_end_boxes']} boxes, read + encode + decode; target <= 1000)",
            f"one `medsamkit segment` process: {r['cli_wall_s']:.2f} s wall (target <= 4), "
            f"peak RSS {r['peak_rss_mb_cli_process']:.0f} MB",
        ]
    lines.append(f"peak RSS of this benchmark process: {r['peak_rss_mb_bench_process']:.0f} MB")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
