"""The HTML report of an evaluation run: one self-contained file (figures embedded as PNG) with the summary
tables (with the CVPR 2025 interactive challenge's DSC-AUC / NSD-AUC for iterative protocols), Dice distributions
per prompt protocol and dataset, Dice against the number of correction clicks,
Dice against object attributes (Spearman), the uncertainty ranking and the worst cases with overlays."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._files import atomic_write_text
from .analysis import CORRELATED, FAILURE_DICE
from .interactive import NSD_MIN_DICE
from .store import case_paths, load_masks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WORST_CASES = 8


def _figure_png(fig: Figure) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(png_b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_b64}">'


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _final_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    last: dict[str, int] = defaultdict(int)
    for r in rows:
        last[r["protocol"]] = max(last[r["protocol"]], int(r["step"]))
    return [r for r in rows if int(r["step"]) == last[r["protocol"]]]


def reference_protocol(protocols: Sequence[str]) -> str:
    """The protocol used for attribute plots and worst cases: ``box`` when evaluated, else the first."""
    return "box" if "box" in protocols else protocols[0]


def _dice_distribution(ok: list[dict[str, Any]], protocols: Sequence[str]) -> str:
    import matplotlib.pyplot as plt

    final = _final_rows(ok)
    datasets = sorted({r["dataset"] for r in final})
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(6, 1.3 * len(protocols) + 2), 2.8 * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets):
        data = [[_f(r["dice"]) for r in final if r["dataset"] == ds and r["protocol"] == p] for p in protocols]
        present = [(p, d) for p, d in zip(protocols, data) if d]
        ax.boxplot([d for _, d in present], showmeans=True)
        ax.set_xticks(range(1, len(present) + 1), [p for p, _ in present], rotation=25, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Dice")
        ax.set_title(f"{ds}: Dice per prompt protocol (final step; triangle = mean)", fontsize=10)
        ax.axhline(FAILURE_DICE, color="grey", lw=0.6, ls="--")
    fig.tight_layout()
    return _figure_png(fig)


def _dice_vs_clicks(summary: dict[str, Any]) -> str | None:
    import matplotlib.pyplot as plt

    curves = summary.get("dice_vs_clicks") or {}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for ds, per in curves.items():
        for proto, ys in per.items():
            xs = [i for i, y in enumerate(ys) if y is not None]
            ax.plot(xs, [ys[i] for i in xs], marker="o", label=f"{ds} - {proto}", ls="-" if ds == "all" else ":")
    ax.set_xlabel("correction clicks")
    ax.set_ylabel("mean Dice")
    ax.set_title("Dice vs number of correction clicks")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _figure_png(fig)


def _dice_vs_attributes(ok: list[dict[str, Any]], protocol: str, summary: dict[str, Any]) -> str | None:
    import matplotlib.pyplot as plt

    rows = [r for r in _final_rows(ok) if r["protocol"] == protocol]
    if len(rows) < 3:
        return None
    rho = {}
    for c in summary.get("correlations", []):
        if c["dataset"] == "all" and c["protocol"] == protocol:
            rho = c["spearman_with_dice"]
    datasets = sorted({r["dataset"] for r in rows})
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 4, figsize=(15, 7))
    for ax, attr in zip(axes.ravel(), CORRELATED):
        for i, ds in enumerate(datasets):
            pts = [(_f(r.get(attr)), _f(r["dice"])) for r in rows if r["dataset"] == ds]
            pts = [p for p in pts if math.isfinite(p[0])]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.6, color=colors(i % 10), label=ds)
        if attr in ("size", "relative_size") and any(_f(r.get(attr)) > 0 for r in rows):
            ax.set_xscale("log")
        r = rho.get(attr, {})
        ax.set_title(f"{attr}: rho = {r.get('rho')}" + (f" (p={r.get('p')})" if r.get("p") is not None else ""), fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Dice", fontsize=8)
    axes.ravel()[-1].axis("off")
    if len(datasets) > 1:
        axes.ravel()[0].legend(fontsize=6)
    fig.suptitle(f"Dice vs object attributes ({protocol}); Spearman rho over all objects", fontsize=11)
    fig.tight_layout()
    return _figure_png(fig)


def _uncertainty(ok: list[dict[str, Any]], summary: dict[str, Any]) -> str | None:
    import matplotlib.pyplot as plt

    entries = summary.get("uncertainty") or []
    if not entries:
        return None
    fig, axes = plt.subplots(1, len(entries), figsize=(5 * len(entries), 4), squeeze=False)
    for ax, e in zip(axes[0], entries):
        rs = [r for r in ok if r["protocol"] == e["protocol"]]
        ax.scatter([_f(r.get("uncertainty")) for r in rs], [_f(r["dice"]) for r in rs], s=9, alpha=0.6)
        ax.axhline(FAILURE_DICE, color="grey", lw=0.6, ls="--")
        a = e.get("auroc_own_dice")
        ax.set_title(f"{e['protocol']}: AUROC(Dice<{FAILURE_DICE}) = {a if a is None else round(a, 3)}", fontsize=9)
        ax.set_xlabel("uncertainty score")
        ax.set_ylabel("Dice of the robust (mean) mask")
    fig.tight_layout()
    return _figure_png(fig)


def _worst_cases(
    out: Path, ok: list[dict[str, Any]], protocol: str, cases: dict[tuple[str, str], Any], settings: dict
) -> str | None:
    import matplotlib.pyplot as plt

    from ..data import load_case
    from ..preprocess.picture import model_picture, volume_pictures
    from ..viz.overlay import overlay_masks

    ranked = sorted((r for r in _final_rows(ok) if r["protocol"] == protocol), key=lambda r: _f(r["dice"]))
    # the worst objects, at most two per dataset, so that one failing set does not fill the page
    per_set: dict[str, int] = defaultdict(int)
    rows = []
    for r in ranked:
        if per_set[r["dataset"]] < 2:
            rows.append(r)
            per_set[r["dataset"]] += 1
        if len(rows) == WORST_CASES:
            break
    panels = []
    for r in rows:
        case = cases.get((r["dataset"], r["case"]))
        if case is None:
            continue
        _, mask_file = case_paths(out, case)
        if not mask_file.exists():
            continue
        try:
            preds = load_masks(mask_file)
            pred = preds.get(f"{r['label']}/{r['slice']}/{protocol}/{r['step']}")
            if pred is None:
                continue
            image, mask = load_case(case)
            modality = case.modality or image.modality
            preset, window = settings.get("preset", "auto"), settings.get("window")
            gt = mask == r["label"]
            if image.is_volume:
                z = int(r["slice"]) if int(r["slice"]) >= 0 else int(np.argmax(gt.sum(axis=(1, 2))))
                gt = gt[z]
                pred = pred if pred.ndim == 2 else pred[z]
                picture = volume_pictures(image, preset, window, modality)[z]
            else:
                picture, _ = model_picture(image, preset, window, modality)
            labels = np.zeros(gt.shape, np.uint8)
            labels[pred] = 1
            prompt = json.loads(r.get("prompt") or "{}")
            boxes = prompt.get("boxes", [])
            points = [p[:2] + [p[2]] for p in prompt.get("points", [])]
            pic = overlay_masks(picture, labels, boxes=boxes, points=points)
            import cv2

            contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(pic, contours, -1, (0, 255, 0), max(1, round(max(gt.shape) / 300)))
            panels.append(
                (
                    pic,
                    f"{_short(r['dataset'], 22)}\n{_short(r['case'], 26)} label {r['label']}"
                    + (f" z={r['slice']}" if int(r["slice"]) >= 0 else "")
                    + f"\nDice {_f(r['dice']):.3f}",
                )
            )
        except Exception:  # noqa: BLE001 - a picture that cannot be drawn is left out, the tables stay
            continue
    if not panels:
        return None
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (pic, title) in zip(axes.ravel(), panels):
        ax.imshow(pic)
        ax.set_title(title, fontsize=8)
    fig.suptitle(
        f"Worst objects under '{protocol}': prediction filled (red), ground truth outlined (green), prompt drawn", fontsize=10
    )
    fig.tight_layout()
    return _figure_png(fig)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _interval_cell(dice: dict[str, Any]) -> str:
    """``"[0.812, 0.846] (n_pictures)"`` from a summary cell's ``interval95`` (empty for summaries without it)."""
    iv = dice.get("interval95")
    return "" if not iv else f"[{iv[0]:.3f}, {iv[1]:.3f}] ({dice.get('units')})"


