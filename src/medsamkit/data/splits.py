"""Case splits: a deterministic, disjoint train / val / test split of a dataset's case ids, and a training run's
``split.json`` (written once, read back on resume, so a resumed run trains and validates on the same cases)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._files import atomic_write_text
from ..errors import FileInputError, OptionError


class Split(NamedTuple):
    """Case ids of the train / val / test parts (each sorted)."""

    train: list[str]
    val: list[str]
    test: list[str]


def split_cases(
    ids: Sequence[str],
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    folds: int | None = None,
    fold: int | None = None,
) -> Split:
    """Deterministic disjoint split: the sorted unique ids shuffled by numpy's ``default_rng(seed)``; the first
    ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` to val, the rest to train (a
    non-zero fraction gets at least one case).

    folds, fold: k-fold by case instead of one test fraction: the shuffled ids are cut into ``folds`` consecutive
    parts (part i = shuffled ``[round(n i / folds), round(n (i + 1) / folds))``), part ``fold`` (0-based) is the
    test set and ``test_fraction`` is not used; val is the first ``round(n * val_fraction)`` of the other ids in
    shuffled order, the rest train. The test parts of folds 0..folds-1 with one seed are disjoint and cover every
    id once; fold 0 gives the same split as ``test_fraction = 1 / folds`` when ``n / folds`` is whole. fold None
    means 0. OptionError (a ValueError) when a fraction is outside [0, 1), folds < 2 or > n, fold outside
    [0, folds), fold without folds, or nothing is left to train on."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise OptionError(f"{name} must be in [0, 1), got {f!r}")
    if isinstance(ids, str):
        raise OptionError("ids must be a sequence of case ids, not one string")
    unique = sorted(set(ids))
    if len(unique) != len(list(ids)):
        raise OptionError("case ids must be unique")
    n = len(unique)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [unique[i] for i in order]
    if folds is None:
        if fold is not None:
            raise OptionError(f"fold {fold!r} needs folds (k-fold by case): give folds too, or leave fold unset")
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        test, rest = shuffled[:n_test], shuffled[n_test:]
    else:
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= n:
            raise OptionError(f"folds must be an integer from 2 to the number of cases ({n}), got {folds!r}")
        fold = 0 if fold is None else fold
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < folds:
            raise OptionError(f"fold must be an integer from 0 to {folds - 1}, got {fold!r}")
        lo, hi = round(n * fold / folds), round(n * (fold + 1) / folds)
        test, rest = shuffled[lo:hi], shuffled[:lo] + shuffled[hi:]
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if len(rest) - n_val < 1:
        what = f"fold {fold} of {folds}" if folds is not None else f"test {test_fraction}"
        raise OptionError(f"{n} case(s) cannot be split into val {val_fraction} and {what} with at least one training case")
    val, train = rest[:n_val], rest[n_val:]
    return Split(sorted(train), sorted(val), sorted(test))


def write_split(path: str | os.PathLike[str], split: Split, **info: Any) -> Path:
    """Write ``split`` (and ``info``, e.g. seed and fractions) as JSON atomically."""
    doc = {**info, "train": split.train, "val": split.val, "test": split.test}
    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def run_split(
    run_dir: str | os.PathLike[str],
    dataset: Any,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    resume: bool = False,
    write: bool = True,
    folds: int | None = None,
    fold: int | None = None,
) -> Split:
    """The split of a training run: on ``resume`` the run's ``split.json`` when present (OptionError when it names
    a case ``dataset`` lacks, or was made with another seed, fraction or fold than asked), else :func:`split_cases`
    of ``dataset.ids`` (``folds``/``fold``: k-fold by case). A new split is saved with ``write`` (rank 0; the run
    folder is created) with the dataset root, seed, fractions and fold; a resumed one is left as it is."""
    run = Path(run_dir)
    split_file = run / "split.json"
    asked: dict[str, Any] = {"seed": seed, "val_fraction": val_fraction}
    asked.update({"test_fraction": test_fraction} if folds is None else {"folds": folds, "fold": fold or 0})
    if resume and split_file.is_file():
        split, saved = _read_split_doc(split_file)
        missing = sorted(set(split.train + split.val + split.test) - set(dataset.ids))
        if missing:
            raise OptionError(f"{split_file} names case(s) that {dataset.root} lacks: {', '.join(missing[:5])}")
        differ = [f"{k} {saved[k]!r} (asked {v!r})" for k, v in asked.items() if k in saved and saved[k] != v]
        if ("folds" in saved) != ("folds" in asked):
            differ.append(f"k-fold {'on' if 'folds' in saved else 'off'} (asked {'on' if 'folds' in asked else 'off'})")
        if differ:
            raise OptionError(
                f"{split_file} was made with another split: {'; '.join(differ)}; resume with the run's own split "
                "options, or start a new run folder"
            )
        return split
    split = split_cases(dataset.ids, val_fraction, test_fraction, seed=seed, folds=folds, fold=fold)
    if write:
        run.mkdir(parents=True, exist_ok=True)
        write_split(split_file, split, dataset=str(dataset.root), **asked)
    return split


def read_split(path: str | os.PathLike[str]) -> Split:
    """A split written by :func:`write_split`."""
    return _read_split_doc(Path(path))[0]


def _read_split_doc(p: Path) -> tuple[Split, dict[str, Any]]:
    """The split in ``p`` and the options saved beside it (seed, fractions, folds/fold; older files lack some);
    FileInputError when the file cannot be read as a split."""
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        split = Split(list(doc["train"]), list(doc["val"]), list(doc["test"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise FileInputError(f"cannot read the split file {p}: {e}") from e
    return split, {k: v for k, v in doc.items() if k not in ("train", "val", "test", "dataset")}
