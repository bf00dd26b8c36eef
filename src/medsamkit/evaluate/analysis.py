"""Summaries of evaluation rows: Dice/NSD/HD95 per dataset x protocol x step, per modality, attribute
correlations (Spearman), how well prompt-perturbation uncertainty ranks failures (AUROC), the CVPR 2025 interactive
challenge's scores of iterative protocols (:func:`interactive_table`), and percentile-bootstrap intervals of means and
paired differences (:func:`bootstrap_mean`, :func:`paired_bootstrap`; over training seeds and test images:
:func:`seed_image_bootstrap`) with the wording an interval supports (:func:`verdict`).

Conventions (also written into ``summary.json``): metrics follow :mod:`medsamkit.metrics` - no NaN: an empty
prediction scores Dice 0, NSD 0 and HD95/ASSD equal to the image diagonal in mm (counted as ``empty_pred``).
Attributes can be undefined (NaN, e.g. the fractal dimension of a 3-pixel object); such objects are left out of
that attribute's correlation and counted in ``n_undefined``. Error rows are counted, never averaged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..metrics.attributes import ATTRIBUTES
from .interactive import NSD_MIN_DICE, interactive_records

FAILURE_DICE = 0.7
#: resamples of the per-cell intervals of :func:`summarize` (fewer than the default: a run has hundreds of cells)
SUMMARY_RESAMPLES = 2000
CORRELATED = ("size", "relative_size", "compactness", "fractal_dimension", "contrast", "components", "box_fill")

CONVENTIONS = {
    "dice_iou": "both empty -> 1; exactly one empty -> 0",
    "nsd": "both empty -> 1; exactly one empty -> 0; tolerance in mm (pixels for images without spacing)",
    "hd95_assd": "both empty -> 0; exactly one empty -> the image diagonal in mm (flagged by empty_pred)",
    "attributes": "undefined values are NaN/null and are excluded from correlations (n_undefined)",
    "failure": f"an object 'fails' when Dice < {FAILURE_DICE}",
    "error_rows": "status 'error' = the case or object failed (retried by the next run); 'invalid' = the protocol "
    "cannot be applied to that object (e.g. negative points around an object that fills the image; not retried)",
    "slices": "in slices mode every slice of a 3D object is one sample; correlations over slices are not over "
    "independent objects (p-values are optimistic)",
    "steps": "step 0 = the initial prompt; step k = after k correction clicks (iterative protocols)",
    "intervals": "dice.ci95 = 1.96 sd / sqrt(n) over objects (normal approximation, objects taken as independent); "
    "dice.interval95 = the 95 % percentile-bootstrap interval over pictures (dataset, case): the objects of one "
    f"picture are resampled together, {SUMMARY_RESAMPLES} resamples, seed 0; dice.units = the number of pictures",
}

#: the conventions entry of runs with iterative protocols (``summary["interactive"]``)
INTERACTIVE_CONVENTION = (
    "CVPR 2025 interactive challenge scores: DSC-AUC / NSD-AUC = trapezoidal area under the values of "
    "the correction-click steps 1..N at unit spacing (initial prompt excluded; 0..4 for 5 clicks); NSD counted 0 "
    f"where Dice <= {NSD_MIN_DICE}; final = step N"
)


def _f(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    a = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return {"mean": None, "median": None, "std": None, "ci95": None}
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {
        "mean": round(float(a.mean()), 4),
        "median": round(float(np.median(a)), 4),
        "std": round(std, 4),
        "ci95": round(1.96 * std / math.sqrt(a.size), 4),
    }


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman rank correlation of paired values, leaving out pairs with an undefined value. Returns rho,
    p-value, n used and n_undefined; rho is None when fewer than 3 pairs remain or a side is constant."""
    from scipy.stats import spearmanr

    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    n = int(ok.sum())
    out: dict[str, Any] = {"rho": None, "p": None, "n": n, "n_undefined": int((~ok).sum())}
    if n < 3 or np.ptp(xa[ok]) == 0 or np.ptp(ya[ok]) == 0:
        return out
    r = spearmanr(xa[ok], ya[ok])
    out["rho"] = round(float(r.statistic), 4)
    out["p"] = float(f"{float(r.pvalue):.3g}")
    return out


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for the ``positive`` class (Mann-Whitney, ties counted half);
    None when either class is empty."""
    from scipy.stats import rankdata

    s = np.asarray(scores, np.float64)
    p = np.asarray(positive, bool)
    ok = np.isfinite(s)
    s, p = s[ok], p[ok]
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile-bootstrap interval: ``mean`` (the estimate on the data), ``low``/``high`` (the
    interval at ``level``), ``n`` values, ``units`` resampling units (e.g. images), ``resamples``."""

    mean: float
    low: float
    high: float
    n: int
    units: int
    level: float
    resamples: int

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """JSON-able, the three numbers rounded to ``digits``."""
        return {
            "mean": round(self.mean, digits),
            "low": round(self.low, digits),
            "high": round(self.high, digits),
            "n": self.n,
            "units": self.units,
        }


