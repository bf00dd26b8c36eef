"""Annotation cost with medsamkit's web app: a simulated annotator against a live `medsamkit serve`.

For each object (one label of a 2D case of ../shared/data/real): draw the tight box (one interaction), then add
correction clicks placed by the evaluation's farthest-error rule (medsamkit.prompts.next_click) until Dice >= 0.9
or 10 clicks; every interaction is one HTTP request to the server, and the annotator keeps the best mask seen
(a human would undo a click that made it worse: the undo is counted as an interaction). Reported per object:
interactions, seconds (client wall time of the requests), final Dice; compared with the number of vertices of a
manual polygon of the same object (the ground-truth outline simplified with Douglas-Peucker at 1 px, a careful
annotator's contour) and, for a box-only session, 2 clicks.

Usage: python experiments/annotation_cost.py [--per-set 10] [--out experiments/results/annotation_cost.json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from PIL import Image

from medsamkit.evaluate import load_case, load_dataset
from medsamkit.prompts import mask_box, next_click

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"
SETS = [
    "busi_breast_us",
    "chaos_ct_liver",
    "chest_xray_lungs",
    "hc18_fetal_head_us",
    "kvasir_seg",
    "ph2_dermoscopy",
    "lgg_brain_mri",
]
TARGET = 0.9
MAX_CLICKS = 10


def polygon_vertices(mask: np.ndarray, epsilon: float = 1.0) -> int:
    """Vertices of the object's outer contours simplified to within ``epsilon`` px (Douglas-Peucker)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return int(sum(len(cv2.approxPolyDP(c, epsilon, True)) for c in contours))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum() + b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decode_mask(payload: dict, label: int) -> np.ndarray:
    png = base64.b64decode(payload["data"])
    return np.array(Image.open(io.BytesIO(png))) == label


def annotate(client: httpx.Client, sid: str, gt: np.ndarray) -> dict:
    box = [float(v) for v in mask_box(gt)]
    t0 = time.perf_counter()
    r = client.post(f"/api/sessions/{sid}/segment", json={"axis": "z", "slice": 0, "label": 1, "box": box})
    r.raise_for_status()
    pred = decode_mask(r.json()["mask"], 1)
    dice_box = dice(pred, gt)
    interactions, clicks, best, best_d = 1, [], pred, dice_box
    server_ms = [r.json()["ms"]]
    while best_d < TARGET and len(clicks) < MAX_CLICKS:
        c = next_click(best, gt, "farthest-error")
        if c is None:
            break
        clicks.append([c.x, c.y, c.label])
        r = client.post(f"/api/sessions/{sid}/segment", json={"axis": "z", "slice": 0, "label": 1, "box": box, "points": clicks})
        r.raise_for_status()
        interactions += 1
        server_ms.append(r.json()["ms"])
        pred = decode_mask(r.json()["mask"], 1)
        d = dice(pred, gt)
        if d > best_d:
            best, best_d = pred, d
        else:  # the click made it worse: undo it (one more interaction) and keep the click as a constraint
            client.post(f"/api/sessions/{sid}/undo").raise_for_status()
            interactions += 1
    return {
        "interactions": interactions,
        "clicks": len(clicks),
        "seconds": round(time.perf_counter() - t0, 3),
        "server_ms_median": float(np.median(server_ms)),
        "dice_box": round(dice_box, 4),
        "dice": round(best_d, 4),
        "reached": best_d >= TARGET,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-set", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "annotation_cost.json")
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        server = subprocess.Popen(
            [sys.executable, "-m", "medsamkit.cli.main", "serve", "--port", str(port), "--state", state, "--data", str(DATA)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
            for _ in range(600):
                try:
                    client.get("/").raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            rows = []
            for name in SETS:
                ds = load_dataset(DATA / name).subset(limit=args.per_set)
                for case in ds:
                    _, mask = load_case(case)
                    for label in [int(v) for v in np.unique(mask) if v > 0]:
                        gt = mask == label
                        sid = client.post("/api/sessions").json()["session"]
                        rel = case.image.relative_to(DATA).as_posix()
                        client.post(f"/api/sessions/{sid}/volume", json={"path": rel}).raise_for_status()
                        res = annotate(client, sid, gt)
                        res.update(dataset=name, case=case.id, label=label, polygon_vertices=polygon_vertices(gt))
                        rows.append(res)
                        print(json.dumps(res))
                        client.delete(f"/api/sessions/{sid}")
        finally:
            server.terminate()
            server.wait(10)
    summary = {}
    for name in SETS + ["all"]:
        rs = [r for r in rows if name in ("all", r["dataset"])]
        if not rs:
            continue
        summary[name] = {
            "objects": len(rs),
            "interactions_mean": round(float(np.mean([r["interactions"] for r in rs])), 2),
            "clicks_mean": round(float(np.mean([r["clicks"] for r in rs])), 2),
            "seconds_mean": round(float(np.mean([r["seconds"] for r in rs])), 2),
            "dice_mean": round(float(np.mean([r["dice"] for r in rs])), 4),
            "reached_0.9": round(float(np.mean([r["reached"] for r in rs])), 3),
            "polygon_vertices_mean": round(float(np.mean([r["polygon_vertices"] for r in rs])), 1),
            "server_ms_median": round(float(np.median([r["server_ms_median"] for r in rs])), 1),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"target_dice": TARGET, "max_clicks": MAX_CLICKS, "summary": summary, "objects": rows}, indent=1)
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
