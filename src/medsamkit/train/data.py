"""2D segmentation training data: folder datasets in memory as raw and/or SAMAug-augmented network inputs.

Every case is read with :func:`medsamkit.data.load_case` and made the uint8 picture SAM-family
models see (:func:`medsamkit.preprocess.picture.model_picture` with the ``auto`` intensity preset: uint8 pictures
unchanged, CT soft-tissue window, percentile otherwise), exactly as ``medsamkit samaug prepare`` does before
computing the priors. The binary target is ``mask > 0``, or ``mask == label`` for one chosen label.

Input kinds (:data:`INPUT_KINDS`):

* ``raw``: the picture alone: ``(1, S, S)`` grey or ``(3, S, S)`` RGB;
* ``samaug``: :func:`medsamkit.predict.unet.augment_image` of the picture with the case's priors
  (``SAMAUG_DIR/priors/<case>.npz``; the mode and alpha come from ``SAMAUG_DIR/samaug.json``): ``"add"`` gives 3
  channels, ``"stack"`` the image channels + [seg, boundary];
* ``both``: each case twice, raw and augmented (SAMAug's "train with both"). The raw view then has the augmented
  view's channels: in add mode a grey picture is repeated to RGB, in stack mode the two prior channels are zero.

A dataset whose pictures are all grey is trained grey; when any picture is RGB, grey pictures are repeated to
RGB. Inputs are float32 ``(C, S, S)`` in [0, 1] (uint8 / 255); the picture is augmented on its own grid, then
resized to ``S x S`` without keeping the aspect ratio: area averaging when both sides shrink, bilinear
otherwise; masks by nearest neighbour (pixel centres, ``cv2.INTER_NEAREST_EXACT``). The inputs are made by the
inference side's :func:`~medsamkit.predict.unet.make_view` and :func:`~medsamkit.predict.unet.resize_input`
(:class:`~medsamkit.models.unet.InputSpec` says how), so training and prediction see the same inputs;
predictions go back to the original grid bilinearly (probabilities), see :mod:`medsamkit.predict.unet`.

Train-time augmentation (MONAI dictionary transforms, the same draw for image, priors and mask): flips along
each axis (p = 0.5 each), a rotation by k x 90 degrees (p = 0.5), and on the image channels only an intensity
scale by 1 + U(-0.1, 0.1) and shift by U(-0.05, 0.05) (p = 0.5 each), clipped to [0, 1]. The draw of item ``i``
in epoch ``e`` is seeded by ``(seed, e, i)`` (the training loop calls :meth:`SegmentationDataset.set_epoch`),
so runs, resumed runs and loader workers all see the same augmentations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from ..data import Case, Dataset, Split, combine_datasets, load_case, load_dataset, read_split
from ..errors import FileInputError, MissingFileError, OptionError
from ..io.image import MedicalImage
from ..models.unet import COLOURS, INPUT_KINDS, VIEWS, InputSpec  # noqa: F401 - also importable from here
from ..predict.unet import as_priors, make_view, resize_input, resize_probability  # noqa: F401 - the network inputs
from ..preprocess.picture import model_picture

if TYPE_CHECKING:
    from monai.transforms import Compose

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


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` bool/labels -> ``(size, size)`` uint8 by nearest neighbour at pixel centres."""
    m = np.asarray(mask).astype(np.uint8)
    if m.shape == (size, size):
        return m.copy()
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


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
        priors = load_case_priors(samaug_dir, case.id) if samaug_dir is not None and "samaug" in spec.views else None
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
        """Select the augmentation draws of ``epoch`` (called by :func:`medsamkit.train.loop.fit`)."""
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
            image, label = self._augment(self._transform, image, label, index)
        return {"image": image, "label": label, "case": case.id, "view": view}

    def _augment(
        self, transform: Compose, image: torch.Tensor, label: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        transform.set_random_state(seed=seed)
        n_img = 3 if self.spec.kind != "raw" and self.spec.mode == "add" else self.spec.image_channels
        data = {"image": image[:n_img], "prior": image[n_img:], "label": label}
        out = transform(data)
        img = torch.cat([_plain(out["image"]).clamp_(0.0, 1.0), _plain(out["prior"])], dim=0)
        return img.float().contiguous(), _plain(out["label"]).long().contiguous()


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor from MONAI's MetaTensor (or anything tensor-like)."""
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return t


def _train_transform() -> Compose:
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


#: the case sets a trained run is scored on: its split's parts (``run_dir/split.json``) or every case
SPLITS = ("train", "val", "test", "all")


def split_part(run_dir: str | os.PathLike[str], dataset: Dataset, split: str) -> list[Case]:
    """The cases of ``dataset`` in the part ``split`` ("train", "val", "test") of a run's ``split.json``, in the
    split's order, or every case ("all"). OptionError for another split or a case the dataset lacks."""
    if split not in SPLITS:
        raise OptionError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "all":
        return dataset.cases
    ids = getattr(read_split(Path(run_dir) / "split.json"), split)
    missing = sorted(set(ids) - set(dataset.ids))
    if missing:
        raise OptionError(f"the run's {split} split names case(s) that {dataset.root} lacks: {', '.join(missing[:5])}")
    return dataset.subset(ids).cases


def each_case(cases: Sequence[Case], progress: bool = False, desc: str = "evaluating") -> Iterator[Case]:
    """The cases one by one, under a progress bar (tqdm, one step per case) when ``progress``."""
    if not progress:
        yield from cases
        return
    from tqdm import tqdm

    with tqdm(cases, total=len(cases), unit="case", desc=desc) as bar:
        yield from bar


def open_dataset(
    dataset: Dataset | str | os.PathLike[str] | Sequence[Dataset | str | os.PathLike[str]],
) -> Dataset:
    """A :class:`~medsamkit.data.Dataset` from a folder (any layout ``load_dataset`` reads), or several combined
    (:func:`~medsamkit.data.combine_datasets`: ids ``<dataset>/<case>``)."""
    if isinstance(dataset, Dataset):
        return dataset
    if not isinstance(dataset, (str, os.PathLike)):
        parts = [open_dataset(d) for d in dataset]
        return parts[0] if len(parts) == 1 else combine_datasets(parts)
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
    settings: dict[str, Any] = (
        {"mode": None, "alpha": 0.5} if kind == "raw" or samaug_dir is None else read_samaug_settings(samaug_dir)
    )
    wanted = [*split.train, *split.val]
    sub = ds.subset(wanted)
    pictures = {c.id: load_picture(c) for c in sub}
    colour = dataset_colour([p for p, _ in pictures.values()])
    spec = InputSpec(kind=kind, colour=colour, size=size, mode=settings["mode"], alpha=settings["alpha"], label=label)
    parts = {}
    for name, ids in (("train", split.train), ("val", split.val)):
        parts[name] = prepare_cases(ds.subset(ids).cases, spec, samaug_dir, pictures)
    return spec, parts