#: values per resampling chunk (resamples x units) of :func:`bootstrap_mean`: bounds its memory
_CHUNK = 1 << 22


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    units: Sequence[Hashable] | None = None,
    strata: Sequence[Hashable] | None = None,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """The mean of ``values`` with a percentile-bootstrap interval (``level``, default 95 %: the 2.5th and 97.5th
    percentiles of ``resamples`` resampled means; seeded, so the same inputs give the same interval).

    units: the resampling unit of each value (e.g. its image, so that objects of one image are drawn together);
    None: each value is its own unit. A resample draws units with replacement and averages all values of the drawn
    units (the pooled mean of the values). strata: each value's stratum (e.g. its dataset); units are then drawn
    within each stratum and the statistic is the mean of the strata's pooled means (the "mean of set means"); a
    unit may not lie in two strata. Without units and strata this is the plain bootstrap of a mean
    (``rng.integers(0, n, (resamples, n))`` draws from ``numpy.random.default_rng(seed)``).
    InputError for no values, a value that is not finite, or lengths that do not match."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = int(v.size)
    if n == 0:
        raise InputError("bootstrap_mean: no values")
    if not np.isfinite(v).all():
        raise InputError(f"bootstrap_mean: values must be finite, got {v[~np.isfinite(v)][0]}")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise InputError(f"bootstrap_mean: resamples must be an integer >= 1, got {resamples!r}")
    if not 0 < level < 1:
        raise InputError(f"bootstrap_mean: level must lie in (0, 1), got {level!r}")
    unit_of = list(range(n)) if units is None else list(units)
    stratum_of: list[Hashable] = [0] * n if strata is None else list(strata)
    for what, seq in (("units", unit_of), ("strata", stratum_of)):
        if len(seq) != n:
            raise InputError(f"bootstrap_mean: {len(seq)} {what} for {n} values")
    # per stratum (in order of first appearance): the sum and count of each of its units' values
    per: dict[Hashable, dict[Hashable, list[float]]] = {}
    home: dict[Hashable, Hashable] = {}
    for x, u, s in zip(v.tolist(), unit_of, stratum_of):
        if home.setdefault(u, s) != s:
            raise InputError(f"bootstrap_mean: unit {u!r} lies in two strata ({home[u]!r} and {s!r})")
        acc = per.setdefault(s, {}).setdefault(u, [0.0, 0.0])
        acc[0] += x
        acc[1] += 1.0
    rng = np.random.default_rng(seed)
    estimate = 0.0
    stats = np.zeros(resamples, dtype=np.float64)
    for cells in per.values():
        sums = np.array([c[0] for c in cells.values()])
        counts = np.array([c[1] for c in cells.values()])
        estimate += float(sums.sum() / counts.sum())
        k = sums.size
        step = max(1, _CHUNK // k)
        for start in range(0, resamples, step):
            idx = rng.integers(0, k, size=(min(step, resamples - start), k))
            stats[start : start + idx.shape[0]] += sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    m = len(per)
    stats /= m
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Interval(estimate / m, float(low), float(high), n, len(home), level, int(resamples))


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    units: Sequence[Hashable] | None = None,
    strata: Sequence[Hashable] | None = None,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """The mean paired difference ``b - a`` (e.g. new model minus original on the same objects) with its
    percentile-bootstrap interval: :func:`bootstrap_mean` of the differences, resampled by ``units`` within
    ``strata`` (an interval that excludes 0 says the difference is not resampling noise at that level).
    ``a`` and ``b``: one value per object, in the same order (InputError when the lengths differ)."""
    xa = np.asarray(a, dtype=np.float64).ravel()
    xb = np.asarray(b, dtype=np.float64).ravel()
    if xa.shape != xb.shape:
        raise InputError(f"paired_bootstrap: {xa.size} values against {xb.size}; pairs need one of each")
    return bootstrap_mean(xb - xa, units, strata, resamples=resamples, seed=seed, level=level)


def seed_image_bootstrap(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray | None = None,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """A two-level percentile bootstrap over training seeds and test images.

    a: float ``(S, N)``, the score of training seed s on test image n (every seed on the same N images, in the same
    order). Without ``b``: the mean of ``a`` (over seeds and images); each resample draws S seeds and N images
    with replacement and averages ``a[seeds][:, images]``. With ``b`` (``(S_b, N)``, another arm on the same
    images): the difference ``mean(b) - mean(a)``; the images are drawn once per resample for both arms (paired
    over images) and each arm's seeds independently (the arms' seeds are separate trainings). One seed (S = 1)
    reduces to the bootstrap over images. ``units`` of the result is N; ``n`` the number of values of ``a``.
    With few seeds (2-3) the seed part of the spread is underestimated (a bootstrap of S values has about
    (S - 1) / S of their variance), and with one seed it is absent: report the number of seeds with the interval.
    InputError for empty or non-finite values, or arms on different numbers of images."""
    arms = [np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in ((a,) if b is None else (a, b))]
    for x in arms:
        if x.ndim != 2 or x.size == 0:
            raise InputError(f"seed_image_bootstrap: values must be (seeds, images), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise InputError("seed_image_bootstrap: values must be finite")
    n = arms[0].shape[1]
    if any(x.shape[1] != n for x in arms):
        raise InputError(f"seed_image_bootstrap: arms on {[x.shape[1] for x in arms]} images; pairs need the same images")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise InputError(f"seed_image_bootstrap: resamples must be an integer >= 1, got {resamples!r}")
    if not 0 < level < 1:
        raise InputError(f"seed_image_bootstrap: level must lie in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    sign = [1.0] if b is None else [-1.0, 1.0]
    estimate = sum(g * float(x.mean()) for g, x in zip(sign, arms))
    stats = np.zeros(resamples, dtype=np.float64)
    step = max(1, _CHUNK // (n * max(x.shape[0] for x in arms)))
    for start in range(0, resamples, step):
        r = min(step, resamples - start)
        images = rng.integers(0, n, size=(r, n))
        for g, x in zip(sign, arms):
            seeds = rng.integers(0, x.shape[0], size=(r, x.shape[0]))
            # per image, the mean over the drawn seeds; then the mean over the drawn images
            per_image = x[seeds].mean(axis=1)  # (r, N)
            stats[start : start + r] += g * np.take_along_axis(per_image, images, axis=1).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), int(arms[0].size), n, level, int(resamples))


#: the words of :func:`verdict`
VERDICTS = ("better", "no difference shown", "worse")


def verdict(difference: Interval, higher_is_better: bool = True) -> str:
    """The wording a paired interval of ``b - a`` supports: "better" (b over a) when the whole interval lies above
    0, "worse" when it lies below 0, else "no difference shown" (an interval touching 0 shows no difference at its
    level; it does not show equality). higher_is_better: False for errors such as HD95."""
    if difference.low > 0:
        word = 0
    elif difference.high < 0:
        word = 2
    else:
        return VERDICTS[1]
    return VERDICTS[word if higher_is_better else 2 - word]


def format_interval(ci: Interval, digits: int = 3, signed: bool = False) -> str:
    """``"0.812 [0.774, 0.846]"`` (``signed``: ``"+0.012 [-0.010, +0.035]"`` for differences)."""
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{f.format(ci.mean)} [{f.format(ci.low)}, {f.format(ci.high)}]"


def _case_interval(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``interval95``: the 95 % percentile-bootstrap interval of the mean Dice of ``rows`` with their pictures
    (dataset, case) as resampling units (the objects of one picture or volume are drawn together), and ``units``,
    the number of pictures; an empty interval when no value is finite."""
    pairs = [(_f(r["dice"]), (r["dataset"], r["case"])) for r in rows]
    pairs = [(v, u) for v, u in pairs if math.isfinite(v)]
    if not pairs:
        return {"interval95": None, "units": 0}
    ci = bootstrap_mean([v for v, _ in pairs], [u for _, u in pairs], resamples=SUMMARY_RESAMPLES)
    return {"interval95": [round(ci.low, 4), round(ci.high, 4)], "units": ci.units}


