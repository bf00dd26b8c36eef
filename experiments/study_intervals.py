"""Confidence intervals for the adaptation and SAMAug studies, and the wording they support.

For every arm (set x model) of the fine-tuning studies (``experiments/results/finetune*/results.json``: the budget
rule, ``finetune_converge`` and its k-fold ``finetune_converge_kfold``, whose folds are pooled per seed) and of the
SAMAug studies
(``experiments/results/samaug*/results.json``):

* the mean test Dice with a 95 % percentile-bootstrap interval over the test images and, where an arm has several
  training seeds, over the seeds too (``seed_image_bootstrap``: seeds and images drawn with replacement);
* the budget each run actually used (epochs, minutes, why it stopped) and flags: "time budget" (the budget ended the
  run), "still improving" (its best validation epoch was among its last three, or its last tenth when that is more:
  it had not converged), "epoch cap" (a convergence-rule run that reached its epoch cap);
* every A-vs-B comparison as the paired difference B - A over the same test images with its interval, the verdict it
  supports ("better" / "no difference shown" / "worse") and whether the two arms had a fair budget (both stopped by
  the same early-stopping rule, or both used at least 90 % of the same wall-clock budget).

Pairing fine-tuned models with the base model needs zero-shot Dice per test object: it is computed once with the
bundled LiteMedSAM (box prompts, the studies' protocol) and cached in ``finetune/zero_shot_test.json``.

Writes ``experiments/results/intervals.md`` and ``intervals.json``. Usage: ``python experiments/study_intervals.py``
(``make study-intervals``; about 2 min on 2 CPU threads the first time, seconds afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"
RESULTS = ROOT / "experiments" / "results"

FINETUNE_LABELS = {
    "zero-shot": "zero-shot LiteMedSAM (box)",
    "decoder": "decoder fine-tuned (box)",
    "adapter": "adapters (box)",
    "autosam": "AutoSAM (no prompt)",
    "unet": "U-Net, raw input (no prompt)",
}
#: (A, B) pairs compared within each set of the fine-tuning study: the difference is B - A
FINETUNE_PAIRS = (("zero-shot", "decoder"), ("zero-shot", "adapter"), ("decoder", "adapter"), ("unet", "autosam"))
SAMAUG_ARMS = {
    "raw": ("raw", "dice_raw", "U-Net, raw input"),
    "ensemble": ("both", "dice_ensemble", "U-Net trained on both, test-time ensemble"),
    "augmented_only": ("both", "dice_augmented_only", "U-Net trained on both, SAMAug input only"),
    "raw_only": ("both", "dice_raw_only", "U-Net trained on both, raw input only"),
}
SAMAUG_PAIRS = (("raw", "ensemble"), ("raw", "augmented_only"), ("raw", "raw_only"))
SEEN_IN_TRAINING = {
    "kvasir_seg": "LiteMedSAM's training data may include Kvasir-SEG (the images came from the MedSAM repository): "
    "its 'zero-shot' Dice there may not be zero-shot",
}


def _case(key: str) -> str:
    """The image of a per-object key: ``case#object`` (prompted and AutoSAM rows) or ``case`` (U-Net rows)."""
    return key.rsplit("#", 1)[0]


def _matrix(per_seed: dict[int, dict[str, float]], what: str) -> tuple[np.ndarray, list[str]]:
    """(seeds, images) Dice of one arm; every seed must score the same images (one object per image)."""
    keyed = {s: {_case(k): v for k, v in d.items()} for s, d in per_seed.items()}
    for s, d in per_seed.items():
        if len(keyed[s]) != len(d):
            raise SystemExit(f"{what}: seed {s} has several objects per image; this table pairs images")
    images = sorted(next(iter(keyed.values())))
    for s, d in keyed.items():
        if sorted(d) != images:
            raise SystemExit(f"{what}: seed {s} was scored on other test images than the first seed")
    return np.array([[keyed[s][i] for i in images] for s in sorted(keyed)]), images