def _table(headers: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def write_report(
    out_dir: str | Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any], cases: dict[tuple[str, str], Any] | None = None
) -> Path:
    """Write ``report.html`` into ``out_dir`` and return its path. ``cases``: (dataset, case id) -> Case, to
    draw the worst cases (left out when not given)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    out = Path(out_dir)
    ok = [r for r in rows if r.get("status") == "ok"]
    protocols = summary.get("protocols") or sorted({r["protocol"] for r in ok})
    settings = (summary.get("run") or {}).get("settings", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>medsamkit evaluation</title><style>",
        "body{font-family:sans-serif;margin:24px;max-width:1400px} table{border-collapse:collapse;font-size:12px;margin:8px 0}",
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right} th{background:#eee} img{max-width:100%}",
        "code{background:#f4f4f4;padding:1px 3px}</style></head><body>",
        "<h1>medsamkit evaluation report</h1>",
        f"<p>Model <code>{html.escape(str(settings.get('model', '?')))}</code>, seed {settings.get('seed')}, "
        f"mode {settings.get('mode')}, NSD tolerance {_tolerance(settings.get('nsd_tolerance'), ok)}; "
        f"{summary.get('objects', 0)} objects, {summary.get('rows', 0)} rows, {summary.get('errors', 0)} error rows.</p>",
    ]
    conv = summary.get("conventions", {})
    parts.append(
        "<h2>Conventions</h2><ul>"
        + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in conv.items())
        + "</ul>"
    )
    policy = summary.get("slice_policy")
    if policy:
        parts.append(
            f"<p><b>Slice policy</b>: {html.escape(policy['rule'])}. Evaluated {policy['evaluated']} object slices; skipped "
            f"{policy['empty_in_extent']} empty slices inside objects' extents and {policy['below_min_pixels']} below the "
            "pixel minimum.</p>"
        )
    body = [
        [
            e["dataset"],
            e["protocol"],
            e["step"],
            e["n"],
            e["dice"]["mean"],
            e["dice"]["median"],
            _interval_cell(e["dice"]),
            e["nsd_mean"],
            e["hd95_median"],
            e["assd_mean"],
            e["failures"],
            e["empty_pred"],
        ]
        for e in summary.get("table", [])
        if e["final"] or e["step"] == 0
    ]
    parts.append("<h2>Results by dataset and prompt protocol</h2>")
    parts.append(
        _table(
            [
                "dataset",
                "protocol",
                "step",
                "n",
                "Dice mean",
                "Dice median",
                "95% interval (pictures)",
                "NSD",
                "HD95 median",
                "ASSD",
                f"Dice<{FAILURE_DICE}",
                "empty pred",
            ],
            body,
        )
    )
    interactive = summary.get("interactive") or []
    if interactive:
        parts.append(
            "<h3>Interactive protocols: the CVPR 2025 challenge's scores</h3><p>DSC-AUC and NSD-AUC: trapezoidal area "
            "under the Dice (NSD) of the correction-click steps 1..N at unit spacing, the initial prompt left out "
            f"(range 0..N-1: 0..4 for 5 clicks); NSD counts 0 where Dice &lt;= {NSD_MIN_DICE}; final = step N.</p>"
        )
        parts.append(
            _table(
                ["dataset", "protocol", "n", "Dice start", "Dice final", "DSC-AUC", "±95% CI", "NSD-AUC", "NSD final"],
                [
                    [
                        e["dataset"],
                        e["protocol"],
                        e["n"],
                        e["dice_start_mean"],
                        e["dsc_final_mean"],
                        e["dsc_auc"]["mean"],
                        e["dsc_auc"]["ci95"],
                        e["nsd_auc"]["mean"],
                        e["nsd_final_mean"],
                    ]
                    for e in interactive
                ],
            )
        )
    if summary.get("interactive_note"):
        parts.append(f"<p>{html.escape(summary['interactive_note'])}</p>")
    if summary.get("by_modality"):
        parts.append("<h3>By modality (final step)</h3>")
        parts.append(
            _table(
                ["modality", "protocol", "n", "Dice mean", "Dice median"],
                [[m["modality"], m["protocol"], m["n"], m["dice"]["mean"], m["dice"]["median"]] for m in summary["by_modality"]],
            )
        )
    if ok:
        parts.append("<h2>Dice distribution</h2>" + _img(_dice_distribution(ok, protocols), "Dice distribution"))
    fig = _dice_vs_clicks(summary)
    if fig:
        parts.append("<h2>Dice vs correction clicks</h2>" + _img(fig, "Dice vs clicks"))
    ref = reference_protocol(protocols) if protocols else None
    if ref is not None:
        fig = _dice_vs_attributes(ok, ref, summary)
        if fig:
            parts.append(f"<h2>What predicts failure ({html.escape(ref)})</h2>" + _img(fig, "Dice vs attributes"))
        corr_rows = []
        for c in summary.get("correlations", []):
            corr_rows.append([c["dataset"], c["protocol"], c["n"]] + [c["spearman_with_dice"][a]["rho"] for a in CORRELATED])
        if corr_rows:
            parts.append("<h3>Spearman correlation of attributes with Dice</h3>")
            parts.append(_table(["dataset", "protocol", "n", *CORRELATED], corr_rows))
    fig = _uncertainty(ok, summary)
    if fig:
        parts.append("<h2>Uncertainty from prompt perturbation</h2>" + _img(fig, "uncertainty"))
        parts.append(
            _table(
                ["protocol", "n", "failures", "AUROC (own Dice)", "AUROC (box Dice)", "robust Dice mean"],
                [
                    [
                        e["protocol"],
                        e["n"],
                        e["failures"],
                        e.get("auroc_own_dice"),
                        e.get("auroc_box_dice"),
                        e["robust_dice"]["mean"],
                    ]
                    for e in summary["uncertainty"]
                ],
            )
        )
    if ref is not None and cases:
        fig = _worst_cases(out, ok, ref, cases, settings)
        if fig:
            parts.append("<h2>Worst cases</h2>" + _img(fig, "worst cases"))
    if summary.get("errors"):
        parts.append("<h2>Errors</h2>")
        parts.append(
            _table(
                ["dataset", "case", "label", "slice", "protocol", "status", "error"],
                [
                    [e.get(k) for k in ("dataset", "case", "label", "slice", "protocol", "status", "error")]
                    for e in summary["error_examples"]
                ],
            )
        )
    parts.append("</body></html>")
    return atomic_write_text(out / "report.html", "\n".join(parts))


def _tolerance(tol: Any, rows: Sequence[dict[str, Any]]) -> str:
    """The NSD tolerance with the unit it had: mm for images with a physical spacing, pixels for the others."""
    units = [r.get("spacing_unit") or "mm" for r in rows]
    px, n = sum(u == "px" for u in units), len(units)
    if n and px == n:
        return f"{tol} pixels (the images have no physical spacing)"
    if px:
        return f"{tol} mm ({tol} pixels for the {px} of {n} rows whose images have no physical spacing)"
    return f"{tol} mm"