def _object_key(r: dict[str, Any]) -> tuple:
    return (r["dataset"], r["case"], r["label"], r["slice"])


def compare_protocols(
    rows: Sequence[dict[str, Any]],
    a: tuple[str, int],
    b: tuple[str, int],
    *,
    resamples: int = 10_000,
) -> list[dict[str, Any]]:
    """Paired differences of Dice ``b - a`` between two (protocol, step) cells of evaluation ``rows`` on the same
    objects, per dataset and over all datasets (``"all"``, objects pooled; last): each entry has ``dataset``, ``n``
    paired objects, ``units`` pictures, ``mean_a``, ``mean_b``, ``difference`` (:meth:`Interval.to_dict` of the
    :func:`paired_bootstrap` with the pictures (dataset, case) as units, seed 0) and ``verdict`` (for b over a).
    Objects with only one of the two cells (an error or invalid row) are left out and counted in ``unpaired``.
    InputError when a and b are the same cell or no object has both."""
    a, b = (str(a[0]), int(a[1])), (str(b[0]), int(b[1]))  # lists and string steps, as read back from JSON
    if a == b:
        raise InputError(f"compare_protocols: {a[0]} step {a[1]} compared with itself")
    cells: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get("status") != "ok":
            continue
        cell = (r["protocol"], int(r["step"]))
        if cell in (a, b) and math.isfinite(_f(r["dice"])):
            cells[_object_key(r)]["a" if cell == a else "b"] = _f(r["dice"])
    paired = {k: v for k, v in cells.items() if len(v) == 2}
    if not paired:
        raise InputError(f"compare_protocols: no object has both {a[0]} step {a[1]} and {b[0]} step {b[1]}")
    out = []
    for ds in sorted({k[0] for k in paired}) + ["all"]:
        keys = [k for k in paired if ds in ("all", k[0])]
        xa = [paired[k]["a"] for k in keys]
        xb = [paired[k]["b"] for k in keys]
        diff = paired_bootstrap(xa, xb, units=[(k[0], k[1]) for k in keys], resamples=resamples)
        out.append(
            {
                "dataset": ds,
                "n": len(keys),
                "units": diff.units,
                "unpaired": sum(1 for k, v in cells.items() if len(v) == 1 and ds in ("all", k[0])),
                "mean_a": round(float(np.mean(xa)), 4),
                "mean_b": round(float(np.mean(xb)), 4),
                "difference": diff.to_dict(),
                "verdict": verdict(diff),
            }
        )
    return out


