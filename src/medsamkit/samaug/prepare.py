"""Preparing a SAMAug dataset: everything mode on every image, prior maps, augmented images, cached by content.

``prepare_dataset(dataset, OUT, generator)`` writes, for each 2D case ``<id>`` of a dataset:

* ``OUT/priors/<id>.npz``: float32 ``seg_prior`` and ``boundary_prior`` ``(H, W)`` on the source image's grid,
  ``n_masks`` and the case's content ``key`` (:func:`medsamkit.samaug.priors.save_priors`); written last, so a
  prior file with the right key means the case is complete;
* ``OUT/records/<id>.json``: the everything-mode records (masks as COCO RLE), their stats and the key;
* ``OUT/images/<id>.png``: ``"add"`` mode: the augmented uint8 RGB image; ``"stack"`` mode: the uint8 picture
  the model saw (grey or RGB), and ``OUT/stacked/<id>.npy`` the float32 ``(H, W, 3|5)`` stacked input
  (:func:`~medsamkit.samaug.priors.augment_image`). A 5-channel float array fits no image format that the
  dataset loaders read, so it lives beside the dataset rather than in ``images/``;
* ``OUT/masks/<id>.png``: the ground-truth labels (uint8, or 16-bit PNG above 255),

so that ``OUT`` is itself a ``folder`` dataset (``load_dataset(OUT)``) in both modes. ``OUT/samaug.json`` holds
the run's settings, counts, failures and per-case keys.

The picture the model sees is the case's image through the ``auto`` intensity preset of
:mod:`medsamkit.preprocess.intensity` (uint8 pictures unchanged, CT soft-tissue window, percentile otherwise),
as in evaluation. The content key is the sha256 of: the image file's bytes, the case's channel, the generator's
options (JSON), the model (architecture, weights id, pixel pipeline), the mode, alpha (add mode), the boundary
thickness, :data:`~medsamkit.samaug.priors.FORMAT_VERSION` and ``key_extra``. A case whose prior file holds
the same key is not recomputed (its ``images/`` and ``masks/`` files are rewritten from the stored priors if
missing, or if the mask file changed); so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._files import atomic_write, atomic_write_text, check_outputs
from .._runs import changed_settings, json_default
from ..data import Case, Dataset, load_case, load_dataset
from ..errors import OptionError, OutputError
from ..io.raster import write_png
from ..predict.unet import (
    DEFAULT_ALPHA,
    FORMAT_VERSION,
    Priors,
    augment_image,
    is_grey,
    load_priors,
    save_priors,
)
from ..predict.unet import SAMAUG_MODES as MODES
from ..preprocess.image2d import to_rgb_uint8
from ..preprocess.picture import model_picture
from .priors import priors_from_records

if TYPE_CHECKING:
    from ..predict.automatic import AutomaticMaskGenerator


def priors_for_image(generator: AutomaticMaskGenerator, image: np.ndarray, thickness: int = 1) -> Priors:
    """Run everything mode once on ``image`` (``(H, W)`` or ``(H, W, 3|4)``, as the generator accepts) and
    build both prior maps on its ``(H, W)`` grid. The records are kept in ``Priors.records``; ``stats`` adds
    everything mode's counters (``everything``) and the wall time (``seconds``)."""
    t0 = time.perf_counter()
    result = generator.generate(image)
    hw = np.asarray(image).shape[:2]
    priors = priors_from_records(result.records, hw, thickness)
    priors.records = list(result.records)
    priors.stats = {**priors.stats, "everything": dict(result.stats), "seconds": round(time.perf_counter() - t0, 4)}
    return priors


def model_identity(generator: AutomaticMaskGenerator) -> dict[str, str]:
    """What identifies the generator's model in a content key: architecture name, weights id (sha256 of the
    weights for registry models) and pixel pipeline."""
    predictor = generator.predictor
    engine = predictor.engine
    return {"arch": engine.arch.name, "weights_id": str(engine.weights_id), "pipeline": predictor.transform.name}


