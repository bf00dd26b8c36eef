"""SAMAug on real data: does a U-Net trained on SAM-augmented input (raw + augmented, the paper's "train with
both", with the test-time ensemble) beat the same U-Net trained on raw images?

For each set (default: kvasir_seg and glas_gland_histo from ../shared/data/real):

1. everything mode (bundled LiteMedSAM, ``default_options("litemedsam", points_per_side=16)``) on every case and
   the SAMAug priors, ``add`` mode (the authors' code: seg prior into green, boundary prior into blue, convex blend
   alpha 0.5) — ``prepare_dataset``, cached per case in ``--work`` so a rerun does no model work;
2. one fixed train/val/test split (``--split-seed``); for each training seed: a MONAI U-Net (default channels
   16-256, 2 residual units) trained with Dice+CE on ``raw`` input and one on ``both`` with identical budgets:
   the same number of optimizer steps (raw gets twice the epochs, since ``both`` has each case twice per epoch),
   the same batch size, learning rate, cosine schedule, augmentation and image size; the checkpoint with the
   best validation Dice is kept;
3. test Dice per case at the original resolution: the raw model on raw input; the ``both`` model with the
   test-time ensemble (mean of raw- and augmented-input probabilities), and, for reference, on each input alone.

Writes experiments/results/samaug/results.json (every run and per-case Dice), table.md (mean ± sd over seeds)
and prints the table. Runs resume (``--work`` keeps priors and runs; finished runs are not retrained).

Usage: python experiments/samaug_unet.py [--sets kvasir_seg glas_gland_histo] [--seeds 0 1 2] [--size 128]
       [--epochs-both 30] [--lr 3e-3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"
OUT = ROOT / "experiments" / "results" / "samaug"


def prepare(name: str, work: Path, points_per_side: int, threads: int) -> dict:
    from medsamkit.predict import Predictor
    from medsamkit.predict.automatic import AutomaticMaskGenerator, default_options
    from medsamkit.samaug import prepare_dataset

    gen = AutomaticMaskGenerator(
        Predictor("litemedsam", threads=threads), default_options("litemedsam", points_per_side=points_per_side)
    )
    summary = prepare_dataset(DATA / name, work / name, gen, mode="add", progress=True)
    if summary["counts"].get("failed"):
        raise SystemExit(f"{name}: SAMAug preparation failed for {summary['failures']}")
    return summary


def train_and_test(name: str, kind: str, seed: int, args: argparse.Namespace) -> dict:
    from medsamkit.train import TrainConfig, evaluate_unet, read_metrics, train_unet

    samaug_dir = args.work / name
    run = args.work / name / "runs" / f"{kind}-size{args.size}-e{args.epochs_both}-s{seed}"
    epochs = args.epochs_both * (2 if kind == "raw" else 1)
    done = (run / "best.pt").is_file() and len(read_metrics(run)) >= epochs if run.is_dir() else False
    t0 = time.perf_counter()
    if not done:
        cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, schedule="cosine")
        train_unet(
            DATA / name,
            run,
            kind,
            None if kind == "raw" else samaug_dir,
            size=args.size,
            config=cfg,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            split_seed=args.split_seed,
            resume=run.is_dir(),
            progress=True,
        )
    metrics = read_metrics(run)
    train_s = float(sum(float(m["seconds"]) for m in metrics))
    out = {"set": name, "input": kind, "seed": seed, "epochs": epochs, "train_minutes": round(train_s / 60, 2)}
    evals = {
        "raw": [("raw", ("raw",))],
        "both": [("ensemble", ("raw", "samaug")), ("augmented_only", ("samaug",)), ("raw_only", ("raw",))],
    }[kind]
    for label, views in evals:
        rows = evaluate_unet(run, DATA / name, None if kind == "raw" else samaug_dir, split="test", views=views)
        out[f"dice_{label}"] = round(float(np.mean([r["dice"] for r in rows])), 4)
        out[f"cases_{label}"] = {r["case"]: round(float(r["dice"]), 4) for r in rows}
    out["best_val_dice"] = round(max(float(m["val_dice"]) for m in metrics), 4)
    out["wall_minutes_this_call"] = round((time.perf_counter() - t0) / 60, 2)
    print(json.dumps({k: v for k, v in out.items() if not k.startswith("cases")}), flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| set | input (test-time) | seeds | test Dice mean ± sd | per seed | train min/run |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["set"] for r in results):
        for kind, key, label in (
            ("raw", "dice_raw", "raw"),
            ("both", "dice_ensemble", "both (ensemble raw + SAMAug)"),
            ("both", "dice_augmented_only", "both (SAMAug input only)"),
            ("both", "dice_raw_only", "both (raw input only)"),
        ):
            rs = [r for r in results if r["set"] == name and r["input"] == kind and key in r]
            if not rs:
                continue
            v = np.array([r[key] for r in rs])
            sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            per = ", ".join(f"{x:.3f}" for x in v)
            mins = np.mean([r["train_minutes"] for r in rs])
            lines.append(f"| {name} | {label} | {len(rs)} | {v.mean():.3f} ± {sd:.3f} | {per} | {mins:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["kvasir_seg", "glas_gland_histo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs-both", type=int, default=30, help="epochs of the both runs (raw runs get twice as many)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=OUT / "work")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results_file = args.out / "results.json"
    previous = json.loads(results_file.read_text())["runs"] if results_file.is_file() else []
    results = []
    prep = {}
    for name in args.sets:
        s = prepare(name, args.work, args.points_per_side, args.threads)
        prep[name] = {"counts": s["counts"], "wall_s": s.get("wall_s")}
        for seed in args.seeds:
            for kind in ("raw", "both"):
                results.append(train_and_test(name, kind, seed, args))
                doc = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "samaug": prep}
                keep = [
                    r
                    for r in previous
                    if (r["set"], r["input"], r["seed"]) not in {(x["set"], x["input"], x["seed"]) for x in results}
                ]
                doc["runs"] = keep + results
                args.out.mkdir(parents=True, exist_ok=True)
                results_file.write_text(json.dumps(doc, indent=1))
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
