"""bf16 products with fp32 outputs on real kernels: PyTorch's oneDNN "fp32 math mode" under torch.compile (issue 17,
items 1 and 6). Not part of the package; needs a C++ compiler (Inductor builds its kernels with it).

``bench_mixed_precision.json`` found that, on the five sets where bf16 and int8 fail the parity rule most, rounding
the inputs of the four transformer Linear classes (qkv, proj, fc1, fc2) to bf16 keeps the rule when the weights stay
exact and the products fp32, and that OpenVINO's real kernels could not do that (ONNX's MatMul returns bf16). PyTorch
can: with ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` an fp32 Linear runs on oneDNN with its inputs
and weights rounded to bf16 (AMX where the CPU has it), accumulates in fp32 and returns fp32. In one run, on 2
threads, after recording the CPU, this compares (Inductor with freezing, the encoder only):

  * ``torch_fp32``: the encoder compiled as it is (no fp32 math mode);
  * ``hilo_bf16``: each of those 40 Linears with its weight split into two bf16 halves stacked along K and its input
    repeated along K (``[x, x] @ [W_hi; W_lo] = x W_hi + x W_lo``), under the bf16 math mode: inputs rounded to
    bf16, weights exact to ~16 bits, products and outputs fp32 - the emulated variant that kept the rule;
  * ``linear_bf16``: all Linears under the bf16 math mode as they are (weights rounded to bf16 too);

against ONNX Runtime fp32 (encoder ms: three rounds, each the median of 10 interleaved calls, with the matmul probe
before and after each round: this shared machine's speed drifts by a fifth within minutes), the embedding's relative
error against fp32 (mean over the first image of three sets), and parity (``bench_mixed_precision.parity``) on those
five sets for the two bf16 variants. The math mode is process-wide and covers every fp32 matmul, so in both bf16
variants the attention products (q k^T and (.) v) take bf16 inputs too; it is set before each call of a variant and
cleared after.

Usage: python benchmarks/bench_fpmath.py [--shared PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

THREADS = 2
os.environ["MEDSAMKIT_THREADS"] = str(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mixed_precision import PROBE_SETS, TRANSFORMER, FunctionEncoder, layer_class, parity  # noqa: E402
from bench_openvino import interleaved_ms  # noqa: E402
from machine import cpu_flags, cpu_model, torch_matmul_gflops  # noqa: E402

from medsamkit.io import read_image_2d  # noqa: E402
from medsamkit.models import load  # noqa: E402
from medsamkit.predict import Predictor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class HiLoLinear(torch.nn.Module):
    """``linear`` with its weight split into bf16 halves stacked along K, and its input repeated along K."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        hi = w.bfloat16().float()
        lo = (w - hi).bfloat16().float()
        self.weight = torch.nn.Parameter(torch.cat([hi, lo], 1).contiguous(), requires_grad=False)
        self.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.cat([x, x], -1), self.weight, self.bias)


def with_hilo(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``encoder`` with every Linear of the four transformer classes (``bench_mixed_precision.TRANSFORMER``)
    replaced by a HiLoLinear."""
    out = copy.deepcopy(encoder)
    targets = [name for name, mod in out.named_modules() if isinstance(mod, torch.nn.Linear) and layer_class(name) in TRANSFORMER]
    if len(targets) != 40:
        raise RuntimeError(f"expected 40 transformer Linears in LiteMedSAM's encoder, found {len(targets)}")
    for name in targets:
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent), child, HiLoLinear(getattr(out.get_submodule(parent), child)))
    return out


def compiled_encoder(module: torch.nn.Module, bf16_math: bool, x: np.ndarray) -> tuple[Any, float]:
    """``module`` compiled by Inductor (freezing on): (numpy (B,3,S,S) -> numpy embedding, compile seconds). The
    function sets the oneDNN fp32 math mode for its call and clears it after."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    compiled = torch.compile(module.eval())
    mode = "bf16" if bf16_math else "none"

    def run(images: np.ndarray) -> np.ndarray:
        torch.backends.mkldnn.matmul.fp32_precision = mode
        try:
            with torch.inference_mode():
                return compiled(torch.from_numpy(np.ascontiguousarray(images, np.float32))).numpy()
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = "none"

    t = time.perf_counter()
    run(x)
    return run, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_fpmath.json")
    args = ap.parse_args()
    data = (args.shared / "data" / "real").resolve()
    if not data.is_dir():
        sys.exit(f"no data at {data}: pass --shared")
    torch.set_num_threads(THREADS)
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "threads": THREADS,
        "torch": torch.__version__,
    }
    fp32 = Predictor("litemedsam", backend="onnxruntime", threads=THREADS)
    xs = [fp32.preprocess(read_image_2d(sorted((data / s / "images").glob("*.png"))[0]))[0] for s in PROBE_SETS]
    encoder = load("litemedsam").image_encoder.eval()
    variants = {"torch_fp32": (encoder, False), "hilo_bf16": (with_hilo(encoder), True), "linear_bf16": (encoder, True)}
    encoders: dict[str, Any] = {"onnxruntime_fp32": fp32.engine.encode}
    result["compile_s"] = {}
    for name, (module, bf16_math) in variants.items():
        torch._dynamo.reset()
        encoders[name], seconds = compiled_encoder(module, bf16_math, xs[0])
        result["compile_s"][name] = round(seconds, 1)
        print(name, "compiled in", round(seconds, 1), "s", flush=True)
    refs = [fp32.engine.encode(x) for x in xs]
    result["embedding_rel_error"] = {
        name: round(float(np.mean([np.linalg.norm(enc(x) - r) / np.linalg.norm(r) for x, r in zip(xs, refs)])), 6)
        for name, enc in encoders.items()
        if name != "onnxruntime_fp32"
    }
    result["encoder_ms_rounds"] = []
    for _ in range(3):
        probe = torch_matmul_gflops(THREADS)
        ms = {k: round(v, 1) for k, v in interleaved_ms(encoders, xs[0]).items()}
        result["encoder_ms_rounds"].append(
            {"probe_gflops_before": probe, **ms, "probe_gflops_after": torch_matmul_gflops(THREADS)}
        )
    print(json.dumps(result, indent=1), flush=True)
    result["parity_hard_sets"] = {
        name: parity(fp32, FunctionEncoder(fp32.engine, encoders[name], f"inductor-{name}"), data, name)
        for name in ("hilo_bf16", "linear_bf16")
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
