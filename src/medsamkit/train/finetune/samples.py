"""The training samples of a fine-tuning run: :class:`ImageRecord` (a 2D image or slice with its objects, read
by :func:`read_images` as the evaluation sees them), :class:`FinetuneDataset` (one item per (image, object):
target, jittered prompts, picture and/or cached embedding, MONAI augmentation) and :func:`embed_images` (the
embedding cache's keys and contents)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from ...data import Case, load_case
from ...errors import OptionError
from ...preprocess.picture import VolumePictures, model_picture, volume_pictures
from .options import FinetuneOptions, evaluation_config

if TYPE_CHECKING:
    from monai.transforms import Compose

    from ...evaluate.runner import EvalConfig
    from ...predict.cache import EmbeddingCache
    from ...predict.predictor import Predictor
    from ...preprocess.transforms import Geometry, Transform

# ------------------------------------------------------------------------------------------------------ images


@dataclass
class ImageRecord:
    """One 2D training/evaluation image: a case, or a slice of a 3D case (``id`` = ``case@z``; slice -1 for 2D).

    picture: uint8 ``(H, W)`` or ``(H, W, 3)``; objects: int32 ``(H, W)`` map, 0 = background, object i = value
    ``object_ids[i]``; object_labels: the label value of each object (-1 for AutoSAM's one object, the union, or the
    run's label); union: bool ``(H, W)`` of every target label.
    """

    id: str
    case: str
    slice: int
    picture: np.ndarray
    objects: np.ndarray
    object_ids: list[int]
    object_labels: list[int]
    union: np.ndarray
    key: str | None = None

    def object_mask(self, i: int) -> np.ndarray:
        return self.objects == self.object_ids[i]


def _record(
    case_id: str, z: int, picture: np.ndarray, mask: np.ndarray, labels: Sequence[int], config: EvalConfig, min_pixels: int
) -> ImageRecord | None:
    """The record of one picture with its objects (:func:`medsamkit.evaluate.runner.picture_objects`), or None
    when it holds none."""
    from ...evaluate.runner import picture_objects

    found = picture_objects(mask, labels, config, min_pixels)
    if not found:
        return None
    objects = np.zeros(mask.shape, np.int32)
    for k, (_, _, m) in enumerate(found, start=1):
        objects[m] = k
    union = np.isin(mask, labels)
    rid = case_id if z < 0 else f"{case_id}@{z}"
    ids, owners = list(range(1, len(found) + 1)), [label for label, _, _ in found]
    return ImageRecord(rid, case_id, z, np.ascontiguousarray(picture), objects, ids, owners, union)


def read_images(cases: Sequence[Case], options: FinetuneOptions) -> list[ImageRecord]:
    """The images of ``cases`` with their objects (2D cases as they are; 3D cases as axial slices holding the
    target, at most ``options.slices_per_case`` evenly spaced ones). Images without a usable object are left out.
    Objects and slices are those the evaluation scores (:func:`evaluation_config`:
    :func:`~medsamkit.evaluate.runner.picture_objects`, :func:`~medsamkit.evaluate.runner.evaluated_slices`);
    pictures are :mod:`medsamkit.preprocess.picture`'s (``auto`` preset; a volume's fitted on the whole volume), as
    the evaluation runner makes them."""
    from ...evaluate.runner import evaluated_slices, target_labels

    config = evaluation_config(options)
    out: list[ImageRecord] = []
    for case in cases:
        image, mask = load_case(case)
        labels = target_labels(mask, config)
        if not image.is_volume:
            picture = model_picture(image, modality=case.modality)[0]
            rec = _record(case.id, -1, picture, mask, labels, config, config.min_pixels)
            if rec is not None:
                out.append(rec)
            continue
        if image.is_rgb:
            raise OptionError(f"case {case.id}: RGB volumes are not supported")
        pictures = volume_pictures(image, modality=case.modality or image.modality)
        least = config.least_slice_pixels
        mask = np.asarray(mask)
        for axis in (0, 1, 2) if options.slice_axes == "all" else (0,):
            along = mask if axis == 0 else np.moveaxis(mask, axis, 0)
            view = pictures if axis == 0 else VolumePictures(np.moveaxis(pictures.array, axis, 0), pictures.preset)
            for z in evaluated_slices(along, labels, config):
                rec = _record(case.id, int(z), view[int(z)], np.ascontiguousarray(along[z]), labels, config, least)
                if rec is not None:
                    if axis:
                        rec.id = f"{case.id}@{'zyx'[axis]}{int(z)}"
                    out.append(rec)
    return out


def augmented_copies(images: Sequence[ImageRecord], copies: int, seed: int) -> list[ImageRecord]:
    """``copies`` augmented versions of every record (ids ``<id>#aug<k>``), made once, for training on cached
    embeddings (each copy is encoded like any picture): the training augmentation (flips, 90-degree rotations, gamma,
    noise; module docstring) applied to the picture and its object map together, seeded by (seed, image, copy)."""
    aug = _augment_transform()
    out: list[ImageRecord] = []
    for i, rec in enumerate(images):
        for k in range(int(copies)):
            aug.set_random_state(seed=int(np.random.SeedSequence([seed, i, k, 3]).generate_state(1)[0]))
            img = rec.picture[None] if rec.picture.ndim == 2 else rec.picture.transpose(2, 0, 1)
            maps = np.stack([rec.objects, rec.union.astype(np.int32)])  # the object map and the union move together
            res = aug({"image": img.astype(np.float32) / np.float32(255.0), "mask": maps})
            pic = np.rint(np.clip(_plain(res["image"]), 0.0, 1.0) * 255.0).astype(np.uint8)
            pic = pic[0] if pic.shape[0] == 1 else pic.transpose(1, 2, 0)
            moved = np.rint(_plain(res["mask"])).astype(np.int32)
            objects, union = moved[0], moved[1] > 0
            kept = [j for j, oid in enumerate(rec.object_ids) if (objects == oid).any()]
            if not kept:
                continue
            out.append(
                ImageRecord(
                    f"{rec.id}#aug{k}",
                    rec.case,
                    rec.slice,
                    np.ascontiguousarray(pic),
                    np.ascontiguousarray(objects),
                    [rec.object_ids[j] for j in kept],
                    [rec.object_labels[j] for j in kept],
                    np.ascontiguousarray(union),
                )
            )
    return out


def to_model_frame(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """bool ``(H, W)`` on the image grid -> uint8 ``(S, S)`` in the model-input frame: nearest neighbour onto the
    resized image (``geometry.resized``), zero elsewhere (the padding)."""
    h, w = geometry.resized
    s = geometry.input_size
    small = cv2.resize(np.asarray(mask, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    out = np.zeros((s, s), np.uint8)
    out[:h, :w] = small
    return out


def _to_low_res(target: np.ndarray, low_res: int) -> np.ndarray:
    if target.shape[0] == low_res:
        return target
    return cv2.resize(target, (low_res, low_res), interpolation=cv2.INTER_NEAREST_EXACT)


# ----------------------------------------------------------------------------------------------------- dataset


def _augment_transform() -> Compose:
    from monai.transforms import Compose, RandAdjustContrastd, RandFlipd, RandGaussianNoised, RandRotate90d

    keys = ["image", "mask"]
    return Compose(
        [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandRotate90d(keys, prob=0.5, max_k=3),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
            RandGaussianNoised("image", prob=0.2, mean=0.0, std=0.02),
        ]
    )


def _plain(x: Any) -> np.ndarray:
    t = x.as_tensor() if hasattr(x, "as_tensor") else x
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


class FinetuneDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Items of one split: one per (image, object). Item: ``{"target": float32 (1, L, L), "box": float32 (4,),
    "points": float32 (k, 2), "image": float32 (3, S, S)?, "embedding": float32 (256, g, g)?}`` (coordinates in
    the model-input frame, x = column). ``image`` is present when the encoder runs in the step or the prompt
    generator reads it; ``embedding`` when an embedding cache is given.

    train: random prompt jitter and augmentation (seeded by (seed, epoch, index)); else tight boxes and fixed points.
    """

    def __init__(
        self,
        images: Sequence[ImageRecord],
        transform: Transform,
        low_res: int,
        options: FinetuneOptions,
        *,
        train: bool,
        seed: int = 0,
        cache: EmbeddingCache | None = None,
        need_image: bool = True,
    ) -> None:
        self.images = list(images)
        self.transform = transform
        self.low_res = int(low_res)
        self.options = options
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self.need_image = need_image or cache is None
        self.augment = train and options.augment and cache is None
        self._aug = _augment_transform() if self.augment else None
        self.items: list[tuple[int, int]] = []
        self.dropped = 0
        for i, rec in enumerate(self.images):
            geom = self._geometry(rec)  # the picture's place in the model input (prepare is cheap next to a step)
            for j in range(len(rec.object_ids)):
                if to_model_frame(rec.object_mask(j), geom).any():
                    self.items.append((i, j))
                else:
                    self.dropped += 1

    def _geometry(self, rec: ImageRecord) -> Geometry:
        return self.transform.prepare(rec.picture)[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch if self.train else 0
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index, 1 if self.train else 2]))

    def _embedding(self, rec: ImageRecord) -> tuple[np.ndarray, Geometry]:
        hit = self.cache.get(rec.key) if self.cache is not None and rec.key is not None else None
        if hit is None:
            raise RuntimeError(f"embedding of {rec.id} missing from the cache (key {rec.key})")
        return hit

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ...prompts import mask_box, random_points, shift_box

        i, j = self.items[index]
        rec = self.images[i]
        mask = rec.object_mask(j)
        picture = rec.picture
        out: dict[str, Any] = {}
        geom: Geometry | None = None
        if self.cache is not None:
            emb, geom = self._embedding(rec)
            out["embedding"] = torch.from_numpy(np.ascontiguousarray(emb[0], np.float32))
        if self._aug is not None:
            picture, mask = self._augment(self._aug, picture, mask, index)
        if self.need_image:
            x, geom_x = self.transform.prepare(picture)
            out["image"] = torch.from_numpy(x[0])
            geom = geom if geom is not None else geom_x
        assert geom is not None  # need_image holds whenever there is no cache
        target = to_model_frame(mask, geom)
        if not target.any():  # an augmented object can vanish only by rounding: use the item unaugmented
            target = to_model_frame(rec.object_mask(j), geom)
        rng = self._rng(index)
        box = mask_box(target)
        if self.train and self.options.bbox_shift:
            box = shift_box(box, self.options.bbox_shift, rng, geom.resized)
        pts = random_points(target, self.options.num_points, rng)
        out["target"] = torch.from_numpy(_to_low_res(target, self.low_res).astype(np.float32))[None]
        out["box"] = torch.from_numpy(box.astype(np.float32))
        out["points"] = torch.from_numpy(pts.astype(np.float32))
        return out

    def _augment(self, aug: Compose, picture: np.ndarray, mask: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        aug.set_random_state(seed=seed)
        img = picture[None] if picture.ndim == 2 else picture.transpose(2, 0, 1)
        data = {"image": img.astype(np.float32) / np.float32(255.0), "mask": mask[None].astype(np.uint8)}
        res = aug(data)
        img = np.clip(_plain(res["image"]), 0.0, 1.0)
        pic = np.rint(img * 255.0).astype(np.uint8)
        pic = pic[0] if pic.shape[0] == 1 else pic.transpose(1, 2, 0)
        return np.ascontiguousarray(pic), np.ascontiguousarray(_plain(res["mask"])[0] > 0)


# ------------------------------------------------------------------------------------------- embedding cache


def embed_images(
    images: Sequence[ImageRecord], predictor: Predictor, *, compute: bool = True, progress: bool = False, desc: str = "encoding"
) -> None:
    """Set each record's embedding-cache key (:func:`~medsamkit.predict.cache.embedding_key` of the predictor's
    weights, pipeline and the picture) and, with ``compute``, make sure ``predictor.cache`` holds its embedding
    (encoding the pictures it lacks)."""
    from ...predict.cache import embedding_key, encoder_id_of
    from ...preprocess.image2d import to_rgb_uint8

    eng, tf = predictor.engine, predictor.transform
    for rec in images:
        rec.key = embedding_key(encoder_id_of(eng), tf.name, tf.input_size, to_rgb_uint8(rec.picture))
    if not compute:
        return
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images), desc=desc, unit="image", leave=False, dynamic_ncols=True)
    try:
        for rec in images:
            predictor.embed(rec.picture)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
