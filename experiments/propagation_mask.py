"""3D propagation with the previous slice's mask as mask prompt, per model (issue 16: "try the previous slice's
mask as mask prompt with the new decoder and keep it on only where it measures better").

Every labelled object of the 3D sets of ../shared/data/real is prompted as experiments/propagation_stop.py does it
(its ``volumes`` and ``objects_of``: a 2D ground-truth box on the object's slice of largest area; labels whose largest
slice has fewer than 20 pixels skipped; TotalSegmentator's ct_sm and mr_sm, not ct_dicom, whose labels are flipped
against the series) and propagated by ``segment_volume`` with the default options, ``mask_prompt`` off and on
(``PropagationOptions.mask_prompt``: each slice after the key slice also gets the previous slice's kept low-res
logits), for each model of ``--models``. Four arms for the default two models; the slice embeddings are computed
once for all of them (the models share LiteMedSAM's image encoder, and the embedding cache keys on the encoder's
identity; on disk in ``--embedding-cache``, shared with propagation_stop.py), so the arms cost only the decoder.

Per object: 3D Dice, the slices covered, over-run past the true extent and cut short (both ends). Written to
``OUT/objects.json``; ``OUT/summary.json`` and ``OUT/table.md`` give, per group of objects and model, the mean 3D
Dice per object with off and on, each with a 95 % percentile-bootstrap interval over objects (10,000 resamples,
seeded; the objects of one volume are not independent, so the intervals are somewhat optimistic), the paired
difference on - off, and each later model minus the first with the same setting. The groups: the held-out sets
together (TotalSegmentator + BraTS: the decision rests on them), each set alone, and the hippocampus set reported
apart, because the click-trained decoder is trained on MSD hippocampus slices. The verdict per model: "on better"
where the interval of on - off over the held-out objects lies above 0, "on worse" where it lies below, otherwise
"no difference shown".

Usage:
  python experiments/propagation_mask.py                                    # litemedsam, litemedsam-interactive
  python experiments/propagation_mask.py --models litemedsam --limit 2      # quick: first 2 cases per set
  python experiments/propagation_mask.py --summarize-only                   # tables again from OUT/objects.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# experiments/ is on sys.path when this file runs as a script: the objects and prompts of the stop-rule study
from propagation_stop import DATA, ROOT, objects_of, volumes

from medsamkit.errors import MedsamkitError
from medsamkit.evaluate import Interval, bootstrap_mean, paired_bootstrap
from medsamkit.io import read_image
from medsamkit.metrics import dice
from medsamkit.predict import Predictor
from medsamkit.predict.cache import EmbeddingCache
from medsamkit.predict.volume import ObjectPrompt, PropagationOptions, _bbox, segment_volume

SETS = {
    "totalseg_examples_3d": "TotalSegmentator ct_sm + mr_sm",
    "brats2021_flair_edema_3d": "BraTS FLAIR oedema",
    "msd_hippocampus_mri_3d": "hippocampus",
}
#: the sets the click-trained decoder is not trained on: the decision rests on them
HELD_OUT = ("totalseg_examples_3d", "brats2021_flair_edema_3d")
IN_TRAINING = ("msd_hippocampus_mri_3d",)
SETTINGS = {"off": False, "on": True}


# -- running -----------------------------------------------------------------------------------------------


def label_names(set_name: str, case: str) -> dict[int, str]:
    """Label value -> name from the set's labels.json: ``{"1": name}``, or per case ``{case: {"1": name}}``."""
    f = DATA / set_name / "labels.json"
    table = json.loads(f.read_text()) if f.is_file() else {}
    if isinstance(table.get(case), dict):
        table = table[case]
    return {int(k): str(v) for k, v in table.items() if str(k).isdigit()}


def arm_record(labels: np.ndarray, truth: np.ndarray, gt_lo: int, gt_hi: int) -> dict[str, Any]:
    """3D Dice of ``labels > 0`` against ``truth`` (both ``(Z, Y, X)``), the z slices covered, and the slices
    over-run past the true extent ``gt_lo..gt_hi`` and cut short of it (both ends together)."""
    pred = labels > 0
    zs = np.flatnonzero(pred.any(axis=(1, 2)))
    lo, hi = (int(zs[0]), int(zs[-1])) if zs.size else (gt_lo, gt_lo - 1)
    over = max(0, gt_lo - lo) + max(0, hi - gt_hi) if zs.size else 0
    short = max(0, lo - gt_lo) + max(0, gt_hi - hi) if zs.size else gt_hi - gt_lo + 1
    return {"dice": round(dice(pred, truth), 6), "slices": [lo, hi] if zs.size else [], "over": over, "short": short}


