"""Batch job kinds: how a manifest row becomes an item (on the driver) and what a worker does with it.

A job is a small picklable object with ``name``, ``model`` (:class:`~.cluster.ModelSpec`), ``columns`` (the
manifest columns it reads), ``settings()`` (what must not change between runs into one folder),
``prepare(item) -> payload`` (driver side; ``ValueError`` for a bad row, which then fails without reaching a
worker) and ``run(item_id, payload, lease) -> record`` (worker side: the same library function the
single-process command uses, then the record written atomically to ``OUT_DIR/records/<id>.json``).

The ``segment`` manifest vocabulary is that of ``medsamkit segment``: ``image`` (required), ``box``
("x0,y0,x1,y1"), ``box3d`` ("x0,y0,z0,x1,y1,z1"), ``point`` ("x,y[,z][,label]"), several of each separated by
``;`` (JSONL: a list, or a list of lists), ``slice``, ``axis``, ``label`` (object names, ``;``-separated),
``preset``, ``window`` ("level,width"), ``world``, ``modality``, ``series``, ``ground_truth`` (a label mask: the
record gets Dice, IoU, NSD, HD95, ASSD per object), ``id`` and ``output``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .._files import atomic_write_text
from ..errors import InputError
from .cluster import DaskEngine, ModelSpec, PredictorLease, error_text
from .manifest import ManifestItem, safe_stem

_CLI_OPTION = re.compile(r"--(box3d|box|point|slice|world|label|overlay|window|preset|axis)\b")


def _json(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _worker_info(lease: PredictorLease) -> dict[str, Any]:
    import os
    import socket

    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "threads": lease.threads}
    try:
        from distributed import get_worker

        info["address"] = get_worker().address
    except (ImportError, ValueError):
        pass
    return info


def write_record(out_dir: str | Path, item_id: str, record: dict[str, Any], folder: str = "records") -> Path:
    """``OUT_DIR/<folder>/<safe id>.json``, atomically."""
    path = Path(out_dir) / folder / f"{safe_stem(item_id)}.json"
    atomic_write_text(path, json.dumps(record, indent=1, default=_json) + "\n")
    return path


# -- manifest values -----------------------------------------------------------------------------------------


def _number_lists(key: str, value: Any, counts: tuple[int, ...], what: str) -> list[list[float]]:
    """``"1,2,3,4"``, ``"1,2,3,4;5,6,7,8"``, ``[1, 2, 3, 4]`` or ``[[1, 2, 3, 4], ...]`` -> lists of floats."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(";") if p.strip()]
        groups: list[Any] = [p.split(",") for p in parts]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        groups = list(value)
    elif isinstance(value, (list, tuple)):
        groups = [value]
    else:
        raise InputError(f"{key}: {value!r} is not {what}")
    out = []
    for g in groups:
        try:
            numbers = [float(v) for v in g]
        except (TypeError, ValueError):
            raise InputError(f"{key}: {value!r} is not {what}") from None
        if len(numbers) not in counts:
            raise InputError(f"{key}: {value!r} is not {what}")
        out.append(numbers)
    return out


def _int(key: str, value: Any) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{key}: {value!r} is not an integer") from None
    if f != int(f):
        raise InputError(f"{key}: {value!r} is not an integer")
    return int(f)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y"):
        return True
    if text in ("0", "false", "no", "n"):
        return False
    raise InputError(f"{key}: {value!r} is not true/false")


