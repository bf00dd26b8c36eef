"""The evaluation runner: every object of every case under every prompt protocol, one row each.

Per-case work is a pure function of (case, protocols, predictor, config) - :func:`evaluate_case` - so a
distributed engine can map it; :func:`run_evaluation` is the single-process loop around it with a progress
bar, resumable results and the report.

The model is a prompted :class:`~medsamkit.predict.Predictor` (prompts simulated by the protocols of
:mod:`medsamkit.prompts.protocol`) or a **segmenter** (:class:`Segmenter`: AutoSAM, a U-Net; no prompt, one
mask per picture) evaluated under the protocol ``auto`` (:data:`AUTO`): its mask of each picture is scored
against each object of that picture, usually the union of the target labels (``EvalConfig(objects="union")``).

Output folder (``RUN_DIR``):

- ``run.json``: settings (model and weights id, seed, mode, NSD tolerance, intensity preset, slice policy),
  protocols, versions. Re-running into the same folder with other settings is refused; adding protocols is
  allowed (only the missing ones are computed).
- ``cases/<dataset>/<case>.json``: the rows of one case, written atomically when the case is finished; a case
  whose file holds every requested protocol without error is skipped on re-runs, errors are retried.
- ``masks/<dataset>/<case>.npz``: predicted masks (bit-packed) of the first and last step of each protocol.
- ``results.csv`` (and ``results.parquet`` when pyarrow is installed), ``summary.json``, ``report.html``.

Objects (:class:`EvalConfig`): by default each label value > 0 of a case's mask is one object; ``objects``
"component" makes each connected component of a label (8-neighbourhood, raster order) one object and "union"
the union of the target labels one object per picture (its row's ``label`` is -1, or the chosen ``label``);
``label`` keeps one label value only; ``min_pixels`` leaves out smaller objects (0 with "union": a picture
without any target is scored too). 3D cases are evaluated in ``slices`` mode (each axial slice where the
target has at least ``min_slice_pixels`` pixels, at most ``slices_per_case`` of them evenly spaced, gives its
objects of at least that size as 2D objects; slices with fewer, including empty ones, give no prompt to
simulate and are skipped and counted - their false positives are only measured in ``volume`` mode) or
``volume`` mode (3D prompt, slice propagation, 3D metrics; one object per label).
Seeds: every (case, label, slice, protocol) draws from its own generator, seeded from the run seed and those
names, so results do not depend on order or on which cases are re-run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np

from .._files import atomic_write, atomic_write_text
from .._runs import check_same_settings, json_default, model_info, versions
from ..data import Case, Dataset, load_case, load_dataset
from ..errors import InputError, OptionError
from ..metrics import compute_metrics
from ..metrics.attributes import ATTRIBUTES, object_attributes
from ..predict.predictor import Predictor
from ..preprocess.image2d import to_rgb_uint8
from ..preprocess.picture import model_picture, volume_pictures
from ..prompts import PromptProtocol, component_masks, parse_protocol
from .prompting import StepResult, run_protocol_2d, run_protocol_3d
from .store import case_paths, save_masks, write_csv

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13

    from ..io.image import MedicalImage

MODES = ("slices", "volume")
OBJECTS = ("label", "component", "union")
METRIC_COLUMNS = ("dice", "iou", "nsd", "hd95", "assd", "pred_size", "gt_size", "volume_difference", "empty_pred")
COLUMNS = (
    "dataset",
    "case",
    "label",
    "label_name",
    "modality",
    "mode",
    "slice",
    "protocol",
    "step",
    "seed",
    "status",
    "error",
    *METRIC_COLUMNS,
    "predicted_iou",
    "uncertainty",
    *ATTRIBUTES,
    "time_s",
    "encode_s",
    "image_shape",
    "spacing",
    "spacing_unit",
    "prompt",
)


@dataclass
class EvalConfig:
    """Settings that determine the numbers of a run (recorded in ``run.json``).

    mode: how 3D cases are evaluated, ``slices`` or ``volume`` (2D cases are always whole images).
    nsd_tolerance: NSD tolerance in mm (pixels for images without a physical spacing, e.g. PNG).
    preset/window: intensity mapping for non-uint8 images (:mod:`medsamkit.preprocess.intensity`).
    min_slice_pixels: slices mode: a slice is evaluated when the target has at least this many pixels on it, and
    gives its objects of at least this size.
    save_masks: keep the predicted masks (first and last step per protocol) for overlays and later analysis.
    objects: what one object is: "label" (each label value), "component" (each connected component of each
    label, 8-neighbourhood, in raster order) or "union" (the union of the target labels, one per picture).
    label: keep this label value only (None: every label > 0 is a target).
    min_pixels: objects with fewer pixels are left out (2D images and slices); 0 with "union" scores pictures
    without any target too.
    slices_per_case: slices mode: at most this many slices per 3D case, evenly spaced among those evaluated.
    The last four are recorded in ``run.json`` only when they differ from their defaults.
    """

    seed: int = 0
    mode: str = "slices"
    nsd_tolerance: float = 2.0
    preset: str = "auto"
    window: tuple[float, float] | None = None
    min_slice_pixels: int = 1
    save_masks: bool = True
    objects: str = "label"
    label: int | None = None
    min_pixels: int = 1
    slices_per_case: int | None = None

    @property
    def least_slice_pixels(self) -> int:
        """The fewest pixels an object of a 3D case's slice needs to be evaluated (or trained on):
        ``max(min_slice_pixels, min_pixels)``."""
        return max(self.min_slice_pixels, self.min_pixels)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.nsd_tolerance > 0:
            raise OptionError("the NSD tolerance must be > 0 mm")
        if self.min_slice_pixels < 1:
            raise OptionError("min_slice_pixels must be >= 1")
        if self.objects not in OBJECTS:
            raise OptionError(f"objects must be one of {', '.join(OBJECTS)}, got {self.objects!r}")
        if self.mode == "volume" and self.objects != "label":
            raise OptionError(f"volume mode evaluates one object per label; objects {self.objects!r} needs mode 'slices'")
        if self.label is not None and not _count(self.label, 1):
            raise OptionError(f"label must be an integer >= 1 or None, got {self.label!r}")
        if not _count(self.min_pixels, 0):
            raise OptionError(f"min_pixels must be an integer >= 0, got {self.min_pixels!r}")
        if self.slices_per_case is not None and not _count(self.slices_per_case, 1):
            raise OptionError(f"slices_per_case must be an integer >= 1 or None, got {self.slices_per_case!r}")


def _count(v: Any, least: int) -> bool:
    """Whether ``v`` is an integer (not a bool) >= ``least``."""
    return bool(not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= least)


#: the settings added for segmenters and training-side evaluation: recorded only when not at their defaults, so
#: the runs of earlier versions keep their settings (and resume)
_OPTIONAL_SETTINGS = ("objects", "label", "min_pixels", "slices_per_case")


@runtime_checkable
class Segmenter(Protocol):
    """A model that needs no prompt: one mask per picture (AutoSAM's :class:`~medsamkit.predict.autoseg.AutoSegmenter`,
    the U-Net's :class:`~medsamkit.predict.unet.UNetSegmenter`).

    ``segment(picture)``: picture uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB (the picture the model sees,
    :mod:`medsamkit.preprocess.picture`; a slice's picture for 3D cases) -> bool ``(H, W)`` mask on the picture's
    grid (x = column, y = row), or an object whose ``mask`` is one. An optional class attribute ``slices = False``
    says the model takes 2D images only and is not applied to the slices of a volume."""

    def segment(self, picture: np.ndarray) -> Any: ...


#: the protocol name of a segmenter: no prompt
AUTO = "auto"


@dataclass(frozen=True)
class Promptless:
    """The protocol of a :class:`Segmenter` (``auto``): no prompt is simulated, one recorded step."""

    name: str = AUTO
    steps: int = 1

    def describe(self) -> dict[str, object]:
        return {"kind": AUTO, "name": self.name}

    def __str__(self) -> str:
        return self.name


EvalProtocol = PromptProtocol | Promptless


def parse_eval_protocol(text: str | EvalProtocol) -> EvalProtocol:
    """A protocol string of :mod:`medsamkit.prompts.protocol`, or ``auto`` (:data:`AUTO`) for a segmenter."""
    if isinstance(text, (PromptProtocol, Promptless)):
        return text
    if isinstance(text, str) and text.strip().lower() == AUTO:
        return Promptless()
    return parse_protocol(text)


def is_segmenter(model: Predictor | Segmenter) -> TypeIs[Segmenter]:
    """True for a :class:`Segmenter` (it segments; it takes no image to prompt), False for a predictor."""
    return hasattr(model, "segment") and not hasattr(model, "set_image")


def _check_protocols(protos: Sequence[EvalProtocol], segmenter: bool) -> None:
    auto = [p for p in protos if isinstance(p, Promptless)]
    if segmenter and len(auto) != len(protos):
        raise OptionError(f"a segmenter takes no prompt: evaluate it under the protocol {AUTO!r} alone")
    if not segmenter and auto:
        raise OptionError(f"the protocol {AUTO!r} is for segmenters (no prompt); a predictor needs prompt protocols")


def object_seed(seed: int, dataset: str, case: str, label: int, slice_index: int, protocol: str, part: int | None = None) -> int:
    """The seed of one object's prompt simulation, from the run seed and the object's names (``part``: the
    component's index when objects are components)."""
    name = f"{seed}|{dataset}|{case}|{label}|{slice_index}|{protocol}" + ("" if part is None else f"|{part}")
    h = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class CaseResult:
    """Rows of one case (one per object x protocol x step, or one error row) and the kept masks
    (key ``"<label>/<slice>/<protocol>/<step>"`` -> bool mask)."""

    rows: list[dict[str, Any]]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


CaseMapper = Callable[[Sequence[tuple[Case, Sequence[EvalProtocol]]], EvalConfig], Iterable[tuple[int, CaseResult]]]


def case_error_result(case: Case, error: BaseException | str) -> CaseResult:
    """The result of a case whose computation was lost (e.g. with its worker): one error row, retried by the
    next run."""
    text = error if isinstance(error, str) else _error_text(error)
    return CaseResult([_error_row(_base_row(case, 0, case.modality, "", -1), "*", None, text)])


def _spacing_array_order(image: Any, ndim: int) -> tuple[float, ...]:
    """medsamkit images store spacing as (x, y[, z]); metrics take it in array order (z, y, x)."""
    sp = tuple(float(s) for s in image.spacing)
    return tuple(reversed(sp))[-ndim:] if len(sp) >= ndim else (1.0,) * ndim


def _grey(picture: np.ndarray) -> np.ndarray:
    rgb = to_rgb_uint8(picture).astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _base_row(case: Case, label: int, modality: str | None, mode: str, slice_index: int) -> dict[str, Any]:
    return {
        "dataset": case.dataset,
        "case": case.id,
        "label": int(label),
        "label_name": case.labels.get(int(label), ""),
        "modality": modality or "",
        "mode": mode,
        "slice": int(slice_index),
    }


def _error_text(e: BaseException | str) -> str:
    if isinstance(e, str):
        return e
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def _error_row(base: dict[str, Any], protocol: str, seed: int | None, e: BaseException | str) -> dict[str, Any]:
    """An error row. Status ``invalid`` when a protocol cannot be applied to an object (a ``ValueError`` of the
    prompt simulation, an :class:`~medsamkit.errors.InputError`: the same every time, not retried), else
    ``error`` (retried by the next run)."""
    status = "invalid" if isinstance(e, InputError) and protocol != "*" else "error"
    return {**base, "protocol": protocol, "step": 0, "seed": seed, "status": status, "error": _error_text(e)}


def _attributes(grey: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Object attributes; an attribute that cannot be computed for an odd object does not fail the case."""
    try:
        return object_attributes(grey, gt, spacing)
    except Exception:  # noqa: BLE001
        n = float(gt.sum())
        nan = float("nan")
        out = dict.fromkeys(ATTRIBUTES, nan)
        out.update(size_px=n, size=n * float(np.prod(spacing)), relative_size=n / gt.size)
        return out


def evaluate_case(
    case: Case,
    protocols: Sequence[EvalProtocol | str],
    predictor: Predictor | Segmenter,
    config: EvalConfig | None = None,
    *,
    skip: Callable[[str], bool] | None = None,
    errors: str = "rows",
) -> CaseResult:
    """Evaluate every object of ``case`` under every protocol with a prompted ``predictor`` or a
    :class:`Segmenter` (protocol ``auto`` only). ``skip(protocol_name)`` -> True leaves a protocol out (already
    done in an earlier run).

    errors: "rows" (default) never raises for a bad case or object: the problem becomes an error row
    (``status`` = ``error``), and a case without any labelled object one error row too; "raise" lets the
    exception through (the caller wants the result or the error, e.g. the training side's evaluation), and a
    case without an object to score gives no rows."""
    cfg = config or EvalConfig()
    if errors not in ("rows", "raise"):
        raise OptionError(f"errors must be 'rows' or 'raise', got {errors!r}")
    raising = errors == "raise"
    segmenter = is_segmenter(predictor)
    protos = [parse_eval_protocol(p) for p in protocols]
    _check_protocols(protos, segmenter)
    if skip is not None:
        protos = [p for p in protos if not skip(p.name)]
    result = CaseResult([])
    if not protos:
        return result
    try:
        image, mask = load_case(case)
    except Exception as e:  # noqa: BLE001 - a bad case is a row, not a crash
        if raising:
            raise
        result.rows.append(_error_row(_base_row(case, 0, case.modality, "", -1), "*", None, e))
        return result
    modality = case.modality or image.modality
    if not (mask > 0).any() and not (cfg.objects == "union" and cfg.min_pixels == 0):
        if not raising:
            no_object = "ValueError: the mask has no labelled object"
            result.rows.append(_error_row(_base_row(case, 0, modality, "", -1), "*", None, no_object))
        return result
    labels = target_labels(mask, cfg)
    try:
        if image.is_volume:
            if segmenter and not getattr(predictor, "slices", True):
                raise OptionError(
                    f"case {case.id}: the model takes 2D images; {case.image.name} is 3D {image.spatial_shape} "
                    "(extract 2D slices first)"
                )
            if cfg.mode == "volume":
                if is_segmenter(predictor):
                    raise OptionError("a segmenter is evaluated slice by slice (mode 'slices'), not in volume mode")
                _case_volume(case, image, mask, labels, modality, protos, predictor, cfg, result, raising)
            else:
                _case_slices(case, image, mask, labels, modality, protos, predictor, cfg, result, raising)
        else:
            picture, _ = model_picture(image, cfg.preset, cfg.window, modality)
            spacing = _spacing_array_order(image, 2)
            _picture_objects(
                case,
                picture,
                mask,
                labels,
                modality,
                -1,
                "image",
                spacing,
                protos,
                predictor,
                cfg,
                result,
                cfg.min_pixels,
                raising,
            )
        for row in result.rows:
            row["spacing_unit"] = image.spacing_unit  # what NSD's tolerance, HD95 and ASSD are measured in
    except Exception as e:  # noqa: BLE001
        if raising:
            raise
        if os.environ.get("MEDSAMKIT_DEBUG"):
            traceback.print_exc()
        # a case that fails part-way keeps nothing: its rows would be incomplete, and the next run redoes it
        result.rows = [_error_row(_base_row(case, 0, modality, "", -1), "*", None, e)]
        result.masks = {}
    return result


def target_labels(mask: np.ndarray, cfg: EvalConfig) -> list[int]:
    """The label values > 0 of a case's mask (2D or 3D), ascending; only ``cfg.label`` when one is chosen."""
    labels = [int(v) for v in np.unique(mask) if v > 0]
    return labels if cfg.label is None else [v for v in labels if v == cfg.label]


def picture_objects(
    mask: np.ndarray, labels: Sequence[int], cfg: EvalConfig, min_pixels: int
) -> list[tuple[int, int | None, np.ndarray]]:
    """The objects of one 2D picture (``mask``: its labels ``(H, W)``; ``labels``: the target label values, e.g.
    :func:`target_labels`) as ``cfg.objects`` defines them: ``(label, component index or None, bool (H, W))`` in
    label order (components in raster order, as ``scipy.ndimage.label`` numbers them), each with at least
    ``min_pixels`` pixels (and one, but for the union, whose label is -1 or ``cfg.label``). Fine-tuning samples
    its training objects with this too, so training and evaluation see the same objects."""
    if cfg.objects == "union":
        gt = np.isin(mask, labels) if labels else np.zeros(mask.shape, bool)
        return [(-1 if cfg.label is None else int(cfg.label), None, gt)] if int(gt.sum()) >= min_pixels else []
    least = max(int(min_pixels), 1)
    out: list[tuple[int, int | None, np.ndarray]] = []
    for v in labels:
        m = mask == v
        if cfg.objects == "label":
            if int(m.sum()) >= least:
                out.append((v, None, m))
            continue
        parts = sorted(component_masks(m), key=lambda c: int(np.argmax(c)))  # the first pixel of each, row by row
        out += [(v, k, c) for k, c in enumerate(parts) if int(c.sum()) >= least]
    return out


def _segment(segmenter: Segmenter, picture: np.ndarray) -> np.ndarray:
    out = segmenter.segment(picture)
    m = np.asarray(getattr(out, "mask", out))
    if m.shape != picture.shape[:2]:
        raise InputError(f"the segmenter's mask is {m.shape}, the picture {picture.shape[:2]} (H, W)")
    return m.astype(bool, copy=False)


def _picture_objects(
    case: Case,
    picture: np.ndarray,
    mask: np.ndarray,
    labels: Sequence[int],
    modality: str | None,
    slice_index: int,
    mode: str,
    spacing: tuple[float, ...],
    protos: Sequence[EvalProtocol],
    predictor: Predictor | Segmenter,
    cfg: EvalConfig,
    result: CaseResult,
    min_pixels: int,
    raising: bool,
) -> None:
    """All objects of one 2D picture (uint8 ``(H, W)`` or ``(H, W, 3)``; ``mask`` its labels ``(H, W)``) under
    all protocols: the predictor encodes the picture once (the segmenter segments it once) when it holds an
    object."""
    objects = picture_objects(mask, labels, cfg, min_pixels)
    if not objects:
        return
    prompted: Predictor | None = None  # None: a segmenter, which segments the picture once here
    t0 = time.perf_counter()
    if is_segmenter(predictor):
        segmented = _segment(predictor, picture)
        encode_s = None
    else:
        prompted = predictor
        prompted.set_image(picture)
        encode_s = time.perf_counter() - t0
    segment_s = time.perf_counter() - t0
    grey = _grey(picture)
    for label, part, gt in objects:
        attrs = _attributes(grey, gt, spacing)
        base = {**_base_row(case, label, modality, mode, slice_index), **attrs}
        base["encode_s"] = None if encode_s is None else round(encode_s, 4)
        base["image_shape"] = "x".join(str(s) for s in gt.shape)
        base["spacing"] = ",".join(f"{s:g}" for s in spacing)
        key = f"{label}/{slice_index}" + ("" if part is None else f"#{part}")
        for proto in protos:
            seed = object_seed(cfg.seed, case.dataset, case.id, label, slice_index, proto.name, part)
            t0 = time.perf_counter()
            if prompted is None:
                steps, elapsed = [StepResult(0, segmented, None, {})], segment_s
            else:
                try:
                    prompt = cast(PromptProtocol, proto)  # a predictor runs prompt protocols only (_check_protocols)
                    steps = run_protocol_2d(prompted, gt, prompt, np.random.default_rng(seed))
                except Exception as e:  # noqa: BLE001 - e.g. a prompt that cannot be simulated for this object
                    if raising:
                        raise
                    result.rows.append(_error_row(base, proto.name, seed, e))
                    continue
                elapsed = time.perf_counter() - t0
            _add_steps(result, base, proto, seed, steps, gt, spacing, cfg, elapsed, key)


def _add_steps(
    result: CaseResult,
    base: dict[str, Any],
    proto: EvalProtocol,
    seed: int,
    steps: list[StepResult],
    gt: np.ndarray,
    spacing: tuple[float, ...],
    cfg: EvalConfig,
    elapsed: float,
    key: str,
) -> None:
    for st in steps:
        m = compute_metrics(st.mask, gt, spacing, nsd_tolerance=cfg.nsd_tolerance)
        row = {**base, "protocol": proto.name, "step": st.step, "seed": seed, "status": "ok", "error": ""}
        row.update({k: (bool(m[k]) if k == "empty_pred" else float(m[k])) for k in METRIC_COLUMNS})
        row["predicted_iou"] = None if st.predicted_iou is None else round(float(st.predicted_iou), 5)
        row["uncertainty"] = st.uncertainty
        row["time_s"] = round(elapsed * (st.step + 1) / len(steps), 5)
        row["prompt"] = json.dumps(st.prompt, separators=(",", ":"))
        result.rows.append(row)
        if cfg.save_masks and st.step in (0, steps[-1].step):
            result.masks[f"{key}/{proto.name}/{st.step}"] = st.mask


def _label_counts(mask: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """(labels, Z) pixel counts of each label on each axial slice of a ``(Z, Y, X)`` mask."""
    if not labels:
        return np.zeros((0, mask.shape[0]), np.int64)
    return np.stack([(mask == v).sum(axis=(1, 2)) for v in labels])


def evaluated_slices(mask: np.ndarray, labels: Sequence[int], cfg: EvalConfig) -> np.ndarray:
    """The axial slices of a ``(Z, Y, X)`` mask evaluated in slices mode, ascending: those where the target (the
    ``labels`` together) has at least ``max(min_slice_pixels, min_pixels)`` pixels, at most ``slices_per_case``
    of them, evenly spaced. Their objects are :func:`picture_objects` with that least size."""
    least = cfg.least_slice_pixels
    zs = np.flatnonzero(_label_counts(mask, labels).sum(axis=0) >= least)
    if cfg.slices_per_case is not None and zs.size > cfg.slices_per_case:
        zs = zs[np.unique(np.round(np.linspace(0, zs.size - 1, cfg.slices_per_case)).astype(int))]
    return zs


def _case_slices(
    case: Case,
    image: MedicalImage,
    mask: np.ndarray,
    labels: Sequence[int],
    modality: str | None,
    protos: Sequence[EvalProtocol],
    predictor: Predictor | Segmenter,
    cfg: EvalConfig,
    result: CaseResult,
    raising: bool,
) -> None:
    """The objects of a volume ``(Z, Y, X)`` slice by slice (:func:`evaluated_slices`), each slice's picture as
    :func:`_picture_objects` takes it; which slices were skipped and why goes to ``result.notes``."""
    pictures = volume_pictures(image, cfg.preset, cfg.window, modality)
    spacing = _spacing_array_order(image, 2)
    least = cfg.least_slice_pixels
    counts = _label_counts(mask, labels)
    zs = evaluated_slices(mask, labels, cfg)
    # the slice policy, recorded: within each object's extent along z, slices without the object (no prompt
    # can be simulated there) and slices with fewer than min_slice_pixels pixels are not evaluated
    evaluated = np.zeros(mask.shape[0], bool)
    evaluated[zs] = True
    skipped = {}
    for v, c in zip(labels, counts):
        nz = np.flatnonzero(c)
        inside = c[nz[0] : nz[-1] + 1]
        skipped[str(v)] = {
            "evaluated": int(((c >= least) & evaluated).sum()),
            "empty_in_extent": int((inside == 0).sum()),
            "below_min_pixels": int(((inside > 0) & (inside < least)).sum()),
        }
    result.notes["slices"] = skipped
    for z in zs:
        _picture_objects(
            case, pictures[z], mask[z], labels, modality, int(z), "slice", spacing, protos, predictor, cfg, result, least, raising
        )


def _case_volume(
    case: Case,
    image: MedicalImage,
    mask: np.ndarray,
    labels: Sequence[int],
    modality: str | None,
    protos: Sequence[EvalProtocol],
    predictor: Predictor,
    cfg: EvalConfig,
    result: CaseResult,
    raising: bool,
) -> None:
    """The objects of a volume ``(Z, Y, X)`` in 3D (:func:`~medsamkit.evaluate.prompting.run_protocol_3d`), the
    slice embeddings shared by all objects and protocols."""
    from ..predict.cache import EmbeddingCache

    spacing = _spacing_array_order(image, 3)
    grey = volume_pictures(image, cfg.preset, cfg.window, modality).all().astype(np.float32)
    saved_cache = predictor.cache
    predictor.cache = EmbeddingCache(max_bytes=2 << 30)  # slice embeddings shared by all objects and protocols
    try:
        for label in labels:
            gt = mask == label
            attrs = _attributes(grey, gt, spacing)
            base = {**_base_row(case, label, modality, "volume", -1), **attrs, "encode_s": None}
            base["image_shape"] = "x".join(str(s) for s in gt.shape)
            base["spacing"] = ",".join(f"{s:g}" for s in spacing)
            for proto in protos:
                seed = object_seed(cfg.seed, case.dataset, case.id, label, -1, proto.name)
                t0 = time.perf_counter()
                try:
                    prompt = cast(PromptProtocol, proto)  # a predictor runs prompt protocols only (_check_protocols)
                    steps = run_protocol_3d(
                        predictor, image, gt, prompt, np.random.default_rng(seed), preset=cfg.preset, window=cfg.window
                    )
                except Exception as e:  # noqa: BLE001
                    if raising:
                        raise
                    result.rows.append(_error_row(base, proto.name, seed, e))
                    continue
                _add_steps(result, base, proto, seed, steps, gt, spacing, cfg, time.perf_counter() - t0, f"{label}/-1")
    finally:
        predictor.cache = saved_cache


# -- the single-process run ------------------------------------------------------------------------------------


@dataclass
class EvaluationRun:
    """What :func:`run_evaluation` produced: the output folder, all rows and the summary."""

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    computed: int = 0
    skipped: int = 0


def _clean(v: Any) -> Any:
    """JSON has no NaN: undefined values are stored as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _case_inputs(case: Case) -> dict[str, Any]:
    """What a case's stored rows were computed from; rows of other inputs are never reused."""
    return {"image": str(case.image), "mask": str(case.mask), "channel": case.channel, "modality": case.modality}


def _run_settings(cfg: EvalConfig, predictor: Predictor | Segmenter, model_name: str) -> dict[str, Any]:
    if is_segmenter(predictor):  # a segmenter names itself (model_name, weights_id) when it can
        info = {
            "name": getattr(predictor, "model_name", None) or model_name,
            "weights_id": getattr(predictor, "weights_id", None),
            "pipeline": None,
        }
    else:
        info = model_info(predictor, model_name)
    defaults = EvalConfig()
    config = {
        k: v for k, v in asdict(cfg).items() if k != "save_masks" and not (k in _OPTIONAL_SETTINGS and v == getattr(defaults, k))
    }
    out = {"model": info["name"], "weights_id": info["weights_id"], "pipeline": info["pipeline"], **config}
    engine = getattr(predictor, "engine", None)
    precision = getattr(engine, "precision", "fp32")
    if precision != "fp32":  # int8 or autocast embeddings give other masks: a run never mixes them
        out["encoder_precision"] = precision
    return out


def run_evaluation(
    datasets: Sequence[Dataset | str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    protocols: Sequence[str],
    *,
    model: str = "litemedsam",
    checkpoint: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    threads: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    predictor: Predictor | Segmenter | None = None,
    config: EvalConfig | None = None,
    limit: int | None = None,
    progress: bool = True,
    report: bool = True,
    map_cases: CaseMapper | None = None,
) -> EvaluationRun:
    """Evaluate ``model`` on ``datasets`` (paths or loaded :class:`Dataset`) under ``protocols`` (strings of
    :mod:`medsamkit.prompts.protocol`), writing into ``out_dir`` (see the module docstring). ``limit``: first
    N cases per dataset (``load_dataset(path, modality=...)`` sets a modality the files do not state). Returns
    the rows and the summary; the per-case work is :func:`evaluate_case`.

    device / precision: where and in which arithmetic ``model`` runs (:class:`~medsamkit.predict.Predictor`).
    predictor: the model to evaluate instead of ``model``: a :class:`~medsamkit.predict.Predictor`, or a
    :class:`Segmenter` under the protocols ``["auto"]`` (recorded as ``model``, or its ``model_name``).

    map_cases: computes the cases that are not done yet, e.g. on a cluster
    (:func:`medsamkit.batch.evaluate_mapper`): called once with ``[(case, protocols to compute), ...]`` and the
    config, it yields ``(index into that list, CaseResult)`` in any order, each from
    ``evaluate_case(case, protocols, <a predictor of the same model>, config)``. Every file is written here, as each
    case arrives; rows keep the cases' order. Default: this process, one case after another."""
    from .analysis import summarize
    from .report import write_report

    cfg = config or EvalConfig()
    protos = [parse_eval_protocol(p) for p in protocols]
    if predictor is not None:
        _check_protocols(protos, is_segmenter(predictor))
    if not protos:
        raise OptionError("give at least one prompt protocol")
    names = [p.name for p in protos]
    if len(set(names)) != len(names):
        raise OptionError(f"duplicate prompt protocols: {names}")
    sets = [d if isinstance(d, Dataset) else load_dataset(d) for d in datasets]
    seen_names = [d.name for d in sets]
    dupes = sorted({n for n in seen_names if seen_names.count(n) > 1})
    if dupes:
        raise OptionError(f"several datasets are named {', '.join(dupes)}: results are stored by dataset name, rename one")
    if limit is not None:
        sets = [d.subset(limit=limit) for d in sets]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictor = predictor or Predictor(
        model, checkpoint=checkpoint, backend=backend, threads=threads, device=device, precision=precision
    )
    settings = _run_settings(cfg, predictor, model if checkpoint is None else f"{model} ({checkpoint})")
    run_file = out / "run.json"
    previous = json.loads(run_file.read_text()) if run_file.exists() else None
    if previous is not None:
        check_same_settings(out, "a run", previous.get("settings", {}), settings)
        names_all = list(dict.fromkeys(previous.get("protocols", []) + names))
    else:
        names_all = names
    record = {
        "settings": settings,
        "protocols": names_all,
        "datasets": [{"name": d.name, "root": str(d.root), "layout": d.layout, "cases": len(d)} for d in sets],
        "versions": versions(),
        "started": previous.get("started") if previous else time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(run_file, json.dumps(record, indent=2, default=json_default))  # ASCII (ensure_ascii)

    cases = [c for d in sets for c in d]
    per_case: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [([], {})] * len(cases)  # rows, notes
    computed = skipped = errors = 0
    bar = _bar(len(cases), progress)
    t_run = time.perf_counter()
    tasks: list[tuple[int, list[EvalProtocol], list[dict[str, Any]], dict[str, Any]]] = []
    for i, case in enumerate(cases):
        case_file, _ = case_paths(out, case)
        old_rows: list[dict[str, Any]] = []
        old_notes: dict[str, Any] = {}
        if case_file.exists():
            try:
                stored = json.loads(case_file.read_text())
                if stored.get("inputs") == _case_inputs(case):  # else: other files/channel/modality: recompute
                    old_rows, old_notes = stored["rows"], stored.get("notes", {})
            except (ValueError, KeyError):
                old_rows = []  # a damaged file is recomputed
        if any(r["protocol"] == "*" for r in old_rows):
            old_rows = []  # the case failed as a whole last time: redo it
        done = {r["protocol"] for r in old_rows}
        retry = {r["protocol"] for r in old_rows if r.get("status") == "error"}  # 'invalid' rows are final
        todo = [p for p in protos if p.name not in done or p.name in retry]
        if not todo:
            per_case[i] = ([r for r in old_rows if r["protocol"] in names], old_notes)
            skipped += 1
            if bar is not None:
                bar.update(1)
            continue
        tasks.append((i, todo, old_rows, old_notes))

    def local(jobs: Sequence[tuple[Case, Sequence[EvalProtocol]]], config: EvalConfig) -> Iterator[tuple[int, CaseResult]]:
        for k, (case, todo) in enumerate(jobs):
            yield k, evaluate_case(case, todo, predictor, config)

    mapper = map_cases or local
    for k, res in mapper([(cases[i], todo) for i, todo, _, _ in tasks], cfg):
        i, todo, old_rows, old_notes = tasks[k]
        case = cases[i]
        case_file, mask_file = case_paths(out, case)
        todo_names = {p.name for p in todo}
        keep = [r for r in old_rows if r["protocol"] not in todo_names]
        if any(r["protocol"] == "*" for r in res.rows):
            keep = []
        case_rows = keep + res.rows
        if cfg.save_masks and res.masks:
            save_masks(mask_file, res.masks)
        clean_rows = [{c: _clean(v) for c, v in r.items()} for r in case_rows]
        case_notes = res.notes or old_notes
        payload = json.dumps(
            {"case": case.id, "dataset": case.dataset, "inputs": _case_inputs(case), "rows": clean_rows, "notes": case_notes},
            default=json_default,
        )
        atomic_write_text(case_file, payload)
        per_case[i] = ([r for r in clean_rows if r["protocol"] in names or r["protocol"] == "*"], case_notes)
        computed += 1
        if bar is not None:
            bar.update(1)
            errors += sum(1 for r in per_case[i][0] if r.get("status") != "ok")
            if errors:
                bar.set_postfix(errors=errors)
    rows = [r for case_rows, _ in per_case for r in case_rows]
    notes = [n for _, n in per_case]
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_run
    rows = [{c: r.get(c) for c in COLUMNS} for r in rows]
    write_rows(out, rows)
    summary = summarize(rows, names, nsd_tolerance=cfg.nsd_tolerance)
    slices = [v for n in notes for v in n.get("slices", {}).values()]
    if slices:
        summary["slice_policy"] = {
            "rule": f"3D cases in slices mode: a slice is evaluated when the object has >= {cfg.min_slice_pixels} pixels on it; "
            "empty slices give no prompt to simulate (their false positives count only in volume mode)",
            **{k: sum(s[k] for s in slices) for k in ("evaluated", "empty_in_extent", "below_min_pixels")},
        }
    summary["run"] = {
        "cases": len(cases),
        "computed": computed,
        "skipped": skipped,
        "wall_s": round(wall, 2),
        "settings": settings,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=json_default))
    if report:
        write_report(out, rows, summary, {(c.dataset, c.id): c for c in cases})
    return EvaluationRun(out, rows, summary, computed, skipped)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="case", desc="evaluating")


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    """``results.csv`` (always; :func:`~medsamkit.evaluate.store.write_csv`) and ``results.parquet`` (when pyarrow
    is installed), columns :data:`COLUMNS`."""
    write_csv(out / "results.csv", rows, COLUMNS)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    table = pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in rows])
    atomic_write(out / "results.parquet", lambda p: pq.write_table(table, p))


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read ``results.csv`` back with numbers as floats/ints and empty cells as None."""
    import csv

    ints = {"label", "slice", "step", "seed"}
    text = {"dataset", "case", "label_name", "modality", "mode", "protocol", "status", "error", "spacing_unit"}
    text |= {"image_shape", "spacing", "prompt"}
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if k in text:
                    row[k] = v
                elif v == "":
                    row[k] = None
                elif k in ints:
                    row[k] = int(v)
                elif v in ("True", "False"):
                    row[k] = v == "True"
                else:
                    row[k] = float(v)
            out.append(row)
    return out
