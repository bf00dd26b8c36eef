"""Prompted 2D segmentation: encode an image once, then decode any number of prompts against it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..errors import PromptError
from ..models.backends import Engine, create_engine
from ..models.configs import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PAD
from ..preprocess.image2d import to_rgb_uint8
from ..preprocess.transforms import Geometry, Transform, transform_for
from .cache import EmbeddingCache, embedding_key, encoder_id_of


@dataclass
class Prediction:
    """Result of :meth:`Predictor.predict` for N prompts with K outputs each (K = 1, or 3 with multimask).

    masks: ``(N, K, H, W)`` bool, in the input image's pixel grid.
    scores: ``(N, K)`` float32, the model's predicted IoU of each mask.
    low_res_logits: ``(N, K, 256, 256)`` float32 logits in the model-input frame; pass one back as
    ``mask_input`` to refine a prompt.
    logits: ``(N, K, H, W)`` float32 full-size logits, only when ``return_logits=True``.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    logits: np.ndarray | None = None

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt, the output with the highest predicted IoU: masks ``(N, H, W)``, scores ``(N,)``."""
        idx = self.scores.argmax(axis=1)
        n = np.arange(self.masks.shape[0])
        return self.masks[n, idx], self.scores[n, idx]


class Predictor:
    """SAM-style predictor for any model of the registry, on ONNX Runtime or PyTorch.

    >>> p = Predictor("litemedsam")          # bundled default model
    >>> p.set_image(image)                    # (H, W), (H, W, 3) or (H, W, 4) array
    >>> out = p.predict(boxes=[[x0, y0, x1, y1]])
    >>> out.masks.shape                       # (1, 1, H, W)

    Coordinates are pixel indices of the image given to :meth:`set_image`: **x = column, y = row**; a box
    ``(x0, y0, x1, y1)`` has inclusive corners (the object spans columns x0..x1 and rows y0..y1).

    device: ``cpu`` (default), ``cuda``/``cuda:N`` or ``auto`` (a GPU when PyTorch sees one); on a GPU the model runs
    on PyTorch. precision: the image encoder's arithmetic on PyTorch (``fp32``, or autocast ``bf16``/``fp16``; see
    :func:`~medsamkit.models.backends.create_engine`). encode_batch: slices a volume propagation encodes per
    encoder call (default 8 on a GPU, 1 on the CPU, where batching gains nothing).
    """

    def __init__(
        self,
        model: Any = "litemedsam",
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        arch: str | None = None,
        backend: str = "auto",
        threads: int | None = None,
        engine: Engine | None = None,
        cache: EmbeddingCache | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        encode_batch: int | None = None,
    ) -> None:
        self.engine: Engine = engine or create_engine(
            model, checkpoint=checkpoint, arch=arch, backend=backend, threads=threads, device=device, precision=precision
        )
        on_gpu = str(getattr(self.engine, "device", "cpu")).startswith("cuda")
        if encode_batch is not None and encode_batch < 1:
            raise ValueError(f"encode_batch must be >= 1, got {encode_batch}")
        #: slices a volume propagation encodes per call (only engines with ``batch_encode`` take more than one)
        self.encode_batch: int = (encode_batch or (8 if on_gpu else 1)) if getattr(self.engine, "batch_encode", False) else 1
        self.transform: Transform = transform_for(self.engine.arch.pipeline, self.engine.arch.img_size)
        self.low_res = self.engine.arch.low_res
        self.embed_shape = (1, 256, self.engine.arch.embed_grid, self.engine.arch.embed_grid)
        self.cache = cache
        #: the decoder was trained with its previous prediction fed back (the registry entry's ``mask_feedback``;
        #: False for a checkpoint path or an in-memory model): 3D propagation then feeds the previous slice's logits
        self.mask_feedback: bool = isinstance(model, str) and checkpoint is None and _mask_feedback(model)
        self.reset_image()

    # -- image --------------------------------------------------------------------------------------------
    def reset_image(self) -> None:
        self._embedding: np.ndarray | None = None
        self._geometry: Geometry | None = None
        self._prepared: Any = None

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def geometry(self) -> Geometry:
        if self._geometry is None:
            raise RuntimeError("no image set: call set_image() first")
        return self._geometry

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the current image."""
        return self.geometry.original

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """The model input ``(1, 3, S, S)`` float32 for ``image`` and where the image lies in it."""
        return self.transform.prepare(image)

    def _lookup(self, image: np.ndarray) -> tuple[str | None, np.ndarray, tuple[np.ndarray, Geometry] | None]:
        """(cache key, the image to encode, the cached embedding and geometry or None); key None without a cache."""
        if self.cache is None:
            return None, image, None
        rgb = to_rgb_uint8(image)
        # keyed on the encoder's identity: a weights overlay on the same encoder shares its base's embeddings
        key = embedding_key(encoder_id_of(self.engine), self.transform.name, self.transform.input_size, rgb)
        return key, rgb, self.cache.get(key)

    def embed(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Embedding ``(1, 256, 64, 64)`` and geometry of ``image``, from the cache when it holds them."""
        key, image, hit = self._lookup(image)
        if hit is not None:
            return hit
        x, geom = self.preprocess(image)
        emb = self.engine.encode(x)
        if key is not None and self.cache is not None:
            self.cache.put(key, emb, geom)
        return emb, geom

    def embed_many(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, Geometry]]:
        """:meth:`embed` for several images: the ones not in the cache are encoded together, in calls of at most
        :attr:`encode_batch` images (one by one for an engine without ``batch_encode``). Images may differ in size."""
        out: list[tuple[np.ndarray, Geometry] | None] = [None] * len(images)
        todo: list[tuple[int, np.ndarray, Geometry, str | None]] = []
        for i, image in enumerate(images):
            key, image, hit = self._lookup(image)
            if hit is not None:
                out[i] = hit
                continue
            x, geom = self.preprocess(image)
            todo.append((i, x, geom, key))
        step = max(1, self.encode_batch)
        for j in range(0, len(todo), step):
            part = todo[j : j + step]
            embs = self.engine.encode(np.concatenate([x for _, x, _, _ in part]))
            for (i, _, geom, key), emb in zip(part, embs):
                e = np.ascontiguousarray(emb[None])
                if key is not None and self.cache is not None:
                    self.cache.put(key, e, geom)
                out[i] = (e, geom)
        return [cast(tuple[np.ndarray, Geometry], o) for o in out]

    def set_image(self, image: np.ndarray) -> None:
        """Encode ``image`` (``(H, W)``, ``(H, W, 1|3|4)``; uint8, or any real dtype min-max scaled to 0..255)
        and keep its embedding for the following :meth:`predict` calls."""
        self.set_embedding(*self.embed(image))

    def set_embedding(self, embedding: np.ndarray, geometry: Geometry) -> None:
        """Use a precomputed embedding ``(1, 256, 64, 64)`` (e.g. from a cache) for an image of ``geometry``."""
        emb = np.asarray(embedding, dtype=np.float32)
        if emb.ndim == 3:
            emb = emb[None]
        if emb.shape != self.embed_shape:
            raise ValueError(f"embedding must be {self.embed_shape}, got {emb.shape}")
        # the decoder's prompt-independent work for this image, done once (every prompt needs it)
        self._embedding, self._geometry, self._prepared = emb, geometry, self.engine.prepare(emb)

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding ``(1, 256, 64, 64)`` float32."""
        if self._embedding is None:
            raise RuntimeError("no image set: call set_image() first")
        return self._embedding

    # -- prompts ------------------------------------------------------------------------------------------
    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        mask_input: Any = None,
        multimask: bool = False,
        return_logits: bool = False,
        chunk_size: int = 8,
        outputs: Sequence[int] | None = None,
    ) -> Prediction:
        """Segment N prompts on the current image in one call.

        point_coords: ``(P, 2)`` points shared by every prompt, or ``(N, P, 2)``; (x, y) pixel indices.
        point_labels: ``(P,)`` or ``(N, P)``; 1 = foreground, 0 = background (default: all 1).
        boxes: ``(4,)`` or ``(N, 4)`` inclusive ``(x0, y0, x1, y1)``; one prompt per box.
        mask_input: low-res logits ``(256, 256)``, ``(N, 256, 256)`` or ``(N, 1, 256, 256)`` from an earlier
        prediction (its ``low_res_logits``).
        multimask: return the three multimask outputs (K = 3) instead of the single-mask output (K = 1).
        outputs: explicit indices of SAM's four outputs to return (0 = single-mask, 1-3 = multimask);
        overrides ``multimask``.
        Points and boxes must lie inside the image; anything else raises ``ValueError`` naming the problem.
        """
        coords, labels = self._prompt_points(point_coords, point_labels, boxes, self.geometry)
        return self.predict_model_frame(coords, labels, mask_input, multimask, return_logits, chunk_size, outputs)

    def predict_model_frame(
        self,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: Any = None,
        multimask: bool = False,
        return_logits: bool = False,
        chunk_size: int = 8,
        outputs: Sequence[int] | None = None,
    ) -> Prediction:
        """:meth:`predict` for prompts already in the model-input frame: labelled points ``coords (N, T, 2)``
        (x, y in model-input pixels) and ``labels (N, T)`` (-1 pad, 0/1 points, 2/3 box corners)."""
        geom = self.geometry
        if outputs is None:
            outputs = [1, 2, 3] if multimask else [0]
        low, scores = self.decode_low_res(coords, labels, mask_input, outputs, chunk_size)
        full = self.transform.logits_to_image(low, geom)
        return Prediction(full > 0, scores, low, full if return_logits else None)

    def decode_low_res(
        self,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: Any = None,
        outputs: Sequence[int] = (0,),
        chunk_size: int = 8,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode prompts already in the model-input frame (as :meth:`predict_model_frame`) without bringing the
        masks to image size: low-res logits ``(N, K, 256, 256)`` float32 and predicted IoU ``(N, K)`` for the
        ``outputs`` (indices among SAM's four). For callers that filter many masks before upscaling the few
        they keep (everything mode); ``self.transform.logits_to_image`` then maps them to the image."""
        if self._embedding is None:
            raise RuntimeError("no image set: call set_image() first")
        coords = np.asarray(coords, np.float32)
        labels = np.asarray(labels, np.float32)
        n = coords.shape[0]
        masks_in = self._mask_input(mask_input, n)
        outs = np.asarray(outputs, dtype=np.int64).ravel()
        if outs.size == 0 or outs.min() < 0 or outs.max() > 3:
            raise PromptError("outputs must be indices among 0..3")
        k = len(outs)
        low = np.empty((n, k, self.low_res, self.low_res), dtype=np.float32)
        scores = np.empty((n, k), dtype=np.float32)
        for a in range(0, n, max(1, chunk_size)):
            b = min(n, a + max(1, chunk_size))
            if masks_in is None:
                lg, iou = self.engine.decode(self._prepared, coords[a:b], labels[a:b], outs)
            else:
                lg, iou = self.engine.decode_masked(self._embedding, coords[a:b], labels[a:b], masks_in[a:b], outs)
            low[a:b] = lg
            scores[a:b] = iou
        return low, scores

    def _prompt_points(self, point_coords: Any, point_labels: Any, boxes: Any, geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """Validate prompts and turn them into labelled points ``(N, T, 2)``/``(N, T)`` in model-input space."""
        box_arr, pts, plab = check_prompts(geom.original, point_coords, point_labels, boxes)
        # check_prompts refuses a request with neither boxes nor points; plab comes with pts
        n = box_arr.shape[0] if box_arr is not None else cast(np.ndarray, pts).shape[0]
        parts_c: list[np.ndarray] = []
        parts_l: list[np.ndarray] = []
        if pts is not None and plab is not None:
            if pts.shape[0] not in (1, n):
                raise PromptError(f"{pts.shape[0]} point sets for {n} boxes: give (P, 2) or ({n}, P, 2)")
            parts_c.append(np.broadcast_to(self.transform.points_to_input(pts, geom), (n, pts.shape[1], 2)))
            parts_l.append(np.broadcast_to(plab, (n, pts.shape[1])))
            if box_arr is None:
                parts_c.append(np.zeros((n, 1, 2)))
                parts_l.append(np.full((n, 1), LABEL_PAD, dtype=np.float64))
        if box_arr is not None:
            parts_c.append(self.transform.boxes_to_input(box_arr, geom).reshape(n, 2, 2))
            parts_l.append(np.tile(np.array([[LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]], np.float64), (n, 1)))
        coords = np.concatenate(parts_c, axis=1).astype(np.float32)
        labels = np.concatenate(parts_l, axis=1).astype(np.float32)
        return coords, labels

    def _mask_input(self, mask_input: Any, n: int) -> np.ndarray | None:
        if mask_input is None:
            return None
        r = self.low_res
        m = _finite(mask_input, "mask_input").astype(np.float32)
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m[:, None]
        if m.ndim != 4 or m.shape[1:] != (1, r, r) or m.shape[0] not in (1, n):
            raise PromptError(
                f"mask_input must be low-res logits ({r}, {r}), (N, {r}, {r}) or (N, 1, {r}, {r}) with N = {n}; "
                f"got shape {np.shape(mask_input)}"
            )
        return np.ascontiguousarray(np.broadcast_to(m, (n, 1, r, r)))


def _mask_feedback(name: str) -> bool:
    from ..models.registry import _REGISTRY

    entry = _REGISTRY.get(name)
    return entry is not None and entry.mask_feedback


def check_prompts(
    image_size: tuple[int, int], point_coords: Any = None, point_labels: Any = None, boxes: Any = None
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate prompts for an image of ``image_size`` = (H, W) before any model work, as
    :meth:`Predictor.predict` takes them: boxes ``(4,)``/``(N, 4)`` inclusive ``x0, y0, x1, y1``; point_coords
    ``(P, 2)``/``(N, P, 2)`` as ``x, y`` (column, row); point_labels 1 (foreground) / 0 (background). Everything
    must be finite and inside ``0..W-1`` x ``0..H-1``. Returns ``(boxes (N, 4), points (N, P, 2), labels (N, P))``
    as float64 (None where not given); raises :class:`~medsamkit.errors.PromptError`."""
    h, w = image_size
    box_arr = None
    if boxes is not None:
        box_arr = _finite(boxes, "boxes").astype(np.float64)
        if box_arr.ndim == 1:
            box_arr = box_arr[None]
        if box_arr.ndim != 2 or box_arr.shape[1] != 4:
            raise PromptError(f"boxes must be (4,) or (N, 4) as x0, y0, x1, y1; got shape {np.shape(boxes)}")
        if box_arr.shape[0] == 0:
            raise PromptError("boxes is empty")
        for i, (x0, y0, x1, y1) in enumerate(box_arr):
            if x0 > x1 or y0 > y1:
                raise PromptError(f"box {i} {_fmt(box_arr[i])}: need x0 <= x1 and y0 <= y1")
            if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
                raise PromptError(
                    f"box {i} {_fmt(box_arr[i])} lies outside the {w}x{h} image (x must be in 0..{w - 1}, y in 0..{h - 1})"
                )
    pts = None
    plab = None
    if point_coords is not None:
        pts = _finite(point_coords, "point_coords").astype(np.float64)
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[1] == 0:
            raise PromptError(f"point_coords must be (P, 2) or (N, P, 2) as x, y; got shape {np.shape(point_coords)}")
        if point_labels is None:
            plab = np.ones(pts.shape[:2])
        else:
            plab = _finite(point_labels, "point_labels").astype(np.float64)
            if plab.ndim == 1:
                plab = plab[None]
            if plab.shape != pts.shape[:2]:
                raise PromptError(f"point_labels shape {np.shape(point_labels)} does not match points {pts.shape[:2]}")
            if not np.isin(plab, (0, 1)).all():
                raise PromptError("point_labels must be 1 (foreground) or 0 (background)")
        bad = (pts[..., 0] < 0) | (pts[..., 0] > w - 1) | (pts[..., 1] < 0) | (pts[..., 1] > h - 1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise PromptError(
                f"point {_fmt(pts[i, j])} lies outside the {w}x{h} image (x must be in 0..{w - 1}, y in 0..{h - 1})"
            )
    elif point_labels is not None:
        raise PromptError("point_labels given without point_coords")
    if box_arr is None and pts is None:
        raise PromptError("give at least one prompt: boxes and/or point_coords")
    return box_arr, pts, plab


def _finite(a: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{name} must be numeric") from None
    if not np.isfinite(arr).all():
        raise PromptError(f"{name} contains NaN or infinite values")
    return arr


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")"