def _names(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [p.strip() for p in str(value).split(";")]


def _window(value: Any) -> tuple[float, float]:
    from ..preprocess.intensity import parse_window

    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return parse_window(str(value))


# what a run writes itself into OUT_DIR: a row's own output may not be (or be inside) one of them - the default
# outputs of rows without one (masks/<id>, everything/<id>), the records, the ledger and the summary
RESERVED_OUTPUTS = ("masks", "everything", "records", "batch_records", "ledger.sqlite", "summary.json")


def output_inside(out_dir: str | Path, value: Any) -> Path:
    """A manifest row's ``output``: a path relative to ``out_dir`` that stays inside it (after resolving ``..``
    and symbolic links) and outside what the run writes itself (:data:`RESERVED_OUTPUTS`: default outputs,
    records, the ledger). Absolute paths, ``~``, paths that leave ``out_dir`` and reserved places raise
    :class:`~medsamkit.errors.OutputError`."""
    from ..errors import OutputError

    if not isinstance(value, str) or not value.strip():
        raise OutputError(f"output: expected a file name inside the output folder, got {value!r}")
    rel = Path(value.strip())
    if rel.is_absolute() or value.strip().startswith("~"):
        raise OutputError(f"output {value!r}: give a path relative to the output folder (outputs stay inside OUT_DIR)")
    root = Path(out_dir).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or target == root:
        raise OutputError(f"output {value!r} leads outside the output folder {root}; outputs stay inside OUT_DIR")
    first = target.relative_to(root).parts[0]
    if first in RESERVED_OUTPUTS or first.startswith("ledger.sqlite"):  # also its -wal and -shm files
        raise OutputError(
            f"output {value!r}: {first} in the output folder is the run's own ({', '.join(RESERVED_OUTPUTS)}: default "
            "outputs of rows without one, records, ledger); name the output elsewhere, e.g. outputs/<name>"
        )
    return target


# -- segment ---------------------------------------------------------------------------------------------------


@dataclass
class SegmentJob:
    """``medsamkit batch segment``: :func:`medsamkit.predict.jobs.segment_file` per manifest row. Masks go to
    ``OUT_DIR/masks/<id>.png`` (2D) or ``.nii.gz`` (volumes) unless the row names an ``output`` (relative:
    inside OUT_DIR)."""

    out_dir: str
    model: ModelSpec
    name: ClassVar[str] = "segment"
    columns: ClassVar[tuple[str, ...]] = (
        "id",
        "image",
        "output",
        "box",
        "box3d",
        "point",
        "slice",
        "axis",
        "world",
        "label",
        "preset",
        "window",
        "modality",
        "series",
        "ground_truth",
    )

    def settings(self) -> dict[str, Any]:
        return self.model.settings()

    def prepare(self, item: ManifestItem) -> dict[str, Any]:
        from ..predict.jobs import SegmentRequest, check_request_outputs

        f = item.fields
        image = item.path("image")
        if image is None:
            raise InputError("no image (the 'image' column is empty)")
        output = None if f.get("output") is None else output_inside(self.out_dir, f["output"])
        request = SegmentRequest(
            image=image,
            output=output,
            boxes=_number_lists("box", f["box"], (4,), "X0,Y0,X1,Y1 (four numbers)") if "box" in f else [],
            boxes3d=_number_lists("box3d", f["box3d"], (6,), "X0,Y0,Z0,X1,Y1,Z1 (six numbers)") if "box3d" in f else [],
            points=_number_lists("point", f["point"], (2, 3, 4), "X,Y[,Z][,LABEL]") if "point" in f else [],
            slice_index=_int("slice", f["slice"]) if "slice" in f else None,
            axis=str(f.get("axis", "z")).strip().lower(),
            world=_bool("world", f["world"]) if "world" in f else False,
            names=_names(f["label"]) if "label" in f else [],
            preset=str(f.get("preset", "auto")),
            window=_window(f["window"]) if "window" in f else None,
            modality=str(f["modality"]) if "modality" in f else None,
            series=str(f["series"]) if "series" in f else None,
            ground_truth=item.path("ground_truth"),
        )
        if output is not None:
            check_request_outputs(request, output)  # no input overwritten, a mask format, a writable folder
        return {"request": request, "line": item.line, "row": f}

    def planned_output(self, payload: dict[str, Any]) -> Path | None:
        """The mask path a row names (None: ``OUT_DIR/masks/<id>``, unique per item)."""
        return payload["request"].output

    def error_text(self, e: BaseException) -> str:
        """Errors name manifest columns, not command-line options."""
        return _CLI_OPTION.sub(r"\1", error_text(e))

    def run(self, item_id: str, payload: dict[str, Any], lease: PredictorLease) -> dict[str, Any]:
        from .._runs import versions
        from ..predict.jobs import segment_file

        t0 = time.time()
        record = segment_file(
            lease.get,
            payload["request"],
            model_name=self.model.record_name,
            out_dir=Path(self.out_dir) / "masks",
            stem=safe_stem(item_id),
        )
        full = {
            "id": item_id,
            "job": self.name,
            "manifest": {"line": payload["line"], "row": payload["row"]},
            **record,
            "worker": _worker_info(lease),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        }
        full["record"] = str(write_record(self.out_dir, item_id, full))
        return full


# -- everything mode -------------------------------------------------------------------------------------------


@dataclass
class EverythingJob:
    """``medsamkit batch everything``: :func:`medsamkit.predict.jobs.everything_file` per manifest row
    (columns ``image``, ``id``, ``preset``, ``window``); files go to ``OUT_DIR/everything/<id>_labels.png``,
    ``_masks.json`` and ``_overlay.png``. ``options``: an ``EverythingOptions`` shared by every item."""

    out_dir: str
    model: ModelSpec
    options: Any
    name: ClassVar[str] = "everything"
    columns: ClassVar[tuple[str, ...]] = ("id", "image", "preset", "window")

    def settings(self) -> dict[str, Any]:
        import dataclasses

        return {**self.model.settings(), "options": json.loads(json.dumps(dataclasses.asdict(self.options), default=str))}

    def prepare(self, item: ManifestItem) -> dict[str, Any]:
        f = item.fields
        image = item.path("image")
        if image is None:
            raise InputError("no image (the 'image' column is empty)")
        window = _window(f["window"]) if "window" in f else None
        return {"image": image, "preset": str(f.get("preset", "auto")), "window": window, "line": item.line, "row": f}

    def error_text(self, e: BaseException) -> str:
        return error_text(e)

    def run(self, item_id: str, payload: dict[str, Any], lease: PredictorLease) -> dict[str, Any]:
        from .._runs import versions
        from ..predict.jobs import everything_file

        t0 = time.time()
        summary = everything_file(
            lease.get(),
            payload["image"],
            Path(self.out_dir) / "everything",
            self.options,
            stem=safe_stem(item_id),
            preset=payload["preset"],
            window=payload["window"],
            model_name=self.model.record_name,
        )
        full = {
            "id": item_id,
            "job": self.name,
            "manifest": {"line": payload["line"], "row": payload["row"]},
            **summary,
            "output": summary["labels"],
            "worker": _worker_info(lease),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        }
        full["record"] = str(write_record(self.out_dir, item_id, full))
        return full


# -- SAMAug preparation ----------------------------------------------------------------------------------------


def dataset_items(dataset: Any) -> list[ManifestItem]:
    """The cases of a :class:`medsamkit.data.Dataset` as manifest items (id = case id; absolute
    paths), for jobs that take a dataset instead of a manifest."""
    items = []
    for line, case in enumerate(dataset, start=1):
        fields: dict[str, Any] = {"id": case.id, "image": str(case.image), "mask": str(case.mask), "dataset": case.dataset}
        if case.modality is not None:
            fields["modality"] = case.modality
        if case.channel is not None:
            fields["channel"] = case.channel
        items.append(ManifestItem(case.id, line, fields, Path(dataset.root)))
    return items


@dataclass
class SamaugJob:
    """``medsamkit batch samaug``: :func:`medsamkit.samaug.prepare.prepare_case` per case (a dataset's cases, or
    manifest rows with ``image``, ``mask``, ``id``, ``modality``, ``channel``); ``OUT_DIR`` becomes the same
    folder dataset as ``medsamkit samaug prepare`` writes (priors/, records/, images/, masks/). The batch records
    go to ``OUT_DIR/batch_records/`` (``records/`` holds SAMAug's own)."""

    out_dir: str
    model: ModelSpec
    options: Any
    mode: str = "add"
    alpha: float = 0.5
    thickness: int = 1
    name: ClassVar[str] = "samaug"
    columns: ClassVar[tuple[str, ...]] = ("id", "image", "mask", "dataset", "modality", "channel")

    def settings(self) -> dict[str, Any]:
        import dataclasses

        options = json.loads(json.dumps(dataclasses.asdict(self.options), default=str))
        return {**self.model.settings(), "options": options, "mode": self.mode, "alpha": self.alpha, "thickness": self.thickness}

    def prepare(self, item: ManifestItem) -> dict[str, Any]:
        from ..data import Case

        f = item.fields
        image, mask = item.path("image"), item.path("mask")
        if image is None or mask is None:
            raise InputError("a SAMAug case needs an image and a mask")
        case = Case(
            id=safe_stem(item.id),
            image=image,
            mask=mask,
            dataset=str(f.get("dataset", "manifest")),
            labels={},
            modality=str(f["modality"]).upper() if "modality" in f else None,
            channel=_int("channel", f["channel"]) if "channel" in f else None,
        )
        return {"case": case, "line": item.line, "row": f}

    def error_text(self, e: BaseException) -> str:
        return error_text(e)

    def run(self, item_id: str, payload: dict[str, Any], lease: PredictorLease) -> dict[str, Any]:
        from .._runs import versions
        from ..predict.automatic import AutomaticMaskGenerator
        from ..samaug.prepare import case_paths, prepare_case

        t0 = time.time()
        case = payload["case"]
        generator = AutomaticMaskGenerator(lease.get(), self.options)
        result = prepare_case(generator, case, self.out_dir, self.mode, alpha=self.alpha, thickness=self.thickness)
        paths = case_paths(self.out_dir, case.id, self.mode)
        full = {
            "id": item_id,
            "job": self.name,
            "manifest": {"line": payload["line"], "row": payload["row"]},
            **result,
            "output": str(paths["priors"]),
            "files": {k: str(v) for k, v in paths.items()},
            "model": {"name": self.model.record_name or lease.get().engine.arch.name, "backend": lease.get().engine.backend},
            "worker": _worker_info(lease),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        }
        full["record"] = str(write_record(self.out_dir, item_id, full, folder="batch_records"))
        return full


# -- evaluation on Dask ----------------------------------------------------------------------------------------


def _evaluate_item(case: Any, protocols: Sequence[Any], config: Any, spec: ModelSpec) -> Any:
    """On a worker: :func:`medsamkit.evaluate.runner.evaluate_case` with this process's predictor."""
    from ..evaluate.runner import evaluate_case

    lease = PredictorLease(spec)
    try:
        return evaluate_case(case, protocols, lease.get(), config)
    finally:
        lease.release()


def future_error(fut: Any) -> str:
    """Why a future did not finish, as one line."""
    if fut.status == "cancelled":
        return "CancelledError: the cluster cancelled or lost this item"
    e = fut.exception()
    if type(e).__name__ == "KilledWorker":
        return (
            "KilledWorker: the workers running this item died repeatedly (out of memory, or a crash in a native "
            "library); it is retried by the next run"
        )
    return error_text(e)


def evaluate_mapper(engine: DaskEngine, model: ModelSpec) -> Callable[..., Iterator[tuple[int, Any]]]:
    """A ``map_cases`` for :func:`medsamkit.evaluate.runner.run_evaluation` that computes each case on the Dask
    cluster of ``engine`` (streamed, bounded in-flight). A case lost with its workers becomes an error row,
    which the next run retries; the runner writes every file, as in a single-process run."""

    def map_cases(tasks: Sequence[tuple[Any, Sequence[Any]]], config: Any) -> Iterator[tuple[int, Any]]:
        from ..evaluate.runner import case_error_result

        if not tasks:
            return
        engine.warm(model)
        run = uuid.uuid4().hex[:8]
        keyed = (
            (k, f"evaluate-{safe_stem(case.dataset)}-{safe_stem(case.id)}-{run}", (case, list(protos), config, model))
            for k, (case, protos) in enumerate(tasks)
        )
        for k, fut in engine.stream(_evaluate_item, keyed):
            if fut.status == "finished":
                yield k, fut.result()
            else:
                yield k, case_error_result(tasks[k][0], future_error(fut))

    return map_cases
