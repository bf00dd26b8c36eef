"""Adapting LiteMedSAM to real data: decoder fine-tuning, Medical-SAM-Adapter adapters and AutoSAM, against zero-shot
LiteMedSAM (box prompts) and a MONAI U-Net (no prompts), on 2 CPU cores with a time budget per run.

1. **Zero-shot first.** Box-prompted Dice of the bundled LiteMedSAM on every case of the candidate sets (one tight
   box per label, the evaluation's ``box`` protocol; ``medsamkit.train.finetune.zero_shot_rows``) ->
   ``zero_shot.json``. The two weakest candidates plus ``kvasir_seg`` are studied (or ``--sets``).
2. **One split per set**: ``split_cases`` with ``--split-seed`` (default 0) and val/test fractions 0.15/0.25, the
   same as ``experiments/samaug_unet.py``, so its U-Nets share the test cases. ``--folds K`` instead: k-fold by case
   (``split_cases(..., folds=K, fold=k)``), one run per fold, mode and seed (run folders ``{mode}-s{seed}-f{k}``),
   so every image of a set is tested once; results go to ``..._kfold/`` and the table pools each seed's folds.
3. For each set and training seed: ``finetune`` in each ``--modes`` (default decoder, adapter, autosam) within
   ``--minutes`` of wall-clock (the engine starts no epoch that would end past it; the best validation epoch is
   kept), and a raw-input U-Net (``train_unet``) with the same budget as the prompt-free baseline:
   * ``decoder``: embeddings cached once per set (``--work``/cache), no augmentation, cosine schedule over
     ``--decoder-epochs``;
   * ``adapter``: encoder + decoder adapters (ratio 0.25), MONAI augmentation, the encoder runs every step; constant
     learning rate (the budget, not the planned epochs, ends the run);
   * ``autosam``: prompt generator on the image and the cached embedding, cosine over ``--autosam-epochs``;
   * ``unet``: ``train_unet`` raw input, size 256, cosine over ``--unet-epochs``.
4. Test Dice at the original resolution (``evaluate_finetune``, PyTorch engine): prompted modes with each object's
   tight box, against zero-shot LiteMedSAM on the same boxes; AutoSAM and the U-Net with no prompt, on the union of
   the labels (``evaluate_unet``).

``--rule converge`` replaces the budget rule by early stopping: every run (each mode and the U-Net) stops when its
validation Dice has not improved for ``--patience`` epochs (at most ``--max-epochs``; ``--minutes`` stays a cap), and
the results go to ``experiments/results/finetune_converge/``. Every run records its rule, epochs, best epoch, stop
reason and minutes; ``experiments/study_intervals.py`` turns the results into intervals, verdicts and budget flags.

Writes ``experiments/results/finetune/``: ``zero_shot.json``, ``results.json`` (every run: test Dice, zero-shot
Dice on the same objects, epochs, minutes, parameter counts, adapter file size, per-object Dice) and ``table.md``
(mean ± sd over seeds of each run's mean test Dice). Runs resume: a finished run (``test_rows.json`` present) is not
trained again; run folders keep ``adapter.pt`` (``--keep-checkpoints`` also keeps last.pt/best.pt).

Usage (2 CPU threads):
    python experiments/finetune_real.py                       # zero-shot on the candidates, then 3 sets x 3 seeds
    python experiments/finetune_real.py --seeds 0 --minutes 30 --sets drive glas_gland_histo kvasir_seg
    python experiments/finetune_real.py --limit 4 --minutes 1 --decoder-epochs 1 --autosam-epochs 1 \\
        --unet-epochs 1 --seeds 0 --out /tmp/ft_smoke                                  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"
OUT = ROOT / "experiments" / "results" / "finetune"
CANDIDATES = ["busi_breast_us", "ph2_dermoscopy", "glas_gland_histo", "drive"]
ALWAYS = "kvasir_seg"
MODES = ("decoder", "adapter", "autosam")


def dataset(name: str, limit: int | None):
    from medsamkit.data import load_dataset

    ds = load_dataset(DATA / name)
    return ds.subset(limit=limit) if limit else ds


def zero_shot(names: list[str], args: argparse.Namespace) -> dict:
    """Mean box Dice per set over all its cases (cached in zero_shot.json)."""
    from medsamkit.train.finetune import summarize_rows, zero_shot_rows

    f = args.out / "zero_shot.json"
    doc = json.loads(f.read_text()) if f.is_file() else {}
    for name in names:
        key = f"{name}@{args.limit}" if args.limit else name
        if key in doc:
            continue
        t0 = time.perf_counter()
        rows = zero_shot_rows(dataset(name, args.limit), backend="auto")
        s = summarize_rows(rows, ("dice",))["dice"]
        doc[key] = {
            "mean": round(s["mean"], 4),
            "sd": round(s["sd"], 4),
            "objects": s["n"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"zero-shot box Dice {name}: {doc[key]}", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(doc, indent=1) + "\n")
    return {n: doc[f"{n}@{args.limit}" if args.limit else n] for n in names}


def all_zero_shot(args: argparse.Namespace) -> dict:
    """Every set's cached zero-shot entry (``zero_shot.json``; earlier calls may have studied other sets)."""
    f = args.out / "zero_shot.json"
    doc = json.loads(f.read_text()) if f.is_file() else {}
    return {k: v for k, v in doc.items() if "@" not in k} if not args.limit else doc


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def _rule(args: argparse.Namespace) -> dict:
    """The comparison rule as TrainConfig fields: ``budget`` = the same wall-clock minutes for every arm;
    ``converge`` = every arm early-stopped by the same patience on validation Dice (the minutes only as a cap)."""
    if args.rule == "converge":
        return {"patience": args.patience, "max_minutes": args.minutes}
    return {"max_minutes": args.minutes}


