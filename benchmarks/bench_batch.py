"""Throughput of `medsamkit batch segment` on Dask against single-process loops, in one run.

Workload: 40 real 2D images (24 Kvasir-SEG colonoscopy RGB JPEGs, 16 BUSI breast-ultrasound PNGs) with the box
of their ground-truth mask, and 5 MSD hippocampus MR volumes with the 3D box of theirs (propagated over ~25
slices each), all from ../shared/data/real. Every configuration segments all 45 items and writes masks:

* ``in_process_loop``: one Python process, one Predictor (2 threads), :func:`segment_file` per item - the
  library loop that `medsamkit segment` runs once per call, without process start-up (model loaded once);
* ``cli_subprocess_loop``: `python -m medsamkit.cli.main segment ... --threads 2` per item, a fresh process
  each time (Python start, imports, model load per item), as a shell loop over the CLI would;
* ``dask_1x2``: `run_batch` on a LocalCluster with 1 worker x 2 threads; ``dask_2x1``: 2 workers x 1 thread.
  Cluster start and the per-worker warm-up (imports + model load) are reported apart from the processing time.
* ``rerun``: the 2x1 command again on its finished folder (the ledger skips everything; no cluster starts).
* ``engine_overhead``: 300 no-op items on 2 workers x 1 thread: the engine's own cost per item.

Dask's overhead per item = (processing time of dask_1x2 - time of the in-process loop) / items: both run one
item at a time with 2 threads, so the difference is scheduling, serialisation, the start event and the ledger.
All outputs are compared voxel by voxel with the in-process loop's. The machine's matmul throughput (2 threads)
is measured before and after (the machine is shared). Needs ../shared/data/real (or MEDSAMKIT_SHARED).

Usage: python benchmarks/bench_batch.py [--out benchmarks/results/bench_batch.json] [--no-cli]
       python benchmarks/bench_batch.py --table-from benchmarks/results/bench_batch.json   (docs/batch.md's table)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from machine import torch_matmul_gflops  # benchmarks/machine.py (scripts run from their folder)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"
THREADS = 2

if TYPE_CHECKING:
    from medsamkit.batch import ManifestItem, ModelSpec
    from medsamkit.batch.cluster import PredictorLease


def _box(mask: np.ndarray) -> str:
    idx = np.nonzero(mask)
    lo = [int(i.min()) for i in reversed(idx)]  # x, y[, z]
    hi = [int(i.max()) for i in reversed(idx)]
    return ",".join(map(str, lo + hi))


def workload(n_2d: int = 40, n_volumes: int = 5) -> list[dict[str, str]]:
    from medsamkit.io import read_image

    rows = []
    kvasir = sorted((DATA / "kvasir_seg" / "images").glob("*.jpg"))[: n_2d - min(16, n_2d // 2)]
    busi = sorted((DATA / "busi_breast_us" / "images").glob("*.png"))[: min(16, n_2d // 2)]
    for image in kvasir + busi:
        mask = read_image(image.parent.parent / "masks" / f"{image.stem}.png").array > 0
        rows.append({"id": f"{image.parent.parent.name}-{image.stem}", "image": str(image), "box": _box(mask)})
    for image in sorted((DATA / "msd_hippocampus_mri_3d" / "images").glob("*.nii.gz"))[:n_volumes]:
        mask = read_image(image.parent.parent / "masks" / image.name).array > 0
        rows.append({"id": f"hippocampus-{image.name[:-7]}", "image": str(image), "box3d": _box(mask)})
    return rows


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "box", "box3d"])
        w.writeheader()
        w.writerows(rows)
    return path


def _output(out: Path, row: dict[str, str]) -> Path:
    return out / "masks" / f"{row['id']}{'.nii.gz' if 'box3d' in row else '.png'}"


def in_process_loop(rows: list[dict[str, str]], out: Path) -> dict:
    from medsamkit.predict import Predictor
    from medsamkit.predict.jobs import SegmentRequest, segment_file

    t0 = time.perf_counter()
    predictor = Predictor("litemedsam", threads=THREADS)
    load_s = time.perf_counter() - t0
    per_kind: dict[str, list[float]] = {"2d": [], "volume": []}
    t0 = time.perf_counter()
    for row in rows:
        t = time.perf_counter()
        boxes = [[float(v) for v in row["box"].split(",")]] if "box" in row else []
        boxes3d = [[float(v) for v in row["box3d"].split(",")]] if "box3d" in row else []
        request = SegmentRequest(image=Path(row["image"]), output=_output(out, row), boxes=boxes, boxes3d=boxes3d)
        rec = segment_file(predictor, request, model_name="litemedsam")
        per_kind[rec["kind"]].append(time.perf_counter() - t)
    loop_s = time.perf_counter() - t0
    return {
        "what": "one process, one Predictor (2 threads), segment_file per item",
        "items": len(rows),
        "model_load_s": round(load_s, 3),
        "loop_s": round(loop_s, 2),
        "items_per_s": round(len(rows) / loop_s, 4),
        "s_per_2d_image": round(float(np.mean(per_kind["2d"])), 3),
        "s_per_volume": round(float(np.mean(per_kind["volume"])), 3),
    }


def cli_loop(rows: list[dict[str, str]], out: Path) -> dict:
    t0 = time.perf_counter()
    for row in rows:
        prompt = ["--box3d", row["box3d"]] if "box3d" in row else ["--box", row["box"]]
        cmd = [sys.executable, "-m", "medsamkit.cli.main", "segment", row["image"], *prompt]
        cmd += ["-o", str(_output(out, row)), "--threads", str(THREADS), "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"segment failed: {proc.stderr}")
    wall = time.perf_counter() - t0
    return {
        "what": "`python -m medsamkit.cli.main segment ... --threads 2` per item (a fresh process each)",
        "items": len(rows),
        "wall_s": round(wall, 2),
        "items_per_s": round(len(rows) / wall, 4),
        "s_per_item": round(wall / len(rows), 3),
    }


def dask_run(manifest: Path, out: Path, workers: int, threads: int) -> dict:
    from medsamkit.batch import DaskEngine, EngineOptions, ModelSpec, SegmentJob, run_batch

    t0 = time.perf_counter()
    engine = DaskEngine(EngineOptions(workers=workers, threads_per_worker=threads))
    with engine:
        s = run_batch(SegmentJob(str(out), ModelSpec("litemedsam", threads=threads)), manifest, engine=engine)
    wall = time.perf_counter() - t0
    if s.failed:
        raise SystemExit(f"batch failed: {s.failures}")
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    seg = {"2d": [], "volume": []}
    for r in records:
        seg[r["kind"]].append(r["timings"]["total_s"])
    return {
        "what": f"LocalCluster {workers} worker(s) x {threads} thread(s), run_batch",
        "items": s.done,
        "wall_s": round(wall, 2),  # including cluster start, warm-up and shutdown
        "cluster_start_s": s.startup_s,
        "warm_s": s.warm_s,
        "processing_s": s.processing_s,
        "items_per_s": s.items_per_s,
        "items_per_s_end_to_end": round(s.done / wall, 4),
        "worker_s_per_item_mean": s.item_s_mean,
        "s_per_2d_image_on_worker": round(float(np.mean(seg["2d"])), 3),
        "s_per_volume_on_worker": round(float(np.mean(seg["volume"])), 3),
    }


class NoopJob:
    """A job whose items do nothing on the worker: what is left is Dask's and the ledger's cost per item."""

    name = "noop"
    columns = ("id", "image")

    def __init__(self, out_dir: str, model: ModelSpec) -> None:
        self.out_dir, self.model = out_dir, model

    def settings(self) -> dict:
        return {}

    def prepare(self, item: ManifestItem) -> dict:
        return {"image": item.fields["image"]}

    def run(self, item_id: str, payload: dict, lease: PredictorLease) -> dict:
        return {"output": None}


def overhead(tmp: Path, items: int = 300) -> dict:
    """Per-item cost of the engine alone: ``items`` no-op items on 2 workers x 1 thread."""
    from medsamkit.batch import DaskEngine, EngineOptions, ModelSpec, run_batch

    manifest = write_manifest(tmp / "noop.csv", [{"id": f"n{i}", "image": "x.png"} for i in range(items)])
    with DaskEngine(EngineOptions(workers=2, threads_per_worker=1)) as engine:
        s = run_batch(NoopJob(str(tmp / "noop"), ModelSpec(threads=1)), manifest, engine=engine)
    return {
        "what": f"{items} no-op items, LocalCluster 2 workers x 1 thread (scheduling, pickling, start event, ledger)",
        "processing_s": s.processing_s,
        "ms_per_item": round(1000 * s.processing_s / items, 2),
        "items_per_s": s.items_per_s,
        "worker_ms_per_item": round(1000 * (s.item_s_mean or 0), 3),
    }


def rerun(manifest: Path, out: Path) -> dict:
    from medsamkit.batch import DaskEngine, EngineOptions, ModelSpec, SegmentJob, run_batch

    t0 = time.perf_counter()
    engine = DaskEngine(EngineOptions(workers=2, threads_per_worker=1))
    s = run_batch(SegmentJob(str(out), ModelSpec("litemedsam", threads=1)), manifest, engine=engine)
    return {
        "wall_s": round(time.perf_counter() - t0, 3),
        "already_done": s.already_done,
        "computed": s.done + s.failed,
        "cluster_started": engine.started,
    }


def same_outputs(rows: list[dict[str, str]], ref: Path, other: Path) -> int:
    """Number of items whose mask differs from the reference's."""
    from medsamkit.io import read_image

    return sum(not np.array_equal(read_image(_output(ref, r)).array, read_image(_output(other, r)).array) for r in rows)