def interactive_table(rows: Sequence[dict[str, Any]], protocols: Sequence[str]) -> tuple[list[dict[str, Any]], str | None]:
    """The CVPR 2025 challenge's scores of the iterative protocols (:mod:`medsamkit.evaluate.interactive`) per
    dataset (and ``all``, pooled over objects) x protocol: n objects, mean Dice at the initial step and the last,
    DSC-AUC and NSD-AUC over the correction-click steps (mean, median, std, ci95), final NSD (0 where Dice <= 0.2).
    Returns the entries and a note when they could not be computed (rows that do not identify one object per
    label and picture, e.g. ``objects="component"``), else None."""
    order = {p: i for i, p in enumerate(protocols)}
    try:
        records = interactive_records([r for r in rows if r.get("status") == "ok"])
    except InputError as e:
        return [], f"interactive scores not computed: {e}"
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for rec in records:
        groups[(rec.dataset, rec.protocol)].append(rec)
        groups[("all", rec.protocol)].append(rec)
    out = []
    for (ds, proto), recs in sorted(groups.items(), key=lambda kv: (kv[0][0] == "all", kv[0][0], order.get(kv[0][1], 99))):
        aucs = [r.dsc_auc for r in recs if r.dsc_auc is not None]
        out.append(
            {
                "dataset": ds,
                "protocol": proto,
                "clicks": len(recs[0].dice) - 1,
                "n": len(recs),
                "dice_start_mean": _stats([r.dice[0] for r in recs])["mean"],
                "dsc_final_mean": _stats([r.dsc_final for r in recs])["mean"],
                "nsd_final_mean": _stats([r.nsd_final for r in recs])["mean"],
                "dsc_auc": _stats(aucs),
                "nsd_auc": _stats([r.nsd_auc for r in recs if r.nsd_auc is not None]),
            }
        )
    return out, None