def _epochs(args: argparse.Namespace, planned: int) -> int:
    return args.max_epochs if args.rule == "converge" else planned


def _run_name(kind: str, seed: int, fold: int | None) -> str:
    """A run folder: ``{kind}-s{seed}``, with ``-f{fold}`` under k-fold."""
    return f"{kind}-s{seed}" + ("" if fold is None else f"-f{fold}")


def _split(args: argparse.Namespace, fold: int | None) -> dict:
    """The split options of a run: the study's split seed and fractions, and its fold under ``--folds``."""
    out = {"split_seed": args.split_seed, "val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
    return out if fold is None else {**out, "folds": args.folds, "fold": fold}


def run_mode(name: str, mode: str, seed: int, args: argparse.Namespace, fold: int | None = None) -> dict:
    from medsamkit.train.finetune import default_config, evaluate_finetune, finetune

    run = args.work / name / _run_name(mode, seed, fold)
    rows_file = run / "test_rows.json"
    if not rows_file.is_file():
        if run.exists():
            shutil.rmtree(run)  # an unfinished run (killed) starts again: its budget would not be comparable
        ds = dataset(name, args.limit)
        common = _split(args, fold)
        cache = str(args.work / name / "embeddings")
        rule = _rule(args)
        if mode == "decoder":
            cfg = default_config(mode, epochs=_epochs(args, args.decoder_epochs), seed=seed, **rule)
            opts = {"cache_embeddings": cache}
        elif mode == "autosam":
            cfg = default_config(mode, epochs=_epochs(args, args.autosam_epochs), seed=seed, **rule)
            opts = {"cache_embeddings": cache, "autosam_input": "both"}
        elif mode == "adapter":
            cfg = default_config(
                mode, epochs=_epochs(args, args.adapter_epochs), batch_size=2, schedule="constant", seed=seed, **rule
            )
            opts = {"adapter_ratio": 0.25}
        else:
            raise ValueError(mode)
        res = finetune(ds, run, mode, config=cfg, progress=True, **common, **opts)
        rows = evaluate_finetune(run, ds, backend=args.eval_backend, progress=True)
        rows_file.write_text(json.dumps(rows) + "\n")
        if not args.keep_checkpoints:
            for f in ("last.pt", "best.pt"):
                (run / f).unlink(missing_ok=True)
        del res
    rows = json.loads(rows_file.read_text())
    doc = json.loads((run / "finetune.json").read_text())
    out = {
        "set": name,
        "mode": mode,
        "seed": seed,
        **({} if fold is None else {"fold": fold, "folds": args.folds}),
        "rule": args.rule,
        "test_dice": _mean(rows, "dice"),
        "zero_shot_dice": _mean(rows, "zero_shot_dice"),
        "test_objects": len(rows),
        "epochs": doc["epochs"],
        "stop_reason": doc["stop_reason"],
        "best_epoch": doc["best_epoch"],
        "best_val_dice": doc["best_val_dice"],
        "train_minutes": round(doc["seconds"]["fit"] / 60, 2),
        "encode_minutes": round(doc["seconds"]["encode"] / 60, 2),
        "planned_epochs": doc["config"]["epochs"],
        "budget_minutes": doc["config"]["max_minutes"],
        "lr": doc["config"]["lr"],
        "batch_size": doc["config"]["batch_size"],
        "trainable_parameters": doc["parameters"]["trainable"],
        "trainable_percent": doc["parameters"]["trainable_percent"],
        "adapter_bytes": doc["adapter_bytes"],
        "items": doc["items"],
        "per_object": {f"{r['image']}#{r['object']}": round(float(r["dice"]), 4) for r in rows},
        "zero_shot_per_object": {
            f"{r['image']}#{r['object']}": round(float(r["zero_shot_dice"]), 4)
            for r in rows
            if r.get("zero_shot_dice") is not None
        },
    }
    print(json.dumps({k: v for k, v in out.items() if k != "per_object"}), flush=True)
    return out


def run_unet(name: str, seed: int, args: argparse.Namespace, fold: int | None = None) -> dict:
    from medsamkit.train import TrainConfig, evaluate_unet, read_metrics, train_unet

    run = args.work / name / _run_name("unet", seed, fold)
    rows_file = run / "test_rows.json"
    ds = dataset(name, args.limit)
    if not rows_file.is_file():
        if run.exists():
            shutil.rmtree(run)
        cfg = TrainConfig(epochs=_epochs(args, args.unet_epochs), batch_size=8, lr=1e-3, seed=seed, **_rule(args))
        fit = train_unet(
            ds,
            run,
            "raw",
            size=256,
            config=cfg,
            progress=True,
            **_split(args, fold),
        )
        rows = evaluate_unet(run, ds, split="test")
        (run / "result.json").write_text(json.dumps({"stop_reason": fit.stop_reason, "best_epoch": fit.best_epoch}) + "\n")
        rows_file.write_text(json.dumps(rows) + "\n")
        if not args.keep_checkpoints:
            (run / "last.pt").unlink(missing_ok=True)
    rows = json.loads(rows_file.read_text())
    metrics = read_metrics(run)
    fit_doc = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
    out = {
        "set": name,
        "mode": "unet",
        "seed": seed,
        **({} if fold is None else {"fold": fold, "folds": args.folds}),
        "rule": args.rule,
        "test_dice": _mean(rows, "dice"),
        "zero_shot_dice": None,
        "test_objects": len(rows),
        "epochs": len(metrics),
        "stop_reason": fit_doc.get("stop_reason"),
        "best_epoch": fit_doc.get("best_epoch"),
        "planned_epochs": _epochs(args, args.unet_epochs),
        "budget_minutes": args.minutes,
        "train_minutes": round(sum(float(m["seconds"]) for m in metrics) / 60, 2),
        "per_object": {r["case"]: round(float(r["dice"]), 4) for r in rows},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "per_object"}), flush=True)
    return out


