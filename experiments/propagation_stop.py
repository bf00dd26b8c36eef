"""When should 2D-box propagation stop? Candidate stop rules measured on every labelled object of the 3D sets.

Each object is prompted with a 2D ground-truth box on one slice (the slice of largest area, and separately the
middle slice of its extent) and propagated slice by slice in both directions WITHOUT stopping (only an empty mask
ends a walk), recording per propagated slice the signals a stop rule could use and the mask's overlap with the
ground truth. A stop rule only truncates a walk (everything before its stop is identical whatever the rule), so
each rule is simulated exactly on the recorded walks: 3D Dice, slices over-run past the true extent (both ends),
slices cut short. Thresholds are chosen on a tuning half of the hippocampus cases and reported on the rest.
The chosen rule is then re-run through ``segment_volume`` on the held-out objects to check the simulation.

Usage:
  python experiments/propagation_stop.py --encode-only    # fill the disk embedding cache (once, ~20 min on 2 cores)
  python experiments/propagation_stop.py                  # walks (decoder only) + rules + report
  python experiments/propagation_stop.py --report-only    # rules + report from the saved walks
Slice embeddings are cached on disk (--cache, shared with volume_propagation.py), walks in --walks.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsamkit.io import read_image
from medsamkit.predict import Predictor
from medsamkit.predict.cache import EmbeddingCache
from medsamkit.predict.volume import ObjectPrompt, PropagationOptions, _bbox, _box_predict, segment_volume
from medsamkit.preprocess.intensity import resolve_preset

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"
SETS = ("msd_hippocampus_mri_3d", "brats2021_flair_edema_3d", "totalseg_examples_3d")
TOTALSEG_CASES = ("ct_sm", "mr_sm")  # ct_dicom: its label array is flipped against the series (see SOURCE.md)
MIN_KEY_PIXELS = 20  # objects whose largest slice is smaller than this are not box-promptable in 2D
TUNE_SEED = 0


# -- objects -----------------------------------------------------------------------------------------------


def volumes() -> list[dict]:
    out = []
    for s in SETS:
        for img in sorted((DATA / s / "images").glob("*.nii.gz")):
            case = img.name.removesuffix(".nii.gz")
            if s == "totalseg_examples_3d" and case not in TOTALSEG_CASES:
                continue
            out.append({"set": s, "case": case, "image": img, "mask": DATA / s / "masks" / img.name})
    return out


def objects_of(gt: np.ndarray) -> list[dict]:
    """Every label of a ground-truth volume with its z extent, largest and middle slices."""
    out = []
    for lab in np.unique(gt)[1:]:
        areas = (gt == lab).sum(axis=(1, 2))
        zs = np.flatnonzero(areas)
        if areas.max() < MIN_KEY_PIXELS:
            continue
        mid = int(zs[np.argmin(np.abs(zs - (zs[0] + zs[-1]) / 2))])  # a labelled slice nearest the middle
        out.append(
            {
                "label": int(lab),
                "lo": int(zs[0]),
                "hi": int(zs[-1]),
                "largest": int(areas.argmax()),
                "middle": mid,
                "voxels": int(areas.sum()),
            }
        )
    return out


def split_of(vol: dict, hippo_cases: list[str]) -> str:
    """Tuning = a random half of the hippocampus cases (seeded); everything else is held out."""
    if vol["set"] != "msd_hippocampus_mri_3d":
        return "test"
    rng = np.random.default_rng(TUNE_SEED)
    tune = set(rng.permutation(sorted(hippo_cases))[: len(hippo_cases) // 2])
    return "tune" if vol["case"] in tune else "test"


# -- walks -------------------------------------------------------------------------------------------------


def walk(predictor: Predictor, pictures: np.ndarray, gt: np.ndarray, key: int, box: np.ndarray, opts: PropagationOptions) -> dict:
    """Propagate from ``key`` in both directions until the mask vanishes, recording per slice the signals."""
    n, h, w = pictures.shape

    def set_slice(s: int) -> None:
        predictor.set_embedding(*predictor.embed(pictures[s]))

    set_slice(key)
    key_mask, _, key_iou, key_conf = _box_predict(predictor, box, opts.output_selection, fit_threshold=opts.fit_threshold)
    kp = pictures[key][key_mask]
    key_stats = {
        "median": float(np.median(kp)) if kp.size else 0.0,
        "mean": float(kp.mean()) if kp.size else 0.0,
        "std": float(kp.std()) if kp.size else 0.0,
        "iqr": float(np.subtract(*np.percentile(kp, [75, 25]))) if kp.size else 0.0,
    }
    rec = {
        "key": key,
        "key_area": int(key_mask.sum()),
        "key_inter": int((key_mask & gt[key]).sum()),
        "key_conf": key_conf,
        "key_iou": key_iou,
        **{f"key_{k}": v for k, v in key_stats.items()},
    }
    m_px = opts.box_margin / predictor.transform.input_size * max(h, w)
    for step in (1, -1):
        prev, prev_conf = key_mask, key_conf
        s = key + step
        steps = []
        while 0 <= s < n:
            pbox = _bbox(prev)
            if pbox is None or prev.sum() < opts.min_pixels:
                break
            wide = np.clip(pbox + np.array([-m_px, -m_px, m_px, m_px]), 0, [w - 1, h - 1, w - 1, h - 1])
            set_slice(s)
            res = predictor.predict(boxes=wide, outputs=[0, 1, 2, 3])
            fits = [(_box_iou(b, pbox) if (b := _bbox(mm)) is not None else -1.0) for mm in res.masks[0]]
            k = 0 if fits[0] >= opts.fit_threshold else int(np.argmax(fits))
            mask = res.masks[0, k]
            conf = float(res.scores[0, 0])
            area = int(mask.sum())
            inter_prev = int((mask & prev).sum())
            pix = pictures[s][mask]
            pix_prev = pictures[s][prev]  # this slice's picture under the previous mask
            steps.append(
                {
                    "s": s,
                    "area": area,
                    "inter_gt": int((mask & gt[s]).sum()),
                    "gt_area": int(gt[s].sum()),
                    "conf": conf,
                    "chosen_iou": float(res.scores[0, k]),
                    "k": k,
                    "fit0": float(fits[0]),
                    "prev_area": int(prev.sum()),
                    "prev_conf": prev_conf,
                    "inter_prev": inter_prev,
                    "median": float(np.median(pix)) if pix.size else 0.0,
                    "mean": float(pix.mean()) if pix.size else 0.0,
                    "median_under_prev": float(np.median(pix_prev)) if pix_prev.size else 0.0,
                }
            )
            if area < opts.min_pixels:
                break
            prev, prev_conf = mask, conf
            s += step
        rec["up" if step == 1 else "down"] = steps
    return rec


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    from medsamkit.predict.volume import _box_iou as f

    return f(a, b)


# -- rules -------------------------------------------------------------------------------------------------

# A rule sees the walk's key record and one step (with the running largest accepted area) and says "stop here".
Rule = Callable[[dict, dict, int], bool]


def old_rule(min_area_fraction: float = 0.1, relative_iou: float = 0.8) -> Rule:
    def stop(key: dict, st: dict, largest: int) -> bool:
        return st["area"] < min_area_fraction * largest or st["conf"] < relative_iou * key["key_conf"]

    return stop


def signal(name: str, key: dict, st: dict, largest: int) -> float:
    """The candidate signals (all "higher = more like the same object" except where named *_shift)."""
    a, p = st["area"], st["prev_area"]
    if name == "iou_prev":
        return st["inter_prev"] / max(a + p - st["inter_prev"], 1)
    if name == "contain_prev":  # fraction of the new mask that lies inside the previous one
        return st["inter_prev"] / max(a, 1)
    if name == "area_prev":  # area ratio to the previous slice, shrink or growth alike (min(r, 1/r))
        r = a / max(p, 1)
        return min(r, 1 / r) if r > 0 else 0.0
    if name == "conf_prev":  # single-output predicted IoU relative to the previous slice's
        return st["conf"] / max(st["prev_conf"], 1e-6)
    if name == "intensity":  # 1 - |median inside the new mask - key median| / key spread (IQR), floored
        return 1.0 - abs(st["median"] - key["key_median"]) / max(key["key_iqr"], 4.0)
    if name == "intensity_std":
        return 1.0 - abs(st["mean"] - key["key_mean"]) / max(key["key_std"], 4.0)
    if name == "single_fits":  # 1 when SAM's single output fits the prompt box (no fall-back to another output)
        return 1.0 if st["k"] == 0 else 0.0
    raise KeyError(name)


def with_signal(base: Rule, name: str, threshold: float) -> Rule:
    def stop(key: dict, st: dict, largest: int) -> bool:
        return base(key, st, largest) or signal(name, key, st, largest) < threshold

    return stop


def simulate(rec: dict, rule: Rule, min_pixels: int = 4) -> dict:
    """Apply ``rule`` to a recorded walk: the slices it keeps and its Dice/extent figures against the truth."""
    largest = rec["key_area"]
    kept = {rec["key"]: (rec["key_area"], rec["key_inter"])}
    for d in ("up", "down"):
        largest = rec["key_area"]
        for st in rec[d]:
            if st["area"] < min_pixels or rule(rec, st, largest):
                break
            largest = max(largest, st["area"])
            kept[st["s"]] = (st["area"], st["inter_gt"])
    pred = sum(a for a, _ in kept.values())
    inter = sum(i for _, i in kept.values())
    dice = 2 * inter / max(pred + rec["gt_voxels"], 1)
    lo, hi = min(kept), max(kept)
    return {
        "dice": dice,
        "lo": lo,
        "hi": hi,
        "over": max(0, rec["gt_lo"] - lo) + max(0, hi - rec["gt_hi"]),
        "short": max(0, lo - rec["gt_lo"]) + max(0, rec["gt_hi"] - hi),
    }


# -- statistics --------------------------------------------------------------------------------------------


def boot_mean(x: np.ndarray, n: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    means = x[idx].mean(axis=1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fmt_ci(t: tuple[float, float, float], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(t[0])} [{f.format(t[1])}, {f.format(t[2])}]"


# -- candidates, tuning and the report ---------------------------------------------------------------------

SIGNALS = {
    "iou_prev": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "contain_prev": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "area_prev": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "conf_prev": (0.7, 0.8, 0.85, 0.9, 0.95),
    "intensity": (-2.0, -1.5, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5),
    "intensity_std": (-2.0, -1.5, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5),
    "single_fits": (0.5,),
}


def candidates() -> list[dict]:
    """The old rule with its own thresholds varied, and the old rule plus one more signal."""
    out = []
    for maf in (0.1, 0.2, 0.3, 0.4):
        for riou in (0.0, 0.7, 0.8, 0.85, 0.9, 0.95):
            out.append({"min_area_fraction": maf, "relative_iou": riou, "signal": None, "threshold": None})
    for name, ts in SIGNALS.items():
        for t in ts:
            for riou in (0.0, 0.6, 0.7, 0.8):
                for maf in (0.1, 0.2):
                    out.append({"min_area_fraction": maf, "relative_iou": riou, "signal": name, "threshold": t})
    return out


def rule_of(c: dict) -> Rule:
    base = old_rule(c["min_area_fraction"], c["relative_iou"])
    return base if c["signal"] is None else with_signal(base, c["signal"], c["threshold"])


def name_of(c: dict) -> str:
    s = f"area<{c['min_area_fraction']:g}*largest, conf<{c['relative_iou']:g}*key"
    return s if c["signal"] is None else f"{s}, {c['signal']}<{c['threshold']:g}"


OLD = {"min_area_fraction": 0.1, "relative_iou": 0.8, "signal": None, "threshold": None}


def figures(recs: list[dict], c: dict) -> dict[str, np.ndarray]:
    sims = [simulate(r, rule_of(c)) for r in recs]
    return {k: np.array([x[k] for x in sims], float) for k in ("dice", "over", "short")}


def report(recs: list[dict]) -> dict:
    tune = [r for r in recs if r["split"] == "tune"]
    test = [r for r in recs if r["split"] == "test"]
    print(f"tuning walks {len(tune)} (hippocampus, {len({r['case'] for r in tune})} cases), held-out walks {len(test)}")
    scored = []
    for c in candidates():
        f = figures(tune, c)
        scored.append((float(f["dice"].mean()), c, f))
    # best tuning Dice; among exact ties the rule nearest the old one (the highest relative_iou kept)
    scored.sort(key=lambda x: (-round(x[0], 12), -x[1]["relative_iou"]))
    old_tune = figures(tune, OLD)
    o = {k: float(v.mean()) for k, v in old_tune.items()}
    print(f"\ntuning: old rule Dice {o['dice']:.4f} over {o['over']:.2f} short {o['short']:.2f}")
    print("best per signal on the tuning half:")
    best_per: dict[str, tuple] = {}
    for d, c, f in scored:
        key = c["signal"] or "old thresholds"
        if key not in best_per:
            best_per[key] = (d, c, f)
            print(f"  {key:15s} {name_of(c):60s} Dice {d:.4f} over {f['over'].mean():.2f} short {f['short'].mean():.2f}")
    chosen = scored[0][1]
    print(f"\nchosen on the tuning half: {name_of(chosen)}")

    out: dict = {"chosen": chosen, "chosen_name": name_of(chosen), "old": OLD, "tuning": [], "held_out": [], "objects": []}
    for r in recs:  # per walk: the old and the chosen rule's extent and Dice
        sims = {"old": simulate(r, rule_of(OLD)), "new": simulate(r, rule_of(chosen))}
        keep = ("set", "case", "label", "key_slice", "split", "key", "gt_lo", "gt_hi", "box")
        out["objects"].append({**{k: r[k] for k in keep}, **sims})
    for d, c, f in scored:
        out["tuning"].append(
            {"rule": name_of(c), **c, "dice": d, "over": float(f["over"].mean()), "short": float(f["short"].mean())}
        )

    def block(rows: list[dict], label: str) -> dict:
        fo, fn = figures(rows, OLD), figures(rows, chosen)
        n_obj = len(rows)
        res = {
            "group": label,
            "walks": n_obj,
            "old_dice": boot_mean(fo["dice"]),
            "new_dice": boot_mean(fn["dice"]),
            "diff": boot_mean(fn["dice"] - fo["dice"]),
            "old_over": float(fo["over"].mean()),
            "new_over": float(fn["over"].mean()),
            "old_short": float(fo["short"].mean()),
            "new_short": float(fn["short"].mean()),
            "better": int((fn["dice"] > fo["dice"] + 1e-9).sum()),
            "worse": int((fn["dice"] < fo["dice"] - 1e-9).sum()),
        }
        print(
            f"  {label:38s} n={n_obj:3d}  old {fmt_ci(res['old_dice'])}  new {fmt_ci(res['new_dice'])}  "
            f"diff {fmt_ci(res['diff'], True)}  over {res['old_over']:.2f}->{res['new_over']:.2f}  "
            f"short {res['old_short']:.2f}->{res['new_short']:.2f}  better/worse {res['better']}/{res['worse']}"
        )
        return res

    print("\nheld out (mean 3D Dice [95% bootstrap over objects]; over-run / cut-short slices per object):")
    for where in ("largest", "middle"):
        rows_w = [r for r in test if r["key_slice"] == where]
        for s in SETS:
            rows = [r for r in rows_w if r["set"] == s]
            if rows:
                out["held_out"].append(block(rows, f"{s} / {where}"))
        out["held_out"].append(block(rows_w, f"all held out / {where}"))
    print("\ntuning half (for reference):")
    for where in ("largest", "middle"):
        out["held_out"].append(block([r for r in tune if r["key_slice"] == where], f"tuning hippocampus / {where}"))
    print("\nheld out, each signal's best tuned variant (not chosen; for comparison):")
    for key, (_, c, _) in best_per.items():
        f = figures([r for r in test if r["key_slice"] == "largest"], c)
        print(
            f"  {key:15s} {name_of(c):60s} Dice {f['dice'].mean():.4f} over {f['over'].mean():.2f} short {f['short'].mean():.2f}"
        )
    return out


def check(predictor: Predictor, recs: list[dict], chosen: dict) -> dict:
    """Re-run the held-out largest-slice prompts through ``segment_volume`` with the library's new default
    options and compare with the simulated rule (they must agree: the simulation is exact)."""
    rows = [r for r in recs if r["split"] == "test" and r["key_slice"] == "largest"]
    gaps, t = [], time.perf_counter()
    for vol in volumes():
        mine = [r for r in rows if r["set"] == vol["set"] and r["case"] == vol["case"]]
        if not mine:
            continue
        img = read_image(vol["image"])
        gt = read_image(vol["mask"]).array
        for r in mine:
            seg = segment_volume(img, [ObjectPrompt(box=r["box"], slice_index=r["key"])], predictor, preset="auto")
            g, m = gt == r["label"], seg.labels == 1
            real = 2 * int((g & m).sum()) / max(int(g.sum() + m.sum()), 1)
            gaps.append(abs(real - simulate(r, rule_of(chosen))["dice"]))
    out = {"objects": len(gaps), "max_abs_dice_gap": float(max(gaps)), "seconds": time.perf_counter() - t}
    print(f"\nsegment_volume with the default options vs the simulated chosen rule: {out}")
    return out


# -- main --------------------------------------------------------------------------------------------------


def load(vol: dict) -> tuple[np.ndarray, np.ndarray]:
    img = read_image(vol["image"])
    gt = read_image(vol["mask"]).array
    fitted = resolve_preset(img.array, img.modality, "auto")
    pictures = np.stack([fitted.apply(sl) for sl in img.array])
    return pictures, gt


def encode_all(predictor: Predictor) -> None:
    for vol in volumes():
        t = time.perf_counter()
        pictures, _ = load(vol)
        for pic in pictures:
            predictor.embed(pic)
        print(f"{vol['set']}/{vol['case']}: {len(pictures)} slices, {time.perf_counter() - t:.1f} s", flush=True)


def record_walks(predictor: Predictor, out: Path, only: set[str] | None = None) -> list[dict]:
    opts = PropagationOptions()
    vols = volumes()
    hippo = [v["case"] for v in vols if v["set"] == "msd_hippocampus_mri_3d"]
    recs = []
    for vol in vols:
        if only and vol["case"] not in only:
            continue
        t = time.perf_counter()
        pictures, gt = load(vol)
        for ob in objects_of(gt):
            g = gt == ob["label"]
            for where in ("largest", "middle"):
                key = ob[where]
                box = _bbox(g[key])
                rec = walk(predictor, pictures, g, key, box, opts)
                rec.update(
                    set=vol["set"],
                    case=vol["case"],
                    label=ob["label"],
                    key_slice=where,
                    split=split_of(vol, hippo),
                    gt_lo=ob["lo"],
                    gt_hi=ob["hi"],
                    gt_voxels=ob["voxels"],
                    n_slices=int(gt.shape[0]),
                    box=[int(v) for v in box],
                )
                recs.append(rec)
        print(f"{vol['set']}/{vol['case']}: {time.perf_counter() - t:.1f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(recs))
    return recs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=str(ROOT / "experiments" / ".embedding-cache"))
    ap.add_argument("--walks", default=str(ROOT / "experiments" / ".embedding-cache" / "propagation_walks.json"))
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "propagation_stop.json"))
    ap.add_argument("--encode-only", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated case names (debugging)")
    ap.add_argument("--check", action="store_true", help="re-run the chosen rule through segment_volume (held out)")
    args = ap.parse_args()
    predictor = Predictor("litemedsam", cache=EmbeddingCache(max_bytes=1 << 30, disk_dir=args.cache, disk_max_bytes=None))
    if args.encode_only:
        encode_all(predictor)
        return
    walks = Path(args.walks)
    recs = (
        json.loads(walks.read_text())
        if args.report_only
        else record_walks(predictor, walks, set(filter(None, args.only.split(","))))
    )
    print(len(recs), "walks")
    result = report(recs)
    if args.check:
        result["check"] = check(predictor, recs, result["chosen"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
