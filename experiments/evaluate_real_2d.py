"""LiteMedSAM on every 2D set of ../shared/data/real under the prompt protocols of the SAM-for-medicine
evaluations (Huang et al., Mazurowski et al.): one `run_evaluation` over all sets, so the report compares them.

Writes experiments/results/eval_2d/ (run.json, summary.json, table.md and intervals.md/json are committed;
report.html, results.csv, the per-case files and masks are kept locally - for resuming - but not committed) and
prints the Dice table. intervals.md: the mean Dice of the main columns with 95 % bootstrap intervals over pictures,
and paired differences between protocols on the same objects (``compare_protocols``) with their verdicts.

Usage: python experiments/evaluate_real_2d.py [--limit N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from medsamkit.evaluate import Dataset, compare_protocols, load_dataset, run_evaluation

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"

# modality per set (from ../shared/data/real/INDEX.md; PNG files do not say). A grouping label for the
# tables; the 8-bit PNGs are used as they are (passthrough), whatever the modality.
SETS = {
    "busi_breast_us": "US",
    "chaos_ct_liver": "CT",
    "chest_xray_lungs": "XR",
    "ct_lung_2d": "CT",
    "drive": "fundus",
    "dsb2018_nuclei_96": "microscopy",
    "glas_gland_histo": "histopathology",
    "hc18_fetal_head_us": "US",
    "kvasir_seg": "endoscopy",
    "lgg_brain_mri": "MR",
    "monuseg_nuclei_histo": "histopathology",
    "ph2_dermoscopy": "dermoscopy",
    "sammed2d_demo_ct": "CT",
}

#: the table's columns: (protocol, step, heading)
COLUMNS = [
    ("box", 0, "box"),
    ("box:components", 0, "box/comp."),
    ("box-jitter:0.1", 0, "jitter 10%"),
    ("box-jitter:0.2", 0, "jitter 20%"),
    ("point:centre", 0, "centre pt"),
    ("point:centre:select=oracle", 0, "centre pt oracle"),
    ("points:3", 0, "3 pts"),
    ("iterative:5:farthest-error", 0, "FE 1 click"),
    ("iterative:5:farthest-error", 5, "FE 6 clicks"),
    ("iterative:5:random-error", 5, "RE 6 clicks"),
    ("iterative:5:farthest-error:start=box", 5, "box+5 FE"),
    ("iterative:5:random-error:start=box", 5, "box+5 RE"),
    ("uncertainty:8:0.1", 0, "robust (8 boxes)"),
]


#: the protocols evaluated: those of the table's columns, in column order, each once
PROTOCOLS = list(dict.fromkeys(protocol for protocol, _, _ in COLUMNS))


def markdown_table(summary: dict) -> str:
    """Mean Dice per dataset (rows) and protocol/step (columns), with n objects."""
    cell = {(e["dataset"], e["protocol"], e["step"]): e for e in summary["table"]}
    datasets = sorted({e["dataset"] for e in summary["table"] if e["dataset"] != "all"}) + ["all"]
    lines = ["| dataset | n | " + " | ".join(c[2] for c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for ds in datasets:
        n = cell.get((ds, "box", 0), {}).get("n", "")
        vals = []
        for proto, step, _ in COLUMNS:
            e = cell.get((ds, proto, step))
            vals.append("" if e is None or e["dice"]["mean"] is None else f"{e['dice']['mean']:.3f}")
        lines.append(f"| {ds} | {n} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


#: the columns of intervals.md (headings of COLUMNS)
INTERVAL_COLUMNS = ["box", "box/comp.", "jitter 10%", "FE 6 clicks", "box+5 FE", "robust (8 boxes)"]

#: paired comparisons of intervals.md: (title, cell a, cell b), the difference is b - a on the same objects
COMPARISONS = [
    ("one box per component vs one box per label", ("box", 0), ("box:components", 0)),
    ("box jittered by 10 % vs tight box", ("box", 0), ("box-jitter:0.1", 0)),
    ("box jittered by 20 % vs tight box", ("box", 0), ("box-jitter:0.2", 0)),
    ("tight box + 5 farthest-error clicks vs tight box", ("box", 0), ("iterative:5:farthest-error:start=box", 5)),
    (
        "centre point + 5 farthest-error clicks vs centre point",
        ("iterative:5:farthest-error", 0),
        ("iterative:5:farthest-error", 5),
    ),
    (
        "random-error vs farthest-error clicks, centre point + 5",
        ("iterative:5:farthest-error", 5),
        ("iterative:5:random-error", 5),
    ),
    ("robust mask of 8 jittered boxes vs tight box", ("box", 0), ("uncertainty:8:0.1", 0)),
]


def _iv(mean: float | None, iv: list[float] | None, signed: bool = False) -> str:
    if mean is None:
        return ""
    f = "{:+.3f}" if signed else "{:.3f}"
    return f.format(mean) + ("" if iv is None else f" [{f.format(iv[0])}, {f.format(iv[1])}]")


def intervals(summary: dict, rows: list[dict]) -> tuple[str, dict]:
    """intervals.md and intervals.json: the mean Dice of INTERVAL_COLUMNS with their 95 % intervals over pictures
    (from the summary), and each comparison of COMPARISONS per dataset with its paired interval and verdict."""
    cell = {(e["dataset"], e["protocol"], e["step"]): e for e in summary["table"]}
    heading = {c[2]: (c[0], c[1]) for c in COLUMNS}
    datasets = sorted({e["dataset"] for e in summary["table"] if e["dataset"] != "all"}) + ["all"]
    lines = [
        "# LiteMedSAM on the 2D sets: 95 % intervals",
        "",
        "Mean Dice with its 95 % percentile-bootstrap interval over pictures (the objects of a picture are resampled "
        "together; 2000 resamples). `all` pools the objects of every set.",
        "",
        "| dataset | objects | pictures | " + " | ".join(INTERVAL_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(INTERVAL_COLUMNS),
    ]
    for ds in datasets:
        box = cell.get((ds, "box", 0), {})
        vals = []
        for h in INTERVAL_COLUMNS:
            e = cell.get((ds, *heading[h]))
            vals.append("" if e is None else _iv(e["dice"]["mean"], e["dice"].get("interval95")))
        lines.append(f"| {ds} | {box.get('n', '')} | {box.get('dice', {}).get('units', '')} | " + " | ".join(vals) + " |")
    doc: dict = {"comparisons": []}
    for title, a, b in COMPARISONS:
        entries = compare_protocols(rows, a, b)
        doc["comparisons"].append({"title": title, "a": list(a), "b": list(b), "by_dataset": entries})
        lines += [
            "",
            f"## {title}",
            "",
            f"Dice of `{b[0]}` step {b[1]} minus `{a[0]}` step {a[1]} on the same objects; 95 % paired bootstrap over "
            "pictures (10,000 resamples).",
            "",
            "| dataset | objects | pictures | a | b | b - a [95 % interval] | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in entries:
            d = e["difference"]
            lines.append(
                f"| {e['dataset']} | {e['n']} | {e['units']} | {e['mean_a']:.3f} | {e['mean_b']:.3f} | "
                f"{_iv(d['mean'], [d['low'], d['high']], signed=True)} | {e['verdict']} |"
            )
    return "\n".join(lines) + "\n", doc


def with_modality(d: Dataset, label: str) -> Dataset:
    """Tag every case with a modality label (grouping only: the 8-bit pictures are used as they are)."""
    return replace(d, modality=label, cases=[replace(c, modality=label) for c in d.cases])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "eval_2d")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--sets", default=",".join(SETS))
    args = ap.parse_args()
    datasets = []
    for name in args.sets.split(","):
        d = with_modality(load_dataset(DATA / name), SETS[name])
        datasets.append(d.subset(limit=args.limit) if args.limit else d)
    run = run_evaluation(datasets, args.out, PROTOCOLS, progress=True)
    (args.out / "table.md").write_text(markdown_table(run.summary))
    text, doc = intervals(run.summary, run.rows)
    (args.out / "intervals.md").write_text(text)
    (args.out / "intervals.json").write_text(json.dumps(doc, indent=1) + "\n")
    for e in run.summary["table"]:
        if e["final"] or e["step"] == 0:
            print(f"{e['dataset']:22s} {e['protocol']:40s} step {e['step']}  n={e['n']:4d}  Dice {e['dice']['mean']}")
    print(json.dumps(run.summary["uncertainty"], indent=1))


if __name__ == "__main__":
    main()
