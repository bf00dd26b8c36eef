"""``medsamkit train unet`` and ``medsamkit predict-unet``: a train + predict round trip, and one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medsamkit.cli.main import main
from medsamkit.train import read_split
from tests.conftest import one_line_error
from tests.train.synth import make_dataset


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield


def test_train_and_predict_round_trip(tmp_path, capsys) -> None:
    data, samaug = make_dataset(tmp_path, n=8, mode="add")
    run = tmp_path / "run"
    args = ["train", "unet", str(data), "-o", str(run), "--input", "both", "--samaug-dir", str(samaug)]
    args += ["--size", "32", "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "-q"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "best val Dice" in out.out and "2 epoch(s), completed" in out.out
    assert {"best.pt", "last.pt", "metrics.csv", "config.json", "split.json"} <= {p.name for p in run.iterdir()}
    test_ids = read_split(run / "split.json").test
    cid = test_ids[0]

    mask_path = tmp_path / "mask.png"
    image = data / "images" / f"{cid}.png"
    assert main(["predict-unet", str(run), str(image), "-o", str(mask_path), "--samaug-dir", str(samaug), "-q"]) == 0
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (64, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    side = json.loads((tmp_path / "mask.png.json").read_text())
    assert side["views"] == "raw+samaug" and side["input"] == "both"
    capsys.readouterr()

    # one image without priors: the ensemble needs them, --no-ensemble uses the raw input
    code = main(["predict-unet", str(run), str(image), "-o", str(mask_path)])
    assert "priors" in one_line_error(capsys, code, 2)
    assert main(["predict-unet", str(run), str(image), "-o", str(tmp_path / "raw.png"), "--no-ensemble", "-q"]) == 0
    capsys.readouterr()

    out_csv = tmp_path / "scores.csv"
    assert (
        main(
            ["predict-unet", str(run), "--dataset", str(data), "--samaug-dir", str(samaug), "--split", "test", "-o", str(out_csv)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == test_ids
    assert all(0 <= float(r["dice"]) <= 1 and r["views"] == "raw+samaug" for r in rows)
    mean = np.mean([float(r["dice"]) for r in rows])
    assert f"mean Dice {mean:.4f} over {len(rows)} case(s)" in printed
    assert f"{cid}: Dice" in printed


def test_cli_errors(tmp_path, capsys) -> None:
    data, _ = make_dataset(tmp_path, n=4)
    code = main(["train", "unet", str(data), "-o", str(tmp_path / "r"), "--input", "samaug"])
    assert "--samaug-dir" in one_line_error(capsys, code, 2)
    code = main(["train", "unet", str(data), "-o", str(tmp_path / "r"), "--size", "40"])
    assert "multiple of 16" in one_line_error(capsys, code, 2)
    code = main(["train"])
    assert "name the model" in one_line_error(capsys, code, 2)
    code = main(["predict-unet", str(tmp_path / "r"), "-o", str(tmp_path / "m.png")])
    assert "IMAGE or --dataset" in one_line_error(capsys, code, 2)
    code = main(["predict-unet", str(tmp_path / "nothing"), str(data / "images" / "c00.png"), "-o", str(tmp_path / "m.png")])
    assert "best.pt" in one_line_error(capsys, code, 2)
