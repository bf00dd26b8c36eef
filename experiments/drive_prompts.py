"""Prompts that can describe a vessel tree: LiteMedSAM on DRIVE with one box per tile of the vessel tree, next to
the one box around the whole tree, zero-shot and after decoder fine-tuning.

In every DRIVE image one connected component (8-neighbourhood) holds at least 97.8 % of the vessel pixels, so
"one box per component" is the whole-tree box again (plus a few specks): a box around the whole fundus, which
cannot tell SAM where the vessels are. Here the
tree is cut by a ``--tiles`` x ``--tiles`` grid (default 4 x 4) into local objects: the vessel pixels of each tile
are one object (label = tile number), prompted by their tight box. This is a derived dataset written to ``--work``
(same images and case ids as ``../shared/data/real/drive``, so ``split_cases`` with the same seed and fractions
gives the same test images as ``experiments/finetune_real.py``).

For the test images (8 of 30; split seed 0, val/test 0.15/0.25):

1. zero-shot LiteMedSAM: the whole-tree box (``objects=union``), one box per tile and one point per tile (the
   ``point:centre`` protocol: the tile object's pixel farthest from its boundary);
2. the mask decoder fine-tuned on the tile boxes of the training images (``finetune`` mode ``decoder``, cached
   embeddings, ``--minutes`` wall-clock budget and ``--epochs`` planned, per ``--seeds``); scored on the same tile
   boxes.

Scores: Dice per object (tile) and the **image Dice** of the union of an image's predictions against its whole vessel
tree (the pixel-level Dice vessel papers report). Intervals: 95 % bootstrap over the test images (and seeds);
differences paired over images (``seed_image_bootstrap``).

Writes ``experiments/results/drive_prompts/results.json`` and ``table.md``. Usage:
``python experiments/drive_prompts.py [--tiles 4] [--seeds 0 1 2] [--minutes 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DRIVE = SHARED / "data" / "real" / "drive"
OUT = ROOT / "experiments" / "results" / "drive_prompts"


def tile_dataset(work: Path, tiles: int) -> Path:
    """The derived dataset: DRIVE's images (linked) and masks whose vessel pixels carry their tile's number
    (1..tiles**2, row-major; tile edges at ``round(i * H / tiles)``)."""
    from PIL import Image

    out = work / f"drive_tiles{tiles}"
    if (out / "done").is_file():
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for img in sorted((DRIVE / "images").iterdir()):
        link = out / "images" / img.name
        if not link.exists():
            link.symlink_to(img.resolve())
    for f in sorted((DRIVE / "masks").iterdir()):
        vessels = np.asarray(Image.open(f)) > 0
        h, w = vessels.shape
        ys = np.round(np.linspace(0, h, tiles + 1)).astype(int)
        xs = np.round(np.linspace(0, w, tiles + 1)).astype(int)
        label = np.zeros((h, w), np.uint8)
        for i in range(tiles):
            for j in range(tiles):
                label[ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = i * tiles + j + 1
        Image.fromarray(np.where(vessels, label, 0).astype(np.uint8)).save(out / "masks" / f.name)
    (out / "done").write_text("")
    return out


def test_ids(args: argparse.Namespace) -> list[str]:
    from medsamkit.data import load_dataset, split_cases

    ds = load_dataset(DRIVE)
    return list(split_cases([c.id for c in ds.cases], args.val_fraction, args.test_fraction, args.split_seed).test)


def score(predictor: Any, dataset: Path, ids: list[str], objects: str, protocol: str) -> dict[str, Any]:
    """Per-object Dice and the image Dice of the union of each image's predictions (vessels = mask > 0)."""
    from medsamkit.data import load_dataset
    from medsamkit.data.datasets import load_case
    from medsamkit.evaluate.runner import EvalConfig, evaluate_case
    from medsamkit.metrics import dice

    cfg = EvalConfig(objects=objects, save_masks=True)
    per_object: dict[str, float] = {}
    per_image: dict[str, float] = {}
    for case in load_dataset(dataset).subset(ids).cases:
        res = evaluate_case(case, [protocol], predictor, cfg, errors="raise")
        for r in res.rows:
            per_object[f"{case.id}#{r['label']}"] = round(float(r["dice"]), 4)
        vessels = np.squeeze(load_case(case)[1]) > 0
        union = np.zeros(vessels.shape, bool)
        for k, m in res.masks.items():
            if k.endswith(f"/{protocol}/0"):
                union |= np.squeeze(np.asarray(m, bool))
        per_image[case.id] = round(float(dice(union, vessels)), 4)
    return {"per_object": per_object, "per_image": per_image}


