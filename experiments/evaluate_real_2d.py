"""LiteMedSAM on every 2D set of ../shared/data/real under the prompt protocols of the SAM-for-medicine
evaluations (Huang et al., Mazurowski et al.): one `run_evaluation` over all sets, so the report compares them.

Writes experiments/results/eval_2d/ (run.json, summary.json and table.md are committed; report.html, results.csv,
the per-case files and masks are kept locally - for resuming - but not committed) and prints the Dice table.

Usage: python experiments/evaluate_real_2d.py [--limit N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from medsamkit.evaluate import Dataset, load_dataset, run_evaluation

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
    for e in run.summary["table"]:
        if e["final"] or e["step"] == 0:
            print(f"{e['dataset']:22s} {e['protocol']:40s} step {e['step']}  n={e['n']:4d}  Dice {e['dice']['mean']}")
    print(json.dumps(run.summary["uncertainty"], indent=1))


if __name__ == "__main__":
    main()
