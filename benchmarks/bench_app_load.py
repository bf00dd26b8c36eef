"""Load test of the annotation server: a real ``medsamkit serve`` process on 127.0.0.1 (a free port), 8 concurrent
client sessions x 20 clicks, each session on its own volume; and the memory of the largest volume the default
limits accept.

Load phase: 8 synthetic 3 x 512 x 512 float32 volumes (distinct noise, so no slice embedding is shared) under
``--data``; each client thread creates a session, opens its volume by path, then clicks 20 boxes cycling through
the 3 slices (the first click on a slice encodes it: 3 uncached + 17 cached clicks per session), all 8 at once.
Reports click latency (client round trip over HTTP; p50/p95 overall, cached, uncached), errors, and the server's
RSS: sampled every 20 ms (psutil) and its kernel peak (``VmHWM`` of /proc/PID/status), against the bound
``base + --embedding-memory-mb + 2 x --max-volume-mb`` documented in docs/app.md (base = RSS of the warm server:
the model loaded and run once, no session).

Largest-volume phase (``--largest``): the default ``--max-volume-mb 2048`` accepts an int16 volume of at most
2 GiB / 10 bytes per voxel = 512 x 512 x 819 slices (one more slice is refused from its header); the server opens
it (percentile preset, the costliest), segments a slice, paints a brush edit, serves the viewer's volume and the
mask, propagates through 16 slices and saves a NIfTI; its peak RSS is reported.

Usage: python benchmarks/bench_app_load.py [--largest] [--out benchmarks/results/bench_app_load.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

THREADS = 2
ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def cpu() -> dict:
    """CPU model, the instruction-set flags that matter for the model's speed, and the core count."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4"))]
    return {"model": model, "flags": sorted(keep), "cores": os.cpu_count()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class Server:
    """``medsamkit serve`` in a child process, with an RSS sampler."""

    def __init__(self, data: Path, state: Path, *extra: str) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MEDSAMKIT_THREADS": str(THREADS)}
        cmd = [sys.executable, "-m", "medsamkit.cli.main", "serve", "--port", str(self.port), "--data", str(data)]
        cmd += ["--state", str(state), "--threads", str(THREADS), *extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()}")
            try:
                if self.request("GET", "/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        self.started_rss = status_kb(self.proc.pid, "VmRSS") * 1024
        self.base_rss = self.started_rss
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        p = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            try:
                self.samples.append(p.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def request(self, method: str, path: str, body: dict | None = None, raw: bytes | None = None, ctype: str = ""):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            data = json.dumps(body).encode() if body is not None else raw
            headers = {"Content-Type": "application/json" if body is not None else ctype} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def warm_up(self, rel: str) -> None:
        """One session, one click on ``rel`` (a one-slice volume): the model's runtime allocates its working
        memory on its first run; ``base_rss`` is the RSS after it (the warm server before any load)."""
        sid = json.loads(self.request("POST", "/api/sessions")[1])["session"]
        assert self.request("POST", f"/api/sessions/{sid}/volume", {"path": rel})[0] == 200
        assert self.request("POST", f"/api/sessions/{sid}/segment", {"slice": 0, "box": [100, 100, 400, 400]})[0] == 200
        assert self.request("DELETE", f"/api/sessions/{sid}")[0] == 200
        self.base_rss = status_kb(self.proc.pid, "VmRSS") * 1024

    def peak(self) -> int:
        return status_kb(self.proc.pid, "VmHWM") * 1024

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def write_volume(path: Path, zyx: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), np.eye(4)), path)


def synthetic(seed: int, n: int = 3, size: int = 512) -> np.ndarray:
    """(n, size, size) float32: an ellipsoid of ~200 in noise of ~40, distinct per seed."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[0:n, 0:size, 0:size]
    inside = ((y - 250) / 120) ** 2 + ((x - 270) / 160) ** 2 + ((z - (n - 1) / 2) / (n + 1)) ** 2 <= 1
    v = rng.normal(40, 8, (n, size, size)).astype(np.float32)
    v[inside] = rng.normal(200, 8, int(inside.sum())).astype(np.float32)
    return v


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 1) if xs else float("nan")


def load_phase(tmp: Path, sessions: int, clicks: int, volume_mb: int, cache_mb: int) -> dict:
    data = tmp / "data"
    data.mkdir()
    for i in range(sessions):
        write_volume(data / f"vol{i}.nii.gz", synthetic(100 + i))
    write_volume(data / "warm.nii.gz", synthetic(99, n=1))
    srv = Server(data, tmp / "state", "--max-volume-mb", str(volume_mb), "--embedding-memory-mb", str(cache_mb))
    srv.warm_up("warm.nii.gz")
    results: list[dict] = []
    errors: list[str] = []
    barrier = threading.Barrier(sessions)

    def client(i: int) -> None:
        try:
            st, body = srv.request("POST", "/api/sessions")
            sid = json.loads(body)["session"]
            st, body = srv.request("POST", f"/api/sessions/{sid}/volume", {"path": f"vol{i}.nii.gz"})
            if st != 200:
                raise RuntimeError(f"open: {st} {body[:200]!r}")
            rng = np.random.default_rng(i)
            barrier.wait(120)
            seen: set[int] = set()
            for c in range(clicks):
                k = c % 3
                j = rng.integers(-6, 7, 4)
                box = [int(110 + j[0]), int(130 + j[1]), int(430 + j[2]), int(370 + j[3])]
                t0 = time.perf_counter()
                st, body = srv.request("POST", f"/api/sessions/{sid}/segment", {"slice": k, "label": 1 + c % 4, "box": box})
                rt = (time.perf_counter() - t0) * 1000
                ok = st == 200
                if not ok:
                    errors.append(f"session {i} click {c}: {st} {body[:200]!r}")
                results.append({"ms": rt, "cached": k in seen, "ok": ok, "server_ms": json.loads(body).get("ms") if ok else None})
                seen.add(k)
        except Exception as e:  # noqa: BLE001 - reported in the results
            errors.append(f"session {i}: {e!r}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1200)
    wall = time.perf_counter() - t0
    peak, sampled = srv.peak(), max(srv.samples, default=0)
    base = srv.base_rss
    srv.stop()
    ok = [r for r in results if r["ok"]]
    bound = base + (cache_mb << 20) + 2 * (volume_mb << 20)
    return {
        "sessions": sessions,
        "clicks_per_session": clicks,
        "volume": "3x512x512 float32, one per session",
        "wall_s": round(wall, 1),
        "clicks": len(results),
        "errors": len(errors),
        "error_samples": errors[:5],
        "click_ms_p50": pct([r["ms"] for r in ok], 50),
        "click_ms_p95": pct([r["ms"] for r in ok], 95),
        "cached_click_ms_p50": pct([r["ms"] for r in ok if r["cached"]], 50),
        "cached_click_ms_p95": pct([r["ms"] for r in ok if r["cached"]], 95),
        "uncached_click_ms_p50": pct([r["ms"] for r in ok if not r["cached"]], 50),
        "uncached_click_ms_p95": pct([r["ms"] for r in ok if not r["cached"]], 95),
        "server_ms_p50": pct([r["server_ms"] for r in ok], 50),
        "server_rss_started_mib": round(srv.started_rss / MiB),
        "server_rss_base_mib": round(base / MiB),
        "server_rss_peak_mib": round(peak / MiB),
        "server_rss_peak_sampled_mib": round(sampled / MiB),
        "rss_bound_mib": round(bound / MiB),
        "rss_bound": f"base + --embedding-memory-mb {cache_mb} + 2 x --max-volume-mb {volume_mb}",
        "within_bound": peak <= bound,
    }


def largest_phase(tmp: Path) -> dict:
    """The largest int16 volume the default --max-volume-mb 2048 accepts, worked on end to end."""
    slices = (2048 * MiB) // (512 * 512 * (3 * 2 + 4))  # Footprint.cost: 10 bytes per int16 voxel -> 819
    data = tmp / "big"
    data.mkdir()
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 400, (slices, 512, 512), dtype=np.int16)
    vol[:, 180:330, 200:360] += 600
    write_volume(data / "largest.nii", vol)
    write_volume(data / "one_more.nii", np.zeros((slices + 1, 512, 512), np.int16))
    write_volume(data / "warm.nii.gz", synthetic(99, n=1))
    del vol
    srv = Server(data, tmp / "state-big")
    srv.warm_up("warm.nii.gz")
    base = srv.base_rss
    steps = {}

    def step(name: str, method: str, path: str, body: dict | None = None, raw: bytes | None = None, ctype: str = "") -> bytes:
        t0 = time.perf_counter()
        st, out = srv.request(method, path, body, raw, ctype)
        steps[name] = {"status": st, "s": round(time.perf_counter() - t0, 2), "peak_mib_so_far": round(srv.peak() / MiB)}
        if st != 200:
            raise RuntimeError(f"{name}: {st} {out[:300]!r}")
        return out

    sid = json.loads(srv.request("POST", "/api/sessions")[1])["session"]
    st, refused = srv.request("POST", f"/api/sessions/{sid}/volume", {"path": "one_more.nii"})
    assert st == 413, (st, refused[:200])
    after_refusal = srv.peak()
    step("open", "POST", f"/api/sessions/{sid}/volume", {"path": "largest.nii", "preset": "percentile"})
    k = slices // 2
    step("segment", "POST", f"/api/sessions/{sid}/segment", {"slice": k, "box": [190, 170, 370, 340]})
    paint = np.zeros((512, 512), np.uint8)
    paint[10:60, 10:60] = 1
    step("brush", "PUT", f"/api/sessions/{sid}/mask/z/{k}?label=2", raw=paint.tobytes(), ctype="application/octet-stream")
    step("volume.nii.gz", "GET", f"/api/sessions/{sid}/volume.nii.gz")
    step("mask.nii.gz", "GET", f"/api/sessions/{sid}/mask.nii.gz")
    step("propagate 16 slices", "POST", f"/api/sessions/{sid}/propagate", {"slice": k, "label": 1, "slices": [k - 8, k + 7]})
    step("undo", "POST", f"/api/sessions/{sid}/undo")
    step("save nii.gz", "POST", f"/api/sessions/{sid}/save", {"format": "nii.gz"})
    peak, sampled = srv.peak(), max(srv.samples, default=0)
    srv.stop()
    return {
        "volume": f"{slices}x512x512 int16 ({slices * 512 * 512 * 2 / MiB:.0f} MiB of values), percentile preset",
        "limit": "--max-volume-mb 2048 (default); one slice more is refused from the header (413) before reading",
        "refused_one_more_slice_rss_growth_mib": round((after_refusal - base) / MiB),
        "steps": steps,
        "server_rss_base_mib": round(base / MiB),
        "server_rss_peak_mib": round(peak / MiB),
        "server_rss_peak_sampled_mib": round(sampled / MiB),
        "peak_minus_base_mib": round((peak - base) / MiB),
        "rss_bound_mib": round((base + (1024 << 20) + 2 * (2048 << 20)) / MiB),
        "within_bound": peak <= base + (1024 << 20) + 2 * (2048 << 20),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_app_load.json")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--largest", action="store_true", help="also measure the largest accepted volume (~1 min, 2.5 GB)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import torch_matmul_gflops  # benchmarks/machine.py

    out: dict = {"cpu": cpu(), "threads": THREADS, "matmul_gflops": torch_matmul_gflops(THREADS)}
    with tempfile.TemporaryDirectory() as tmp:
        out["load"] = load_phase(Path(tmp), args.sessions, args.clicks, volume_mb=256, cache_mb=256)
        print(json.dumps(out["load"], indent=2), flush=True)
    if args.largest:
        with tempfile.TemporaryDirectory() as tmp:
            out["largest_volume"] = largest_phase(Path(tmp))
            print(json.dumps(out["largest_volume"], indent=2), flush=True)
    elif args.out.is_file():  # keep an earlier largest-volume measurement
        previous = json.loads(args.out.read_text())
        if "largest_volume" in previous:
            out["largest_volume"] = previous["largest_volume"]
    out["measured"] = time.strftime("%Y-%m-%d")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    if not out["load"]["within_bound"] or out["load"]["errors"]:
        sys.exit("the load test had errors or went over its memory bound")


if __name__ == "__main__":
    main()
