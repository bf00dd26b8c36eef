"""SAMAug on real data: does a U-Net trained on SAM-augmented input (raw + augmented, the paper's "train with
both", with the test-time ensemble) beat the same U-Net trained on raw images?

For each set (default: kvasir_seg and glas_gland_histo from ../shared/data/real):

1. everything mode (bundled LiteMedSAM, ``default_options("litemedsam", points_per_side=16)``) on every case and
   the SAMAug priors, ``add`` mode (the authors' code: seg prior into green, boundary prior into blue, convex blend
   alpha 0.5) — ``prepare_dataset``, cached per case in ``--work`` so a rerun does no model work;
2. one fixed train/val/test split (``--split-seed``); for each training seed: a MONAI U-Net (default channels
   16-256, 2 residual units) trained with Dice+CE (``--loss``) on ``raw`` input and one on ``both`` (``--inputs``)
   under one comparison rule (``--rule``) with the same batch size, learning rate, cosine schedule, augmentation
   and image size:
   * ``steps`` (default): the same number of optimizer steps (raw gets twice the epochs, since ``both`` has each
     case twice per epoch);
   * ``converge``: each arm trained until its validation Dice has not improved for ``--patience`` epochs (cosine
     over ``--max-epochs``; a run that reaches the cap is flagged ``not_converged``);
   the checkpoint with the best validation Dice is kept; epochs run, best epoch, stop reason and minutes are
   recorded with each run, and the CPU with the results;
3. test Dice per case at the original resolution: the raw model on raw input; the ``both`` model with the
   test-time ensemble (mean of raw- and augmented-input probabilities), and, for reference, on each input alone.

Writes ``--out`` (default experiments/results/samaug/) results.json (every run and per-case Dice), table.md (mean ±
sd over seeds) and prints the table; intervals and verdicts: ``experiments/study_intervals.py``. Runs resume
(``--work`` keeps priors and runs; finished runs are not retrained). ``both`` needs the SAMAug priors (everything
mode on every case: about 56 min for Kvasir-SEG on 2 threads); ``--inputs raw`` skips them.

Usage: python experiments/samaug_unet.py [--sets kvasir_seg glas_gland_histo] [--seeds 0 1 2] [--size 128]
       [--epochs-both 30] [--lr 3e-3] [--threads 2]
       python experiments/samaug_unet.py --sets kvasir_seg --size 256 --rule converge --patience 60 --max-epochs 400 \
       --inputs raw --loss dice_ce_batch --lr 2e-3 --seeds 0 --out experiments/results/samaug256   # make study-unet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    if args.rule == "converge":
        # each arm trains until its validation Dice stops improving (the same patience), capped at --max-epochs
        tag = f"conv-p{args.patience}-m{args.max_epochs}"
        epochs, patience = args.max_epochs, args.patience
    else:
        tag = f"e{args.epochs_both}"
        epochs, patience = args.epochs_both * (2 if kind == "raw" else 1), None
    # every setting that changes the training is in the folder name: a run is only resumed with its own settings
    run = args.work / name / "runs" / f"{kind}-size{args.size}-{args.loss}-lr{args.lr:g}-bs{args.batch_size}-{tag}-s{seed}"
    result_file = run / "result.json"
    t0 = time.perf_counter()
    if not result_file.is_file():
        cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, schedule="cosine", patience=patience)
        fit = train_unet(
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
            loss=args.loss,
        )
        result_file.write_text(
            json.dumps({"stop_reason": fit.stop_reason, "epochs": fit.epochs, "best_epoch": fit.best_epoch}) + "\n"
        )
    fit_doc = json.loads(result_file.read_text())
    metrics = read_metrics(run)
    train_s = float(sum(float(m["seconds"]) for m in metrics))
    out = {
        "set": name,
        "input": kind,
        "seed": seed,
        "rule": args.rule,
        "size": args.size,
        "planned_epochs": epochs,
        "patience": patience,
        "loss": args.loss,
        "lr": args.lr,
        "epochs": fit_doc["epochs"],
        "best_epoch": fit_doc["best_epoch"],
        "stop_reason": fit_doc["stop_reason"],
        # under the convergence rule a run that reached the epoch cap did not converge by the rule: flagged
        "not_converged": args.rule == "converge" and fit_doc["stop_reason"] != "early_stopping",
        "train_minutes": round(train_s / 60, 2),
        "threads": args.threads,
    }
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


def _run_key(r: dict) -> tuple:
    """A run's identity in one results.json: set, input, seed and rule (entries from before the rule: "steps");
    studies at other sizes go to their own ``--out``."""
    return (r["set"], r["input"], r["seed"], r.get("rule", "steps"))


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
            sd = f"{v.std(ddof=1):.3f}" if len(v) > 1 else "-"
            per = ", ".join(f"{x:.3f}" for x in v)
            mins = np.mean([r["train_minutes"] for r in rs])
            lines.append(f"| {name} | {label} | {len(rs)} | {v.mean():.3f} ± {sd} | {per} | {mins:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["kvasir_seg", "glas_gland_histo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs-both", type=int, default=30, help="epochs of the both runs (raw runs get twice as many)")
    ap.add_argument(
        "--rule",
        choices=("steps", "converge"),
        default="steps",
        help="the comparison rule: 'steps' = the same optimizer steps for every arm (--epochs-both); 'converge' = "
        "every arm trained until its validation Dice has not improved for --patience epochs (cap --max-epochs)",
    )
    ap.add_argument("--patience", type=int, default=60)
    ap.add_argument("--loss", choices=("dice_ce", "dice_ce_batch"), default="dice_ce")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--inputs", nargs="+", choices=("raw", "both"), default=["raw", "both"])
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

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import describe

    torch.set_num_threads(args.threads)
    results_file = args.out / "results.json"
    previous = json.loads(results_file.read_text())["runs"] if results_file.is_file() else []
    mine = {"rule": args.rule, "size": args.size, "loss": args.loss, "lr": args.lr}
    for r in previous:
        theirs = {"rule": r.get("rule", "steps"), "size": r.get("size", args.size), "loss": r.get("loss", "dice_ce")}
        theirs["lr"] = r.get("lr", args.lr)
        if theirs != mine:
            raise SystemExit(f"{results_file} holds runs with {theirs}, not {mine}: give this study its own --out")
    results = []
    prep = {}
    for name in args.sets:
        if "both" in args.inputs:
            s = prepare(name, args.work, args.points_per_side, args.threads)
            prep[name] = {"counts": s["counts"], "wall_s": s.get("wall_s")}
        for seed in args.seeds:
            for kind in args.inputs:
                results.append(train_and_test(name, kind, seed, args))
                doc = {
                    "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "machine": describe(args.threads),
                    "samaug": prep,
                }
                done = {_run_key(x) for x in results}
                keep = [r for r in previous if _run_key(r) not in done]
                doc["runs"] = keep + results
                args.out.mkdir(parents=True, exist_ok=True)
                results_file.write_text(json.dumps(doc, indent=1))
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
