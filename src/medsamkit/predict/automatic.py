"""Everything mode: automatic masks from a grid of point prompts (SAM's automatic mask generator, written here).

For each crop of the image (the whole image, plus optional layers of overlapping crops): encode the crop once,
prompt the decoder with every point of a regular grid (batched), keep SAM's three multimask outputs of each
point, and filter them:

1. predicted IoU >= ``pred_iou_thresh``;
2. stability score >= ``stability_score_thresh`` (IoU of the mask thresholded at ``mask_threshold`` ±
   ``stability_score_offset``, computed on the logits at the crop's full resolution, as SAM does);
3. in crops smaller than the image, masks touching the crop's inner edges are dropped (the object continues
   outside the crop);
4. box NMS within the crop (``box_nms_thresh``, by predicted IoU), then across crops (preferring masks from
   smaller crops); 5. optionally, islands and holes smaller than ``min_mask_region_area`` are removed and NMS
   re-run.

Defaults are SAM's (32 points per side, batches of 64, IoU 0.88, stability 0.95 at offset 1.0, NMS 0.7, no
crops, no small-region cleanup). Going further than SAM: ``skip_covered`` skips grid points that already lie
inside a mask accepted by an earlier batch of the same crop (prompt reduction; measure its mask recall against
the full grid before relying on it).

Status: the generator follows SAM's recipe (point prompts, multimask outputs). Measured on a Kvasir image with
the bundled LiteMedSAM (trained with box prompts only), its point-prompt outputs are not usable at SAM's
thresholds: multimask outputs 1-3 predict IoU ~0.15-0.25 with stability 0, the single-mask output 0.46 median;
box prompts centred on grid points do better with output 0 (predicted IoU 0.6-0.8, stability 0.6-0.85). A
box-grid / single-output variant for box-trained models, the ``everything`` CLI and the speed targets are the
open part of the everything-mode issue.

Records: ``segmentation`` (bool ``(H, W)`` or COCO RLE), ``area`` (pixels), ``bbox`` (XYWH, inclusive pixel
extent: w = x1 - x0 + 1), ``predicted_iou``, ``stability_score``, ``point_coords`` ([[x, y]] in image pixels),
``crop_box`` (XYWH).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.configs import LABEL_PAD
from ..preprocess.image2d import to_rgb_uint8
from .masks import box_nms, mask_boxes, remove_small_regions, rle_encode, stability_score
from .predictor import Predictor


@dataclass
class EverythingOptions:
    """Settings of :class:`AutomaticMaskGenerator` (SAM's defaults; see the module docstring)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    skip_covered: bool = False
    output_mode: str = "binary_mask"  # or "rle"

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be >= 1")
        if self.crop_n_layers < 0:
            raise ValueError("crop_n_layers must be >= 0")
        if self.output_mode not in ("binary_mask", "rle"):
            raise ValueError("output_mode must be 'binary_mask' or 'rle'")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v}")