def table(results: dict) -> str:
    """The results as the markdown table of docs/batch.md."""
    n = results["workload"]["items_2d"] + results["workload"]["volumes"]
    loop = results["in_process_loop"]
    lines = [
        f"{results['workload']['items_2d']} 2D images + {results['workload']['volumes']} volumes; matmul probe "
        f"{results['machine']['matmul_gflops_before']} -> {results['machine']['matmul_gflops_after']} GFLOP/s (2 threads); "
        f"load average {results['machine']['loadavg_before'][0]:.1f} before",
        "",
        "| configuration | items/s | s per 2D image | s per volume | start-up (cluster + model) | wall for all items |",
        "|---|---|---|---|---|---|",
        f"| in-process loop, 1 predictor x 2 threads | {loop['items_per_s']:.3f} | {loop['s_per_2d_image']:.2f} | "
        f"{loop['s_per_volume']:.1f} | {loop['model_load_s']:.2f} s | {loop['loop_s'] + loop['model_load_s']:.1f} s |",
    ]
    if "cli_subprocess_loop" in results:
        c = results["cli_subprocess_loop"]
        lines.append(
            f"| `medsamkit segment` per item (subprocess loop) | {c['items_per_s']:.3f} | | | per item | {c['wall_s']:.1f} s |"
        )
    for key, name in (("dask_1x2", "batch, 1 worker x 2 threads"), ("dask_2x1", "batch, 2 workers x 1 thread")):
        d = results[key]
        lines.append(
            f"| {name} | {d['items_per_s']:.3f} | {d['s_per_2d_image_on_worker']:.2f} | {d['s_per_volume_on_worker']:.1f} | "
            f"{d['cluster_start_s']:.2f} + {d['warm_s']:.2f} s | {d['wall_s']:.1f} s |"
        )
    o = results["dask_overhead_s_per_item"]
    lines += [
        "",
        f"Dask overhead per item (1 x 2 processing vs the in-process loop, {n} items): "
        f"{o['1x2_processing_vs_loop'] * 1000:.0f} ms; engine alone (no-op items, 2 x 1): "
        f"{results['engine_overhead']['ms_per_item']:.1f} ms per item; "
        f"rerun of the finished job: {results['rerun']['wall_s']:.2f} s, {results['rerun']['computed']} items computed, "
        f"cluster started: {results['rerun']['cluster_started']}; outputs differing from the loop's: "
        f"{results['outputs_differing_from_the_loop']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_batch.json")
    ap.add_argument("--no-cli", action="store_true", help="skip the subprocess CLI loop (the longest part)")
    ap.add_argument("--images", type=int, default=40, help="2D images (default 40; fewer for a smoke run)")
    ap.add_argument("--volumes", type=int, default=5, help="volumes (default 5)")
    ap.add_argument("--overhead-only", action="store_true", help="only the no-op engine overhead probe (seconds)")
    ap.add_argument("--table-from", type=Path, metavar="JSON", help="only print the markdown table of an earlier run")
    args = ap.parse_args()
    if args.table_from is not None:
        print(table(json.loads(args.table_from.read_text())))
        return
    if args.overhead_only:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(overhead(Path(tmp)), indent=1))
        return
    if not DATA.is_dir():
        raise SystemExit(f"shared data not found at {DATA} (set MEDSAMKIT_SHARED)")
    t_all = time.perf_counter()
    rows = workload(args.images, args.volumes)
    results: dict = {
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
            "matmul_gflops_before": torch_matmul_gflops(THREADS),
        },
        "workload": {"items_2d": sum("box" in r for r in rows), "volumes": sum("box3d" in r for r in rows)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_manifest(tmp / "manifest.csv", rows)
        results["in_process_loop"] = in_process_loop(rows, tmp / "loop")
        print(json.dumps(results["in_process_loop"], indent=1), flush=True)
        results["dask_1x2"] = dask_run(manifest, tmp / "d12", 1, 2)
        print(json.dumps(results["dask_1x2"], indent=1), flush=True)
        results["dask_2x1"] = dask_run(manifest, tmp / "d21", 2, 1)
        print(json.dumps(results["dask_2x1"], indent=1), flush=True)
        results["rerun"] = rerun(manifest, tmp / "d21")
        results["engine_overhead"] = overhead(tmp)
        print(json.dumps(results["engine_overhead"], indent=1), flush=True)
        if not args.no_cli:
            results["cli_subprocess_loop"] = cli_loop(rows, tmp / "cli")
            print(json.dumps(results["cli_subprocess_loop"], indent=1), flush=True)
        diffs = {k: same_outputs(rows, tmp / "loop", tmp / k) for k in ("d12", "d21") + (() if args.no_cli else ("cli",))}
        results["outputs_differing_from_the_loop"] = diffs
    loop_s = results["in_process_loop"]["loop_s"]
    n = len(rows)
    results["dask_overhead_s_per_item"] = {
        "1x2_processing_vs_loop": round((results["dask_1x2"]["processing_s"] - loop_s) / n, 4),
        "1x2_end_to_end_vs_loop_with_model_load": round(
            (results["dask_1x2"]["wall_s"] - loop_s - results["in_process_loop"]["model_load_s"]) / n, 4
        ),
    }
    results["speedup_vs_in_process_loop"] = {k: round(loop_s / results[k]["processing_s"], 3) for k in ("dask_1x2", "dask_2x1")}
    results["machine"]["matmul_gflops_after"] = torch_matmul_gflops(THREADS)
    results["machine"]["loadavg_after"] = os.getloadavg()
    results["python"] = platform.python_version()
    results["runtime_s"] = round(time.perf_counter() - t_all, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("dask_overhead_s_per_item", "speedup_vs_in_process_loop", "rerun")}, indent=1))
    print(table(results))
    print(f"wrote {args.out} in {results['runtime_s']} s")


if __name__ == "__main__":
    main()
