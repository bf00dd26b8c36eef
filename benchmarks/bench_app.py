"""Server-side latency of a click in the annotation app (LiteMedSAM, CPU, 2 threads), on 512 x 512 slices.

One in-process app (FastAPI TestClient, no network) on a synthetic 4 x 512 x 512 volume: for each of the 4
slices, the first box click (slice not cached: encode + decode + mask write + autosave) and then 5 more clicks on
the same slice (cached embedding: decode + write). Reports the server's own ``ms`` (from the response) and the
client round trip, medians, plus one point click on a cached slice. That app does not pre-encode; a second one
(``preencoded``) does, as ``medsamkit serve`` does by default: the time until every slice of a 72-slice volume is
ready, then clicks on 12 slices and a propagation through all 72.

Usage: python benchmarks/bench_app.py [--out benchmarks/results/bench_app.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

THREADS = 2
os.environ["MEDSAMKIT_THREADS"] = str(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_flags, cpu_model, torch_matmul_gflops  # noqa: E402  (benchmarks/machine.py)

ROOT = Path(__file__).resolve().parents[1]


def volume(n: int = 4, size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:n, 0:size, 0:size]
    inside = ((y - 250) / 120) ** 2 + ((x - 270) / 160) ** 2 + ((z - 1.5) / 3) ** 2 <= 1
    v = rng.normal(40, 8, (n, size, size))
    v[inside] = rng.normal(200, 8, int(inside.sum()))
    return v.astype(np.float32)


def organ(n: int = 72, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A (72, 512, 512) volume with a bright ellipsoid spanning 60 slices (z 6..65) and its mask."""
    rng = np.random.default_rng(1)
    z, y, x = np.ogrid[0:n, 0:size, 0:size]
    inside = ((y - 240) / 90.0) ** 2 + ((x - 280) / 110.0) ** 2 + ((z - 35.5) / 30.4) ** 2 <= 1
    v = rng.normal(40, 8, (n, size, size)).astype(np.float32)
    v[inside] = rng.normal(200, 8, int(inside.sum())).astype(np.float32)
    return v, inside