def _options_dict(generator: AutomaticMaskGenerator) -> dict[str, Any]:
    opts = generator.options
    return dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) else dict(vars(opts))


def _check_settings(mode: str, alpha: float, thickness: int) -> None:
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise OptionError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if isinstance(thickness, bool) or not isinstance(thickness, int) or thickness < 1:
        raise OptionError(f"thickness must be an integer >= 1, got {thickness!r}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def case_key(
    image_sha256: str,
    generator: AutomaticMaskGenerator,
    mode: str,
    *,
    alpha: float = DEFAULT_ALPHA,
    thickness: int = 1,
    channel: int | None = None,
    key_extra: Any = None,
) -> str:
    """The content key (sha256 hex) of one case's preparation; see the module docstring. ``key_extra``: any
    JSON-serialisable value the caller wants mixed in (e.g. a batch job's own version)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "image_sha256": image_sha256,
        "channel": channel,
        "options": _options_dict(generator),
        "model": model_identity(generator),
        "mode": mode,
        "alpha": float(alpha) if mode == "add" else None,
        "thickness": int(thickness),
        "extra": key_extra,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_out_dir(out_dir: str | os.PathLike[str], dataset_root: str | os.PathLike[str]) -> None:
    """Refuse an output folder that is the dataset's own folder (or its images/ or masks/): the prepared copies
    would land among, or over, the source cases (:class:`~medsamkit.errors.OutputError`)."""
    out, root = Path(out_dir).resolve(), Path(dataset_root).resolve()
    if out in (root, root / "images", root / "masks"):
        raise OutputError(f"-o {out_dir} is the dataset folder {dataset_root} (or its images/masks); write to another folder")


def case_paths(out_dir: str | os.PathLike[str], case_id: str, mode: str = "add") -> dict[str, Path]:
    """Output files of one case: ``priors``, ``records``, ``image``, ``mask`` and (stack mode) ``stacked``."""
    out = Path(out_dir)
    paths = {
        "priors": out / "priors" / f"{case_id}.npz",
        "records": out / "records" / f"{case_id}.json",
        "image": out / "images" / f"{case_id}.png",
        "mask": out / "masks" / f"{case_id}.png",
    }
    if mode == "stack":
        paths["stacked"] = out / "stacked" / f"{case_id}.npy"
    return paths


def _records_json(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from ..predict.masks import rle_encode

    out = []
    for r in records:
        seg = r.get("segmentation")
        if isinstance(seg, np.ndarray):
            r = {**r, "segmentation": rle_encode(seg)}
        out.append(r)
    return out


def _load_picture(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 picture the model sees (:func:`medsamkit.preprocess.picture.model_picture`, ``auto`` preset:
    ``(H, W)`` or ``(H, W, 3)``, alpha dropped) and the ``(H, W)`` label mask."""
    image, mask = load_case(case)
    if image.is_volume:
        raise OptionError(
            f"case {case.id}: SAMAug preparation handles 2D images; {case.image.name} is 3D {image.spatial_shape} "
            "(extract 2D slices first)"
        )
    return model_picture(image, modality=case.modality)[0], mask


def _write_mask(path: Path, mask: np.ndarray) -> None:
    m = np.asarray(mask)
    if m.size and int(m.max()) > 255:
        if int(m.max()) > 65535:
            raise OptionError(f"labels up to {int(m.max())} do not fit a 16-bit PNG mask")
        from PIL import Image

        def write(tmp: Path) -> None:
            Image.fromarray(m.astype(np.uint16)).save(tmp, format="PNG")

        atomic_write(path, write)
    else:
        write_png(path, m.astype(np.uint8))


