"""What an annotator waits for in the page: from mouse-up to the overlay drawn, in headless Chromium (Debian
package, SwiftShader WebGL, as in the browser tests) against a live server on 127.0.0.1 (LiteMedSAM, CPU, 2 threads).

For a 512 x 512 volume of 20 and of 100 slices: a box drag on a slice whose embedding is cached (each box differs
from the previous one, so every click changes the labels), a brush stroke (10 mouse moves), and ctrl+z. The time
is the page's own: ``performance.now()`` at mouse-up to the start of the frame after the one that drew the change
(``window.medsamkit.state``). Medians of 5; the wall time of the whole gesture as Playwright sees it beside.

Usage: python benchmarks/bench_app_browser.py [--out benchmarks/results/bench_app_browser.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
os.environ["MEDSAMKIT_THREADS"] = str(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_flags, cpu_model  # noqa: E402  (benchmarks/machine.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REPEATS = 5


def run(n_slices: int, predictor) -> dict:
    from playwright.sync_api import sync_playwright
    from tests.app.live import served
    from tests.app.test_browser import CHROMIUM, FLAGS, drag, go_to, idle, open_path, screen_of

    from medsamkit.app import create_app

    data, state = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    v = np.random.default_rng(0).normal(40, 8, (512, 512, n_slices)).astype(np.float32)  # (i, j, k) = (x, y, z)
    v[180:380, 150:350, :] += 150
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(v, affine), data / "vol.nii.gz")
    app = create_app(data, state_dir=state, predictor=predictor, preencode_slices=0)
    out: dict = {"slices": n_slices, "shape_zyx": [n_slices, 512, 512]}
    with served(app) as port, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.set_default_timeout(300_000)
        pg.goto(f"http://127.0.0.1:{port}/")
        pg.wait_for_function("() => window.medsamkit && window.medsamkit.state.ready")
        t = time.perf_counter()
        open_path(pg, "vol.nii.gz")
        out["open_s"] = round(time.perf_counter() - t, 2)
        pg.select_option("[data-testid=view]", "axial")
        idle(pg)
        k = n_slices // 2
        go_to(pg, 256, 256, k)

        def since_mouse_up() -> float:
            return pg.evaluate("window.medsamkit.state.drawnAt - window.medsamkit.state.mouseUpAt")

        def gesture(fn) -> tuple[float, float]:
            t0 = time.perf_counter()
            fn()
            idle(pg)
            return since_mouse_up(), (time.perf_counter() - t0) * 1000

        pg.keyboard.press("b")
        p0 = screen_of(pg, affine, (200, 170, k))
        drag(pg, p0, screen_of(pg, affine, (360, 330, k)))  # the first click encodes the slice
        idle(pg)
        clicks = [gesture(lambda i=i: drag(pg, p0, screen_of(pg, affine, (350 - 10 * (i % 2), 320, k)))) for i in range(REPEATS)]
        pg.keyboard.press("r")
        strokes = [
            gesture(
                lambda i=i: drag(
                    pg, screen_of(pg, affine, (60, 60 + 8 * i, k)), screen_of(pg, affine, (110, 64 + 8 * i, k)), steps=10
                )
            )
            for i in range(REPEATS)
        ]
        undo_ms = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            pg.keyboard.press("Control+z")
            idle(pg)
            undo_ms.append((time.perf_counter() - t0) * 1000)
        browser.close()
    for name, runs in (("cached_click", clicks), ("brush_stroke", strokes)):
        out[name] = {
            "mouse_up_to_drawn_ms_median": round(statistics.median(r[0] for r in runs), 1),
            "mouse_up_to_drawn_ms_max": round(max(r[0] for r in runs), 1),
            "gesture_wall_ms_median": round(statistics.median(r[1] for r in runs), 1),
        }
    out["undo_key_to_idle_ms_median"] = round(statistics.median(undo_ms), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_app_browser.json")
    args = ap.parse_args()
    from medsamkit.predict import Predictor

    predictor = Predictor("litemedsam")
    results = {
        "what": "mouse-up to overlay drawn in headless Chromium (SwiftShader), 512x512 slices, cached click and brush stroke",
        "threads": THREADS,
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "volumes": [run(n, predictor) for n in (20, 100)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["volumes"], indent=1))


if __name__ == "__main__":
    main()
