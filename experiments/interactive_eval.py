"""Original vs click-trained decoder on the CVPR 2025 interactive protocol (issue 16, item 4).

Every model runs the same protocols with the same seed on the non-commercial 2D sets of ../shared/data/real that the
click-trained decoder is not trained on (one object per label and image, as experiments/evaluate_real_2d.py):

- ``box``: a tight box;
- ``iterative:5:farthest-error:start=box:mask`` ("box + 5 clicks", the challenge's protocol): the box, then 5
  farthest-error correction clicks, the previous step's low-res logits fed back as mask prompt;
- ``iterative:5:farthest-error:mask`` ("click + 5 clicks"): the first farthest-error click on an empty prediction
  (the centre click), then 5 corrections;
- ``iterative:5:farthest-error:start=box`` (no mask fed back; for reference).

One ``run_evaluation`` per model into ``OUT/<model>/`` (resumable; kept locally, not committed), the image
embeddings computed once for all models whose image encoder is the same (a disk cache, ``--embedding-cache``), then
``OUT/summary.json`` and ``OUT/table.md``: per set, pooled over objects and as the mean of the set means, each
model's box Dice, Dice after each click of both iterative starts, the challenge's DSC-AUC / NSD-AUC and final
DSC / NSD (:mod:`medsamkit.evaluate.interactive`), each with a 95 % percentile-bootstrap interval over images
(10,000 resamples, seeded); the paired difference of each model minus the first (the original) with its interval;
and the issue's targets, pass or fail per model.

Usage:
  python experiments/interactive_eval.py                                  # litemedsam vs litemedsam-interactive
  python experiments/interactive_eval.py --models litemedsam --adapter new=/tmp/run/adapter.pt --limit 2 \\
      --sets kvasir_seg,ph2_dermoscopy --out /tmp/interactive
  python experiments/interactive_eval.py --summarize-only                 # tables again from OUT/<model>/results.csv
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medsamkit.errors import MedsamkitError
from medsamkit.evaluate import (
    Dataset,
    EvalConfig,
    Interval,
    bootstrap_mean,
    interactive_records,
    load_dataset,
    paired_bootstrap,
    read_rows,
    run_evaluation,
)
from medsamkit.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"

#: the non-commercial 2D sets the click-trained decoder is not trained on, and their modality (grouping only)
SETS = {
    "kvasir_seg": "endoscopy",
    "ph2_dermoscopy": "dermoscopy",
    "glas_gland_histo": "histopathology",
    "monuseg_nuclei_histo": "histopathology",
    "drive": "fundus",
    "chest_xray_lungs": "XR",
    "lgg_brain_mri": "MR",
    "chaos_ct_liver": "CT",
    "ct_lung_2d": "CT",
}

#: short key -> protocol string (canonical names, as results.csv stores them)
PROTOCOLS = {
    "box": "box",
    "box5": "iterative:5:farthest-error:start=box:mask",
    "click5": "iterative:5:farthest-error:mask",
    "box5_nomask": "iterative:5:farthest-error:start=box",
}
CLICKS = 5
ITERATIVE = ("box5", "click5", "box5_nomask")
TITLES = {"box5": "box + 5 clicks", "click5": "click + 5 clicks", "box5_nomask": "box + 5 clicks, no mask fed back"}
#: the aggregations over sets: the mean of the set means (what the issue's targets are stated on) and pooled objects
AGGREGATIONS = ("mean_of_sets", "pooled")
AGG_TITLES = {"mean_of_sets": "mean of the set means", "pooled": "pooled over objects"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# -- the models ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: a registry name, or a ``medsamkit finetune`` adapter file on top of its base."""

    name: str
    registry: str | None = None
    adapter: Path | None = None