def _write_derived(
    paths: dict[str, Path], picture: np.ndarray, mask: np.ndarray, priors: Priors, mode: str, alpha: float
) -> None:
    """The files made from the picture and the priors without the model: images/, stacked/ (stack), masks/."""
    if mode == "add":
        write_png(paths["image"], augment_image(picture, priors.seg, priors.boundary, "add", alpha))
    else:
        grey = is_grey(picture)
        rgb = to_rgb_uint8(picture)
        write_png(paths["image"], rgb[..., 0] if grey else rgb)
        stacked = augment_image(picture, priors.seg, priors.boundary, "stack")
        atomic_write(paths["stacked"], lambda tmp: _save_npy(tmp, stacked))
    _write_mask(paths["mask"], mask)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # through a handle: np.save would add ".npy" to the temporary name
        np.save(f, array, allow_pickle=False)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prepare_case(
    generator: AutomaticMaskGenerator,
    case: Case,
    out_dir: str | os.PathLike[str],
    mode: str = "add",
    *,
    alpha: float = DEFAULT_ALPHA,
    thickness: int = 1,
    key_extra: Any = None,
) -> dict[str, Any]:
    """Prepare one 2D case into ``out_dir`` (files in the module docstring), or find it already prepared.

    Returns ``{"case", "status": "computed" | "cached", "n_masks", "seconds", "key"}``. Raises for a case that
    cannot be prepared (unreadable image or mask: ``ImageReadError``; 3D image, DICOM series, bad settings:
    :class:`~medsamkit.errors.OptionError`; an output that would replace the case's own image or mask:
    :class:`~medsamkit.errors.OutputError`) before writing anything. The prior file is written last: after an
    interrupted write its key is still the old one (or absent), so the next call recomputes the case. One generator holds one
    predictor's image state: give each thread or process its own."""
    _check_settings(mode, alpha, thickness)
    t0 = time.perf_counter()
    paths = case_paths(out_dir, case.id, mode)
    check_outputs({f"the case's {k} file": v for k, v in paths.items()}, [case.image, case.mask])  # never over an input
    if case.image.is_dir():
        raise OptionError(f"case {case.id}: {case.image.name} is a DICOM series (3D); SAMAug preparation handles 2D images")
    key = case_key(
        _sha256_file(case.image), generator, mode, alpha=alpha, thickness=thickness, channel=case.channel, key_extra=key_extra
    )
    mask_sha = _sha256_file(case.mask)
    stored: Priors | None = None
    if paths["priors"].is_file():
        try:
            old, old_key = load_priors(paths["priors"])
            stored = old if old_key == key else None
        except ValueError:
            stored = None  # a damaged prior file is recomputed
    if stored is not None:
        meta = _read_json(paths["records"])
        outputs_ok = all(p.is_file() for name, p in paths.items() if name not in ("priors", "records"))
        if not outputs_ok or meta is None or meta.get("mask_sha256") != mask_sha:
            picture, mask = _load_picture(case)
            _write_derived(paths, picture, mask, stored, mode, alpha)
            # a lost records file cannot be rebuilt without the model: keep what identifies the outputs
            meta = meta if meta is not None else {"case": case.id, "key": key, "image": str(case.image), "records": None}
            meta["mask_sha256"] = mask_sha
            atomic_write_text(paths["records"], json.dumps(meta, default=json_default))
        return _case_result(case, "cached", stored, key, t0)

    picture, mask = _load_picture(case)
    priors = priors_for_image(generator, picture, thickness)
    meta = {
        "case": case.id,
        "key": key,
        "image": str(case.image),
        "mask_sha256": mask_sha,
        "shape": list(priors.shape),
        "mode": mode,
        "format_version": FORMAT_VERSION,
        "stats": priors.stats,
        "records": _records_json(priors.records),
    }
    atomic_write_text(paths["records"], json.dumps(meta, default=json_default))
    _write_derived(paths, picture, mask, priors, mode, alpha)
    save_priors(paths["priors"], priors, key)  # last: its key marks the case complete
    return _case_result(case, "computed", priors, key, t0)


