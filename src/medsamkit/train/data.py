"""2D segmentation training data: folder datasets in memory as raw and/or SAMAug-augmented network inputs.

Every case is read with :func:`medsamkit.data.load_case` and made the uint8 picture SAM-family
models see (the ``auto`` intensity preset of :mod:`medsamkit.preprocess.intensity`: uint8 pictures unchanged,
CT soft-tissue window, percentile otherwise), exactly as ``medsamkit samaug prepare`` does before computing the
priors. The binary target is ``mask > 0``, or ``mask == label`` for one chosen label.

Input kinds (:data:`INPUT_KINDS`):

* ``raw``: the picture alone: ``(1, S, S)`` grey or ``(3, S, S)`` RGB;
* ``samaug``: :func:`medsamkit.samaug.priors.augment_image` of the picture with the case's priors
  (``SAMAUG_DIR/priors/<case>.npz``; the mode and alpha come from ``SAMAUG_DIR/samaug.json``): ``"add"`` gives 3
  channels, ``"stack"`` the image channels + [seg, boundary];
* ``both``: each case twice, raw and augmented (SAMAug's "train with both"). The raw view then has the augmented
  view's channels: in add mode a grey picture is repeated to RGB, in stack mode the two prior channels are zero.

A dataset whose pictures are all grey is trained grey; when any picture is RGB, grey pictures are repeated to
RGB. Inputs are float32 ``(C, S, S)`` in [0, 1] (uint8 / 255); the picture is augmented on its own grid, then
resized to ``S x S`` without keeping the aspect ratio: area averaging when both sides shrink, bilinear
otherwise; masks by nearest neighbour (pixel centres, ``cv2.INTER_NEAREST_EXACT``). Predictions go back to the
original grid bilinearly (probabilities), see :mod:`medsamkit.train.unet`.

Train-time augmentation (MONAI dictionary transforms, the same draw for image, priors and mask): flips along
each axis (p = 0.5 each), a rotation by k x 90 degrees (p = 0.5), and on the image channels only an intensity
scale by 1 + U(-0.1, 0.1) and shift by U(-0.05, 0.05) (p = 0.5 each), clipped to [0, 1]. The draw of item ``i``
in epoch ``e`` is seeded by ``(seed, e, i)`` (the training loop calls :meth:`SegmentationDataset.set_epoch`),
so runs, resumed runs and loader workers all see the same augmentations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..data import Case, Dataset, Split, load_case, load_dataset
from ..errors import FileInputError, MissingFileError, OptionError
from ..io.image import MedicalImage
from ..preprocess.image2d import to_rgb_uint8
from ..preprocess.picture import model_picture

INPUT_KINDS = ("raw", "samaug", "both")
COLOURS = ("grey", "rgb")
VIEWS = ("raw", "samaug")


# ------------------------------------------------------------------------------------------------ input spec


@dataclass(frozen=True)
class InputSpec:
    """How network inputs are made; stored with a trained model so prediction rebuilds them exactly.

    kind: "raw", "samaug" or "both". mode: the SAMAug mode ("add" or "stack"; None for raw). alpha: add mode's
    blend weight. colour: "grey" or "rgb" pictures. size: S of the (C, S, S) input. label: the target label
    value (None: every label > 0 is foreground).
    """

    kind: str
    colour: str
    size: int
    mode: str | None = None
    alpha: float = 0.5
    label: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise OptionError(f"unknown input kind {self.kind!r}; use one of {', '.join(INPUT_KINDS)}")
        if self.colour not in COLOURS:
            raise OptionError(f"colour must be 'grey' or 'rgb', got {self.colour!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 8:
            raise OptionError(f"size must be an integer >= 8, got {self.size!r}")
        if self.kind != "raw" and self.mode not in ("add", "stack"):
            raise OptionError(f"input {self.kind!r} needs the SAMAug mode 'add' or 'stack', got {self.mode!r}")
        if self.label is not None and (
            isinstance(self.label, bool) or not isinstance(self.label, (int, np.integer)) or self.label < 1
        ):
            raise OptionError(f"label must be an integer >= 1 or None, got {self.label!r}")

    @property
    def views(self) -> tuple[str, ...]:
        """The views of each case: ("raw",), ("samaug",) or ("raw", "samaug")."""
        return {"raw": ("raw",), "samaug": ("samaug",), "both": VIEWS}[self.kind]

    @property
    def image_channels(self) -> int:
        return 1 if self.colour == "grey" else 3

    @property
    def in_channels(self) -> int:
        """Channels of every network input: raw pictures 1 or 3; add mode 3; stack mode image + 2 priors."""
        if self.kind == "raw":
            return self.image_channels
        return 3 if self.mode == "add" else self.image_channels + 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        return cls(**{k: data[k] for k in ("kind", "colour", "size", "mode", "alpha", "label") if k in data})


# ------------------------------------------------------------------------------------------------- pictures


def to_picture(image: np.ndarray | MedicalImage, modality: str | None = None) -> np.ndarray:
    """The uint8 picture of a 2D image, ``(H, W)`` grey or ``(H, W, 3)`` RGB, through the ``auto`` intensity
    preset: :func:`medsamkit.preprocess.picture.model_picture` (its rules: alpha dropped, ``(H, W, 1)``
    squeezed, uint8 unchanged, CT soft-tissue window, percentile otherwise). ValueError for volumes of more
    than one slice and bad shapes."""
    return model_picture(image, modality=modality)[0]


def load_picture(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """A 2D case as ``(picture uint8 (H, W) or (H, W, 3), labels (H, W) unsigned int)``; ValueError for 3D."""
    image, mask = load_case(case)
    if image.is_volume:
        raise OptionError(
            f"case {case.id}: training handles 2D images; {case.image.name} is 3D {image.spatial_shape} (extract 2D slices first)"
        )
    return to_picture(image, case.modality), mask


def binary_target(mask: np.ndarray, label: int | None = None) -> np.ndarray:
    """bool ``(H, W)``: ``mask > 0`` (label None) or ``mask == label``."""
    m = np.asarray(mask)
    return m > 0 if label is None else m == label


def _as_colour(picture: np.ndarray, colour: str) -> np.ndarray:
    if colour == "rgb":
        return to_rgb_uint8(picture)
    if picture.ndim != 2:
        raise OptionError(f"the model takes grey pictures; got a colour image of shape {picture.shape}")
    return picture


# -------------------------------------------------------------------------------------------------- priors


def read_samaug_settings(samaug_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"mode", "alpha"}`` of a ``medsamkit samaug prepare`` output folder (from its samaug.json)."""
    d = Path(samaug_dir)
    f = d / "samaug.json"
    if not f.is_file():
        raise MissingFileError(f"{d} is not a SAMAug folder: {f.name} not found (run `medsamkit samaug prepare` first)")
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileInputError(f"cannot read {f}: {e}") from e
    mode = doc.get("mode") if isinstance(doc, dict) else None
    if mode not in ("add", "stack"):
        raise OptionError(f"{f}: 'mode' must be 'add' or 'stack', got {mode!r}")
    alpha = doc.get("alpha", 0.5)
    return {"mode": mode, "alpha": float(alpha) if alpha is not None else 0.5}