def summarize(rows: Sequence[dict[str, Any]], protocols: Sequence[str], nsd_tolerance: float | None = None) -> dict[str, Any]:
    """The ``summary.json`` content for evaluation ``rows`` (see :data:`medsamkit.evaluate.runner.COLUMNS`)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    errors = [r for r in rows if r.get("status") != "ok"]  # 'error' (failed, retried) and 'invalid' (not applicable)
    order = {p: i for i, p in enumerate(protocols)}
    last_step: dict[str, int] = defaultdict(int)
    for r in ok:
        last_step[r["protocol"]] = max(last_step[r["protocol"]], int(r["step"]))

    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        groups[(r["dataset"], r["protocol"], int(r["step"]))].append(r)
        groups[("all", r["protocol"], int(r["step"]))].append(r)
    table = []

    def group_order(kv: tuple) -> tuple:
        ds, proto, step = kv[0]
        return (ds != "all", ds, order.get(proto, 99), step)

    for (ds, proto, step), rs in sorted(groups.items(), key=group_order):
        entry: dict[str, Any] = {
            "dataset": ds,
            "protocol": proto,
            "step": step,
            "final": step == last_step[proto],
            "n": len(rs),
            "dice": {**_stats([_f(r["dice"]) for r in rs]), **_case_interval(rs)},
            "iou_mean": _stats([_f(r["iou"]) for r in rs])["mean"],
            "nsd_mean": _stats([_f(r["nsd"]) for r in rs])["mean"],
            "hd95_median": _stats([_f(r["hd95"]) for r in rs])["median"],
            "assd_mean": _stats([_f(r["assd"]) for r in rs])["mean"],
            "empty_pred": sum(1 for r in rs if r.get("empty_pred") in (True, "True", 1)),
            "failures": sum(1 for r in rs if _f(r["dice"]) < FAILURE_DICE),
            "predicted_iou_mean": _stats([_f(r["predicted_iou"]) for r in rs])["mean"],
            "time_s_mean": _stats([_f(r["time_s"]) for r in rs])["mean"],
        }
        table.append(entry)

    by_modality: dict[tuple, list[float]] = defaultdict(list)
    for r in ok:
        if int(r["step"]) == last_step[r["protocol"]]:
            by_modality[(r.get("modality") or "unknown", r["protocol"])].append(_f(r["dice"]))
    modality_table = [
        {"modality": m, "protocol": p, "n": len(v), "dice": _stats(v)}
        for (m, p), v in sorted(by_modality.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99)))
    ]

    clicks: dict[str, dict[str, list[float | None]]] = defaultdict(dict)
    for e in table:
        if last_step[e["protocol"]] > 0:
            curve = clicks[e["dataset"]].setdefault(e["protocol"], [None] * (last_step[e["protocol"]] + 1))
            curve[e["step"]] = e["dice"]["mean"]

    correlations = []
    for ds in sorted({r["dataset"] for r in ok}) + ["all"]:
        for proto in protocols:
            rs = [r for r in ok if r["protocol"] == proto and int(r["step"]) == last_step[proto] and ds in ("all", r["dataset"])]
            if len(rs) < 3:
                continue
            dice = [_f(r["dice"]) for r in rs]
            attrs = {a: spearman([_f(r.get(a)) for r in rs], dice) for a in CORRELATED}
            correlations.append({"dataset": ds, "protocol": proto, "n": len(rs), "spearman_with_dice": attrs})

    uncertainty = []
    box_dice = {_object_key(r): _f(r["dice"]) for r in ok if r["protocol"] == "box"}
    for proto in protocols:
        if not proto.startswith("uncertainty"):
            continue
        rs = [r for r in ok if r["protocol"] == proto]
        if not rs:
            continue
        score = [_f(r.get("uncertainty")) for r in rs]
        own = [_f(r["dice"]) < FAILURE_DICE for r in rs]
        entry = {
            "protocol": proto,
            "n": len(rs),
            "failures": int(sum(own)),
            "auroc_own_dice": auroc(score, own),
            "robust_dice": _stats([_f(r["dice"]) for r in rs]),
        }
        paired = [(s, box_dice[_object_key(r)]) for s, r in zip(score, rs) if _object_key(r) in box_dice]
        if paired:
            entry["auroc_box_dice"] = auroc([p[0] for p in paired], [p[1] < FAILURE_DICE for p in paired])
            entry["box_failures"] = int(sum(p[1] < FAILURE_DICE for p in paired))
        uncertainty.append(entry)

    interactive, interactive_note = interactive_table(ok, protocols)
    images = {(r["dataset"], r["case"], r["slice"]): _f(r.get("encode_s")) for r in ok}
    enc = [v for v in images.values() if math.isfinite(v)]
    return {
        "conventions": {
            **CONVENTIONS,
            **({"interactive": INTERACTIVE_CONVENTION} if interactive else {}),
            "nsd_tolerance": nsd_tolerance,
        },
        "protocols": list(protocols),
        "objects": len({_object_key(r) for r in ok}),
        "rows": len(rows),
        "errors": len(errors),
        "invalid": sum(1 for r in errors if r.get("status") == "invalid"),
        "error_examples": [
            {k: r.get(k) for k in ("dataset", "case", "label", "slice", "protocol", "status", "error")} for r in errors[:50]
        ],
        "table": table,
        "by_modality": modality_table,
        "dice_vs_clicks": clicks,
        "correlations": correlations,
        "uncertainty": uncertainty,
        "interactive": interactive,
        **({"interactive_note": interactive_note} if interactive_note else {}),
        "timing": {
            "images_encoded": len(enc),
            "encode_s_mean": round(float(np.mean(enc)), 4) if enc else None,
        },
        "attributes": list(ATTRIBUTES),
    }
