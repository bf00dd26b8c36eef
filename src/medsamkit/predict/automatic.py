"""Everything mode: automatic masks from a grid of prompts (SAM's automatic mask generator, written here).

For each crop of the image (the whole image, plus optional layers of overlapping crops): encode the crop once,
prompt the decoder with a grid of prompts in batches, and filter the masks:

1. predicted IoU >= ``pred_iou_thresh``;
2. stability score >= ``stability_score_thresh`` (IoU of the mask thresholded at ``mask_threshold`` ±
   ``stability_score_offset``). Computed on the decoder's low-res logits (256 x 256 for the crop), not on
   logits upscaled to the crop's resolution as SAM does: every filter runs before any upscaling, so only
   masks that survive NMS are ever upscaled (that is what keeps the non-decoder cost small);
3. box mode only: masks that reach the sides of their prompt box are dropped (``box_edge_margin``; sides on
   the crop border excepted) — the object continues outside the box, and a box-trained model fills any box
   with something;
4. box NMS within the crop (``box_nms_thresh``, by predicted IoU) on boxes of the low-res masks, then again on
   the exact boxes of the upscaled masks; in crops smaller than the image, masks touching the crop's inner
   edges are dropped; NMS across crops prefers masks from smaller crops; 5. optionally, islands and holes
   smaller than ``min_mask_region_area`` are removed and NMS re-run.

Two prompt modes:

- ``points`` (SAM): a ``points_per_side`` x ``points_per_side`` grid of single foreground clicks, SAM's three
  multimask outputs each. SAM's defaults (:class:`EverythingOptions`): 32 points per side, batches of 64, IoU
  0.88, stability 0.95 at offset 1.0, NMS 0.7, no crops, no small-region cleanup.
- ``boxes`` (for box-trained models such as LiteMedSAM, whose lone-click masks are near-empty): a pyramid of
  boxes centred on grid points (:func:`box_pyramid`: sides 4/n ... 1 of the crop, centres a quarter side apart,
  about 4/3 n^2 prompts), the single output 0 each. :func:`default_options` gives the settings per model;
  for ``litemedsam``: boxes, single output, predicted IoU >= 0.75, stability >= 0.80 (chosen by looking at the
  overlays of Kvasir, GlaS and BUSI images; SAM's 0.88/0.95 keep 0-3 masks per image with this model).

Going further than SAM: ``skip_covered`` visits the box pyramid coarse to fine and skips prompts whose grid
point already lies inside a mask accepted by an earlier batch of the same crop (prompt reduction; it loses
masks nested inside larger ones — ``benchmarks/bench_everything.py`` measures its mask recall against the full
grid).

Records: ``segmentation`` (bool ``(H, W)`` or COCO RLE), ``area`` (pixels), ``bbox`` (XYWH, inclusive pixel
extent: w = x1 - x0 + 1), ``predicted_iou``, ``stability_score``, ``point_coords`` ([[x, y]] in image pixels: the
grid point), ``prompt_box`` (inclusive x0, y0, x1, y1 in image pixels; None in point mode), ``crop_box`` (XYWH).

This module is the algorithm only (arrays in, records out; like SAM's ``utils/amg`` and
``automatic_mask_generator``): the grids, crop boxes, box pyramid, filters and :class:`AutomaticMaskGenerator`.
Reading an image file and writing the label image, records and overlay is the file job
:func:`medsamkit.predict.jobs.everything_file`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..errors import OptionError
from ..models.configs import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PAD
from ..preprocess.image2d import to_rgb_uint8
from ..preprocess.transforms import _resize_logits
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
    #: prompts run through the decoder at once (a batch of ``points_per_batch`` is decoded in such chunks; the
    #: masks are the same). The decoder's working memory grows with the chunk: everything mode on a 570x531 Kvasir
    #: image peaked at 3.0 GB RSS with chunks of 64, 1.5 GB with 16 and 1.1 GB with 8, as fast (a CPU gains
    #: little from batching prompts)
    decode_chunk: int = 8
    prompt_mode: str = "points"  # or "boxes" (box pyramid, for box-trained models)
    multimask_output: bool = True  # SAM's three outputs per prompt; False = the single output 0
    box_sizes: tuple[float, ...] | None = None  # box mode: sides as fractions of the crop; None = the pyramid
    box_edge_margin: float = 1.0  # box mode: drop masks reaching within this many low-res pixels of their box's
    # sides (sides on the crop border excepted): the object continues outside the box; negative = keep all

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1 or self.decode_chunk < 1:
            raise OptionError("points_per_side, points_per_batch and decode_chunk must be >= 1")
        if self.crop_n_layers < 0:
            raise OptionError("crop_n_layers must be >= 0")
        if self.prompt_mode not in ("points", "boxes"):
            raise OptionError(f"prompt_mode must be 'points' or 'boxes', got {self.prompt_mode!r}")
        if self.box_sizes is not None and (not self.box_sizes or not all(0 < s <= 1 for s in self.box_sizes)):
            raise OptionError(f"box_sizes must be fractions in (0, 1], got {self.box_sizes}")
        if self.output_mode not in ("binary_mask", "rle"):
            raise OptionError("output_mode must be 'binary_mask' or 'rle'")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise OptionError(f"{name} must be in [0, 1], got {v}")


#: everything-mode settings that work for each model family (measured on real images; see the module docstring)
_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "litemedsam": {
        "prompt_mode": "boxes",
        "multimask_output": False,
        "pred_iou_thresh": 0.75,
        "stability_score_thresh": 0.80,
    },
}


def default_options(model: str, **overrides: Any) -> EverythingOptions:
    """Everything-mode options for a registered model: SAM's defaults, changed where the model needs it
    (LiteMedSAM was trained with box prompts only: box pyramid, single output, lower thresholds), then
    ``overrides``."""
    base = dict(_MODEL_DEFAULTS.get(model, {}))
    base.update(overrides)
    return EverythingOptions(**base)


def box_pyramid(points_per_side: int, sizes: tuple[float, ...] | None = None) -> list[tuple[float, int]]:
    """Box prompts of box mode as ``(side, grid)`` pairs: boxes of ``side`` x the crop's width and height centred
    on the cells of a ``grid`` x ``grid`` point grid (grid spacing = a quarter of the side, at most n per side).

    Default pyramid (n = ``points_per_side``): sides 4/n, 8/n, ... up to 1, so the finest level has n x n boxes and
    the whole pyramid about 4/3 n^2. With centres a quarter side apart, every object whose extent is at most 3/4
    of a level's side lies inside one of that level's boxes, so an object of any size up to 3/4 of the image gets
    a box 1.3-2.7x its extent (LiteMedSAM needs the object inside the box; see ``box_edge_margin``)."""
    n = max(1, int(points_per_side))
    if sizes is None:
        sizes_l = []
        s = 4.0 / n
        while s < 1.0 - 1e-9:
            sizes_l.append(s)
            s *= 2
        sizes_l.append(1.0)
        sizes = tuple(sizes_l)
    return [(float(s), int(min(n, max(1, round(4.0 / s))))) for s in sizes]


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
            raise ValueError("label_image: no records and no shape (give shape=(H, W))")
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

    >>> gen = AutomaticMaskGenerator(Predictor("litemedsam"), default_options("litemedsam", points_per_side=16))
    >>> result = gen.generate(image)        # (H, W) or (H, W, 3)
    >>> result.records[0]["bbox"], result.records[0]["stability_score"]
    """

    def __init__(self, predictor: Predictor, options: EverythingOptions | None = None) -> None:
        self.predictor = predictor
        self.options = options or EverythingOptions()

    def generate(self, image: np.ndarray, progress: Callable[[int, int], None] | None = None) -> EverythingResult:
        """Masks of everything in ``image`` ((H, W) grey or (H, W, 3) RGB; any dtype accepted by the predictor).
        ``progress(done, total)`` is called after each batch of prompts."""
        opts = self.options
        rgb = to_rgb_uint8(image)
        h, w = rgb.shape[:2]
        boxes, layers = crop_boxes((h, w), opts.crop_n_layers, opts.crop_overlap_ratio)
        plans = [self._prompts_for(layer, (b[2] - b[0], b[3] - b[1])) for b, layer in zip(boxes, layers)]
        total = sum(len(p) for p in plans)
        done = 0
        stats: dict[str, Any] = {"prompts": 0, "prompts_skipped": 0, "decoded_masks": 0, "after_iou": 0, "after_stability": 0}
        t = {"encode_s": 0.0, "decode_s": 0.0, "filter_s": 0.0, "nms_s": 0.0, "upscale_s": 0.0}
        kept: list[_Candidate] = []
        for ci, (crop, plan) in enumerate(zip(boxes, plans)):
            x0, y0, x1, y1 = crop
            t0 = time.perf_counter()
            self.predictor.set_image(rgb[y0:y1, x0:x1])
            t["encode_s"] += time.perf_counter() - t0
            cw, ch = x1 - x0, y1 - y0
            cands: list[_Candidate] = []
            covered = np.zeros((ch, cw), dtype=bool) if opts.skip_covered else None
            for a in range(0, len(plan), opts.points_per_batch):
                batch = plan[a : a + opts.points_per_batch]
                if covered is not None:
                    pts = batch.points
                    inside = covered[pts[:, 1].astype(int), pts[:, 0].astype(int)]
                    stats["prompts_skipped"] += int(inside.sum())
                    batch = batch.select(~inside)
                if len(batch):
                    new = self._batch(batch, stats, t)
                    cands += new
                    if covered is not None and new:
                        t0 = time.perf_counter()
                        for c in new:  # nearest-neighbour upscaling of the low-res mask is enough here
                            low_m = (c.low_res > opts.mask_threshold).astype(np.uint8)
                            covered |= cv2.resize(low_m, (cw, ch), interpolation=cv2.INTER_NEAREST).astype(bool)
                        t["upscale_s"] += time.perf_counter() - t0
                done += min(opts.points_per_batch, len(plan) - a)
                if progress is not None:
                    progress(done, total)
            if not cands:
                continue
            # NMS on boxes from the low-res masks first (so that only survivors are upscaled), then again on the
            # exact boxes of the upscaled masks
            t0 = time.perf_counter()
            keep = box_nms(np.stack([c.box for c in cands]), np.array([c.iou for c in cands]), opts.box_nms_thresh)
            t["nms_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            crop_kept: list[_Candidate] = []
            for k in keep:
                c = cands[k]
                m = self._upscale(c)  # exact mask at the crop's resolution
                if not m.any():
                    continue
                if _touches_inner_edge(m, crop, (h, w)):
                    continue
                full = np.zeros((h, w), dtype=bool)
                full[y0:y1, x0:x1] = m
                c.mask, c.logits, c.crop = full, None, ci
                c.box = mask_boxes(full[None])[0]
                c.point = c.point + np.array([x0, y0])
                crop_kept.append(c)
            t["upscale_s"] += time.perf_counter() - t0
            if crop_kept:
                t0 = time.perf_counter()
                keep = box_nms(np.stack([c.box for c in crop_kept]), np.array([c.iou for c in crop_kept]), opts.box_nms_thresh)
                kept += [crop_kept[k] for k in keep]
                t["nms_s"] += time.perf_counter() - t0
        if len(boxes) > 1 and kept:
            t0 = time.perf_counter()
            crop_area = np.array(
                [(boxes[c.crop][2] - boxes[c.crop][0]) * (boxes[c.crop][3] - boxes[c.crop][1]) for c in kept], float
            )
            keep = box_nms(np.stack([c.box for c in kept]), 1.0 / crop_area, opts.crop_nms_thresh)  # prefer smaller crops
            kept = [kept[k] for k in keep]
            t["nms_s"] += time.perf_counter() - t0
        if opts.min_mask_region_area > 0 and kept:
            t0 = time.perf_counter()
            kept, changed = self._cleanup(kept)
            stats["cleaned"] = changed
            t["filter_s"] += time.perf_counter() - t0
        records: list[dict[str, Any]] = []
        for c in kept:
            cb = boxes[c.crop]
            b = c.box
            records.append(
                {
                    "segmentation": rle_encode(c.image_mask) if opts.output_mode == "rle" else c.image_mask,
                    "area": int(c.image_mask.sum()),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0] + 1), float(b[3] - b[1] + 1)],
                    "predicted_iou": round(float(c.iou), 5),
                    "stability_score": round(float(c.stability), 5),
                    "point_coords": [[round(float(c.point[0]), 3), round(float(c.point[1]), 3)]],
                    "prompt_box": None
                    if c.prompt_box is None
                    else [round(float(v), 3) for v in c.prompt_box + np.array([cb[0], cb[1]] * 2)],
                    "crop_box": [cb[0], cb[1], cb[2] - cb[0], cb[3] - cb[1]],
                }
            )
        records.sort(key=lambda r: -r["area"])
        stats["prompts"] = total - stats["prompts_skipped"]
        stats["masks"] = len(records)
        stats.update({k: round(v, 4) for k, v in t.items()})
        return EverythingResult(records, stats)

    def _prompts_for(self, layer: int, crop_wh: tuple[int, int]) -> _Plan:
        """The prompts of one crop, in crop pixel coordinates: grid points, or boxes centred on grid points."""
        opts = self.options
        n = max(1, opts.points_per_side // (opts.crop_n_points_downscale_factor**layer))
        cw, ch = crop_wh
        lim = np.array([cw - 1, ch - 1], float)
        if opts.prompt_mode == "points":
            pts = np.minimum(point_grid(n) * np.array([cw, ch]), lim)
            return _Plan(pts, None)
        pts_all, boxes_all = [], []
        for size, n_s in box_pyramid(n, opts.box_sizes):
            pts = np.minimum(point_grid(n_s) * np.array([cw, ch]), lim)
            half = np.array([size * cw, size * ch]) / 2
            bx = np.concatenate([np.maximum(pts - half, 0), np.minimum(pts + half, lim)], axis=1)
            pts_all.append(pts)
            boxes_all.append(bx)
        if opts.skip_covered:  # coarse to fine: large boxes first, then finer prompts where nothing was found yet
            pts_all, boxes_all = pts_all[::-1], boxes_all[::-1]
        return _Plan(np.concatenate(pts_all), np.concatenate(boxes_all))

    def _batch(self, batch: _Plan, stats: dict[str, Any], t: dict[str, float]) -> list[_Candidate]:
        """Decode one batch of prompts of the current crop and filter its masks on the low-res logits."""
        opts = self.options
        p = self.predictor
        geom = p.geometry
        n = len(batch)
        t0 = time.perf_counter()
        coords = np.zeros((n, 2, 2), np.float32)
        if batch.boxes is None:
            coords[:, 0] = p.transform.points_to_input(batch.points, geom)
            labels = np.tile(np.array([[1, LABEL_PAD]], np.float32), (n, 1))
        else:
            coords[:] = p.transform.boxes_to_input(batch.boxes, geom).reshape(n, 2, 2)
            labels = np.tile(np.array([[LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]], np.float32), (n, 1))
        outputs = (1, 2, 3) if opts.multimask_output else (0,)
        low, iou = p.decode_low_res(coords, labels, outputs=outputs, chunk_size=opts.decode_chunk)
        t["decode_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        k = len(outputs)
        stats["decoded_masks"] += n * k
        # the part of the low-res frame that shows the crop (the rest is padding)
        r = low.shape[-1] / p.transform.input_size
        vh, vw = max(1, round(geom.resized[0] * r)), max(1, round(geom.resized[1] * r))
        low = low[:, :, :vh, :vw].reshape(n * k, vh, vw)
        iou = iou.reshape(-1)
        ok = iou >= opts.pred_iou_thresh
        stats["after_iou"] += int(ok.sum())
        out: list[_Candidate] = []
        if not ok.any():
            t["filter_s"] += time.perf_counter() - t0
            return out
        idx = np.flatnonzero(ok)
        stab = stability_score(low[idx], opts.mask_threshold, opts.stability_score_offset)
        good = stab >= opts.stability_score_thresh
        stats["after_stability"] += int(good.sum())
        idx, stab = idx[good], stab[good]
        if len(idx):
            lowm = low[idx] > opts.mask_threshold
            lbox = mask_boxes(lowm)
            if batch.boxes is not None and opts.box_edge_margin >= 0:
                inside = _inside_prompt_box(lbox, coords.reshape(n, 4)[idx // k] * r, (vh, vw), opts.box_edge_margin)
                stats["after_box_edge"] = stats.get("after_box_edge", 0) + int(inside.sum())
                idx, stab, lowm, lbox = idx[inside], stab[inside], lowm[inside], lbox[inside]
            # low-res box -> crop pixel box (pixel edges scaled; an approximation used only for NMS)
            sy = geom.original[0] / vh
            sx = geom.original[1] / vw
            cbox = np.stack([lbox[:, 0] * sx, lbox[:, 1] * sy, (lbox[:, 2] + 1) * sx - 1, (lbox[:, 3] + 1) * sy - 1], axis=1)
            for j, i in enumerate(idx):
                if not lowm[j].any():
                    continue
                q = i // k
                out.append(
                    _Candidate(
                        logits=np.array(low[i]),
                        box=cbox[j],
                        iou=float(iou[i]),
                        stability=float(stab[j]),
                        point=batch.points[q].copy(),
                        prompt_box=None if batch.boxes is None else batch.boxes[q].copy(),
                        geom=geom,
                    )
                )
        t["filter_s"] += time.perf_counter() - t0
        return out

    def _upscale(self, c: _Candidate) -> np.ndarray:
        """The candidate's mask at the crop's resolution (bilinear logits, then the threshold)."""
        if c.mask is not None:
            return c.mask
        h, w = c.geom.original
        full = _resize_logits(c.low_res[None], (h, w))[0]
        return full > self.options.mask_threshold

    def _cleanup(self, kept: list[_Candidate]) -> tuple[list[_Candidate], int]:
        """Remove small islands and holes, then NMS again; changed masks get score 0 in that NMS (SAM's rule:
        prefer masks that did not need cleaning)."""
        area = self.options.min_mask_region_area
        scores = []
        changed_n = 0
        for c in kept:
            m2, c1 = remove_small_regions(c.image_mask, area, "holes")
            m2, c2 = remove_small_regions(m2, area, "islands")
            changed = c1 or c2
            changed_n += int(changed)
            c.mask = m2
            c.box = mask_boxes(m2[None])[0]
            scores.append(0.0 if changed else c.iou)
        kept = [c for c, s in zip(kept, scores) if c.image_mask.any()]
        scores = [s for c, s in zip(kept, scores) if c.image_mask.any()]
        if not kept:
            return kept, changed_n
        keep = box_nms(np.stack([c.box for c in kept]), np.array(scores), self.options.box_nms_thresh)
        return [kept[k] for k in keep], changed_n


@dataclass
class _Plan:
    """Prompts of one crop: points (n, 2) x/y crop pixels (the grid point of each prompt) and, in box mode, boxes
    (n, 4) inclusive x0, y0, x1, y1 crop pixels."""

    points: np.ndarray
    boxes: np.ndarray | None

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, sl: slice) -> _Plan:
        return _Plan(self.points[sl], None if self.boxes is None else self.boxes[sl])

    def select(self, keep: np.ndarray) -> _Plan:
        return _Plan(self.points[keep], None if self.boxes is None else self.boxes[keep])


@dataclass
class _Candidate:
    logits: np.ndarray | None  # low-res logits of the valid region (vh, vw)
    box: np.ndarray  # inclusive x0, y0, x1, y1 (crop pixels, then image pixels once upscaled)
    iou: float
    stability: float
    point: np.ndarray
    prompt_box: np.ndarray | None
    geom: Any
    mask: np.ndarray | None = None
    crop: int = 0

    @property
    def low_res(self) -> np.ndarray:
        """The low-res logits ``(vh, vw)``, held until the candidate is upscaled (then :attr:`image_mask`)."""
        if self.logits is None:
            raise RuntimeError("an upscaled candidate has no low-res logits")
        return self.logits

    @property
    def image_mask(self) -> np.ndarray:
        """The bool ``(H, W)`` mask on the image, set when the candidate is upscaled (logits dropped)."""
        if self.mask is None:
            raise RuntimeError("the candidate is not upscaled yet")
        return self.mask


def _inside_prompt_box(mask_box: np.ndarray, prompt_box: np.ndarray, valid_hw: tuple[int, int], margin: float) -> np.ndarray:
    """(n,) bool: the low-res mask box lies inside its low-res prompt box with ``margin`` pixels to spare on every
    side, except sides of the prompt box that lie on the image border (where the object may be cut anyway)."""
    vh, vw = valid_hw
    mb = np.asarray(mask_box, float)
    pb = np.asarray(prompt_box, float)
    ok = np.ones(len(mb), dtype=bool)
    ok &= (pb[:, 0] <= margin) | (mb[:, 0] > pb[:, 0] + margin)
    ok &= (pb[:, 1] <= margin) | (mb[:, 1] > pb[:, 1] + margin)
    ok &= (pb[:, 2] >= vw - 1 - margin) | (mb[:, 2] < pb[:, 2] - margin)
    ok &= (pb[:, 3] >= vh - 1 - margin) | (mb[:, 3] < pb[:, 3] - margin)
    return ok


def _touches_inner_edge(m: np.ndarray, crop: list[int], image_hw: tuple[int, int]) -> bool:
    """Whether a crop-frame mask touches an edge of the crop that is not an edge of the image (the object then
    continues outside the crop)."""
    x0, y0, x1, y1 = crop
    ih, iw = image_hw
    return bool(
        (x0 > 0 and m[:, 0].any()) or (y0 > 0 and m[0, :].any()) or (x1 < iw and m[:, -1].any()) or (y1 < ih and m[-1, :].any())
    )