def as_priors(priors: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(seg_prior, boundary_prior)`` float32 from a :class:`~medsamkit.samaug.priors.Priors`, a
    ``(seg, boundary)`` pair, a mapping with ``seg_prior``/``boundary_prior`` or the path of a prior npz."""
    if isinstance(priors, (str, os.PathLike)):
        from ..samaug.priors import load_priors

        loaded, _ = load_priors(priors)
        return loaded.seg, loaded.boundary
    if hasattr(priors, "seg") and hasattr(priors, "boundary"):
        return np.asarray(priors.seg, np.float32), np.asarray(priors.boundary, np.float32)
    if isinstance(priors, Mapping):
        if "seg_prior" in priors and "boundary_prior" in priors:
            return np.asarray(priors["seg_prior"], np.float32), np.asarray(priors["boundary_prior"], np.float32)
        raise OptionError(f"a priors mapping needs 'seg_prior' and 'boundary_prior', got {', '.join(map(str, priors))}")
    if isinstance(priors, (tuple, list)) and len(priors) == 2:
        return np.asarray(priors[0], np.float32), np.asarray(priors[1], np.float32)
    raise OptionError(
        f"priors must be a Priors object, a (seg, boundary) pair, a mapping or an npz path, not {type(priors).__name__}"
    )


def prior_path(samaug_dir: str | os.PathLike[str], case_id: str) -> Path:
    """``SAMAUG_DIR/priors/<case_id>.npz``."""
    return Path(samaug_dir) / "priors" / f"{case_id}.npz"


def load_case_priors(samaug_dir: str | os.PathLike[str], case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The priors of one case; FileNotFoundError naming the file when the case was not prepared."""
    p = prior_path(samaug_dir, case_id)
    if not p.is_file():
        raise MissingFileError(
            f"no SAMAug priors for case {case_id!r}: {p} not found (prepare the dataset with `medsamkit samaug prepare`)"
        )
    return as_priors(p)


# -------------------------------------------------------------------------------------------- network inputs


def make_view(picture: np.ndarray, spec: InputSpec, view: str, priors: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One network input on the picture's own grid: float32 ``(C, H, W)`` in [0, 1] with ``C =
    spec.in_channels``. view "raw" or "samaug" (needs ``priors``, ``(H, W)`` each, in [0, 1])."""
    pic = _as_colour(np.asarray(picture), spec.colour)
    if view == "raw":
        img = (pic[..., None] if pic.ndim == 2 else pic).astype(np.float32) / np.float32(255.0)
        chans = img.shape[2]
        if spec.kind != "raw":
            if spec.mode == "add" and chans == 1:
                img = np.repeat(img, 3, axis=2)
            elif spec.mode == "stack":
                img = np.concatenate([img, np.zeros((*img.shape[:2], 2), np.float32)], axis=2)
    elif view == "samaug":
        if spec.kind == "raw":
            raise OptionError("a model trained on raw inputs has no augmented view")
        if priors is None:
            raise OptionError("the augmented (SAMAug) input needs the image's priors")
        from ..samaug.priors import augment_image

        seg, bnd = priors
        out = augment_image(pic, seg, bnd, mode=spec.mode, alpha=spec.alpha)  # type: ignore[arg-type]
        img = out.astype(np.float32) / np.float32(255.0) if out.dtype == np.uint8 else out.astype(np.float32)
    else:
        raise OptionError(f"unknown view {view!r}; use 'raw' or 'samaug'")
    if img.shape[2] != spec.in_channels:
        raise OptionError(f"the {view} input has {img.shape[2]} channels, the model takes {spec.in_channels}")
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def resize_input(x: np.ndarray, size: int) -> np.ndarray:
    """``(C, H, W)`` float32 -> ``(C, size, size)``: area averaging when both sides shrink, bilinear otherwise."""
    c, h, w = x.shape
    if (h, w) == (size, size):
        return x.astype(np.float32, copy=True)
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    out = np.empty((c, size, size), np.float32)
    for i in range(c):  # cv2 resizes at most 4 channels at once
        out[i] = cv2.resize(np.ascontiguousarray(x[i], dtype=np.float32), (size, size), interpolation=interp)
    return out


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` bool/labels -> ``(size, size)`` uint8 by nearest neighbour at pixel centres."""
    m = np.asarray(mask).astype(np.uint8)
    if m.shape == (size, size):
        return m.copy()
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def resize_probability(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(S, S)`` float probabilities -> ``(H, W)`` float32 bilinearly (pixel centres), clipped to [0, 1]."""
    h, w = shape
    p = np.asarray(prob, np.float32)
    if p.shape != (h, w):
        p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(p, 0.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------------------------------- dataset


@dataclass
class CaseData:
    """One case in memory: its inputs at the training size per view (float32 ``(C, S, S)``) and its binary
    target (uint8 ``(S, S)``)."""

    id: str
    views: dict[str, np.ndarray]
    target: np.ndarray
    shape: tuple[int, int]


def dataset_colour(pictures: Sequence[np.ndarray]) -> str:
    """ "rgb" when any picture is colour, else "grey"."""
    return "rgb" if any(np.asarray(p).ndim == 3 for p in pictures) else "grey"


def prepare_cases(
    cases: Sequence[Case],
    spec: InputSpec,
    samaug_dir: str | os.PathLike[str] | None = None,
    pictures: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[CaseData]:
    """Read ``cases`` (or take them from ``pictures``: id -> (picture, labels)) and make their views at
    ``spec.size``. The augmented view needs ``samaug_dir``."""
    if "samaug" in spec.views and samaug_dir is None:
        raise OptionError(f"input {spec.kind!r} needs samaug_dir (the output folder of `medsamkit samaug prepare`)")
    out = []
    for case in cases:
        picture, labels = pictures[case.id] if pictures is not None and case.id in pictures else load_picture(case)
        priors = load_case_priors(samaug_dir, case.id) if "samaug" in spec.views else None  # type: ignore[arg-type]
        if priors is not None and priors[0].shape != picture.shape[:2]:
            raise OptionError(
                f"case {case.id}: priors are {priors[0].shape[0]} x {priors[0].shape[1]}, the image is "
                f"{picture.shape[0]} x {picture.shape[1]}; prepare the priors on this dataset's images"
            )
        views = {v: resize_input(make_view(picture, spec, v, priors), spec.size) for v in spec.views}
        target = resize_mask(binary_target(labels, spec.label), spec.size)
        out.append(CaseData(case.id, views, target, tuple(picture.shape[:2])))
    return out


class SegmentationDataset(torch.utils.data.Dataset):
    """In-memory cases as training or validation items.

    Training (``ensemble=False``): one item per (case, view), so ``both`` holds every case twice; an item is
    ``{"image": float32 (C, S, S), "label": int64 (1, S, S), "case": id, "view": name}``.
    Validation (``ensemble=True``): one item per case with all its views stacked: ``"image"`` is
    ``(K, C, S, S)`` (K = 1 or 2), so the validation Dice is that of the test-time ensemble.
    augment: the MONAI train-time augmentation of the module docstring, seeded by ``(seed, epoch, index)``.
    """

    def __init__(
        self, cases: Sequence[CaseData], spec: InputSpec, *, augment: bool = False, ensemble: bool = False, seed: int = 0
    ) -> None:
        if augment and ensemble:
            raise OptionError("augmentation is for training items; ensemble items are for validation")
        self.cases = list(cases)
        self.spec = spec
        self.augment = augment
        self.ensemble = ensemble
        self.seed = int(seed)
        self.epoch = 0
        if ensemble:
            self.items = [(i, "") for i in range(len(self.cases))]
        else:
            self.items = [(i, v) for i in range(len(self.cases)) for v in spec.views]
        self._transform = _train_transform() if augment else None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (called by :func:`medsamkit.train.engine.fit`)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ci, view = self.items[index]
        case = self.cases[ci]
        label = torch.from_numpy(case.target.astype(np.int64))[None]
        if self.ensemble:
            image = torch.from_numpy(np.stack([case.views[v] for v in self.spec.views]))
            return {"image": image, "label": label, "case": case.id, "view": "+".join(self.spec.views)}
        image = torch.from_numpy(case.views[view].copy())
        if self._transform is not None:
            image, label = self._augment(image, label, index)
        return {"image": image, "label": label, "case": case.id, "view": view}

    def _augment(self, image: torch.Tensor, label: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        self._transform.set_random_state(seed=seed)  # type: ignore[union-attr]
        n_img = 3 if self.spec.kind != "raw" and self.spec.mode == "add" else self.spec.image_channels
        data = {"image": image[:n_img], "prior": image[n_img:], "label": label}
        out = self._transform(data)  # type: ignore[misc]
        img = torch.cat([_plain(out["image"]).clamp_(0.0, 1.0), _plain(out["prior"])], dim=0)
        return img.float().contiguous(), _plain(out["label"]).long().contiguous()


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor from MONAI's MetaTensor (or anything tensor-like)."""
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return t


def _train_transform():
    from monai.transforms import Compose, RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd

    spatial = ["image", "prior", "label"]
    return Compose(
        [
            RandFlipd(spatial, prob=0.5, spatial_axis=0),
            RandFlipd(spatial, prob=0.5, spatial_axis=1),
            RandRotate90d(spatial, prob=0.5, max_k=3),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.05, prob=0.5),
        ]
    )


# ------------------------------------------------------------------------------------------------ top level


def open_dataset(dataset: Dataset | str | os.PathLike[str]) -> Dataset:
    """A :class:`~medsamkit.data.Dataset` from a folder (any layout ``load_dataset`` reads)."""
    if isinstance(dataset, Dataset):
        return dataset
    ds = load_dataset(dataset)
    if not len(ds):
        detail = f" ({len(ds.skipped)} file(s) skipped, e.g. {ds.skipped[0][0]}: {ds.skipped[0][1]})" if ds.skipped else ""
        raise OptionError(f"{ds.root}: no (image, mask) cases found{detail}")
    return ds


def load_split_data(
    dataset: Dataset | str | os.PathLike[str],
    split: Split,
    kind: str,
    *,
    size: int = 256,
    samaug_dir: str | os.PathLike[str] | None = None,
    label: int | None = None,
) -> tuple[InputSpec, dict[str, list[CaseData]]]:
    """Read the train and val cases of ``split`` once and make their inputs: ``(spec, {"train": [...],
    "val": [...]})``. The colour of the spec is decided on these pictures; the SAMAug mode and alpha
    come from ``samaug_dir``."""
    ds = open_dataset(dataset)
    if kind not in INPUT_KINDS:
        raise OptionError(f"unknown input kind {kind!r}; use one of {', '.join(INPUT_KINDS)}")
    if kind != "raw" and samaug_dir is None:
        raise OptionError(f"input {kind!r} needs samaug_dir (the output folder of `medsamkit samaug prepare`)")
    settings = read_samaug_settings(samaug_dir) if kind != "raw" else {"mode": None, "alpha": 0.5}  # type: ignore[arg-type]
    wanted = [*split.train, *split.val]
    sub = ds.subset(wanted)
    pictures = {c.id: load_picture(c) for c in sub}
    colour = dataset_colour([p for p, _ in pictures.values()])
    spec = InputSpec(kind=kind, colour=colour, size=size, mode=settings["mode"], alpha=settings["alpha"], label=label)
    parts = {}
    for name, ids in (("train", split.train), ("val", split.val)):
        parts[name] = prepare_cases(ds.subset(ids).cases, spec, samaug_dir, pictures)
    return spec, parts