def run(
    models: Sequence[str], sets: Sequence[str], limit: int | None, predictors: Mapping[str, Predictor]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per object of ``sets`` (the first ``limit`` cases of each), one record with the arms ``<model>/off`` and
    ``<model>/on``; and the decoding seconds per arm."""
    # in the order of SETS whatever the order of ``sets`` (the bootstrap's draws follow the order of the objects)
    vols = [v for s in SETS if s in sets for v in [w for w in volumes() if w["set"] == s][:limit]]
    seconds = {f"{m}/{k}": 0.0 for m in models for k in SETTINGS}
    out = []
    for vol in vols:
        t0 = time.perf_counter()
        img = read_image(vol["image"])
        gt = read_image(vol["mask"]).array
        names = label_names(vol["set"], vol["case"])
        for ob in objects_of(gt):
            truth = gt == ob["label"]
            key = ob["largest"]
            box = _bbox(truth[key])  # inclusive (x0, y0, x1, y1) on the key slice: column, row
            assert box is not None  # objects_of keeps labels with >= 20 pixels on their largest slice
            rec: dict[str, Any] = {
                "set": vol["set"],
                "case": vol["case"],
                "label": ob["label"],
                "name": names.get(ob["label"]),
                "key": key,
                "box": [int(v) for v in box],
                "gt_slices": [ob["lo"], ob["hi"]],
                "gt_voxels": ob["voxels"],
                "arms": {},
            }
            prompt = [ObjectPrompt(box=box.tolist(), slice_index=key)]
            for m in models:
                for setting, on in SETTINGS.items():
                    t = time.perf_counter()
                    seg = segment_volume(img, prompt, predictors[m], preset="auto", options=PropagationOptions(mask_prompt=on))
                    seconds[f"{m}/{setting}"] += time.perf_counter() - t
                    rec["arms"][f"{m}/{setting}"] = arm_record(seg.labels, truth, ob["lo"], ob["hi"])
            out.append(rec)
        n = sum(r["case"] == vol["case"] and r["set"] == vol["set"] for r in out)
        print(f"{vol['set']}/{vol['case']}: {n} objects, {time.perf_counter() - t0:.1f} s", flush=True)
    return out, seconds


# -- summary -----------------------------------------------------------------------------------------------


def groups_of(sets: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(title, sets) of each group reported: the held-out sets together (the decision), each set alone."""
    held = [s for s in HELD_OUT if s in sets]
    out: list[tuple[str, list[str]]] = []
    if held:
        out.append(("held out: " + " + ".join(SETS[s] for s in held) + " (decision)", held))
    out += [(SETS[s], [s]) for s in held if len(held) > 1]
    out += [(f"{SETS[s]} (in the click-trained decoder's training data)", [s]) for s in IN_TRAINING if s in sets]
    return out


def verdict(diff: Interval) -> str:
    """On - off: "on better" / "on worse" where the interval excludes 0, else "no difference shown"."""
    if diff.units < 2:
        return "no difference shown (one object)"
    if diff.low > 0:
        return "on better"
    if diff.high < 0:
        return "on worse"
    return "no difference shown"


def summarize(
    objects: Sequence[Mapping[str, Any]], models: Sequence[str], sets: Sequence[str], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Per group and model: mean 3D Dice off / on [95 % bootstrap over objects], on - off, better / worse counts,
    mean slices over-run and cut short; each later model minus the first, off and on; the verdict per model on the
    held-out group."""
    boot = {"resamples": resamples, "seed": seed}
    out: dict[str, Any] = {"groups": [], "verdict": {}}
    for title, members in groups_of(sets):
        rows = [o for o in objects if o["set"] in members]
        if not rows:
            continue
        units = [f"{o['set']}/{o['case']}/{o['label']}" for o in rows]

        def values(arm: str, what: str = "dice", rows: Sequence[Mapping[str, Any]] = rows) -> np.ndarray:
            return np.array([o["arms"][arm][what] for o in rows], np.float64)

        group: dict[str, Any] = {"group": title, "sets": members, "objects": len(rows), "models": {}}
        for m in models:
            off, on = values(f"{m}/off"), values(f"{m}/on")
            diff = paired_bootstrap(off, on, units, **boot)
            entry: dict[str, Any] = {
                "off": bootstrap_mean(off, units, **boot).to_dict(),
                "on": bootstrap_mean(on, units, **boot).to_dict(),
                "on_minus_off": diff.to_dict(),
                "better": int((on > off + 1e-9).sum()),
                "worse": int((on < off - 1e-9).sum()),
                "over": {k: round(float(values(f"{m}/{k}", "over").mean()), 2) for k in SETTINGS},
                "short": {k: round(float(values(f"{m}/{k}", "short").mean()), 2) for k in SETTINGS},
                "verdict": verdict(diff),
            }
            if m != models[0]:
                entry[f"minus_{models[0]}"] = {
                    k: paired_bootstrap(values(f"{models[0]}/{k}"), values(f"{m}/{k}"), units, **boot).to_dict() for k in SETTINGS
                }
            group["models"][m] = entry
        out["groups"].append(group)
        if any(s in HELD_OUT for s in members) and members == [s for s in HELD_OUT if s in sets]:
            out["verdict"] = {m: group["models"][m]["verdict"] for m in models}
    return out


def _fmt(d: Mapping[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    if d["units"] < 2:
        return f.format(d["mean"])
    return f"{f.format(d['mean'])} [{f.format(d['low'])}, {f.format(d['high'])}]"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """``table.md``: one row per group and model (off, on, on - off, better/worse, over-run and cut-short slices),
    the comparisons with the first model, the verdicts."""
    run_ = summary["run"]
    models = run_["models"]
    lines = [
        "# Propagation with the previous slice's mask as mask prompt (experiments/propagation_mask.py)",
        "",
        f"Models {', '.join(models)}; sets {', '.join(run_['sets'])}; "
        + (f"first {run_['limit']} cases per set" if run_["limit"] else "all cases")
        + f"; backend {run_['backend']}. 2D ground-truth box on each object's slice of largest area, default "
        "PropagationOptions. Mean 3D Dice per object [95 % bootstrap interval over objects, "
        f"{run_['resamples']} resamples, seed {run_['seed']}].",
        "",
        "| group | model | objects | mask prompt off | on | on - off | better / worse | over-run off → on | cut short off → on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in summary["groups"]:
        for m, e in g["models"].items():
            lines.append(
                f"| {g['group']} | {m} | {g['objects']} | {_fmt(e['off'])} | {_fmt(e['on'])} | "
                f"{_fmt(e['on_minus_off'], True)} | {e['better']} / {e['worse']} | "
                f"{e['over']['off']:.2f} → {e['over']['on']:.2f} | {e['short']['off']:.2f} → {e['short']['on']:.2f} |"
            )
    comparisons = [
        (g, m, e[f"minus_{models[0]}"]) for g in summary["groups"] for m, e in g["models"].items() if f"minus_{models[0]}" in e
    ]
    if comparisons:
        lines += ["", f"| group | model minus {models[0]} | mask prompt off | on |", "|---|---|---|---|"]
        for g, m, c in comparisons:
            lines.append(f"| {g['group']} | {m} | {_fmt(c['off'], True)} | {_fmt(c['on'], True)} |")
    if summary["verdict"]:
        lines += [
            "",
            "Verdict on the held-out objects (on - off): " + "; ".join(f"{m}: {v}" for m, v in summary["verdict"].items()) + ".",
        ]
    secs = run_.get("decode_seconds") or {}
    if secs:
        lines += [
            "",
            "Propagation seconds per arm (embeddings cached): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()) + ".",
        ]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="litemedsam,litemedsam-interactive", help="registry names, the first the reference")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--limit", type=int, help="first N cases per set (quick runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "propagation_mask")
    ap.add_argument("--embedding-cache", type=Path, default=ROOT / "experiments" / ".embedding-cache", metavar="DIR")
    ap.add_argument("--no-embedding-cache", action="store_true", help="keep embeddings in memory only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0, help="of the bootstrap")
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--summarize-only", action="store_true", help="read OUT/objects.json, do not propagate")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise SystemExit(f"unknown set(s) {', '.join(unknown)}; the 3D sets are {', '.join(SETS)}")
    if not models or len(set(models)) != len(models):
        raise SystemExit("--models needs one or more distinct registry names")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be >= 1")
    objects_file = args.out / "objects.json"
    if args.summarize_only:
        if not objects_file.is_file():
            raise SystemExit(f"{objects_file} does not exist: run without --summarize-only first")
        stored = json.loads(objects_file.read_text())
        objects, run_info = stored["objects"], stored["run"]
        missing = [f"{m}/{k}" for m in models for k in SETTINGS if objects and f"{m}/{k}" not in objects[0]["arms"]]
        if missing:
            raise SystemExit(f"{objects_file} has no arm(s) {', '.join(missing)}")
        objects = [o for o in objects if o["set"] in sets]
        run_info.update(models=models, sets=sets)
    else:
        if not DATA.is_dir():
            raise SystemExit(f"{DATA} not found (set MEDSAMKIT_SHARED)")
        # one cache for every model: it keys embeddings on the image encoder's identity, so models that share
        # LiteMedSAM's encoder (litemedsam-interactive is a decoder overlay on it) encode each slice once
        disk = None if args.no_embedding_cache else args.embedding_cache
        cache = EmbeddingCache(max_bytes=1 << 30, disk_dir=disk, disk_max_bytes=None)
        try:
            predictors = {m: Predictor(m, backend=args.backend, threads=args.threads, cache=cache) for m in models}
        except MedsamkitError as e:  # e.g. litemedsam-interactive before its decoder is shipped
            raise SystemExit(f"propagation_mask: {e}") from None
        t0 = time.perf_counter()
        objects, seconds = run(models, sets, args.limit, predictors)
        run_info = {
            "models": models,
            "sets": sets,
            "limit": args.limit,
            "backend": args.backend,
            "threads": args.threads,
            "options": "PropagationOptions() defaults, mask_prompt off / on",
            "decode_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "seconds": round(time.perf_counter() - t0, 1),
            "embeddings": {"disk_hits": cache.disk_hits, "misses": cache.misses, "memory_hits": cache.hits},
        }
        args.out.mkdir(parents=True, exist_ok=True)
        objects_file.write_text(json.dumps({"run": run_info, "objects": objects}, indent=1) + "\n")
    run_info.update(seed=args.seed, resamples=args.resamples)
    summary = {"run": run_info, **summarize(objects, models, sets, resamples=args.resamples, seed=args.seed)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    table = markdown_table(summary)
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
