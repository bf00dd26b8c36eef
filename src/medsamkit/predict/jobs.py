"""File jobs: one image file in, its outputs written atomically, a record (a JSON-ready dict) back.

:func:`segment_file` (prompted segmentation: one label mask and its sidecar) is the whole of ``medsamkit
segment`` after argument parsing; :func:`everything_file` (everything mode: a label image, the records and an
overlay; the algorithm is :mod:`medsamkit.predict.automatic`) is the whole of ``medsamkit everything``.
``medsamkit batch segment`` / ``batch everything`` run the same functions once per manifest row on Dask
workers, so a batch output equals the CLI's.

Coordinates are voxel/pixel indices: x = column (NIfTI i), y = row (j), z = slice (k); boxes are inclusive
``(x0, y0, x1, y1)`` / ``(x0, y0, z0, x1, y1, z1)``. A 2D box on a volume is in the frame of ``axis``: (x, y) on
z slices, (x, z) on y slices, (y, z) on x slices.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._runs import json_default, model_info
from ..errors import FileInputError, OptionError, OutputError
from ..io.formats import split_suffix
from .predictor import Predictor, check_prompts

if TYPE_CHECKING:
    from ..io.image import MedicalImage
    from .automatic import EverythingOptions  # PyTorch and SciPy: imported when everything mode runs

AXIS_FRAME = {"z": "x,y", "y": "x,z", "x": "y,z"}


class SegmentRequestError(OptionError):
    """A request that cannot run as given (prompts that do not fit the input, a wrong output type): a usage
    error, as opposed to a file that cannot be read or a prompt outside the image."""


@dataclass
class SegmentRequest:
    """What to segment and where to write it (the vocabulary of ``medsamkit segment``).

    image: input file or DICOM series folder. output: mask file (``.png`` for 2D; ``.nii.gz``, ``.nii``,
    ``.nrrd``, ``.mha`` or ``.dcm`` for volumes); None lets :func:`segment_file` choose one.
    boxes: 2D boxes ``[x0, y0, x1, y1]`` (a 2D image, or ``slice_index`` of a volume along ``axis``), one object
    each. boxes3d: ``[x0, y0, z0, x1, y1, z1]``, one object each. points: ``[x, y]`` / ``[x, y, label]`` on 2D
    images, ``[x, y, z]`` / ``[x, y, z, label]`` on volumes (label 1 foreground, 0 background; all points are
    one object). world: box3d/points are RAS millimetres instead of voxel indices. names: one name per object,
    in order. preset/window: intensity mapping (window = (level, width), overrides preset). modality/series:
    override the file's modality; pick a DICOM series. overlay: also write an overlay PNG (2D).
    ground_truth: a label mask on the input's grid; object i is scored against its label i (a mask with a single
    non-zero value counts as label 1). resample: a volume whose slices are not evenly spaced (a DICOM series with
    missing slices) is resampled onto a uniform grid first (:func:`medsamkit.io.geometry.resample_uniform`);
    without it such a volume can only be written as DICOM-SEG.
    """

    image: Path
    output: Path | None = None
    boxes: list[list[float]] = field(default_factory=list)
    boxes3d: list[list[float]] = field(default_factory=list)
    points: list[list[float]] = field(default_factory=list)
    slice_index: int | None = None
    axis: str = "z"
    world: bool = False
    names: list[str] = field(default_factory=list)
    preset: str = "auto"
    window: tuple[float, float] | None = None
    modality: str | None = None
    series: str | None = None
    overlay: Path | None = None
    ground_truth: Path | None = None
    resample: bool = False

    def __post_init__(self) -> None:
        self.image = Path(self.image)
        self.output = None if self.output is None else Path(self.output)
        self.overlay = None if self.overlay is None else Path(self.overlay)
        self.ground_truth = None if self.ground_truth is None else Path(self.ground_truth)
        if self.axis not in AXIS_FRAME:
            raise SegmentRequestError(f"axis must be one of z, y, x; got {self.axis!r}")
        if not (self.boxes or self.boxes3d or self.points):
            raise SegmentRequestError("give at least one --box, --box3d or --point")

    def prompts(self) -> dict[str, Any]:
        """The prompts as given (for records)."""
        out: dict[str, Any] = {}
        for k in ("boxes", "boxes3d", "points", "names"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        if self.slice_index is not None:
            out["slice"] = self.slice_index
        if self.boxes or self.slice_index is not None:
            out["axis"] = self.axis
        if self.world:
            out["world"] = True
        return out


def default_output(image: Any, out_dir: str | os.PathLike[str], stem: str) -> Path:
    """``out_dir/<stem>.png`` for a 2D image, ``out_dir/<stem>.nii.gz`` for a volume."""
    return Path(out_dir) / f"{stem}{'.nii.gz' if image.is_volume else '.png'}"


def segment_file(
    predictor: Predictor | Callable[[], Predictor],
    request: SegmentRequest,
    *,
    model_name: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    stem: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Read ``request.image``, segment it from the request's prompts and write the label mask (uint8 on the
    input's grid: label i for the i-th object; points only: one object, label 1) with its JSON sidecar, both
    atomically (temp file + rename).

    predictor: a :class:`Predictor`, or a function returning one; it is called only once the input has been
    read and the prompts checked, so a bad request costs no model load. model_name: the name recorded (default:
    the architecture's). out_dir/stem: where the mask goes when ``request.output`` is None
    (:func:`default_output`; stem defaults to the image's name without suffix).
    Returns the record: ``image, output, kind ("2d" | "volume"), model, intensity, prompts, objects`` (label,
    name, pixels/voxels, predicted IoU; volumes: key slice and slice range), ``metrics`` per object when
    ``request.ground_truth`` is given, ``timings`` (seconds: read, model, segment, write, total).
    Raises :class:`SegmentRequestError` for prompts that do not fit the input, ``ValueError`` (e.g.
    ``ImageReadError``) for unreadable files or prompts outside the image.
    """
    from ..io import read_image
    from ..io.geometry import resample_uniform
    from ..io.writers import check_mask_fits

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if request.output is not None:
        check_request_outputs(request, request.output)  # before reading: a bad output costs nothing
    image = read_image(request.image, series_uid=request.series, modality=request.modality)
    if request.resample:
        image = resample_uniform(image)
    timings["read_s"] = time.perf_counter() - t0
    output = request.output
    if output is None:
        if out_dir is None:
            raise OptionError("segment_file: give request.output or out_dir")
        output = default_output(image, out_dir, stem or default_stem(request.image))
        check_request_outputs(request, output)
    check_mask_fits(image, output)  # the format fits what was read: before the model loads and anything runs
    truth = None if request.ground_truth is None else _read_truth(request.ground_truth, image)
    if image.is_volume:
        record = _segment_volume(predictor, request, image, output, model_name, progress, timings, t0, truth)
    else:
        record = _segment_2d(predictor, request, image, output, model_name, timings, truth)
    timings["total_s"] = time.perf_counter() - t0
    record["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return record


def check_request_outputs(request: SegmentRequest, output: Path) -> None:
    """Refuse, before any work, a mask output (and ``--overlay``) that would overwrite an input (the image, a file
    of its DICOM folder, the ground truth; symlinks and hard links count) or each other, that has no mask format,
    or whose folder cannot be written (:func:`medsamkit.io.writers.check_mask_output`)."""
    from ..io.writers import check_mask_output

    extra = {}
    if request.overlay is not None:
        if request.overlay.suffix.lower() != ".png":
            raise OutputError(f"--overlay {request.overlay}: the overlay is a PNG picture; name it .png")
        extra["--overlay"] = request.overlay
    check_mask_output(output, [request.image, request.ground_truth], extra=extra)


def _fmt(values: list[float]) -> str:
    return ",".join(f"{float(v):g}" for v in values)


def _get_predictor(predictor: Predictor | Callable[[], Predictor], timings: dict[str, float]) -> Predictor:
    t = time.perf_counter()
    p = predictor if isinstance(predictor, Predictor) else predictor()
    timings["model_s"] = time.perf_counter() - t
    return p


def _names(request: SegmentRequest, n: int) -> dict[int, str]:
    if len(request.names) > n:
        raise SegmentRequestError(f"{len(request.names)} --label names for {n} object(s)")
    return {i + 1: name for i, name in enumerate(request.names)}


def _segment_2d(
    predictor: Predictor | Callable[[], Predictor],
    request: SegmentRequest,
    image: MedicalImage,
    output: Path,
    model_name: str | None,
    timings: dict[str, float],
    truth: np.ndarray | None,
) -> dict[str, Any]:
    from ..io import write_mask
    from ..preprocess.picture import model_picture
    from .segment import segment_2d

    if request.boxes3d or request.slice_index is not None or request.world:
        raise SegmentRequestError("--box3d, --slice and --world are for volumes; this input is a 2D image")
    if output.suffix.lower() != ".png":
        raise SegmentRequestError(f"-o {output}: 2D masks are written as .png")
    points = []
    for v in request.points:
        v = [float(x) for x in v]
        if len(v) not in (2, 3):
            raise SegmentRequestError("2D points are X,Y or X,Y,LABEL")
        if len(v) == 3 and v[2] not in (0.0, 1.0):
            raise SegmentRequestError(f"point {_fmt(v)}: LABEL must be 1 (foreground) or 0 (background)")
        points.append(v if len(v) == 3 else v + [1.0])
    boxes = [[float(x) for x in b] for b in request.boxes]
    picture, preset_info = model_picture(image, request.preset, request.window)
    names = _names(request, len(boxes) if boxes else 1)  # one object per box; points only: one object
    # every prompt checked before the model loads (the predictor checks again)
    if len(boxes) > 255:
        raise SegmentRequestError(f"{len(boxes)} boxes: a uint8 label mask holds at most 255 objects")
    if points and len(boxes) > 1:
        raise SegmentRequestError("points refine a single box; with several boxes, run them separately")
    xy = [p[:2] for p in points] or None
    check_prompts(picture.shape[:2], xy, [p[2] for p in points] if points else None, boxes or None)
    model = _get_predictor(predictor, timings)
    t = time.perf_counter()
    result = segment_2d(model, picture, boxes=boxes, points=points)
    timings["segment_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_mask(
        output,
        result.labels,
        image,
        names=names,
        metadata={
            "model": model_name or model.engine.arch.name,
            "backend": model.engine.backend,
            "intensity": preset_info,
            "boxes_xyxy_inclusive": boxes,
            "points_xy_label": points,
            "predicted_iou": [round(float(s), 4) for s in result.scores],
        },
    )
    if request.overlay is not None:
        from ..io import write_png
        from ..viz import overlay_masks

        write_png(request.overlay, overlay_masks(picture, result.labels, boxes=boxes, points=points))
    timings["write_s"] = time.perf_counter() - t
    objects = [
        {"label": i, "name": names.get(i), "pixels": int(m.sum()), "predicted_iou": round(float(s), 4)}
        for i, (m, s) in enumerate(zip(result.masks, result.scores), start=1)
    ]
    record = _record(request, image, output, "2d", model_info(model, model_name), preset_info, objects)
    if truth is not None:
        record["metrics"] = _metrics(result.labels, truth, image, len(objects))
    return record


def _to_voxel(image: MedicalImage, values: list[float], world: bool) -> list[float]:
    if not world:
        return values
    return [float(v) for v in np.rint(image.world_to_voxel(np.asarray(values, float)))]


def _segment_volume(
    predictor: Predictor | Callable[[], Predictor],
    request: SegmentRequest,
    image: MedicalImage,
    output: Path,
    model_name: str | None,
    progress: bool,
    timings: dict[str, float],
    t0: float,
    truth: np.ndarray | None,
) -> dict[str, Any]:
    from ..io import write_mask
    from .volume import ObjectPrompt, check_volume_prompts, segment_volume

    if request.overlay is not None:
        raise SegmentRequestError("--overlay is for 2D inputs")
    prompts: list[ObjectPrompt] = []
    if request.world:
        from ..io.geometry import check_uniform

        check_uniform(image, "--world coordinates")
    if request.boxes:
        if request.slice_index is None:
            raise SegmentRequestError("a --box on a volume needs --slice (or use --box3d)")
        if request.world:
            raise SegmentRequestError("--world applies to --box3d and --point; give the 2D --box in voxels")
        for b in request.boxes:
            prompts.append(ObjectPrompt(label=len(prompts) + 1, box=list(b), slice_index=request.slice_index))
    for b in request.boxes3d:
        b = [float(v) for v in b]
        if len(b) != 6:
            raise SegmentRequestError(f"box3d {_fmt(b)}: expected X0,Y0,Z0,X1,Y1,Z1")
        if request.world:
            a, c = _to_voxel(image, b[:3], True), _to_voxel(image, b[3:], True)
            b = [min(a[0], c[0]), min(a[1], c[1]), min(a[2], c[2]), max(a[0], c[0]), max(a[1], c[1]), max(a[2], c[2])]
        prompts.append(ObjectPrompt(label=len(prompts) + 1, box3d=b))
    if request.points:
        if prompts:
            raise SegmentRequestError("on volumes, --point makes its own object; do not mix it with --box/--box3d")
        pts = []
        for v in request.points:
            v = [float(x) for x in v]
            if len(v) not in (3, 4):
                raise SegmentRequestError(f"volume points need X,Y,Z[,LABEL]; got {_fmt(v)}")
            label = v[3] if len(v) == 4 else 1.0
            pts.append(_to_voxel(image, v[:3], request.world) + [label])
        prompts.append(ObjectPrompt(label=1, points=pts))
    if len(prompts) > 255:
        raise SegmentRequestError("at most 255 objects fit in a uint8 label mask")
    names = _names(request, len(prompts))
    for p in prompts:
        p.name = names.get(p.label)
    check_volume_prompts(prompts, image.spatial_shape, request.axis)  # before the model loads
    model = _get_predictor(predictor, timings)
    t = time.perf_counter()
    seg = segment_volume(
        image, prompts, model, axis=request.axis, preset=request.preset, window=request.window, progress=progress
    )
    timings["segment_s"] = time.perf_counter() - t
    intensity = seg.preset.describe() if seg.preset else None
    meta = {
        "model": model_name or model.engine.arch.name,
        "backend": model.engine.backend,
        "intensity": intensity,
        "axis": request.axis,
        "axis_frame_of_2d_boxes": AXIS_FRAME[request.axis],
        "prompts": [{k: v for k, v in p.__dict__.items() if v is not None} for p in prompts],
        "objects": seg.objects,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    t = time.perf_counter()
    write_mask(output, seg.labels, image, names=names or {p.label: f"object {p.label}" for p in prompts}, metadata=meta)
    timings["write_s"] = time.perf_counter() - t
    record = _record(request, image, output, "volume", model_info(model, model_name), intensity, seg.objects)
    if truth is not None:
        record["metrics"] = _metrics(seg.labels, truth, image, len(prompts))
    return record


def _record(
    request: SegmentRequest,
    image: MedicalImage,
    output: Path,
    kind: str,
    model: dict[str, Any],
    intensity: dict[str, Any] | None,
    objects: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "image": str(request.image),
        "output": str(output),
        "kind": kind,
        "grid_xyz": list(reversed(image.spatial_shape)),
        "spacing_xyz": [float(s) for s in image.spacing],
        "modality": image.modality,
        "model": model,
        "intensity": intensity,
        "prompts": request.prompts(),
        "objects": objects,
    }


def _read_truth(gt_path: Path, image: MedicalImage) -> np.ndarray:
    """The ground-truth label mask on ``image``'s grid (its spatial shape; the first channel of an RGB mask),
    read and checked before the model loads, like the volume's grid for surface metrics in mm."""
    from ..io import read_image

    if image.is_volume:
        from ..io.geometry import check_uniform

        check_uniform(image, "surface metrics in mm (NSD, HD95)")
    gt = np.asarray(read_image(gt_path).array)
    shape = tuple(image.spatial_shape)
    if gt.ndim == len(shape) + 1 and gt.shape[-1] in (3, 4) and not image.is_volume:
        gt = gt[..., 0]
    if gt.shape != shape:
        raise FileInputError(f"ground truth {gt_path.name}: grid {gt.shape} differs from the image's {shape}")
    return gt


def _metrics(labels: np.ndarray, gt: np.ndarray, image: MedicalImage, n_objects: int) -> dict[str, Any]:
    """Per object i: Dice, IoU, NSD (2 mm, or 2 px without spacing), HD95, ASSD against ground-truth label i
    (``gt``: from :func:`_read_truth`)."""
    from ..metrics import compute_metrics

    values = [int(v) for v in np.unique(gt) if v != 0]
    if len(values) == 1:
        gt = (gt != 0).astype(np.uint8)
        values = [1]
    spacing = tuple(reversed([float(s) for s in image.spacing]))[-labels.ndim :]
    out: dict[str, Any] = {}
    for label in range(1, n_objects + 1):
        if label not in values:
            out[str(label)] = None  # no ground truth for this object
            continue
        m = compute_metrics(labels == label, gt == label, spacing)
        out[str(label)] = {k: (bool(v) if isinstance(v, (bool, np.bool_)) else round(float(v), 5)) for k, v in m.items()}
    return out


def default_stem(path: str | os.PathLike[str]) -> str:
    """A file's name without its (medical) suffix: ``ct.nii.gz`` -> ``ct`` (:func:`medsamkit.io.formats.split_suffix`)."""
    return split_suffix(path)[0]


def everything_file(
    predictor: Predictor | Callable[[], Predictor],
    image_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: EverythingOptions | None = None,
    stem: str | None = None,
    preset: str = "auto",
    window: tuple[float, float] | None = None,
    model_name: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Everything mode on one 2D image file; writes (atomically) into ``out_dir``:

    - ``<stem>_labels.png``: uint16 label image (record i -> label i + 1, records sorted by area, smaller masks
      painted over larger ones);
    - ``<stem>_masks.json``: the records (masks as COCO RLE, column-major like pycocotools), the options, the
      model, the intensity mapping, counters and timings;
    - ``<stem>_overlay.png``: the image with each mask tinted and outlined.

    predictor: a :class:`Predictor`, or a function returning one (called after the input is read and the
    outputs checked, so a bad request costs no model load). Outputs that would overwrite the input, or that
    cannot be written, are refused before any work (:class:`~medsamkit.errors.OutputError`).
    Returns a summary (paths, number of masks, timings). The same function serves the CLI and batch jobs;
    ``progress`` shows a progress bar over the prompts on stderr."""
    from .._files import atomic_write_text, check_outputs, check_writable
    from .._version import __version__
    from ..io import read_image
    from ..io.raster import write_png
    from ..preprocess.picture import model_picture
    from ..viz.overlay import overlay_masks
    from .automatic import AutomaticMaskGenerator, EverythingOptions

    t_start = time.perf_counter()
    path = Path(image_path)
    out = Path(out_dir)
    stem = stem or default_stem(path)
    opts = options or EverythingOptions()
    labels_path, json_path, overlay_path = (out / f"{stem}_{s}" for s in ("labels.png", "masks.json", "overlay.png"))
    outputs = {"the label image": labels_path, "the records": json_path, "the overlay": overlay_path}
    check_outputs(outputs, [path])  # before any work: no input is overwritten
    for what, p in outputs.items():
        check_writable(p, what)
    t0 = time.perf_counter()
    image = read_image(path)
    picture, intensity = model_picture(image, preset, window)
    read_s = time.perf_counter() - t0
    rle_opts = EverythingOptions(**{**asdict(opts), "output_mode": "rle"})
    if not isinstance(predictor, Predictor):
        predictor = predictor()  # loaded only once the input is read and the outputs checked
    gen = AutomaticMaskGenerator(predictor, rle_opts)
    t0 = time.perf_counter()
    if progress:
        from tqdm import tqdm

        with tqdm(total=None, unit="prompt", desc="everything", leave=False) as bar:

            def step(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = gen.generate(picture, progress=step)
    else:
        result = gen.generate(picture)
    gen_s = time.perf_counter() - t0
    hw = picture.shape[:2]
    labels = result.label_image(hw)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    write_png(labels_path, labels)  # write_png is atomic
    write_png(overlay_path, overlay_masks(picture, labels))
    doc = {
        "image": str(path),
        "shape": list(hw),
        "model": model_info(predictor, model_name),
        "options": asdict(rle_opts),
        "intensity": intensity,
        "medsamkit": __version__,
        "stats": result.stats,
        "records": result.records,
    }
    atomic_write_text(json_path, json.dumps(doc, default=json_default))
    write_s = time.perf_counter() - t0
    return {
        "image": str(path),
        "masks": len(result.records),
        "labels": str(labels_path),
        "records": str(json_path),
        "overlay": str(overlay_path),
        "timings": {
            "read_s": round(read_s, 4),
            "generate_s": round(gen_s, 4),
            "write_s": round(write_s, 4),
            "total_s": round(time.perf_counter() - t_start, 4),
        },
        "stats": result.stats,
    }