def _case_result(case: Case, status: str, priors: Priors, key: str, t0: float) -> dict[str, Any]:
    """What :func:`prepare_case` returns for a ``"computed"`` or ``"cached"`` case (``seconds``: since ``t0``)."""
    return {
        "case": case.id,
        "status": status,
        "n_masks": priors.n_masks,
        "seconds": round(time.perf_counter() - t0, 4),
        "key": key,
    }


def _error_text(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def prepare_dataset(
    dataset: Dataset | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    generator: AutomaticMaskGenerator,
    mode: str = "add",
    progress: bool = True,
    *,
    alpha: float = DEFAULT_ALPHA,
    thickness: int = 1,
    key_extra: Any = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Prepare every case of ``dataset`` (a :class:`Dataset` or a dataset folder; ``limit``: the first N cases)
    with :func:`prepare_case`. A case that fails (corrupt image, 3D, ...) becomes a failure entry and the others
    go on. Writes and returns the summary ``OUT/samaug.json``: settings (mode, alpha, thickness, options,
    model), ``counts`` (cases, computed, cached, failed, masks), ``failures`` [{case, error}], ``cases``
    {id: {status, n_masks, seconds, key}} and ``wall_s``. ``OUT`` prepared with another mode, alpha or
    thickness raises :class:`~medsamkit.errors.OptionError` (use another folder)."""
    _check_settings(mode, alpha, thickness)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    if limit is not None:
        ds = ds.subset(limit=limit)
    out = Path(out_dir)
    check_out_dir(out, ds.root)
    summary_file = out / "samaug.json"
    previous = _read_json(summary_file) if summary_file.exists() else None
    if previous is not None:
        settings = {"mode": mode, "alpha": float(alpha), "thickness": thickness}
        recorded = [k for k in settings if previous.get(k) is not None]  # older summaries may lack one
        changed = changed_settings(previous, settings, recorded)
        if changed:
            was = ", ".join(f"{k}={previous.get(k)!r}" for k in changed)
            raise OptionError(f"{out} holds a SAMAug preparation with {was}; use another output folder")
    out.mkdir(parents=True, exist_ok=True)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ds), unit="case", desc="samaug")
    rows: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, str]] = []
    t_run = time.perf_counter()
    try:
        for case in ds:
            try:
                res = prepare_case(generator, case, out, mode, alpha=alpha, thickness=thickness, key_extra=key_extra)
                rows[case.id] = {k: res[k] for k in ("status", "n_masks", "seconds", "key")}
            except Exception as e:  # noqa: BLE001 - one bad case is recorded, the others go on
                failures.append({"case": case.id, "error": _error_text(e)})
                rows[case.id] = {"status": "failed", "n_masks": None, "seconds": None, "key": None}
            if bar is not None:
                bar.update(1)
                if failures:
                    bar.set_postfix(failed=len(failures))
    finally:
        if bar is not None:
            bar.close()
    statuses = [r["status"] for r in rows.values()]
    summary = {
        "format_version": FORMAT_VERSION,
        "dataset": {"name": ds.name, "root": str(ds.root), "layout": ds.layout, "skipped_files": len(ds.skipped)},
        "mode": mode,
        "alpha": float(alpha),
        "thickness": thickness,
        "options": _options_dict(generator),
        "model": model_identity(generator),
        "backend": getattr(generator.predictor.engine, "backend", None),
        "counts": {
            "cases": len(rows),
            "computed": statuses.count("computed"),
            "cached": statuses.count("cached"),
            "failed": statuses.count("failed"),
            "masks": sum(r["n_masks"] or 0 for r in rows.values()),
        },
        "failures": failures,
        "cases": rows,
        "wall_s": round(time.perf_counter() - t_run, 3),
    }
    atomic_write_text(summary_file, json.dumps(summary, indent=2, default=json_default))
    return summary
