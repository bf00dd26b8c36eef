"""The int8 image encoder (backend ``onnxruntime-int8``) against the fp32 one: speed and accuracy (issue 17, item 1).

In one run, on 2 threads, after recording the CPU's flags:
  * speed: an fp32 matmul probe and the encoder floor it implies (encoder FLOPs / probe, as bench_predict.py), then
    the encoder ms of ONNX Runtime fp32 and int8 (median of 10 after a warm-up, the two interleaved);
  * optionally (``--static``) ONNX Runtime's *static* int8 (QDQ, calibrated on a fixed set of permissively licensed
    images: the first 6 of HC18 (CC BY 4.0), the first 6 of BUSI (CC0), the first 4 of DSB 2018 (CC0)), the
    option the issue named first: its speed and its embedding error against fp32;
  * accuracy on every 2D set of ../shared/data/real: per image, one ground-truth box per label (tight, inclusive),
    masks from the fp32 and the int8 encoder with the same decoder. Per box: Dice of the int8 mask against the fp32
    mask, and each mask's Dice against the ground truth. Per set: mean Dice against the ground truth of both
    encoders and their paired difference with a 95 % bootstrap interval over images.

Targets (issue 17): encoder <= 1.0x the fp32 floor; int8-vs-fp32 Dice >= 0.98 for every box whose fp32 mask has
>= 100 px; mean int8-vs-fp32 Dice >= 0.995; on every set, mean Dice against the ground truth within 0.005 of fp32.

Usage: python benchmarks/bench_quantized.py [--shared PATH] [--limit N] [--static] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

THREADS = 2
os.environ["MEDSAMKIT_THREADS"] = str(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import count_flops, matmul_probe  # noqa: E402
from machine import cpu_flags  # noqa: E402

from medsamkit.evaluate.analysis import bootstrap_mean, paired_bootstrap  # noqa: E402
from medsamkit.io import read_image_2d  # noqa: E402
from medsamkit.metrics import dice  # noqa: E402
from medsamkit.models import load  # noqa: E402
from medsamkit.predict import Predictor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = (("hc18_fetal_head_us", 6), ("busi_breast_us", 6), ("dsb2018_nuclei_96", 4))


def sets_2d(data: Path) -> list[Path]:
    """The sets holding 2D pictures (PNG or JPEG) with masks."""
    return [
        d
        for d in sorted(data.iterdir())
        if (d / "images").is_dir() and any(p.suffix in (".png", ".jpg") for p in (d / "images").iterdir())
    ]


def boxes_of(mask: np.ndarray) -> list[tuple[int, np.ndarray, list[int]]]:
    out = []
    for v in np.unique(mask)[1:]:
        m = mask == v
        ys, xs = np.nonzero(m)
        out.append((int(v), m, [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]))
    return out


def encoder_ms(fp32: Predictor, int8: Predictor, x: np.ndarray, repeat: int = 10) -> tuple[float, float]:
    for p in (fp32, int8):
        p.engine.encode(x)
    a, b = [], []
    for _ in range(repeat):
        for p, out in ((fp32, a), (int8, b)):
            t = time.perf_counter()
            p.engine.encode(x)
            out.append(time.perf_counter() - t)
    return 1000 * float(np.median(a)), 1000 * float(np.median(b))


def static_int8(fp32: Predictor, data: Path, x: np.ndarray) -> dict[str, float]:
    """ONNX Runtime static int8 (QDQ, per channel, the weight MatMul/Gemm/Conv nodes) calibrated on CALIBRATION."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = fp32.engine.folder / "encoder.onnx"  # type: ignore[attr-defined]
    pictures = []
    for name, n in CALIBRATION:
        for f in sorted((data / name / "images").glob("*.png"))[:n]:
            pictures.append(fp32.preprocess(read_image_2d(f))[0])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(pictures)

        def get_next(self) -> dict[str, np.ndarray] | None:
            nxt = next(self.it, None)
            return None if nxt is None else {"image": nxt}

    graph = onnx.load(str(src)).graph
    weights = {i.name for i in graph.initializer}
    nodes = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and any(i in weights for i in n.input)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "encoder-static.onnx"
        t0 = time.perf_counter()
        quantize_static(
            src,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=nodes,
        )
        build = time.perf_counter() - t0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
        sess.run(None, {"image": x})
        times = []
        for _ in range(10):
            t = time.perf_counter()
            emb = sess.run(None, {"image": x})[0]
            times.append(time.perf_counter() - t)
    ref = fp32.engine.encode(x)
    return {
        "build_s": round(build, 1),
        "encoder_ms": round(1000 * float(np.median(times)), 1),
        "embedding_relative_error": round(float(np.abs(emb - ref).mean() / np.abs(ref).mean()), 4),
    }