def _recent(epochs: int) -> int:
    """How many of a run's last epochs count as "recent" for the "still improving" flag: 3, or a tenth of the
    epochs when that is more (a long run's best epoch 4 before its end, e.g. 73 of 77, is still recent)."""
    return max(3, -(-epochs // 10))


def _flags(run: dict[str, Any]) -> list[str]:
    flags = []
    if run.get("stop_reason") == "time_budget":
        flags.append("time budget")
    best, epochs = run.get("best_epoch"), run.get("epochs")
    if run.get("stop_reason") in ("completed", "time_budget") and best is not None and epochs is not None:
        if int(best) > int(epochs) - _recent(int(epochs)):
            flags.append("still improving")
    if run.get("not_converged"):
        flags.append("epoch cap")
    return flags


def _budget(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the runs of one arm used: epochs, planned epochs, minutes, budget, stop reasons, flags."""
    return {
        "epochs": [r.get("epochs") for r in runs],
        "planned_epochs": runs[0].get("planned_epochs"),
        "best_epochs": [r.get("best_epoch") for r in runs],
        "train_minutes": [r.get("train_minutes") for r in runs],
        "budget_minutes": runs[0].get("budget_minutes"),
        "stop_reasons": [r.get("stop_reason", "not recorded") for r in runs],
        "flags": sorted({f for r in runs for f in _flags(r)}),
    }


def _fair(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Whether arms A and B had the same budget, in words ("yes: ...", "no: ..." or how they were matched); numbers
    in B, A order like the comparison's "B vs A"."""
    if "base model" in (a["rule"], b["rule"]):
        return "n/a (base model, not trained)"
    if a["rule"] == b["rule"] == "converge":
        stops = a["stop_reasons"] + b["stop_reasons"]
        if all(r == "early_stopping" for r in stops):
            return "yes: both early-stopped by the same rule"
        other = sorted({r for r in stops if r != "early_stopping"})
        return f"no: a run ended by {', '.join(other)} before the rule stopped it"
    budget = a.get("budget_minutes")
    if a["rule"] == b["rule"] == "budget" and budget == b.get("budget_minutes"):
        used = [m / budget for m in a["train_minutes"] + b["train_minutes"] if m is not None]
        if used and min(used) >= 0.9:
            return f"yes: both used >= 90 % of {budget:g} min"
        ma, mb = np.mean(a["train_minutes"]), np.mean(b["train_minutes"])
        return f"no: {mb:.1f} vs {ma:.1f} of {budget:g} min"
    if a["rule"] == b["rule"] == "steps":
        return "same optimizer steps (neither converged by a rule)"
    return "no: different rules"


def zero_shot_test(study: list[dict[str, Any]], cache: Path) -> dict[str, dict[str, float]]:
    """Zero-shot LiteMedSAM box Dice per test object (``case#object``) of each set, on the test objects of the
    study's prompted runs (cached in ``cache``, shared by the studies; recomputed for a set whose cached objects do
    not cover the study's, e.g. another split)."""
    doc = json.loads(cache.read_text()) if cache.is_file() else {}
    for name in dict.fromkeys(r["set"] for r in study):
        prompted = [r for r in study if r["set"] == name and r["mode"] in ("decoder", "adapter")]
        if not prompted:
            continue
        keys = sorted({k for r in prompted for k in r["per_object"]})  # every fold's test objects under k-fold
        if name in doc and set(keys) <= set(doc[name]):
            continue
        from medsamkit.train.finetune import zero_shot_rows

        ids = sorted({_case(k) for k in keys})
        rows = zero_shot_rows(DATA / name, ids, backend="torch")
        # merged: the objects other studies (other splits) read stay in the cache
        doc[name] = {**doc.get(name, {}), **{f"{r['image']}#{r['object']}": round(float(r["dice"]), 4) for r in rows}}
        missing = set(keys) - set(doc[name])
        if missing:
            raise SystemExit(f"{name}: zero-shot rows lack {sorted(missing)[:3]}")
        cache.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"zero-shot per test object: {name} ({len(doc[name])} objects)", flush=True)
    out = {}
    for name in doc:
        keys = {k for r in study if r["set"] == name and r["mode"] in ("decoder", "adapter") for k in r["per_object"]}
        if keys:  # a set with no prompted run in this study has no zero-shot arm (its cached objects are another split's)
            out[name] = {k: v for k, v in doc[name].items() if k in keys}
    return out


def _per_seed(runs: list[dict[str, Any]], what: str) -> dict[int, dict[str, float]]:
    """Dice per test object of each seed; under k-fold the folds' test objects together (each image is tested once,
    by the model of its fold; ``finetune_real.fold_groups``: a seed whose folds are not all done is left out)."""
    from finetune_real import fold_groups, merge_objects

    plain, groups = fold_groups(runs)
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in plain:
        by_seed.setdefault(int(r["seed"]), []).append(r)
    for (_, _, seed), rs in groups.items():
        by_seed.setdefault(seed, []).extend(rs)
    return {s: merge_objects(rs, "per_object", f"{what} seed {s}") for s, rs in sorted(by_seed.items())}


def finetune_arms(study: list[dict[str, Any]], zs: dict[str, dict[str, float]]) -> dict[tuple[str, str], dict]:
    arms: dict[tuple[str, str], dict] = {}
    for name in dict.fromkeys(r["set"] for r in study):
        for mode in ("decoder", "adapter", "autosam", "unet"):
            runs = sorted((r for r in study if r["set"] == name and r["mode"] == mode), key=lambda r: int(r["seed"]))
            if not runs:
                continue
            per_seed = _per_seed(runs, f"{name}/{mode}")
            if not per_seed:
                continue
            runs = [r for r in runs if int(r["seed"]) in per_seed]
            m, images = _matrix(per_seed, f"{name}/{mode}")
            rule = runs[0].get("rule") or ("budget" if runs[0].get("budget_minutes") else "steps")
            arms[(name, mode)] = {"values": m, "images": images, "rule": rule, **_budget(runs)}
        if name in zs:
            m, images = _matrix({0: zs[name]}, f"{name}/zero-shot")
            arms[(name, "zero-shot")] = {"values": m, "images": images, "rule": "base model", **_budget([{}])}
    return arms


def samaug_arms(runs: list[dict[str, Any]], study: str) -> dict[tuple[str, str], dict]:
    arms: dict[tuple[str, str], dict] = {}
    for name in dict.fromkeys(r["set"] for r in runs):
        for arm, (kind, key, _) in SAMAUG_ARMS.items():
            rs = sorted((r for r in runs if r["set"] == name and r["input"] == kind and key in r), key=lambda r: r["seed"])
            if not rs:
                continue
            if len({(r.get("rule", "steps"), r.get("size"), r.get("loss"), r.get("lr")) for r in rs}) > 1:
                raise SystemExit(f"{study}/{name}/{arm}: runs with different rules or settings in one results.json")
            m, images = _matrix({int(r["seed"]): r[f"cases_{key[5:]}"] for r in rs}, f"{study}/{name}/{arm}")
            rule = rs[0].get("rule", "steps")
            arms[(name, arm)] = {"values": m, "images": images, "rule": rule, **_budget(rs)}
    return arms


def interval_rows(arms: dict[tuple[str, str], dict], labels: dict[str, str]) -> list[dict[str, Any]]:
    from medsamkit.evaluate.analysis import format_interval, seed_image_bootstrap

    rows = []
    for (name, arm), a in arms.items():
        ci = seed_image_bootstrap(a["values"])
        rows.append(
            {
                "set": name,
                "arm": arm,
                "label": labels[arm],
                "seeds": int(a["values"].shape[0]),
                "images": len(a["images"]),
                "dice": ci.to_dict(),
                "text": format_interval(ci),
                **{k: a[k] for k in ("rule", "epochs", "best_epochs", "planned_epochs", "train_minutes", "budget_minutes")},
                "stop_reasons": a["stop_reasons"],
                "flags": a["flags"],
            }
        )
    return rows


def comparison_rows(arms: dict[tuple[str, str], dict], pairs: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    from medsamkit.evaluate.analysis import format_interval, seed_image_bootstrap, verdict

    rows = []
    for name in dict.fromkeys(n for n, _ in arms):
        for x, y in pairs:
            if (name, x) not in arms or (name, y) not in arms:
                continue
            a, b = arms[(name, x)], arms[(name, y)]
            if a["images"] != b["images"]:
                raise SystemExit(f"{name}: {x} and {y} were scored on different test images")
            ci = seed_image_bootstrap(a["values"], b["values"])
            rows.append(
                {
                    "set": name,
                    "a": x,
                    "b": y,
                    "images": len(a["images"]),
                    "difference": ci.to_dict(),
                    "text": format_interval(ci, signed=True),
                    "verdict": verdict(ci),
                    "fair_budget": _fair(a, b),
                    "flags": {x: a["flags"], y: b["flags"]},
                }
            )
    return rows


def _minutes(ms: list[Any]) -> str:
    vals = [m for m in ms if m is not None]
    return f"{np.mean(vals):.1f}" if vals else "-"


def markdown(title: str, intervals: list[dict], comparisons: list[dict], labels: dict[str, str], note: str) -> str:
    lines = [f"## {title}", "", note, ""]
    lines += [
        "| set | model | seeds | test images | Dice, 95 % CI (seeds x images) | epochs (best) / planned | min/run "
        "| budget min | stopped by | flags |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in intervals:
        ep = ", ".join(f"{e}({b})" if b is not None else f"{e}" for e, b in zip(r["epochs"], r["best_epochs"]))
        stops = ", ".join(dict.fromkeys(r["stop_reasons"]))
        lines.append(
            f"| {r['set']} | {r['label']} | {r['seeds'] if r['rule'] != 'base model' else '-'} | {r['images']} "
            f"| {r['text']} | {ep if r['rule'] != 'base model' else '-'} / {r['planned_epochs'] or '-'} "
            f"| {_minutes(r['train_minutes'])} | {r['budget_minutes'] or '-'} "
            f"| {stops if r['rule'] != 'base model' else '-'} | {', '.join(r['flags']) or '-'} |"
        )
    if comparisons:
        lines += [
            "",
            "| set | B vs A | test images | B - A, 95 % paired CI | verdict | fair budget? | flags |",
            "|---|---|---|---|---|---|---|",
        ]
    for c in comparisons:
        flags = "; ".join(f"{labels[k]}: {', '.join(v)}" for k, v in c["flags"].items() if v) or "-"
        lines.append(
            f"| {c['set']} | {labels[c['b']]} vs {labels[c['a']]} | {c['images']} | {c['text']} "
            f"| **{c['verdict']}** | {c['fair_budget']} | {flags} |"
        )
    zero_shot_sets = dict.fromkeys(r["set"] for r in intervals if r["arm"] == "zero-shot")
    seen = [f"* {n}: {SEEN_IN_TRAINING[n]}." for n in zero_shot_sets if n in SEEN_IN_TRAINING]
    return "\n".join(lines + ([""] + seen if seen else [])) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import cpu_model

    doc: dict[str, Any] = {"generated_on": cpu_model(), "resamples": 10_000, "level": 0.95, "studies": {}}
    parts = [
        "# Intervals of the adaptation and SAMAug studies",
        "",
        "Generated by `experiments/study_intervals.py` from the studies' result files (per-image Dice of every run). "
        "Intervals: 95 % percentile bootstrap, 10,000 resamples, over test images and, where an arm has several "
        "seeds, over seeds too; differences are paired over the same test images. A verdict is 'better' or 'worse' "
        "only when the whole interval of B - A lies on one side of 0.",
        "",
    ]

    def section(name: str, title: str, arms: dict, labels: dict[str, str], pairs: tuple, note: str, **extra: Any) -> None:
        """One study: its intervals and comparisons into ``doc`` and its markdown into ``parts``."""
        iv, cmp = interval_rows(arms, labels), comparison_rows(arms, pairs)
        doc["studies"][name] = {"intervals": iv, "comparisons": cmp, **extra}
        parts.append(markdown(title, iv, cmp, labels, note))

    unrecorded = "the machine was not recorded in these runs"
    for ft_file in sorted(RESULTS.glob("finetune*/results.json")):
        ft = json.loads(ft_file.read_text())
        zs = zero_shot_test(ft["runs"], RESULTS / "finetune" / "zero_shot_test.json")
        st = ft["settings"]
        rules = {(c.get("patience"), c.get("max_epochs")) for c in ft.get("calls", [st]) if c.get("rule") == "converge"}
        if len(rules) > 1:
            raise SystemExit(f"{ft_file}: its calls used different early-stopping rules {sorted(rules)}")
        # calls into one folder may cap minutes differently (the slow adapters got a higher cap): one cap is named
        # here, several are left to the table's 'budget min' column
        caps = sorted({float(r["budget_minutes"]) for r in ft["runs"] if r.get("budget_minutes") is not None})
        cap = f"{caps[0]:g} min" if len(caps) == 1 else "minutes: see 'budget min'"
        how = (
            f"every run stopped when validation Dice had not improved for {st['patience']} epochs (cap "
            f"{st['max_epochs']} epochs, {cap})"
            if st.get("rule", "budget") == "converge"
            else "a wall-clock budget per run and fixed planned epochs (whichever ends first)"
        )
        split = (
            f"one split per set (split seed {st['split_seed']}, val/test {st['val_fraction']}/{st['test_fraction']})"
            if not st.get("folds")
            else f"{st['folds']}-fold by case (split seed {st['split_seed']}, val {st['val_fraction']}): every image is "
            "tested once, by the model of its fold, and the intervals are over all the set's images"
        )
        note = (
            f"`experiments/finetune_real.py` ({ft_file.parent.name}/): {split}, {st['threads']} CPU threads, "
            f"{how}; {ft.get('machine', unrecorded)}."
        )
        title = f"Fine-tuning, adapters, AutoSAM and U-Net ({ft_file.parent.name})"
        section(ft_file.parent.name, title, finetune_arms(ft["runs"], zs), FINETUNE_LABELS, FINETUNE_PAIRS, note)
    labels = {k: v[2] for k, v in SAMAUG_ARMS.items()}
    for f in sorted(RESULTS.glob("samaug*/results.json")):
        study = json.loads(f.read_text())
        st = study["settings"]
        how = (
            f"each arm trained until its validation Dice had not improved for {st.get('patience')} epochs "
            f"(cap {st.get('max_epochs')})"
            if st.get("rule", "steps") == "converge"
            else f"the same optimizer steps for every arm ({st['epochs_both']} epochs of 'both', twice as many of 'raw')"
        )
        note = (
            f"`experiments/samaug_unet.py` ({f.parent.name}/): {st['size']} px, {how}; split seed {st['split_seed']}, "
            f"{st['threads']} CPU threads; {study.get('machine', unrecorded)}."
        )
        title = f"SAMAug: raw vs augmented inputs ({f.parent.name})"
        section(f.parent.name, title, samaug_arms(study["runs"], f.parent.name), labels, SAMAUG_PAIRS, note, settings=st)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "intervals.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = "\n".join(parts)
    (args.out / "intervals.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
