"""experiments/interactive_eval.py: the summary of original vs new decoder (on synthetic rows: no model runs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from medsamkit.errors import InputError

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "interactive_eval.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("interactive_eval", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["interactive_eval"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    del sys.modules["interactive_eval"]


# objects: (set, image, label); set s1 has two images, the first with two objects; set s2 one image
OBJECTS = [("s1", "img1", 1), ("s1", "img1", 2), ("s1", "img2", 1), ("s2", "img3", 1)]
CURVES = {
    "old": {
        "box": 0.9,
        "box5": [0.9, 0.8, 0.75, 0.7, 0.7, 0.68],
        "click5": [0.02, 0.1, 0.2, 0.25, 0.3, 0.3],
    },
    "new": {
        "box": 0.895,
        "box5": [0.895, 0.92, 0.93, 0.94, 0.945, 0.95],
        "click5": [0.65, 0.75, 0.8, 0.82, 0.84, 0.85],
    },
}


def rows_of(model: str, script, drop_step: int | None = None) -> list[dict]:
    c = CURVES[model]
    rows = []
    for ds, case, label in OBJECTS:
        shift = 0.4 if ds == "s2" else 0.0  # box-started values are lower on s2: pooled and set means then differ
        base = {"dataset": ds, "case": case, "label": label, "slice": -1, "modality": "US", "status": "ok"}

        def add(protocol: str, step: int, dice: float, base: dict = base) -> None:
            rows.append({**base, "protocol": protocol, "step": step, "dice": dice, "nsd": dice})

        add("box", 0, c["box"] - shift)
        for key in ("box5", "box5_nomask"):
            for k, d in enumerate(c["box5"]):
                if k != drop_step:
                    add(script.PROTOCOLS[key], k, d - shift)
        for k, d in enumerate(c["click5"]):
            add(script.PROTOCOLS["click5"], k, d)
    return rows


def test_summary_of_two_models(script):
    s = script.summarize_models({"old": rows_of("old", script), "new": rows_of("new", script)}, resamples=500)
    assert s["models"] == ["old", "new"] and s["reference"] == "old" and s["sets"] == ["s1", "s2"]
    assert s["objects"] == {"old": 4, "new": 4}
    old = s["metrics"]["old"]
    assert old["pooled"]["box.dice"]["mean"] == pytest.approx((3 * 0.9 + 0.5) / 4)
    assert old["mean_of_sets"]["box.dice"]["mean"] == pytest.approx((0.9 + 0.5) / 2)
    assert old["s1"]["box.dice"]["n"] == 3 and old["s1"]["box.dice"]["units"] == 2  # bootstrap units are images
    assert old["pooled"]["box5.dsc_auc"]["mean"] == pytest.approx((3 * 2.89 + 1.29) / 4, abs=1e-4)  # clicks 1..5
    assert old["pooled"]["click5.dice0"]["mean"] == pytest.approx(0.02)
    diff = s["differences"]["new"]["pooled"]
    assert diff["box.dice"]["mean"] == pytest.approx(-0.005) and diff["click5.dice5"]["mean"] == pytest.approx(0.55)
    assert "old" not in s["differences"]

    def verdicts(model: str, agg: str) -> list:
        return [t["pass"] for t in s["targets"][model][agg]]

    # box no worse, box + 5 >= box + 0.03, centre click >= 0.6, click + 5 >= 0.8, box+5 and click+5 never fall
    assert verdicts("new", "mean_of_sets") == [True] * 6 and verdicts("new", "pooled") == [True] * 6
    assert verdicts("old", "mean_of_sets") == [None, False, False, False, False, True]
    gain = s["targets"]["old"]["pooled"][1]
    assert gain["value"] == pytest.approx(0.68 - 0.9) and gain["need"] == ">= 0.03"
    table = script.markdown_table(s)
    assert "| box: Dice | 0.800 [" in table and "new − old" in table
    assert "-0.220 FAIL" in table and "0.850 pass" in table and "reference" in table


def test_summary_refuses_rows_with_a_missing_step(script):
    with pytest.raises(InputError, match=r"lacks step\(s\) 3"):
        script.summarize_models({"old": rows_of("old", script, drop_step=3)}, resamples=10)


def test_model_list(script, tmp_path):
    adapter = tmp_path / "adapter.pt"
    adapter.write_bytes(b"")
    specs = script.parse_models("litemedsam", [f"ft={adapter}"])
    assert [(s.name, s.registry, s.adapter) for s in specs] == [("litemedsam", "litemedsam", None), ("ft", None, adapter)]
    with pytest.raises(SystemExit, match="NAME=PATH"):
        script.parse_models("litemedsam", [str(adapter)])
    with pytest.raises(SystemExit, match="does not exist"):
        script.parse_models("litemedsam", [f"ft={tmp_path / 'none.pt'}"])
    with pytest.raises(SystemExit, match="must differ"):
        script.parse_models("litemedsam,litemedsam", [])
    with pytest.raises(SystemExit, match="no model"):
        script.parse_models("", [])