def preencoded(predictor, nifti: bytes, mask: np.ndarray) -> dict:
    """The organ volume opened in an app that pre-encodes (the default): seconds until every slice is ready, then
    server ms of a box click on 12 slices spread over the volume (each slice's first), and a propagation of the
    60-slice object through all 72 slices; a fresh embedding cache, so nothing is left from the first app."""
    import random

    from fastapi.testclient import TestClient

    from medsamkit.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(None, state_dir=Path(tmp), predictor=predictor)
        try:
            client = TestClient(app, base_url="http://127.0.0.1")
            sid = client.post("/api/sessions").json()["session"]
            t0 = time.perf_counter()
            r = client.post(f"/api/sessions/{sid}/volume", files={"file": ("o.nii", nifti)})
            assert r.status_code == 200, r.text
            while True:
                st = client.get(f"/api/sessions/{sid}/encoding").json()
                if not st["running"]:
                    break
                time.sleep(0.2)
            ready_s = time.perf_counter() - t0
            assert st["done"] == st["total"] == mask.shape[0], st
            misses = app.state.models.cache.misses
            slices = sorted(random.Random(0).sample(range(mask.shape[0]), 12))
            clicks = []
            for k in slices:
                ys, xs = np.nonzero(mask[k]) if mask[k].any() else (np.array([200, 300]), np.array([200, 300]))
                body = {"slice": k, "label": 2, "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]}
                r = client.post(f"/api/sessions/{sid}/segment", json=body)
                assert r.status_code == 200, r.text
                clicks.append(r.json()["ms"])
            mid = 35
            ys, xs = np.nonzero(mask[mid])
            box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
            assert client.post(f"/api/sessions/{sid}/segment", json={"slice": mid, "label": 1, "box": box}).status_code == 200
            t0 = time.perf_counter()
            r = client.post(f"/api/sessions/{sid}/propagate", json={"label": 1, "slice": mid, "axis": "z"})
            prop_s = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            return {
                "volume": list(mask.shape),
                "seconds_until_all_slices_ready": round(ready_s, 1),
                "slices_encoded": st["done"],
                "click_slices": slices,
                "click_server_ms": clicks,
                "click_server_ms_median": round(statistics.median(clicks), 1),
                "click_server_ms_max": round(max(clicks), 1),
                "propagate_72_slices_seconds": round(prop_s, 2),
                "propagated_slices": r.json()["slices"],
                "encodes_after_ready": app.state.models.cache.misses - misses,
            }
        finally:
            app.state.preencoder.close()


def matmul_probe() -> float:
    return torch_matmul_gflops(THREADS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_app.json")
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # starlette asks for httpx2
        from fastapi.testclient import TestClient

    from medsamkit.app import create_app
    from medsamkit.predict import Predictor

    probe = matmul_probe()
    vol = volume()
    buf = io.BytesIO(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.eye(4)).to_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor("litemedsam", threads=THREADS)
        # without background pre-encoding: what a click and a propagation cost when nothing is ready
        app = create_app(None, state_dir=Path(tmp) / "a", predictor=predictor, preencode_slices=0)
        client = TestClient(app, base_url="http://127.0.0.1")  # the server answers only its own host names
        sid = client.post("/api/sessions").json()["session"]
        assert client.post(f"/api/sessions/{sid}/volume", files={"file": ("v.nii", buf.getvalue())}).status_code == 200
        url = f"/api/sessions/{sid}/segment"

        def click(body: dict) -> tuple[float, float]:
            t0 = time.perf_counter()
            r = client.post(url, json=body)
            rt = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200, r.text
            return r.json()["ms"], rt

        box = {"box": [100, 120, 440, 380], "label": 1}
        click({"slice": 0, **box})  # warm-up (first ONNX Runtime run)
        first, cached = [], []
        for k in range(1, vol.shape[0]):
            first.append(click({"slice": k, **box}))
            cached += [click({"slice": k, **box}) for _ in range(5)]
        point = [click({"slice": 2, "points": [[270, 250, 1]], "label": 2}) for _ in range(5)]

        # propagation of a 60-slice object: box on its middle slice, then propagate through the volume
        ovol, omask = organ()
        obuf = nib.Nifti1Image(np.ascontiguousarray(ovol.transpose(2, 1, 0)), np.eye(4)).to_bytes()
        sid2 = client.post("/api/sessions").json()["session"]
        assert client.post(f"/api/sessions/{sid2}/volume", files={"file": ("o.nii", obuf)}).status_code == 200
        mid = 35
        ys, xs = np.nonzero(omask[mid])
        r = client.post(
            f"/api/sessions/{sid2}/segment",
            json={"slice": mid, "label": 1, "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]},
        )
        assert r.status_code == 200, r.text
        t0 = time.perf_counter()
        r = client.post(f"/api/sessions/{sid2}/propagate", json={"label": 1, "slice": mid, "axis": "z"})
        propagate_s = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        prop = r.json()
        mask_bytes = client.get(f"/api/sessions/{sid2}/mask.nii.gz").content
        with tempfile.NamedTemporaryFile(suffix=".nii.gz") as f:
            f.write(mask_bytes)
            f.flush()
            got = np.asarray(nib.load(f.name).dataobj).transpose(2, 1, 0) == 1
        prop_dice = 2 * float((got & omask).sum()) / float(got.sum() + omask.sum())
        pre = preencoded(predictor, obuf, omask)

    def med(xs: list[tuple[float, float]], i: int) -> float:
        return round(statistics.median(x[i] for x in xs), 1)

    r = {
        "threads": THREADS,
        "slice": "512x512",
        "uncached_click_server_ms": med(first, 0),
        "uncached_click_roundtrip_ms": med(first, 1),
        "cached_click_server_ms": med(cached, 0),
        "cached_click_roundtrip_ms": med(cached, 1),
        "cached_point_click_server_ms": med(point, 0),
        "uncached_samples": len(first),
        "cached_samples": len(cached),
        "propagate_60_slice_object": {
            "seconds": round(propagate_s, 2),
            "server_ms": prop.get("ms"),
            "slices": prop.get("slices"),
            "dice": round(prop_dice, 4),
        },
        "preencoded": pre,
        "matmul_gflops": probe,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
    }
    print(json.dumps(r, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