LABELS = {
    "zero-shot": "zero-shot LiteMedSAM (box)",
    "decoder": "decoder fine-tuned (box)",
    "adapter": "adapters (box)",
    "autosam": "AutoSAM (no prompt)",
    "unet": "U-Net, raw input (no prompt)",
}


def samaug_unets() -> dict[str, list[float]]:
    """Test Dice per seed of the SAMAug experiment's raw-input U-Nets (``experiments/samaug_unet.py``: 128 px,
    same split seed and fractions, hence the same test cases), by set; empty when that experiment is absent."""
    f = ROOT / "experiments" / "results" / "samaug" / "results.json"
    if not f.is_file():
        return {}
    out: dict[str, list[float]] = {}
    for r in json.loads(f.read_text())["runs"]:
        if r.get("input") == "raw" and r.get("dice_raw") is not None:
            out.setdefault(r["set"], []).append(float(r["dice_raw"]))
    return out


def fold_groups(runs: list[dict]) -> tuple[list[dict], dict[tuple, list[dict]]]:
    """The runs without a fold, and the k-fold runs of each (set, mode, seed) whose folds are all done, sorted by
    fold; a seed with folds missing is left out, with a note on stderr."""
    plain = [r for r in runs if r.get("fold") is None]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("fold") is not None:
            groups.setdefault((r["set"], r["mode"], int(r["seed"])), []).append(r)
    done = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["fold"])
        if [r["fold"] for r in rs] != list(range(rs[0]["folds"])) or len({r["folds"] for r in rs}) > 1:
            print(f"{key}: left out, folds {[r['fold'] for r in rs]} of {rs[0]['folds']} done", file=sys.stderr)
            continue
        done[key] = rs
    return plain, done


