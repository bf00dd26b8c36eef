"""Labelled datasets: pairs of (image, ground-truth mask) found on disk in one of three layouts.

- ``folder``: ``images/<case>.*`` + ``masks/<case>.*`` (2D or 3D files, or a DICOM series folder
  ``images/<case>/`` with ``masks/<case>.nii.gz``); the case id is the file name without its extension(s), so
  ``x.jpg`` pairs with ``x.png``. Optional ``labels.json`` (``{"1": "liver"}`` value -> name, or one such map per
  case id) and ``dataset.json`` (modality, labels) in the root.
- ``nnunet`` (nnU-Net v2 raw): ``dataset.json`` with ``channel_names``, ``labels`` (name -> value) and
  ``file_ending``; ``imagesTr/<case>_<CCCC><ending>`` + ``labelsTr/<case><ending>``.
- ``msd`` (Medical Segmentation Decathlon): ``dataset.json`` with ``modality``, ``labels`` (value -> name) and a
  ``training`` list of ``{"image", "label"}`` paths; multi-modal tasks store 4D NIfTI images (channel last).

Label value 0 is background and never an object: label maps exclude it. :func:`load_case` reads one case as
``(MedicalImage, mask)`` with the mask an unsigned integer array of shape ``image.spatial_shape``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FileInputError, InputError, MissingFileError
from ..io import MODALITIES, ImageReadError, MedicalImage, format_of, read_image
from ..io.dicom import is_dicom_file
from ..io.formats import split_suffix
from ..io.orient import reorient_exact

LAYOUTS = ("folder", "nnunet", "msd")

# dataset.json modality / channel names -> medsamkit modality (case-insensitive); names of normalisation schemes
# (nnU-Net's "noNorm", "zscore", ...) and colour channels say nothing about the modality and map to None.
_MODALITY_NAMES = {
    "CT": "CT",
    "CTA": "CT",
    "MR": "MR",
    "MRI": "MR",
    "MP-MRI": "MR",
    "FLAIR": "MR",
    "ADC": "MR",
    "DWI": "MR",
    "PD": "MR",
    "PDW": "MR",
    "SWI": "MR",
    "DCE": "MR",
    "PT": "PT",
    "PET": "PT",
    "US": "US",
    "ULTRASOUND": "US",
    "XR": "XR",
    "X-RAY": "XR",
    "XRAY": "XR",
    "CR": "XR",
    "DX": "XR",
}
_NOT_A_MODALITY = {"NONORM", "RESCALE_TO_0_1", "RGB_TO_0_1", "ZSCORE", "Z-SCORE", "R", "G", "B", "RGB"}
_T1_T2 = re.compile(r"^T[12]([-_ ]?(W|WI|GD|CE|C|C-GD|POST|PRE|SPACE|FS))?$")
_NNUNET_IMAGE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def modality_from_name(name: object) -> str | None:
    """Map a dataset.json modality/channel name ("CT", "MRI", "T2", "FLAIR", "noNorm", ...) to a medsamkit
    modality ("CT", "MR", "PT", "US", "XR") or None when the name does not say (normalisation schemes, unknown)."""
    if not isinstance(name, str):
        return None
    key = name.strip().upper()
    if key in _NOT_A_MODALITY:
        return None
    if key in _MODALITY_NAMES:
        return _MODALITY_NAMES[key]
    if _T1_T2.match(key):
        return "MR"
    return None


@dataclass(frozen=True)
class Case:
    """One labelled case: an image and its ground-truth label file on the same grid.

    id: unique within the dataset (file name without its extension(s), e.g. ``hippocampus_035``).
    labels: label value -> name (background 0 excluded; empty = values unnamed).
    modality: "CT", "MR", "US", ... when the dataset says so, else None (the reader's own value/guess is kept).
    channel: index along the 4th axis to extract when ``image`` is a 4D NIfTI (MSD multi-modal tasks); None when
    the file already holds a single image (folder, nnU-Net: ``image`` is then the chosen ``_CCCC`` file).
    """

    id: str
    image: Path
    mask: Path
    dataset: str
    labels: dict[int, str] = field(hash=False)
    modality: str | None
    channel: int | None = None


@dataclass
class Dataset:
    """Cases of one dataset, sorted by id; ``skipped`` holds ``(file relative to root, reason)`` for files that
    did not make a case (image without mask, mask without image, unsupported file, ...)."""

    name: str
    root: Path
    layout: str
    cases: list[Case]
    labels: dict[int, str]
    modality: str | None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __getitem__(self, key: int | str) -> Case:
        if isinstance(key, str):
            for case in self.cases:
                if case.id == key:
                    return case
            raise KeyError(self._unknown(key))
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self.cases[key]
        raise TypeError(f"index a Dataset with an int position or a str case id, not {type(key).__name__}")

    def _unknown(self, key: str) -> str:
        close = difflib.get_close_matches(key, [c.id for c in self.cases], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"no case {key!r} in dataset {self.name!r} ({len(self.cases)} cases){hint}"

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cases]

    def subset(self, ids: Sequence[str] | None = None, limit: int | None = None) -> Dataset:
        """The cases whose id is in ``ids`` (all when None; unknown ids raise KeyError), in dataset order, then the
        first ``limit`` of them."""
        cases = self.cases
        if ids is not None:
            if isinstance(ids, str):
                ids = [ids]
            known = {c.id for c in self.cases}
            for key in ids:
                if key not in known:
                    raise KeyError(self._unknown(key))
            wanted = set(ids)
            cases = [c for c in cases if c.id in wanted]
        if limit is not None:
            if limit < 0:
                raise InputError(f"limit must be >= 0, got {limit}")
            cases = cases[:limit]
        return Dataset(self.name, self.root, self.layout, list(cases), dict(self.labels), self.modality, list(self.skipped))

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, layout={self.layout!r}, {len(self.cases)} cases, {len(self.skipped)} skipped, "
            f"{len(self.labels)} labels, modality={self.modality!r})"
        )


def combine_datasets(datasets: Sequence[Dataset], name: str = "combined") -> Dataset:
    """One dataset of the cases of several (e.g. to train on many sets at once): case ids become
    ``<dataset name>/<case id>`` (each case keeps its own ``dataset``, labels and modality); the root is the
    datasets' common parent folder, the layout ``combined``; dataset-level labels and modality are kept only where
    all agree. Two datasets of one name are refused (their ids would collide)."""
    if not datasets:
        raise InputError("combine_datasets needs at least one dataset")
    names = [d.name for d in datasets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"datasets share a name ({', '.join(dup)}): their case ids would collide")
    cases = [replace(c, id=f"{d.name}/{c.id}") for d in datasets for c in d.cases]
    root = Path(os.path.commonpath([str(d.root) for d in datasets]))
    labels = dict(datasets[0].labels) if all(d.labels == datasets[0].labels for d in datasets) else {}
    modality = datasets[0].modality if all(d.modality == datasets[0].modality for d in datasets) else None
    skipped = [(f"{d.name}/{f}", why) for d in datasets for f, why in d.skipped]
    return Dataset(name, root, "combined", cases, labels, modality, skipped)


# ----------------------------------------------------------------------------------------------------- loading


def load_dataset(
    path: str | os.PathLike[str],
    *,
    layout: str = "auto",
    name: str | None = None,
    channel: int = 0,
    modality: str | None = None,
) -> Dataset:
    """Find the cases of a dataset folder (or its ``dataset.json``).

    layout: "auto" (folder when ``images/`` + ``masks/`` exist and ``imagesTr/`` does not, else msd when
    dataset.json has "training", nnunet when it has "channel_names"), "folder", "nnunet" or "msd".
    channel: which image channel to evaluate on (nnU-Net ``_CCCC`` file, MSD 4D index, dataset.json modality
    entry). modality: overrides what the dataset says ("CT", "MR", ...). name: defaults to the folder name.
    """
    root = Path(path)
    if root.is_file() and root.name == "dataset.json":
        root = root.parent
    if not root.is_dir():
        raise MissingFileError(f"dataset folder not found: {root}")
    if layout not in ("auto", *LAYOUTS):
        raise InputError(f"unknown layout {layout!r}; use 'auto' or one of {', '.join(LAYOUTS)}")
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or channel < 0:
        raise InputError(f"channel must be an integer >= 0, got {channel!r}")
    channel = int(channel)
    user_modality = _user_modality(modality)
    meta = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else None
    if layout == "auto":
        layout = _detect_layout(root, meta)
    name = name or root.name
    if layout == "folder":
        ds = _load_folder(root, name, meta, channel)
    elif meta is None:
        raise InputError(f"{root}: the {layout} layout needs a dataset.json in the dataset folder")
    elif layout == "nnunet":
        ds = _load_nnunet(root, name, meta, channel)
    else:
        ds = _load_msd(root, name, meta, channel)
    if user_modality is not None:
        ds.modality = user_modality
        ds.cases = [replace(c, modality=user_modality) for c in ds.cases]
    return ds


def _user_modality(modality: str | None) -> str | None:
    if modality is None:
        return None
    m = modality.strip().upper()
    if m in MODALITIES:
        return m
    mapped = modality_from_name(modality)
    if mapped is None:
        raise InputError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    return mapped


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileInputError(f"cannot read {p}: {e}") from e
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a JSON object, got {type(data).__name__}")
    return data


def _detect_layout(root: Path, meta: dict[str, Any] | None) -> str:
    folder = (root / "images").is_dir() and (root / "masks").is_dir()
    if folder and not (root / "imagesTr").is_dir():  # a dataset.json next to images/ + masks/ only adds metadata
        return "folder"
    if meta is not None and "training" in meta:
        return "msd"
    if meta is not None and "channel_names" in meta:
        return "nnunet"
    if folder:
        return "folder"
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not _hidden(p))
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "") if found else "nothing"
    detail = ""
    if meta is not None:
        detail = f" (its dataset.json has keys {', '.join(sorted(meta))} but neither 'training' nor 'channel_names')"
    raise InputError(
        f"{root}: cannot tell the dataset layout{detail}; found {shown}. Accepted layouts: "
        "'folder' (images/ + masks/ with matching case names), 'nnunet' (dataset.json with channel_names, "
        "imagesTr/, labelsTr/), 'msd' (dataset.json with a training list, imagesTr/, labelsTr/)"
    )


def _hidden(p: Path) -> bool:
    """Hidden files and macOS resource forks (``._x.nii.gz``, shipped in the MSD tarballs)."""
    return p.name.startswith(".")


def case_id_of(path: str | os.PathLike[str]) -> str:
    """Case id of an image/mask path: the file name without its (possibly double, ``.nii.gz``) extension."""
    return split_suffix(path)[0]


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _scan(folder: Path, root: Path, skipped: list[tuple[str, str]], *, allow_dicom_dirs: bool) -> dict[str, Path]:
    """Image files (and DICOM series folders) of one folder by case id; the rest goes into ``skipped``."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if _hidden(p):
            continue
        if p.is_dir():
            if not allow_dicom_dirs:
                skipped.append((_rel(p, root), "folder (a DICOM series is accepted as an image, not as a mask)"))
                continue
            files = [f for f in sorted(p.iterdir()) if f.is_file() and not _hidden(f)]
            if not files or not any(is_dicom_file(f) for f in files[:3]):
                skipped.append((_rel(p, root), "folder that is not a DICOM series"))
                continue
            found.setdefault(p.name, []).append(p)
            continue
        try:
            format_of(p)
        except ImageReadError:
            skipped.append((_rel(p, root), "not a supported image file"))
            continue
        found.setdefault(case_id_of(p), []).append(p)
    out: dict[str, Path] = {}
    for cid, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(q.name for q in paths)
            for q in paths:
                skipped.append((_rel(q, root), f"ambiguous: several files share the case id {cid!r} ({names})"))
        else:
            out[cid] = paths[0]
    return out


def _parse_labels(obj: Any, source: str) -> dict[int, str]:
    """A label map as value -> name (background 0 dropped) from ``{"1": "liver"}`` (value -> name, MSD and
    labels.json) or ``{"liver": 1}`` (name -> value, nnU-Net)."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InputError(f"{source}: labels must be a JSON object, got {type(obj).__name__}")
    out: dict[int, str] = {}
    for k, v in obj.items():
        if isinstance(v, (list, tuple)):
            raise InputError(
                f"{source}: label {k!r} is region-based ({v}); region-based (overlapping) labels are not supported, "
                "give one integer value per label"
            )
        key_int = _as_int(k)
        val_int = _as_int(v) if not isinstance(v, str) else None
        if key_int is not None and isinstance(v, str):
            value, label = key_int, v
        elif val_int is not None and isinstance(k, str):
            value, label = val_int, k
        else:
            raise InputError(f"{source}: cannot read label entry {k!r}: {v!r}; expected value -> name or name -> value")
        if value < 0:
            raise InputError(f"{source}: label {label!r} has negative value {value}")
        if value == 0:
            continue
        if value in out and out[value] != label:
            raise InputError(f"{source}: value {value} is named both {out[value]!r} and {label!r}")
        out[value] = label
    return dict(sorted(out.items()))


def _as_int(x: Any) -> int | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str) and re.fullmatch(r"\s*-?\d+\s*", x):
        return int(x)
    return None


def _dataset_json_modality(meta: dict[str, Any] | None, channel: int) -> str | None:
    if not meta:
        return None
    names = meta.get("channel_names", meta.get("modality"))
    if isinstance(names, dict):
        return modality_from_name(names.get(str(channel)))
    if isinstance(names, str) and channel == 0:
        return modality_from_name(names)
    return None


def _load_folder(root: Path, name: str, meta: dict[str, Any] | None, channel: int) -> Dataset:
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise InputError(f"{root}: the folder layout needs images/ and masks/ folders; {sub}/ is missing")
    skipped: list[tuple[str, str]] = []
    images = _scan(root / "images", root, skipped, allow_dicom_dirs=True)
    masks = _scan(root / "masks", root, skipped, allow_dicom_dirs=False)
    common = sorted(set(images) & set(masks))
    for cid in sorted(set(images) - set(masks)):
        skipped.append((_rel(images[cid], root), f"no mask for case {cid!r} in masks/"))
    for cid in sorted(set(masks) - set(images)):
        skipped.append((_rel(masks[cid], root), f"no image for case {cid!r} in images/"))

    per_case: dict[str, dict[int, str]] | None = None
    labels: dict[int, str] = {}
    if (root / "labels.json").is_file():
        raw = _read_json(root / "labels.json")
        if raw and all(isinstance(v, dict) for v in raw.values()):  # one map per case id
            per_case = {str(k): _parse_labels(v, f"{root / 'labels.json'} [{k}]") for k, v in raw.items()}
        else:
            labels = _parse_labels(raw, str(root / "labels.json"))
    elif meta is not None and "labels" in meta:
        labels = _parse_labels(meta["labels"], str(root / "dataset.json"))
    modality = _dataset_json_modality(meta, channel)

    cases = [
        Case(
            cid,
            images[cid],
            masks[cid],
            name,
            dict(per_case.get(cid, {}) if per_case is not None else labels),
            modality,
        )
        for cid in common
    ]
    if per_case is not None:  # the dataset-wide map only when every case shares it
        maps = [c.labels for c in cases]
        labels = dict(maps[0]) if maps and all(m == maps[0] for m in maps) else {}
    skipped.sort()
    return Dataset(name, root, "folder", cases, labels, modality, skipped)


def _load_nnunet(root: Path, name: str, meta: dict[str, Any], channel: int) -> Dataset:
    src = str(root / "dataset.json")
    channel_names = meta.get("channel_names")
    if not isinstance(channel_names, dict) or not channel_names:
        raise InputError(f'{src}: nnU-Net dataset.json needs a \'channel_names\' object such as {{"0": "CT"}}')
    if str(channel) not in channel_names:
        listed = ", ".join(f"{k}: {v}" for k, v in channel_names.items())
        raise InputError(f"{src}: channel {channel} does not exist; channel_names lists {len(channel_names)} ({listed})")
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending:
        raise InputError(f"{src}: nnU-Net dataset.json needs a 'file_ending' such as \".nii.gz\"")
    labels = _parse_labels(meta.get("labels", {}), src)
    modality = modality_from_name(channel_names[str(channel)])
    for sub in ("imagesTr", "labelsTr"):
        if not (root / sub).is_dir():
            raise InputError(f"{root}: nnU-Net layout without {sub}/")

    skipped: list[tuple[str, str]] = []
    images: dict[str, dict[int, Path]] = {}
    for p in sorted((root / "imagesTr").iterdir()):
        if _hidden(p):
            continue
        m = _NNUNET_IMAGE.match(p.name[: -len(ending)]) if p.name.endswith(ending) else None
        if m is None:
            skipped.append((_rel(p, root), f"not an nnU-Net image name <case>_<CCCC>{ending}"))
            continue
        images.setdefault(m["case"], {})[int(m["channel"])] = p
    labels_found: dict[str, Path] = {}
    for p in sorted((root / "labelsTr").iterdir()):
        if _hidden(p):
            continue
        if not p.name.endswith(ending) or len(p.name) == len(ending):
            skipped.append((_rel(p, root), f"label file without the dataset's file_ending {ending}"))
            continue
        labels_found[p.name[: -len(ending)]] = p

    cases = []
    for cid in sorted(set(images) | set(labels_found)):
        chans = images.get(cid, {})
        if cid not in labels_found:
            for p in chans.values():
                skipped.append((_rel(p, root), f"no label labelsTr/{cid}{ending} for case {cid!r}"))
        elif channel not in chans:
            have = ", ".join(f"{c:04d}" for c in sorted(chans)) or "none"
            reason = f"no image imagesTr/{cid}_{channel:04d}{ending} (channels found: {have})"
            skipped.append((_rel(labels_found[cid], root), reason))
        else:
            cases.append(Case(cid, chans[channel], labels_found[cid], name, dict(labels), modality))
    skipped.sort()
    return Dataset(name, root, "nnunet", cases, labels, modality, skipped)


def _load_msd(root: Path, name: str, meta: dict[str, Any], channel: int) -> Dataset:
    src = str(root / "dataset.json")
    training = meta.get("training")
    if not isinstance(training, list):
        raise InputError(f'{src}: \'training\' must be a list of {{"image": ..., "label": ...}} entries')
    mods = meta.get("modality")
    modality: str | None = None
    if isinstance(mods, dict) and mods:
        if str(channel) not in mods:
            listed = ", ".join(f"{k}: {v}" for k, v in mods.items())
            raise InputError(f"{src}: channel {channel} does not exist; the dataset lists {len(mods)} modalities ({listed})")
        modality = modality_from_name(mods[str(channel)])
    labels = _parse_labels(meta.get("labels", {}), src)

    skipped: list[tuple[str, str]] = []
    by_id: dict[str, Case] = {}
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            skipped.append((f"dataset.json training[{i}]", "entry without an 'image' path"))
            continue
        image = Path(os.path.normpath(root / entry["image"]))
        rel = _rel(image, root)
        if not isinstance(entry.get("label"), str):
            skipped.append((rel, "training entry without a 'label' path"))
            continue
        mask = Path(os.path.normpath(root / entry["label"]))
        if not image.exists():
            skipped.append((rel, "listed in dataset.json but the image file is missing"))
            continue
        if not mask.exists():
            skipped.append((_rel(mask, root), "listed in dataset.json but the label file is missing"))
            continue
        cid = case_id_of(image)
        if cid in by_id:
            skipped.append((rel, f"case id {cid!r} listed twice in dataset.json"))
            continue
        by_id[cid] = Case(cid, image, mask, name, dict(labels), modality, channel)
    cases = [by_id[k] for k in sorted(by_id)]
    skipped.sort()
    return Dataset(name, root, "msd", cases, labels, modality, skipped)


# --------------------------------------------------------------------------------------------------- one case


def load_case(case: Case) -> tuple[MedicalImage, np.ndarray]:
    """Read a case: ``(image, mask)`` with ``mask`` an unsigned integer array of shape ``image.spatial_shape``.

    A mask stored on the image's grid up to axis flips/permutations (e.g. a NIfTI mask with flipped rows for a
    DICOM series) is reoriented exactly onto the image grid (:func:`medsamkit.io.orient.reorient_exact`); other
    3D spacing/origin/direction differences (> 1e-3 relative) only warn. Shape mismatches, negative or
    non-integer labels and colour masks whose channels differ raise ValueError; unreadable files raise
    :class:`~medsamkit.io.ImageReadError`; both name the case. The image of an MSD case with a ``channel`` is
    that channel of its 4D NIfTI (:func:`medsamkit.io.read_image` with ``channel``).
    """
    try:
        image = read_image(case.image, channel=case.channel)
    except ImageReadError as e:
        raise ImageReadError(f"case {case.id}: {e}") from e
    if case.modality is not None and image.modality_source != "dicom":
        image.modality, image.modality_source = case.modality, "dataset"
    try:
        mask_img = read_image(case.mask, modality="OTHER")  # a fixed modality skips the intensity-based guess
    except ImageReadError as e:
        raise ImageReadError(f"case {case.id}: mask: {e}") from e
    mask = _label_array(mask_img, image, case)
    return image, mask


def _label_array(mask_img: MedicalImage, image: MedicalImage, case: Case) -> np.ndarray:
    arr = np.asarray(mask_img.array)
    if not mask_img.is_volume and arr.ndim == 3:  # colour 2D mask: fine when it is grey stored as RGB(A)
        colour = arr[..., :3] if arr.shape[2] >= 3 else arr
        if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[2])):
            raise InputError(
                f"case {case.id}: mask {case.mask.name} is a colour image whose channels differ; give a label image "
                "with one channel (0 = background, 1..K = labels)"
            )
        arr = colour[..., 0]
    if image.is_volume and mask_img.is_volume:
        arr = _on_image_grid(arr, mask_img, image, case)
    elif not image.is_volume and mask_img.is_volume and arr.shape[0] == 1:
        arr = arr[0]  # a 2D mask saved as a one-slice volume
    if arr.shape != image.spatial_shape:
        raise InputError(
            f"case {case.id}: mask shape {arr.shape} does not match the image's spatial shape {image.spatial_shape} "
            f"({case.mask.name} vs {case.image.name})"
        )
    return _as_labels(arr, case)


def _as_labels(arr: np.ndarray, case: Case) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"case {case.id}: mask dtype {arr.dtype} is not a label type")
    if arr.size == 0:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"case {case.id}: mask {case.mask.name} holds NaN or infinite values")
        frac = arr != np.round(arr)
        if frac.any():
            bad = arr[frac][:3].tolist()
            raise InputError(
                f"case {case.id}: mask {case.mask.name} holds non-integer values (e.g. {bad}); labels must be integers >= 0"
            )
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise InputError(f"case {case.id}: mask {case.mask.name} holds negative values (min {lo}); labels must be >= 0")
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if hi <= np.iinfo(dtype).max:
            return arr if arr.dtype == dtype else arr.astype(dtype)
    raise InputError(f"case {case.id}: mask values up to {hi} do not fit an integer label type")


def _close(a: Sequence[float], b: Sequence[float], scale: float) -> bool:
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    return bool(np.all(np.abs(a_ - b_) <= 1e-3 * np.maximum(np.maximum(np.abs(a_), np.abs(b_)), scale)))


def _on_image_grid(arr: np.ndarray, mask_img: MedicalImage, image: MedicalImage, case: Case) -> np.ndarray:
    """The 3D mask array on the image's voxel grid: unchanged when the geometries agree, reoriented exactly when
    the mask's grid is the image's up to axis flips/permutations, else unchanged with a warning."""
    scale = max(image.spacing)
    same = (
        _close(mask_img.spacing, image.spacing, 0.0)
        and _close(mask_img.origin, image.origin, scale)
        and np.allclose(mask_img.direction, image.direction, atol=1e-3)
    )
    if same:
        return arr
    reoriented = reorient_exact(arr, mask_img, image)
    if reoriented is not None:
        return reoriented
    if arr.shape == image.spatial_shape:
        warnings.warn(
            f"case {case.id}: mask geometry differs from the image's (spacing {_fmt(mask_img.spacing)} vs "
            f"{_fmt(image.spacing)}, origin {_fmt(mask_img.origin)} vs {_fmt(image.origin)}); comparing voxel by voxel",
            stacklevel=3,
        )
    return arr


def _fmt(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
