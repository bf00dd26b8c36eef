"""Scoring a fine-tuning run: :func:`evaluate_finetune` (the run and, zero-shot, its base model on a split,
through :func:`medsamkit.evaluate.runner.evaluate_case`), :func:`zero_shot_rows` (a base model alone),
:func:`summarize_rows` and :func:`write_evaluation` (``RUN_DIR/<split>.csv`` / ``.json``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from ..._files import atomic_write_text
from ...data import Dataset
from ...errors import MissingFileError, OptionError
from ...models.adapted import (
    build_base_for,
    load_adapted,
    read_adapter,
)
from ...predict.autoseg import AutoSegmenter, base_predictor
from ..data import SPLITS, each_case, open_dataset, split_part
from .options import FROZEN_ENCODER_MODES, OBJECTS, SUMMARY_FILE, FinetuneOptions, evaluation_config

if TYPE_CHECKING:
    from ...models.autosam import AutoSam
    from ...predict.predictor import Predictor

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- evaluation


def _run_doc(run: Path) -> dict[str, Any]:
    f = run / SUMMARY_FILE
    if not f.is_file():
        raise MissingFileError(f"{f} not found: {run} is not a finished `medsamkit finetune` run")
    return json.loads(f.read_text(encoding="utf-8"))


#: the columns of an evaluation table (:func:`write_evaluation`: ``RUN_DIR/test.csv``)
RESULT_COLUMNS = ("case", "image", "slice", "object", "label", "pixels", "dice", "iou", "zero_shot_dice", "zero_shot_iou")


def _object_rows(rows: Sequence[Mapping[str, Any]], base_rows: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The runner's rows (one per object) as this module's rows, numbered per image; ``base_rows``: the same
    objects scored with the base model (``zero_shot_dice``, ``zero_shot_iou``)."""
    if base_rows is not None and len(base_rows) != len(rows):
        raise RuntimeError(f"the base model was scored on {len(base_rows)} objects, the run's model on {len(rows)}")
    out: list[dict[str, Any]] = []
    numbers: dict[str, int] = {}
    for i, r in enumerate(rows):
        image = r["case"] if r["slice"] < 0 else f"{r['case']}@{r['slice']}"
        numbers[image] = numbers.get(image, 0) + 1
        row = {
            "case": r["case"],
            "image": image,
            "slice": int(r["slice"]),
            "object": numbers[image],
            "label": int(r["label"]),
            "pixels": int(r["size_px"]),
            "dice": float(r["dice"]),
            "iou": float(r["iou"]),
        }
        if base_rows is not None:
            z = base_rows[i]
            if (z["case"], z["slice"], z["label"], z["size_px"]) != (r["case"], r["slice"], r["label"], r["size_px"]):
                raise RuntimeError(f"object {i} of {r['case']}: the base model's rows do not match the run's")
            row["zero_shot_dice"], row["zero_shot_iou"] = float(z["dice"]), float(z["iou"])
        out.append(row)
    return out


class _SharedEncoder:
    """A run's :class:`~medsamkit.predict.Predictor` given the base model's embeddings (``encoder.embed``) for the
    pictures the evaluation runner sets: for modes whose image encoder is the base's, so that scoring the run and
    the base model encodes each picture once. Everything else is the run's predictor."""

    def __init__(self, predictor: Predictor, encoder: Predictor) -> None:
        self._predictor = predictor
        self._encoder = encoder

    def set_image(self, image: np.ndarray) -> None:
        self._predictor.set_embedding(*self._encoder.embed(image))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


