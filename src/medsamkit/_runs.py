"""A run's output folder: its settings and the resume guard, the versions and model records, JSON of numpy values.

Every command that writes a folder it can resume into (``evaluate``, ``samaug prepare``, ``batch``, ``train``,
``finetune``) records the settings it ran with and refuses to continue with other ones
(:func:`check_same_settings`, :func:`changed_settings`); its records name the library versions
(:func:`versions`) and the model (:func:`model_info`), and are written with :func:`json_default` for numpy
values and paths.

Settings are compared as they are stored: two values are the same when, passed through JSON, they are equal
(``==``) or give the same JSON text; so a tuple equals the list it was saved as, ``1`` equals ``1.0``, a NaN
equals a NaN and dictionary order does not matter.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import MedsamkitError, OptionError

if TYPE_CHECKING:
    from .predict.predictor import Predictor

# the libraries whose versions decide a run's numbers (when installed)
VERSIONED_LIBRARIES = ("onnxruntime", "torch")


def _stored(value: Any) -> Any:
    """``value`` as a settings file gives it back (numpy values and paths by :func:`json_default`, anything
    else that JSON cannot hold as its ``str``)."""

    def default(o: Any) -> Any:
        try:
            return json_default(o)
        except TypeError:
            return str(o)

    return json.loads(json.dumps(value, default=default))


def _same(a: Any, b: Any) -> bool:
    a, b = _stored(a), _stored(b)
    return a == b or json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """The keys whose values differ between ``old`` (as recorded) and ``new`` (compared as stored in JSON; a key
    missing on one side is ``None``). ``keys``: the keys to compare, in the order given; default: every key
    of either mapping, sorted."""
    names = sorted(set(old) | set(new)) if keys is None else list(keys)
    return [k for k in names if not _same(old.get(k), new.get(k))]


def check_same_settings(
    folder: str | Path,
    what: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    keys: Iterable[str] | None = None,
    error: type[MedsamkitError] = OptionError,
) -> None:
    """The resume guard: raise ``error`` ("``folder`` holds ``what`` with other settings (the keys); use another
    output folder") when ``new`` differs from the recorded ``old`` (:func:`changed_settings`)."""
    changed = changed_settings(old, new, keys)
    if changed:
        raise error(f"{folder} holds {what} with other settings ({', '.join(changed)}); use another output folder")


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] | None = None) -> str:
    """The differing settings (:func:`changed_settings`) as ``"key old -> new; ..."`` (``repr`` of each value),
    or ``""`` when none differ: for messages that refuse to resume from a checkpoint."""
    return "; ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed_settings(old, new, keys))


def versions() -> dict[str, str]:
    """Versions of medsamkit, Python, numpy and, when installed, of :data:`VERSIONED_LIBRARIES`: what a
    record needs to say which code made its numbers."""
    from ._version import __version__

    v = {"medsamkit": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in VERSIONED_LIBRARIES:  # from the installed metadata: no import of torch just to name it
        try:
            v[mod] = importlib.metadata.version(mod)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            pass
    return v


def model_info(predictor: Predictor, name: str | None = None) -> dict[str, Any]:
    """The model of a record: ``name`` (default: the architecture's), ``backend``, ``weights_id`` and the pixel
    ``pipeline``."""
    engine = predictor.engine
    return {
        "name": name or engine.arch.name,
        "backend": engine.backend,
        "weights_id": engine.weights_id,
        "pipeline": predictor.transform.name,
    }


def json_default(o: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy arrays as lists, numpy scalars as Python numbers, paths as
    strings; anything else raises ``TypeError``."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
