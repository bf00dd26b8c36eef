"""Picture of the adaptation study (``experiments/finetune_real.py``): per studied set, one test image with its
ground truth, zero-shot LiteMedSAM (box), the decoder- and adapter-tuned models (same box), AutoSAM and the U-Net
(no prompt), each panel titled with its Dice against the union of the target labels.

The image shown is the test image whose zero-shot Dice is the median of the set's test images (not picked for a
good-looking result). Runs of ``--seed`` (default 0) are used; the figure goes to ``docs/images/finetune-test.png``.

Usage:  python experiments/finetune_figure.py [--work experiments/results/finetune/work] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAMKIT_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "real"
COLUMNS = 7  # image, ground truth, zero-shot (box), decoder (box), adapter (box), AutoSAM and U-Net (no prompt)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(pred, gt).sum() / s)


def panels(name: str, seed: int, work: Path) -> tuple[str, list[tuple[str, np.ndarray | None, np.ndarray | None]], np.ndarray]:
    """(image id, [(title, bool (H, W) mask or None, box or None)], picture) for one set; boxes are inclusive pixel
    boxes (x0, y0, x1, y1) in x = column, y = row of the original image."""
    import json

    import torch

    from medsamkit.data import load_dataset, read_split
    from medsamkit.models.adapted import load_adapted
    from medsamkit.predict import Predictor
    from medsamkit.predict.autoseg import AutoSegmenter, load_autosam
    from medsamkit.predict.unet import predict_unet
    from medsamkit.prompts import mask_box
    from medsamkit.train.finetune import FinetuneOptions, read_images

    runs = {m: work / name / f"{m}-s{seed}" for m in ("decoder", "adapter", "autosam", "unet")}
    ds = load_dataset(DATA / name)
    test = read_split(runs["decoder"] / "split.json").test
    opts = FinetuneOptions.from_dict(json.loads((runs["decoder"] / "finetune.json").read_text())["options"])
    images = read_images(ds.subset(test).cases, opts)
    base = Predictor("litemedsam", backend="torch", threads=torch.get_num_threads())
    scored = []
    for rec in images:
        base.set_image(rec.picture)
        box = mask_box(rec.union)
        scored.append((dice(base.predict(boxes=box).masks[0, 0], rec.union), rec))
    scored.sort(key=lambda t: t[0])
    rec = scored[len(scored) // 2][1]
    gt, box = rec.union, mask_box(rec.union)
    out: list[tuple[str, np.ndarray | None, np.ndarray | None]] = [("image", None, None), ("ground truth", gt, None)]
    base.set_image(rec.picture)
    out.append(("zero-shot (box)", base.predict(boxes=box).masks[0, 0], box))
    for mode in ("decoder", "adapter"):
        p = Predictor(load_adapted(runs[mode] / "adapter.pt"), backend="torch")
        p.set_image(rec.picture)
        out.append((f"{mode} (box)", p.predict(boxes=box).masks[0, 0], box))
    auto = AutoSegmenter(load_autosam(runs["autosam"]), backend="torch").segment(rec.picture).mask
    out.append(("AutoSAM (no prompt)", auto, None))
    out.append(("U-Net (no prompt)", predict_unet(runs["unet"], rec.picture) > 0.5, None))
    return rec.id, out, rec.picture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "experiments" / "results" / "finetune" / "work")
    ap.add_argument("--sets", nargs="+", default=["drive", "glas_gland_histo", "kvasir_seg"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "finetune-test.png")
    args = ap.parse_args()
    import matplotlib
    from PIL import Image

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    sets = [s for s in args.sets if (args.work / s / f"unet-s{args.seed}" / "test_rows.json").is_file()]
    if not sets:
        raise SystemExit(f"no finished seed-{args.seed} runs under {args.work}")
    fig, axes = plt.subplots(len(sets), COLUMNS, figsize=(2.3 * COLUMNS, 2.4 * len(sets)), squeeze=False)
    for r, name in enumerate(sets):
        image_id, items, picture = panels(name, args.seed, args.work)
        gt = items[1][1]
        for c, (title, mask, box) in enumerate(items):
            ax = axes[r, c]
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            if mask is not None:
                overlay = np.zeros((*mask.shape, 4), np.float32)
                overlay[mask] = (0.1, 1.0, 0.2, 0.55) if c == 1 else (0.0, 0.8, 1.0, 0.5)
                ax.imshow(overlay)
            if box is not None:
                x0, y0, x1, y1 = np.asarray(box, float).ravel()[:4]
                # inclusive pixel box: the rectangle runs from pixel edges x0 - 0.5 to x1 + 0.5
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="red", lw=1))
            label = title if c != 0 else f"{name}\n{image_id}"
            if mask is not None and c > 1:
                label += f"\nDice {dice(mask, gt):.3f}"
            ax.set_title(label, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110)
    # a 256-colour palette keeps the file small (overlays are flat colours); ~4x smaller than RGB
    Image.open(buf).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
