"""How fast this (shared) machine is right now: every timing in these benchmarks scales with it."""

from __future__ import annotations

import time
from pathlib import Path

#: the CPU features that decide which kernels are fast (int8 dot products, bf16), recorded with every benchmark
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo; "unknown" where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")


def cpu_flags() -> list[str]:
    """Those of FLAGS that this CPU has (from /proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in FLAGS if f in have]


def describe(threads: int) -> str:
    """One line for result files: the CPU's model, the FLAGS it has and the threads used, e.g.
    ``"Intel(R) Xeon(R) Processor (avx2, avx512f, amx_int8), 2 threads"``."""
    flags = ", ".join(cpu_flags()) or "no listed flags"
    return f"{cpu_model()} ({flags}), {threads} threads"


def torch_matmul_gflops(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """FP32 matmul GFLOP/s of PyTorch on ``threads`` threads (n x n by n x n, after two warm-up products).
    The machine is shared: its throughput has been seen to halve for minutes (147 -> 55-83 GFLOP/s)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return round(2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9, 1)


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd`` to completion: (wall seconds, its peak RSS in MB). The command is started from a small launcher
    process, because a child forked from a big benchmark process would count the benchmark's memory as its own."""
    import subprocess
    import sys

    launcher = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", launcher, *cmd], check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, int(out.stdout.split()[-1]) / 1024
