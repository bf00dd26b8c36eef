"""How fast this (shared) machine is right now: every timing in these benchmarks scales with it."""

from __future__ import annotations

import time


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