def evaluate_finetune(
    run_dir: str | os.PathLike[str],
    dataset: Dataset | str | os.PathLike[str] | None = None,
    split: str = "test",
    *,
    zero_shot: bool = True,
    prompt: str = "box",
    backend: str = "torch",
    base: str | os.PathLike[str] | nn.Module | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Score a finetune run on a split at the original resolution: one row per object (prompted modes: the
    object's tight box, or with ``prompt="point"`` its centre point; AutoSAM: no prompt, one row per image against
    the union of the target labels), in image order. The objects are those the run was trained on
    (:func:`evaluation_config`); every case goes through :func:`medsamkit.evaluate.runner.evaluate_case` (protocol
    ``box`` or ``point:centre:select=first``; AutoSAM as a segmenter under ``auto``).

    Row: ``case``, ``image`` (``case`` or ``case@z``), ``slice``, ``object`` (1, 2, ... per image), ``label``
    (AutoSAM: -1, or the run's label), ``pixels``, ``dice``, ``iou`` and, with ``zero_shot``, ``zero_shot_dice`` /
    ``zero_shot_iou`` of the base model (at the run's input size) given the same prompt (for AutoSAM rows: the
    tight box of the whole target). dataset: default the run's. split: "train", "val", "test" (``split.json``) or
    "all". backend: engine of both models ("torch": exactly the training numerics).
    base: the base model when the run was trained on an in-memory one (see :func:`load_adapted`).
    """
    from ...evaluate.runner import AUTO, evaluate_case
    from ...predict import Predictor

    if split not in SPLITS:
        raise OptionError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if prompt not in ("box", "point"):
        raise OptionError(f"prompt must be 'box' or 'point', got {prompt!r}")
    run = Path(run_dir)
    doc = _run_doc(run)
    opts = FinetuneOptions.from_dict(doc["options"])
    ds = open_dataset(dataset if dataset is not None else doc["dataset"])
    cases = split_part(run, ds, split)
    file = read_adapter(run)
    adapted = load_adapted(run, base)
    autosam = opts.mode == "autosam"
    threads = torch.get_num_threads()
    model: Any = (  # a segmenter (AutoSAM) or a prompted predictor
        AutoSegmenter(cast("AutoSam", adapted), backend=backend, threads=threads)  # an autosam file loads an AutoSam
        if autosam
        else Predictor(adapted, backend=backend, threads=threads)
    )
    protocol = "box" if prompt == "box" else "point:centre:select=first"  # the single-mask output, as trained
    base_pred = None
    if zero_shot:
        base_model = build_base_for(file, base)
        base_pred = base_predictor(base_model, file["base"], backend) if base is None else Predictor(base_model, backend=backend)
        if opts.mode in FROZEN_ENCODER_MODES:  # the run's encoder is the base's: each picture is encoded once for both
            from ...predict.cache import EmbeddingCache

            base_pred.cache = EmbeddingCache(max_bytes=256 << 20)
            if autosam:
                model.predictor.cache = base_pred.cache  # the same base weights, the same cache keys
            else:
                model = _SharedEncoder(model, base_pred)
    cfg = evaluation_config(opts)
    rows: list[dict[str, Any]] = []
    for case in each_case(cases, progress):
        mine = evaluate_case(case, [AUTO if autosam else protocol], model, cfg, errors="raise").rows
        theirs = None
        if base_pred is not None:  # the same objects, the base model given a box (AutoSAM) or the same prompt
            theirs = evaluate_case(case, ["box" if autosam else protocol], base_pred, cfg, errors="raise").rows
        rows += _object_rows(mine, theirs)
    return rows


def zero_shot_rows(
    dataset: Dataset | str | os.PathLike[str],
    ids: Sequence[str] | None = None,
    *,
    model: str | os.PathLike[str] | nn.Module = "litemedsam",
    objects: str = "label",
    label: int | None = None,
    union: bool = False,
    backend: str = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Box-prompted Dice of a base model on a dataset's cases (all, or ``ids``): one row per object (``objects``
    "label" or "component"; ``union``: one object per image, the union of the target labels, label -1), as
    :func:`evaluate_finetune` rows (``dice``, ``iou``), through :func:`medsamkit.evaluate.runner.evaluate_case`
    (protocol ``box``)."""
    from ...evaluate.runner import EvalConfig, evaluate_case
    from ...predict import Predictor

    if objects not in OBJECTS:
        raise OptionError(f"unknown objects {objects!r}; use 'label' or 'component'")
    ds = open_dataset(dataset)
    cases = ds.subset(ids).cases if ids is not None else ds.cases
    pred = Predictor(model, backend=backend, threads=torch.get_num_threads())
    cfg = EvalConfig(objects="union" if union else objects, label=label, save_masks=False)
    rows = []
    for case in cases:
        case_rows = _object_rows(evaluate_case(case, ["box"], pred, cfg, errors="raise").rows, None)
        rows += case_rows
        if progress:
            log.info("%s: %d object(s)", case.id, len(case_rows))
    return rows


def write_evaluation(run_dir: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], split: str = "test") -> dict[str, Any]:
    """Write the rows of :func:`evaluate_finetune` to ``RUN_DIR/<split>.csv`` (columns :data:`RESULT_COLUMNS`,
    floats with six decimals; :func:`medsamkit.evaluate.store.write_csv`) and their summary to
    ``RUN_DIR/<split>.json`` (``split``, ``objects`` and :func:`summarize_rows`); returns the summary."""
    from ...evaluate.store import write_csv

    run = Path(run_dir)
    write_csv(run / f"{split}.csv", rows, RESULT_COLUMNS, decimals=6, lineterminator="\n")
    summary = summarize_rows(rows)
    atomic_write_text(run / f"{split}.json", json.dumps({"split": split, "objects": len(rows), **summary}, indent=2) + "\n")
    return summary


def summarize_rows(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("dice", "zero_shot_dice")) -> dict[str, Any]:
    """``{key: {"mean", "sd", "n"}}`` over the rows that have the key (sd: sample standard deviation, ddof 1)."""
    out: dict[str, Any] = {}
    for k in keys:
        vals = np.array([float(r[k]) for r in rows if k in r and r[k] is not None], dtype=np.float64)
        if vals.size:
            out[k] = {
                "mean": float(vals.mean()),
                "sd": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                "n": int(vals.size),
            }
    return out