def merge_objects(runs: list[dict], field: str, what: object) -> dict[str, float]:
    """The per-object Dice ``field`` of ``runs`` in one dict (the folds of one seed: every image tested once);
    SystemExit when an object is scored by two runs."""
    out: dict[str, float] = {}
    for r in runs:
        overlap = set(out) & set(r.get(field, {}))
        if overlap:
            raise SystemExit(f"{what}: test objects {sorted(overlap)[:3]} in two runs")
        out.update(r.get(field, {}))
    return out


def pool_folds(runs: list[dict]) -> list[dict]:
    """Under k-fold, one record per (set, mode, seed) with the folds' test objects together (every image tested
    once, by its fold's model): test and zero-shot Dice are means over all of them, ``epochs``, ``best_epoch`` and
    ``stop_reason`` the folds' joined by "+", ``train_minutes`` the mean per fold run. A seed whose folds are not all
    done is left out (:func:`fold_groups`); runs without a fold are returned as they are."""
    out, groups = fold_groups(runs)
    for key, rs in groups.items():
        merged = {field: merge_objects(rs, field, key) for field in ("per_object", "zero_shot_per_object")}
        z = merged["zero_shot_per_object"]
        out.append(
            {
                **rs[0],
                **merged,
                "fold": None,
                "test_dice": round(float(np.mean(list(merged["per_object"].values()))), 4),
                "zero_shot_dice": round(float(np.mean(list(z.values()))), 4) if z else None,
                "test_objects": len(merged["per_object"]),
                **{k: "+".join(str(r.get(k)) for r in rs) for k in ("epochs", "best_epoch", "stop_reason")},
                "train_minutes": round(float(np.mean([r["train_minutes"] for r in rs])), 2),
            }
        )
    return out