def parse_models(models: str, adapters: Sequence[str]) -> list[ModelSpec]:
    """``--models a,b`` (registry names) and ``--adapter NAME=PATH`` entries, in that order; the first is the
    reference (the original) the others are compared with. SystemExit naming the problem for a bad entry."""
    specs = [ModelSpec(m.strip(), registry=m.strip()) for m in models.split(",") if m.strip()]
    for a in adapters:
        name, sep, path = a.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise SystemExit(f"--adapter takes NAME=PATH (a finetune run's adapter.pt or folder), got {a!r}")
        p = Path(path.strip()).expanduser()
        if not p.exists():
            raise SystemExit(f"--adapter {name}: {p} does not exist")
        specs.append(ModelSpec(name.strip(), adapter=p))
    if not specs:
        raise SystemExit("no model: give --models and/or --adapter")
    names = [s.name for s in specs]
    for n in names:
        if not NAME.match(n):
            raise SystemExit(f"model name {n!r}: use letters, digits and . _ + - (it names the output folder)")
    if len(set(names)) != len(names):
        raise SystemExit(f"model names must differ, got {names}")
    return specs


class SharedEncoderPredictor(Predictor):
    """A :class:`~medsamkit.predict.Predictor` whose image embeddings come from ``encoder``, a predictor of the same
    image encoder and pixel pipeline: the encoder runs once per image for every model that shares it (its cache keys
    the embeddings by the encoder's weights). Decoding is this predictor's own."""

    def __init__(self, model: Any, encoder: Predictor, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        mine = (self.transform.name, self.transform.input_size, self.embed_shape)
        theirs = (encoder.transform.name, encoder.transform.input_size, encoder.embed_shape)
        if mine != theirs:
            raise ValueError(f"the shared encoder's pipeline {theirs} differs from the model's {mine}")
        self.encoder = encoder

    def embed(self, image: np.ndarray) -> tuple[np.ndarray, Any]:
        return self.encoder.embed(image)


def build_predictors(specs: Sequence[ModelSpec], backend: str, threads: int, cache_dir: Path | None) -> dict[str, Predictor]:
    """One predictor per model. Models whose image encoder has the same weights (sha256 of its state) and the same
    pixel pipeline share one encoder: that of the first registry model among them (on ``backend``), else of the
    first adapter (PyTorch), so the embeddings do not depend on the order the models run in. Adapters decode on
    PyTorch (``models.load(adapter=...)``)."""
    from medsamkit.models import load
    from medsamkit.models.adapted import weights_digest
    from medsamkit.predict.cache import EmbeddingCache

    cache = EmbeddingCache(max_bytes=1 << 30, disk_dir=cache_dir, disk_max_bytes=None) if cache_dir is not None else None
    encoders: dict[tuple[str, str, int], Predictor] = {}
    out: dict[str, Predictor] = {}
    for spec in sorted(specs, key=lambda s: s.adapter is not None):  # registry models first: they give the encoder
        sam = load(spec.registry) if spec.adapter is None else load(adapter=spec.adapter)
        digest = weights_digest(sam.image_encoder)
        if spec.adapter is None:
            assert spec.registry is not None
            model: Any = spec.registry
            kwargs: dict[str, Any] = {"backend": backend, "threads": threads}
        else:
            model, kwargs = sam, {"backend": "torch", "threads": threads}
        probe = Predictor(model, **kwargs)
        group = (digest, probe.transform.name, probe.transform.input_size)
        if group not in encoders:
            probe.cache = cache
            encoders[group] = out[spec.name] = probe
        else:
            out[spec.name] = SharedEncoderPredictor(model, encoders[group], **kwargs)
        encoding = "own encoder" if encoders[group] is out[spec.name] else "shared encoder"
        print(f"{spec.name}: {out[spec.name].engine.backend}, weights {out[spec.name].engine.weights_id[:12]}, {encoding}")
    return {s.name: out[s.name] for s in specs}


# -- the summary ---------------------------------------------------------------------------------------------------


ObjectKey = tuple[str, str, int, int]  # dataset, case, label, slice


def metric_names() -> list[str]:
    """The per-object values summarised, in table order: ``box.dice``; per iterative protocol ``<key>.dice0`` ..
    ``<key>.dice5`` (step 0 = the initial prompt), ``.dsc_auc``, ``.nsd_auc``, ``.dsc_final``, ``.nsd_final``;
    ``box5.gain``: box + 5 clicks minus the box alone, per object (the model's own gain from the clicks)."""
    names = ["box.dice"]
    for key in ITERATIVE:
        names += [f"{key}.dice{k}" for k in range(CLICKS + 1)]
        names += [f"{key}.{m}" for m in ("dsc_auc", "nsd_auc", "dsc_final", "nsd_final")]
    return [*names, "box5.gain"]


def object_values(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[ObjectKey, float]]:
    """Metric name (:func:`metric_names`) -> object -> value, from one model's evaluation rows (ok rows only)."""
    values: dict[str, dict[ObjectKey, float]] = {m: {} for m in metric_names()}
    for r in rows:
        if r.get("status") == "ok" and r.get("protocol") == PROTOCOLS["box"] and int(r["step"]) == 0:
            values["box.dice"][(str(r["dataset"]), str(r["case"]), int(r["label"]), int(r["slice"]))] = float(r["dice"])
    for key in ITERATIVE:
        for rec in interactive_records(rows, PROTOCOLS[key]):
            if len(rec.dice) != CLICKS + 1:
                raise ValueError(f"{rec.key}: {len(rec.dice) - 1} clicks under {rec.protocol}, expected {CLICKS}")
            for k, d in enumerate(rec.dice):
                values[f"{key}.dice{k}"][rec.key] = d
            for m in ("dsc_auc", "nsd_auc", "dsc_final", "nsd_final"):
                v = getattr(rec, m)
                if v is not None:
                    values[f"{key}.{m}"][rec.key] = float(v)
    box, box5 = values["box.dice"], values["box5.dice5"]
    values["box5.gain"] = {k: box5[k] - box[k] for k in box5 if k in box}
    return values


def _groups(keys: Sequence[ObjectKey], sets: Sequence[str]) -> dict[str, list[ObjectKey]]:
    """Group name -> the objects in it: each set, then the two aggregations over all sets."""
    out: dict[str, list[ObjectKey]] = {s: [k for k in keys if k[0] == s] for s in sets}
    out = {s: ks for s, ks in out.items() if ks}
    for agg in AGGREGATIONS:
        out[agg] = list(keys)
    return out


def _interval(group: str, keys: Sequence[ObjectKey], a: Sequence[float], b: Sequence[float] | None, **boot: Any) -> Interval:
    """The mean (b None) or mean paired difference b - a over ``keys``, bootstrapped over images; stratified by set
    for the mean of the set means."""
    units = [(k[0], k[1], k[3]) for k in keys]
    strata = [k[0] for k in keys] if group == "mean_of_sets" else None
    if b is None:
        return bootstrap_mean(a, units, strata, **boot)
    return paired_bootstrap(a, b, units, strata, **boot)


def summarize_models(
    rows_by_model: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    sets: Sequence[str] | None = None,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison of ``rows_by_model`` (model name -> its evaluation rows; the first model is the reference, the
    original): per group (each set, ``mean_of_sets``, ``pooled``) and metric (:func:`metric_names`) each model's mean
    with its 95 % bootstrap interval over images, the paired difference of every other model minus the reference
    (objects both scored), and the issue's targets per model. ``sets``: the order of the per-set groups (default: as
    the sets first appear in the rows)."""
    if not rows_by_model:
        raise ValueError("no model to summarise")
    models = list(rows_by_model)
    reference = models[0]
    boot = {"resamples": resamples, "seed": seed}
    values = {m: object_values(rows) for m, rows in rows_by_model.items()}
    order = list(sets) if sets is not None else []
    for m in models:
        for r in rows_by_model[m]:
            if str(r.get("dataset")) not in order and r.get("status") == "ok":
                order.append(str(r["dataset"]))
    raw: dict[str, dict[str, dict[str, Interval]]] = {}
    diffs: dict[str, dict[str, dict[str, Interval]]] = {}
    for m in models:
        raw[m] = {}
        for metric, per in values[m].items():
            for group, keys in _groups(sorted(per), order).items():
                raw[m].setdefault(group, {})[metric] = _interval(group, keys, [per[k] for k in keys], None, **boot)
        if m == reference:
            continue
        diffs[m] = {}
        for metric, per in values[m].items():
            ref = values[reference][metric]
            common = sorted(set(per) & set(ref))
            for group, keys in _groups(common, order).items():
                diffs[m].setdefault(group, {})[metric] = _interval(
                    group, keys, [ref[k] for k in keys], [per[k] for k in keys], **boot
                )
    targets = {
        m: {agg: check_targets(raw[m].get(agg, {}), diffs.get(m, {}).get(agg), m == reference) for agg in AGGREGATIONS}
        for m in models
    }
    return {
        "models": models,
        "reference": reference,
        "protocols": PROTOCOLS,
        "sets": [s for s in order if any(s in raw[m] for m in models)],
        "objects": {m: len(values[m]["box.dice"]) for m in models},
        "errors": {m: sum(1 for r in rows_by_model[m] if r.get("status") != "ok") for m in models},
        "conventions": {
            "interval": f"95 % percentile bootstrap over images ({resamples} resamples, seed {seed}); the mean of the "
            "set means resamples images within each set",
            "steps": "dice<k>: Dice after k correction clicks (k = 0: the initial box or centre click)",
            "auc": "DSC-AUC / NSD-AUC: trapezoidal area under the values of clicks 1..5 at unit spacing (0..4), the "
            "initial prompt excluded; NSD counted 0 where Dice <= 0.2 (also in nsd_final), as the CVPR 2025 "
            "interactive challenge scores them",
            "clicks": "farthest-error: the error pixel farthest from its region's boundary over all error regions (the "
            "challenge clicks the centre of the largest error component: close, not identical)",
            "differences": f"paired, each model minus {reference} over the objects both scored",
        },
        "metrics": {m: {g: {k: v.to_dict() for k, v in per.items()} for g, per in raw[m].items()} for m in models},
        "differences": {m: {g: {k: v.to_dict() for k, v in per.items()} for g, per in d.items()} for m, d in diffs.items()},
        "targets": targets,
    }


def check_targets(m: Mapping[str, Interval], diff: Mapping[str, Interval] | None, is_reference: bool) -> list[dict[str, Any]]:
    """The issue's targets on one aggregation's means ``m`` (metric -> Interval; ``diff``: this model minus the
    reference, None for the reference itself): value, requirement and pass (None when a value is missing)."""

    def mean(name: str) -> float | None:
        return m[name].mean if name in m else None

    def item(target: str, value: float | None, need: str, ok: bool | None, change: bool = True) -> dict[str, Any]:
        v = None if value is None else round(value, 4)
        return {"target": target, "value": v, "need": need, "pass": ok, "change": change}

    out = []
    if is_reference:
        out.append(
            {**item("box alone no worse than the original by more than 0.01", None, ">= -0.01", None), "note": "reference"}
        )
    else:
        d = diff["box.dice"].mean if diff and "box.dice" in diff else None
        out.append(
            item("box alone no worse than the original by more than 0.01", d, ">= -0.01", None if d is None else d >= -0.01)
        )
    gain = mean("box5.gain")
    out.append(item("box + 5 clicks >= box + 0.03 (Dice gain)", gain, ">= 0.03", None if gain is None else gain >= 0.03))
    centre = mean("click5.dice0")
    out.append(item("one centre click >= 0.60", centre, ">= 0.60", None if centre is None else centre >= 0.60, False))
    final = mean("click5.dice5")
    out.append(item("click + 5 clicks >= 0.80", final, ">= 0.80", None if final is None else final >= 0.80, False))
    for key in ("box5", "click5"):
        curve = [mean(f"{key}.dice{k}") for k in range(CLICKS + 1)]
        known = [c for c in curve if c is not None]
        worst = min(b - a for a, b in zip(known[:-1], known[1:])) if len(known) == len(curve) else None
        ok = None if worst is None else worst >= 0
        out.append(
            item(f"{TITLES[key]}: mean Dice never falls from one click to the next (largest step change)", worst, ">= 0", ok)
        )
    return out


def _fmt(d: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not d:
        return ""
    f = "{:+.3f}" if signed else "{:.3f}"
    if d["units"] < 2:
        return f.format(d["mean"])
    return f"{f.format(d['mean'])} [{f.format(d['low'])}, {f.format(d['high'])}]"


def _rows_of_table() -> list[tuple[str, str]]:
    rows = [("box.dice", "box: Dice")]
    for key in ITERATIVE:
        t = TITLES[key]
        if key == "click5":
            rows.append((f"{key}.dice0", f"{t}: centre click, Dice"))
        first = 1 if key != "box5_nomask" else CLICKS  # the reference protocol: its final values only
        rows += [(f"{key}.dice{k}", f"{t}: Dice after click {k}") for k in range(first, CLICKS + 1)]
        rows += [(f"{key}.{m}", f"{t}: {h}") for m, h in (("dsc_auc", "DSC-AUC"), ("nsd_auc", "NSD-AUC"))]
        if key != "box5_nomask":
            rows.append((f"{key}.nsd_final", f"{t}: final NSD"))
        if key == "box5":
            rows.append(("box5.gain", f"{t} minus box alone: Dice gain"))
    return rows


def markdown_table(summary: Mapping[str, Any]) -> str:
    """``table.md``: both aggregations (mean [95 % interval]; differences to the reference), the per-set means and
    the targets."""
    models, ref = summary["models"], summary["reference"]
    others = [m for m in models if m != ref]
    lines = [
        f"# Interactive protocol: {', '.join(models)} (reference {ref})",
        "",
        f"Sets: {', '.join(summary['sets'])}. Objects scored: "
        + ", ".join(f"{m} {summary['objects'][m]}" for m in models)
        + "; error rows: "
        + ", ".join(f"{m} {summary['errors'][m]}" for m in models)
        + ".",
        "Means with 95 % bootstrap intervals over images; differences paired per object. "
        + summary["conventions"]["auc"]
        + ". Protocols: "
        + "; ".join(f"{TITLES.get(k, k)} = `{p}`" for k, p in summary["protocols"].items())
        + ".",
        "",
    ]
    for agg in AGGREGATIONS:
        lines += [f"## {AGG_TITLES[agg][0].upper() + AGG_TITLES[agg][1:]}", ""]
        head = ["metric", *models, *(f"{m} − {ref}" for m in others)]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for metric, title in _rows_of_table():
            cells = [_fmt(summary["metrics"][m].get(agg, {}).get(metric), signed=metric.endswith("gain")) for m in models]
            cells += [_fmt(summary["differences"][m].get(agg, {}).get(metric), signed=True) for m in others]
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        lines.append("")
    cols = [
        ("box.dice", "box"),
        ("box5.dice5", "box+5"),
        ("box5.dsc_auc", "box+5 DSC-AUC"),
        ("click5.dice0", "centre click"),
        ("click5.dice5", "click+5"),
        ("click5.dsc_auc", "click+5 DSC-AUC"),
        ("box5_nomask.dice5", "box+5 no mask"),
    ]
    lines += ["## Per set (means)", "", "| set | model | n | " + " | ".join(h for _, h in cols) + " |"]
    lines.append("|---|---|---|" + "---|" * len(cols))
    for s in summary["sets"]:
        for m in models:
            per = summary["metrics"][m].get(s, {})
            n = per.get("box.dice", {}).get("n", "")
            cells = ["" if c not in per else f"{per[c]['mean']:.3f}" for c, _ in cols]
            lines.append(f"| {s} | {m} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Targets (issue 16)",
        "",
        "| target | need | " + " | ".join(f"{m}: {AGG_TITLES[a]}" for m in models for a in AGGREGATIONS) + " |",
    ]
    lines.append("|---|---|" + "---|" * (len(models) * len(AGGREGATIONS)))
    first = summary["targets"][models[0]][AGGREGATIONS[0]]
    for i, t in enumerate(first):
        cells = []
        for m in models:
            for a in AGGREGATIONS:
                e = summary["targets"][m][a][i]
                verdict = {True: "pass", False: "FAIL", None: e.get("note", "n/a")}[e["pass"]]
                number = "{:+.3f}" if e["change"] else "{:.3f}"
                cells.append(verdict if e["value"] is None else f"{number.format(e['value'])} {verdict}")
        lines.append(f"| {t['target']} | {t['need']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- the run -------------------------------------------------------------------------------------------------------


def with_modality(d: Dataset, label: str) -> Dataset:
    """Tag every case with a modality label (grouping only: the 8-bit pictures are used as they are)."""
    return replace(d, modality=label, cases=[replace(c, modality=label) for c in d.cases])


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="litemedsam,litemedsam-interactive", help="registry names, the first the reference")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH", help="a medsamkit finetune adapter.pt")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "interactive")
    ap.add_argument("--embedding-cache", type=Path, default=ROOT / "experiments" / ".embedding-cache", metavar="DIR")
    ap.add_argument("--no-embedding-cache", action="store_true", help="encode every image for every model")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--limit", type=int, help="first N cases per set (quick runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto", help="backend of the registry models (adapters: torch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--summarize-only", action="store_true", help="read OUT/<model>/results.csv, do not evaluate")
    args = ap.parse_args(argv)
    specs = parse_models(args.models, args.adapter)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise SystemExit(f"unknown set(s) {', '.join(unknown)}; the held-out sets are {', '.join(SETS)}")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be >= 1")
    rows: dict[str, list[dict[str, Any]]] = {}
    if args.summarize_only:
        for s in specs:
            f = args.out / s.name / "results.csv"
            if not f.is_file():
                raise SystemExit(f"{f} does not exist: run without --summarize-only first")
            rows[s.name] = [r for r in read_rows(f) if r["dataset"] in sets]
    else:
        if not DATA.is_dir():
            raise SystemExit(f"{DATA} not found (set MEDSAMKIT_SHARED)")
        datasets = []
        for name in sets:
            d = with_modality(load_dataset(DATA / name), SETS[name])
            datasets.append(d.subset(limit=args.limit) if args.limit else d)
        cache = None if args.no_embedding_cache else args.embedding_cache
        try:
            predictors = build_predictors(specs, args.backend, args.threads, cache)
        except MedsamkitError as e:  # e.g. litemedsam-interactive before its decoder is shipped
            raise SystemExit(f"interactive_eval: {e}") from None
        for s in specs:
            t0 = time.perf_counter()
            run = run_evaluation(
                datasets,
                args.out / s.name,
                list(PROTOCOLS.values()),
                model=s.name,
                predictor=predictors[s.name],
                config=EvalConfig(seed=args.seed),
                progress=True,
            )
            rows[s.name] = run.rows
            print(f"{s.name}: {run.computed} cases computed, {run.skipped} resumed, {time.perf_counter() - t0:.0f} s")
    summary = summarize_models(rows, sets=sets, resamples=args.resamples, seed=args.seed)
    summary["run"] = {"seed": args.seed, "limit": args.limit, "backend": args.backend, "threads": args.threads}
    summary["adapters"] = {s.name: str(s.adapter) for s in specs if s.adapter is not None}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    table = markdown_table(summary)
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