def accuracy(fp32: Predictor, other: Predictor, data: Path, limit: int | None = None, name: str = "int8") -> dict:
    """Masks of ``other`` against ``fp32`` (the same decoder; one tight ground-truth box per label) on every 2D set of
    ``data``: per set the agreement (Dice of other vs fp32 per box), boxes of >= 100 px below 0.98, and both
    encoders' mean Dice against the ground truth with their paired difference (95 % bootstrap over images; keys
    ``dice_gt_fp32``, ``dice_gt_<name>``, ``dice_gt_<name>_minus_fp32``); overall
    ``sets``, ``boxes``, ``agreement_mean``, ``agreement_min_100px``, ``boxes_100px_below_0.98``."""
    per_set: dict[str, dict] = {}
    all_agree, all_px = [], []
    for d in sets_2d(data):
        images = sorted(p for p in (d / "images").iterdir() if p.suffix in (".png", ".jpg"))[:limit]
        agree, px, gt32, gt8, units = [], [], [], [], []
        for f in tqdm(images, desc=d.name, leave=False):
            img = read_image_2d(f)
            gt = read_image_2d(next((d / "masks").glob(f.stem + ".*")))
            objs = boxes_of(gt)
            if not objs:
                continue
            boxes = np.array([b for _, _, b in objs], float)
            fp32.set_image(img)
            m32 = fp32.predict(boxes=boxes).masks[:, 0]
            other.set_image(img)
            m8 = other.predict(boxes=boxes).masks[:, 0]
            for (_, m, _), a, b in zip(objs, m32, m8):
                agree.append(dice(b, a))
                px.append(int(a.sum()))
                gt32.append(dice(a, m))
                gt8.append(dice(b, m))
                units.append(f.stem)
        if not agree:
            continue
        agree_a, px_a = np.array(agree), np.array(px)
        big = agree_a[px_a >= 100]
        diff = paired_bootstrap(gt32, gt8, units)
        per_set[d.name] = {
            "images": len(set(units)),
            "boxes": len(agree),
            "agreement_mean": round(float(agree_a.mean()), 4),
            "agreement_min_100px": round(float(big.min()), 4) if big.size else None,
            "boxes_100px_below_0.98": int((big < 0.98).sum()),
            "dice_gt_fp32": bootstrap_mean(gt32, units).to_dict(),
            f"dice_gt_{name}": bootstrap_mean(gt8, units).to_dict(),
            f"dice_gt_{name}_minus_fp32": diff.to_dict(),
            "within_0.005": abs(diff.mean) <= 0.005,
        }
        all_agree += agree
        all_px += px
        print(d.name, json.dumps({k: per_set[d.name][k] for k in ("boxes", "agreement_mean", "agreement_min_100px")}), flush=True)
    agree_a, px_a = np.array(all_agree), np.array(all_px)
    big = agree_a[px_a >= 100]
    return {
        "sets": per_set,
        "boxes": int(agree_a.size),
        "agreement_mean": round(float(agree_a.mean()), 4),
        "agreement_min_100px": round(float(big.min()), 4),
        "boxes_100px_below_0.98": int((big < 0.98).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--limit", type=int, help="first N images per set (quick runs)")
    ap.add_argument("--static", action="store_true", help="also measure ONNX Runtime static (calibrated) int8")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_quantized.json")
    args = ap.parse_args()
    data = args.shared / "data" / "real"
    if not data.is_dir():
        sys.exit(f"no data at {data}: pass --shared")

    import onnxruntime as ort

    fp32 = Predictor("litemedsam", backend="onnxruntime", threads=THREADS)
    t0 = time.perf_counter()
    int8 = Predictor("litemedsam", backend="onnxruntime-int8", threads=THREADS)
    build_s = time.perf_counter() - t0
    result: dict = {
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "onnxruntime": ort.__version__,
        "threads": THREADS,
        "int8_recipe": "ONNX Runtime dynamic quantization: weight MatMul/Gemm nodes, int8 per channel; the rest fp32",
        "int8_first_load_s": round(build_s, 1),
        "int8_file_bytes": int8.engine._encoder_file.stat().st_size,  # type: ignore[attr-defined]
        "fp32_file_bytes": (fp32.engine.folder / "encoder.onnx").stat().st_size,  # type: ignore[attr-defined]
    }

    # -- speed
    probe = matmul_probe()
    enc_gflop, _ = count_flops(load("litemedsam"))
    floor_ms = enc_gflop / probe["best"] * 1000
    first = sorted((data / "hc18_fetal_head_us" / "images").glob("*.png"))[0]
    x = fp32.preprocess(read_image_2d(first))[0]
    ms32, ms8 = encoder_ms(fp32, int8, x)
    result.update(
        matmul_gflops=round(probe["best"], 1),
        encoder_gflop=round(enc_gflop, 3),
        encoder_floor_ms=round(floor_ms, 1),
        encoder_ms_fp32=round(ms32, 1),
        encoder_ms_int8=round(ms8, 1),
        ratio_to_floor_fp32=round(ms32 / floor_ms, 3),
        ratio_to_floor_int8=round(ms8 / floor_ms, 3),
        embedding_relative_error_int8=round(
            float(np.abs(int8.engine.encode(x) - fp32.engine.encode(x)).mean() / np.abs(fp32.engine.encode(x)).mean()), 4
        ),
    )
    print(json.dumps({k: result[k] for k in ("encoder_floor_ms", "encoder_ms_fp32", "encoder_ms_int8")}), flush=True)
    if args.static:
        result["static_qdq"] = static_int8(fp32, data, x)
        print(json.dumps(result["static_qdq"]), flush=True)

    # -- accuracy
    result.update(accuracy(fp32, int8, data, args.limit))
    result["targets"] = {
        "encoder <= 1.0x the fp32 floor": result["ratio_to_floor_int8"] <= 1.0,
        "every box with >= 100 px: int8-vs-fp32 Dice >= 0.98": result["boxes_100px_below_0.98"] == 0,
        "mean int8-vs-fp32 Dice >= 0.995": result["agreement_mean"] >= 0.995,
        "every set: mean Dice vs ground truth within 0.005 of fp32": all(s["within_0.005"] for s in result["sets"].values()),
    }
    result["all_targets_met"] = all(result["targets"].values())
    if args.limit is None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("agreement_mean", "agreement_min_100px", "targets")}, indent=1))


if __name__ == "__main__":
    main()