def point_grid(n: int) -> np.ndarray:
    """``(n*n, 2)`` points (x, y) in [0, 1]: cell centres of an n x n grid, row by row."""
    c = (np.arange(n) + 0.5) / n
    xs, ys = np.meshgrid(c, c)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def crop_boxes(shape: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crops as XYXY with exclusive ends ``[x0, y0, x1, y1)``, and their layer: layer 0 is the whole image;
    layer i has 2^i x 2^i crops overlapping by ``overlap_ratio`` x the shorter side x 2 / 2^i pixels."""
    h, w = shape
    boxes = [[0, 0, w, h]]
    layers = [0]
    short = min(h, w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short * (2 / per_side))
        cw = int(math.ceil((overlap * (per_side - 1) + w) / per_side))
        ch = int(math.ceil((overlap * (per_side - 1) + h) / per_side))
        for yi in range(per_side):
            for xi in range(per_side):
                x0, y0 = (cw - overlap) * xi, (ch - overlap) * yi
                boxes.append([x0, y0, min(x0 + cw, w), min(y0 + ch, h)])
                layers.append(layer)
    return boxes, layers


@dataclass
class EverythingResult:
    """Records (see the module docstring), sorted by area (largest first), and timings/counters."""

    records: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)

    def label_image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """``(H, W)`` uint16 label image: record i (largest first) gets label i + 1, smaller masks painted over
        larger ones so that nested structures stay visible."""
        if not self.records and shape is None:
            raise ValueError("no records and no shape")
        shp = shape or tuple(_mask_of(self.records[0]).shape)
        out = np.zeros(shp, dtype=np.uint16)
        for i, r in enumerate(self.records):
            out[_mask_of(r)] = i + 1
        return out


def _mask_of(record: dict[str, Any]) -> np.ndarray:
    seg = record["segmentation"]
    if isinstance(seg, dict):
        from .masks import rle_decode

        return rle_decode(seg)
    return np.asarray(seg, dtype=bool)


class AutomaticMaskGenerator:
    """Everything mode on a :class:`Predictor`.

    >>> gen = AutomaticMaskGenerator(Predictor("litemedsam"), EverythingOptions(points_per_side=16))
    >>> result = gen.generate(image)        # (H, W) or (H, W, 3)
    >>> result.records[0]["bbox"], result.records[0]["stability_score"]
    """

    def __init__(self, predictor: Predictor, options: EverythingOptions | None = None) -> None:
        self.predictor = predictor
        self.options = options or EverythingOptions()

    def generate(self, image: np.ndarray, progress: Callable[[int, int], None] | None = None) -> EverythingResult:
        """Masks of everything in ``image``. ``progress(done, total)`` is called after each batch of points."""
        opts = self.options
        rgb = to_rgb_uint8(image)
        h, w = rgb.shape[:2]
        boxes, layers = crop_boxes((h, w), opts.crop_n_layers, opts.crop_overlap_ratio)
        totals = [max(1, opts.points_per_side // (opts.crop_n_points_downscale_factor**layer)) ** 2 for layer in layers]
        total = sum(totals)
        done = 0
        stats: dict[str, Any] = {"points": 0, "points_skipped": 0, "decoded_masks": 0, "after_iou": 0, "after_stability": 0}
        t = {"encode_s": 0.0, "decode_s": 0.0, "filter_s": 0.0, "nms_s": 0.0}
        all_masks: list[np.ndarray] = []
        all_boxes: list[np.ndarray] = []
        all_iou: list[float] = []
        all_stab: list[float] = []
        all_pts: list[np.ndarray] = []
        all_crop: list[int] = []
        for ci, (crop, layer) in enumerate(zip(boxes, layers)):
            x0, y0, x1, y1 = crop
            t0 = time.perf_counter()
            self.predictor.set_image(rgb[y0:y1, x0:x1])
            t["encode_s"] += time.perf_counter() - t0
            n_side = max(1, opts.points_per_side // (opts.crop_n_points_downscale_factor**layer))
            cw, ch = x1 - x0, y1 - y0
            grid = point_grid(n_side) * np.array([cw, ch])
            grid = np.minimum(grid, [cw - 1, ch - 1])
            masks_c: list[np.ndarray] = []
            boxes_c: list[np.ndarray] = []
            iou_c: list[float] = []
            stab_c: list[float] = []
            pts_c: list[np.ndarray] = []
            covered = np.zeros((ch, cw), dtype=bool) if opts.skip_covered else None
            for a in range(0, len(grid), opts.points_per_batch):
                pts = grid[a : a + opts.points_per_batch]
                if covered is not None:
                    inside = covered[pts[:, 1].astype(int), pts[:, 0].astype(int)]
                    stats["points_skipped"] += int(inside.sum())
                    pts = pts[~inside]
                if len(pts):
                    m, b, iou, stab, p = self._batch(pts, (ch, cw), crop, (h, w), stats, t)
                    masks_c += m
                    boxes_c += b
                    iou_c += iou
                    stab_c += stab
                    pts_c += p
                    if covered is not None:
                        for mk in m:
                            covered |= mk
                done += len(grid[a : a + opts.points_per_batch])
                if progress is not None:
                    progress(done, total)
            if not masks_c:
                continue
            t0 = time.perf_counter()
            keep = box_nms(np.stack(boxes_c), np.array(iou_c), opts.box_nms_thresh)
            t["nms_s"] += time.perf_counter() - t0
            for k in keep:
                full = np.zeros((h, w), dtype=bool)
                full[y0:y1, x0:x1] = masks_c[k]
                all_masks.append(full)
                all_boxes.append(boxes_c[k] + np.array([x0, y0, x0, y0]))
                all_iou.append(iou_c[k])
                all_stab.append(stab_c[k])
                all_pts.append(pts_c[k] + np.array([x0, y0]))
                all_crop.append(ci)
        if len(boxes) > 1 and all_masks:
            t0 = time.perf_counter()
            crop_area = np.array([(boxes[c][2] - boxes[c][0]) * (boxes[c][3] - boxes[c][1]) for c in all_crop], float)
            keep = box_nms(np.stack(all_boxes), 1.0 / crop_area, opts.crop_nms_thresh)  # prefer smaller crops
            t["nms_s"] += time.perf_counter() - t0
            all_masks, all_boxes, all_iou, all_stab, all_pts, all_crop = (
                [seq[k] for k in keep] for seq in (all_masks, all_boxes, all_iou, all_stab, all_pts, all_crop)
            )
        if opts.min_mask_region_area > 0 and all_masks:
            t0 = time.perf_counter()
            all_masks, all_boxes, scores, changed = self._cleanup(all_masks, all_iou)
            keep = box_nms(np.stack(all_boxes), scores, opts.box_nms_thresh) if all_masks else np.zeros(0, np.int64)
            all_masks, all_boxes, all_iou, all_stab, all_pts, all_crop = (
                [seq[k] for k in keep] for seq in (all_masks, all_boxes, all_iou, all_stab, all_pts, all_crop)
            )
            stats["cleaned"] = changed
            t["filter_s"] += time.perf_counter() - t0
        records = []
        for m, b, iou, stab, p, c in zip(all_masks, all_boxes, all_iou, all_stab, all_pts, all_crop):
            cb = boxes[c]
            records.append(
                {
                    "segmentation": rle_encode(m) if opts.output_mode == "rle" else m,
                    "area": int(m.sum()),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0] + 1), float(b[3] - b[1] + 1)],
                    "predicted_iou": round(float(iou), 5),
                    "stability_score": round(float(stab), 5),
                    "point_coords": [[float(p[0]), float(p[1])]],
                    "crop_box": [cb[0], cb[1], cb[2] - cb[0], cb[3] - cb[1]],
                }
            )
        records.sort(key=lambda r: -r["area"])
        stats["points"] = total - stats["points_skipped"]
        stats["masks"] = len(records)
        stats.update({k: round(v, 4) for k, v in t.items()})
        return EverythingResult(records, stats)

    def _batch(self, pts, crop_hw, crop, image_hw, stats, t):  # noqa: ANN001, ANN202
        """Decode one batch of grid points of the current crop and filter its masks; returns lists of crop-frame
        masks, crop-frame boxes, predicted IoUs, stability scores and points."""
        opts = self.options
        p = self.predictor
        n = len(pts)
        t0 = time.perf_counter()
        coords = np.zeros((n, 2, 2), np.float32)
        coords[:, 0] = p.transform.points_to_input(pts, p.geometry)
        labels = np.tile(np.array([[1, LABEL_PAD]], np.float32), (n, 1))
        low, iou = p.decode_low_res(coords, labels, outputs=(1, 2, 3), chunk_size=opts.points_per_batch)
        t["decode_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        stats["decoded_masks"] += low.shape[0] * low.shape[1]
        low = low.reshape(-1, *low.shape[2:])
        iou = iou.reshape(-1)
        pts3 = np.repeat(pts, 3, axis=0)
        ok = iou >= opts.pred_iou_thresh if opts.pred_iou_thresh > 0 else np.ones_like(iou, bool)
        stats["after_iou"] += int(ok.sum())
        out: tuple[list, list, list, list, list] = ([], [], [], [], [])
        if not ok.any():
            t["filter_s"] += time.perf_counter() - t0
            return out
        full = p.transform.logits_to_image(np.ascontiguousarray(low[ok]), p.geometry)  # (k, ch, cw) logits
        stab = stability_score(full, opts.mask_threshold, opts.stability_score_offset)
        good = stab >= opts.stability_score_thresh
        stats["after_stability"] += int(good.sum())
        masks = full[good] > opts.mask_threshold
        boxes = mask_boxes(masks)
        x0, y0, x1, y1 = crop
        ih, iw = image_hw
        ch, cw = crop_hw
        for m, b, s, q, pt in zip(masks, boxes, iou[ok][good], stab[good], pts3[ok][good]):
            if not m.any():
                continue
            # a mask that touches an edge of a crop that is not an edge of the image continues outside the crop
            if (x0 > 0 and b[0] == 0) or (y0 > 0 and b[1] == 0) or (x1 < iw and b[2] == cw - 1) or (y1 < ih and b[3] == ch - 1):
                continue
            out[0].append(m)
            out[1].append(b)
            out[2].append(float(s))
            out[3].append(float(q))
            out[4].append(pt)
        t["filter_s"] += time.perf_counter() - t0
        return out

    def _cleanup(self, masks: list[np.ndarray], iou: list[float]):  # noqa: ANN202
        """Remove small islands and holes; changed masks get score 0 in the following NMS (SAM's rule: prefer
        masks that did not need cleaning)."""
        area = self.options.min_mask_region_area
        new_masks, scores = [], []
        changed_n = 0
        for m, s in zip(masks, iou):
            m2, c1 = remove_small_regions(m, area, "holes")
            m2, c2 = remove_small_regions(m2, area, "islands")
            changed = c1 or c2
            changed_n += int(changed)
            new_masks.append(m2)
            scores.append(0.0 if changed else float(s))
        boxes = list(mask_boxes(np.stack(new_masks))) if new_masks else []
        return new_masks, boxes, np.array(scores), changed_n