def table(results: list[dict], zs: dict) -> str:
    """Markdown table: per set, zero-shot over all cases, then each mode's mean ± sd over seeds of the run's mean
    test Dice, the zero-shot Dice on the same test objects (box prompts) and the gain over it (under k-fold a
    seed's Dice is over the test objects of all its folds: :func:`pool_folds`)."""
    lines = [
        "| set | model | seeds | test Dice mean ± sd | zero-shot, same test objects (box) | gain | epochs | "
        "train min/run | trainable params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    kfold = any("fold" in r for r in results)
    results = pool_folds(results)
    other = {} if kfold else samaug_unets()  # the SAMAug U-Nets were tested on the single split's test cases
    for name in dict.fromkeys(r["set"] for r in results):
        z = zs.get(name)
        if z:
            lines.append(
                f"| {name} | zero-shot LiteMedSAM, all {z['objects']} objects (box) | - | {z['mean']:.3f} ± {z['sd']:.3f} "
                "(over objects) | | | | | |"
            )
        for mode in (*MODES, "unet"):
            rs = [r for r in results if r["set"] == name and r["mode"] == mode and r["test_dice"] is not None]
            if not rs:
                continue
            v = np.array([r["test_dice"] for r in rs])
            sd = f"{v.std(ddof=1):.3f}" if len(v) > 1 else "-"
            zsd = [r["zero_shot_dice"] for r in rs if r.get("zero_shot_dice") is not None]
            zcell = f"{np.mean(zsd):.3f}" if zsd else ""
            gain = f"{v.mean() - np.mean(zsd):+.3f}" if zsd else ""
            if mode == "autosam" and zsd:  # no prompt vs a prompted base: not a gain, shown for reference
                zcell, gain = f"({zcell}, union box)", ""
            epochs = "/".join(str(r["epochs"]) for r in rs)
            mins = np.mean([r["train_minutes"] for r in rs])
            params = f"{rs[0]['trainable_parameters']:,}" if "trainable_parameters" in rs[0] else ""
            lines.append(
                f"| {name} | {LABELS[mode]} | {len(rs)} | {v.mean():.3f} ± {sd} | {zcell} | {gain} | {epochs} | {mins:.1f} "
                f"| {params} |"
            )
        if name in other:
            v = np.array(other[name])
            sd = f"{v.std(ddof=1):.3f}" if len(v) > 1 else "-"
            lines.append(
                f"| {name} | U-Net of the SAMAug experiment, 128 px (no prompt) | {len(v)} | {v.mean():.3f} ± {sd} | | | | | |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", nargs="+", default=CANDIDATES, help="sets whose zero-shot Dice is measured first")
    ap.add_argument("--sets", nargs="+", help="study these sets (default: the two weakest candidates + kvasir_seg)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--no-unet", action="store_true", help="skip the U-Net baseline")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--rule",
        choices=("budget", "converge"),
        default="budget",
        help="budget: every run gets --minutes of wall clock (planned epochs may end it first: such runs are flagged "
        "in study_intervals.py); converge: every run stops when validation Dice has not improved for --patience "
        "epochs (at most --max-epochs, and --minutes as a cap)",
    )
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of each training run")
    ap.add_argument("--decoder-epochs", type=int, default=40)
    ap.add_argument("--adapter-epochs", type=int, default=100, help="upper bound; the budget ends adapter runs")
    ap.add_argument("--autosam-epochs", type=int, default=40)
    ap.add_argument("--unet-epochs", type=int, default=60)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument(
        "--folds",
        type=int,
        help="k-fold by case: every set is split into K parts (split seed --split-seed) and each part is the test set of "
        "one run per mode and seed, so every image is tested once (--test-fraction is then not used)",
    )
    ap.add_argument("--limit", type=int, help="first N cases of each set (smoke tests)")
    ap.add_argument("--eval-backend", default="torch", choices=("torch", "auto", "onnxruntime"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep last.pt/best.pt of finished runs")
    ap.add_argument(
        "--out", type=Path, help=f"default {OUT} (rule budget) or {OUT}_converge (rule converge); with --folds, _kfold appended"
    )
    ap.add_argument("--work", type=Path, help="run folders and embedding caches (default OUT/work)")
    ap.add_argument("--table-only", action="store_true", help="rewrite table.md from results.json and stop")
    args = ap.parse_args()
    if args.folds is not None and args.folds < 2:
        raise SystemExit(f"--folds must be at least 2, got {args.folds}")
    default_out = OUT if args.rule == "budget" else OUT.parent / f"{OUT.name}_converge"
    args.out = args.out or (default_out if args.folds is None else default_out.parent / f"{default_out.name}_kfold")
    args.work = args.work or args.out / "work"
    if args.table_only:
        if not (args.out / "results.json").is_file():
            raise SystemExit(f"no results.json in {args.out}: run the study first")
        doc = json.loads((args.out / "results.json").read_text())
        text = table(doc["runs"], {**all_zero_shot(args), **doc["zero_shot"]})
        (args.out / "table.md").write_text(text + "\n")
        print(text)
        return
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import describe

    torch.set_num_threads(args.threads)
    os.environ.setdefault("MEDSAMKIT_THREADS", str(args.threads))
    zs = zero_shot(sorted(set(args.candidates) | set(args.sets or [])), args)
    sets = args.sets or [*sorted(args.candidates, key=lambda n: zs[n]["mean"])[:2], ALWAYS]
    known = ", ".join(f"{n} {zs[n]['mean']:.3f}" for n in sets if n in zs)
    print(f"sets: {sets} (zero-shot box Dice {known})", flush=True)
    zs.update(zero_shot([n for n in sets if n not in zs], args))
    results_file = args.out / "results.json"
    before = json.loads(results_file.read_text()) if results_file.is_file() else {}
    previous = before.get("runs", [])
    results: list[dict] = []
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    # every call's settings (sets, seeds, modes differ between calls into one folder); "settings" is the latest
    calls = before.get("calls", [before["settings"]] if "settings" in before else [])
    calls = [c for c in calls if c != settings] + [settings]

    def save() -> None:
        done = {(r["set"], r["mode"], r["seed"], r.get("fold")) for r in results}
        doc = {
            "settings": settings,
            "calls": calls,
            "machine": describe(args.threads),
            "zero_shot": zs,
            "runs": [r for r in previous if (r["set"], r["mode"], r["seed"], r.get("fold")) not in done] + results,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(doc, indent=1) + "\n")

    folds: list[int | None] = [None] if args.folds is None else list(range(args.folds))
    for name in sets:
        for seed in args.seeds:
            for fold in folds:
                for mode in args.modes:
                    results.append(run_mode(name, mode, seed, args, fold))
                    save()
                if not args.no_unet:
                    results.append(run_unet(name, seed, args, fold))
                    save()
    text = table(json.loads(results_file.read_text())["runs"], {**all_zero_shot(args), **zs})
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