def finetune_tiles(dataset: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from medsamkit.train.finetune import default_config, finetune

    run = args.work / f"decoder-tiles{args.tiles}-s{seed}"
    if not (run / "finetune.json").is_file():
        cfg = default_config("decoder", epochs=args.epochs, seed=seed, max_minutes=args.minutes)
        finetune(
            dataset,
            run,
            "decoder",
            config=cfg,
            cache_embeddings=str(args.work / "embeddings"),
            split_seed=args.split_seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            progress=True,
        )
    return {"run": run, **json.loads((run / "finetune.json").read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40, help="planned epochs (the budget may end a run first)")
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget per training run")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--work", type=Path, help="derived dataset, runs, embedding cache (default OUT/work)")
    args = ap.parse_args()
    args.work = args.work or args.out / "work"
    if not 1 <= args.tiles <= 15:
        raise SystemExit(f"--tiles must be 1..15 (tile numbers are uint8 mask labels), got {args.tiles}")
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("MEDSAMKIT_THREADS", str(args.threads))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import describe

    from medsamkit.evaluate.analysis import format_interval, seed_image_bootstrap, verdict
    from medsamkit.models.adapted import load_adapted
    from medsamkit.predict import Predictor

    tiles = tile_dataset(args.work, args.tiles)
    ids = test_ids(args)
    results_file = args.out / "results.json"
    doc: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    doc.update({"machine": describe(args.threads), "test_images": ids, "tiles": args.tiles})
    arms: dict[str, Any] = doc.setdefault("arms", {})

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(doc, indent=1) + "\n")

    base = Predictor("litemedsam", backend="torch", threads=args.threads)
    zero_shot = {
        "zero-shot, whole-tree box": (DRIVE, "union", "box"),
        f"zero-shot, one box per tile ({args.tiles}x{args.tiles})": (tiles, "label", "box"),
        f"zero-shot, one point per tile ({args.tiles}x{args.tiles})": (tiles, "label", "point:centre"),
    }
    for name, (data, objects, protocol) in zero_shot.items():
        if name not in arms:
            t0 = time.perf_counter()
            arms[name] = {"seeds": {"0": score(base, data, ids, objects, protocol)}, "seconds": time.perf_counter() - t0}
            save()
        print(name, "done", flush=True)
    tuned = f"decoder fine-tuned on tile boxes, one box per tile ({args.tiles}x{args.tiles})"
    arm = arms.setdefault(tuned, {"seeds": {}, "runs": {}})
    for seed in args.seeds:
        if str(seed) in arm["seeds"]:
            continue
        info = finetune_tiles(tiles, seed, args)
        pred = Predictor(load_adapted(info["run"]), backend="torch", threads=args.threads)
        arm["seeds"][str(seed)] = score(pred, tiles, ids, "label", "box")
        arm["runs"][str(seed)] = {
            "epochs": info["epochs"],
            "planned_epochs": info["config"]["epochs"],
            "best_epoch": info["best_epoch"],
            "stop_reason": info["stop_reason"],
            "train_minutes": round(info["seconds"]["fit"] / 60, 2),
            "budget_minutes": info["config"]["max_minutes"],
        }
        save()
        print(tuned, seed, arm["runs"][str(seed)], flush=True)

    def matrix(name: str, what: str) -> np.ndarray:
        """(seeds, test images): image Dice, or the mean tile Dice of each image ("per_object")."""
        seeds = arms[name]["seeds"]
        if what == "per_image":
            return np.array([[seeds[s]["per_image"][i] for i in ids] for s in sorted(seeds)])
        out = []
        for s in sorted(seeds):
            tiles_of: dict[str, list[float]] = {}
            for k, v in seeds[s]["per_object"].items():
                tiles_of.setdefault(k.split("#")[0], []).append(v)
            out.append([float(np.mean(tiles_of[i])) for i in ids])
        return np.array(out)

    # the decoder and adapters of experiments/finetune_real.py, tuned and scored on the whole-tree box (same images)
    study = ROOT / "experiments" / "results" / "finetune" / "results.json"
    whole_tree = {}
    if study.is_file():
        for mode, label in (("decoder", "decoder fine-tuned on whole-tree boxes"), ("adapter", "adapters, whole-tree box")):
            rs = sorted(
                (r for r in json.loads(study.read_text())["runs"] if r["set"] == "drive" and r["mode"] == mode),
                key=lambda r: r["seed"],
            )
            if rs and all(sorted(k.split("#")[0] for k in r["per_object"]) == sorted(ids) for r in rs):
                whole_tree[label] = np.array([[r["per_object"][f"{i}#1"] for i in ids] for r in rs])

    lines = [
        f"DRIVE test images: {len(ids)} (split seed {args.split_seed}); {doc['machine']}. Image Dice: the union of an "
        "image's predictions against its whole vessel tree; tile Dice: the mean Dice of an image's tile objects. 95 % "
        "bootstrap intervals over test images and, for several seeds, over seeds (seed_image_bootstrap).",
        "",
        "| prompt / model | seeds | image Dice, 95 % CI | tile Dice, 95 % CI | training |",
        "|---|---|---|---|---|",
    ]
    for name, a in arms.items():
        img = seed_image_bootstrap(matrix(name, "per_image"))
        tile = format_interval(seed_image_bootstrap(matrix(name, "per_object"))) if "tile" in name else "-"
        runs = a.get("runs", {})
        train = (
            "; ".join(
                f"{r['epochs']}/{r['planned_epochs']} ep (best {r['best_epoch']}), {r['train_minutes']} of "
                f"{r['budget_minutes']} min, {r['stop_reason']}"
                for r in runs.values()
            )
            if runs
            else "-"
        )
        lines.append(f"| {name} | {len(a['seeds'])} | {format_interval(img)} | {tile} | {train} |")
    whole, tile_box, tile_point = (
        "zero-shot, whole-tree box",
        f"zero-shot, one box per tile ({args.tiles}x{args.tiles})",
        f"zero-shot, one point per tile ({args.tiles}x{args.tiles})",
    )
    values = {n: matrix(n, "per_image") for n in arms if arms[n]["seeds"]} | whole_tree
    pairs = [(whole, tile_box), (whole, tile_point), (tile_box, tuned), (whole, tuned)]
    pairs += [(label, tuned) for label in whole_tree]
    lines += ["", "| B vs A | image Dice B - A, 95 % paired CI | verdict |", "|---|---|---|"]
    for x, y in pairs:
        if x in values and y in values:
            d = seed_image_bootstrap(values[x], values[y])
            lines.append(f"| {y} vs {x} | {format_interval(d, signed=True)} | **{verdict(d)}** |")
    text = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
