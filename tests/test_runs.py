"""The run-folder helpers: the resume guard, versions, model records and JSON of numpy values."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medsamkit._runs import changed_settings, check_same_settings, describe_changes, json_default, model_info, versions
from medsamkit.errors import OptionError, OutputError


def test_same_settings_are_accepted_as_stored() -> None:
    new = {"seed": 0, "window": (-160.0, 240.0), "options": {"b": 1, "a": 2}, "model": "litemedsam"}
    old = json.loads(json.dumps(new))  # as read back from the settings file: lists, not tuples
    check_same_settings("out", "a run", old, new)
    assert changed_settings(old, new) == []
    assert changed_settings({"x": {"a": 1, "b": 2}}, {"x": {"b": 2, "a": 1}}) == []  # order does not matter
    assert changed_settings({"x": float("nan")}, {"x": float("nan")}) == []
    assert changed_settings({"x": 1.0, "n": 8}, {"x": 1, "n": np.int64(8)}) == []


def test_changed_settings_are_refused_naming_the_keys() -> None:
    old = {"seed": 0, "mode": "slices", "gone": 1}
    new = {"seed": 1, "mode": "slices", "added": 2}
    assert changed_settings(old, new) == ["added", "gone", "seed"]  # sorted, missing keys count
    with pytest.raises(
        OptionError, match=r"^out holds a run with other settings \(added, gone, seed\); use another output folder$"
    ):
        check_same_settings("out", "a run", old, new)
    with pytest.raises(OutputError, match=r"other settings \(seed\)"):
        check_same_settings(Path("out"), "a batch segment job", old, new, keys=["mode", "seed"], error=OutputError)


def test_only_the_given_keys_are_compared_in_their_order() -> None:
    old = {"thickness": 1, "alpha": 0.5, "mode": "add", "other": 1}
    new = {"mode": "stack", "alpha": 0.5, "thickness": 2, "other": 2}
    assert changed_settings(old, new, keys=["mode", "alpha", "thickness"]) == ["mode", "thickness"]
    assert describe_changes(old, new, ["thickness", "mode"]) == "thickness 1 -> 2; mode 'add' -> 'stack'"
    assert describe_changes(old, {**old}, ["thickness"]) == ""


def test_json_default_handles_numpy_and_paths() -> None:
    doc = {
        "int": np.int64(3),
        "float": np.float32(0.5),
        "bool": np.bool_(True),
        "array": np.arange(4, dtype=np.uint8).reshape(2, 2),
        "path": Path("a") / "b.png",
    }
    assert json.loads(json.dumps(doc, default=json_default)) == {
        "int": 3,
        "float": 0.5,
        "bool": True,
        "array": [[0, 1], [2, 3]],
        "path": str(Path("a") / "b.png"),
    }
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        json.dumps({"x": object()}, default=json_default)


def test_versions_and_model_info() -> None:
    v = versions()
    assert v["medsamkit"] and v["python"] and v["numpy"] == np.__version__
    engine = SimpleNamespace(arch=SimpleNamespace(name="litemedsam"), backend="onnxruntime", weights_id="abc")
    predictor = SimpleNamespace(engine=engine, transform=SimpleNamespace(name="medsam-1024"))
    info = model_info(predictor)  # type: ignore[arg-type]
    assert info == {"name": "litemedsam", "backend": "onnxruntime", "weights_id": "abc", "pipeline": "medsam-1024"}
    assert list(info) == ["name", "backend", "weights_id", "pipeline"]  # the order records are written in
    assert model_info(predictor, "mine")["name"] == "mine"  # type: ignore[arg-type]
