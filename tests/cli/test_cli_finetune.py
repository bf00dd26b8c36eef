"""``medsamkit finetune`` (one epoch on a tiny dataset, LiteMedSAM), ``segment --adapter`` and ``autoseg``."""

from __future__ import annotations

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


def test_finetune_then_segment_and_autoseg(tmp_path, capsys) -> None:
    data, _ = make_dataset(tmp_path, n=5, size=(64, 64))
    cache = tmp_path / "cache"
    run = tmp_path / "decoder"
    common = ["--epochs", "1", "--batch-size", "2", "--cache-embeddings", str(cache), "-q"]
    assert main(["finetune", str(data), "-o", str(run), "--mode", "decoder", "--evaluate", *common]) == 0
    out = capsys.readouterr().out
    assert "best val Dice" in out and "1 epoch(s), completed" in out and "test Dice" in out and "zero-shot" in out
    names = {p.name for p in run.iterdir()}
    assert {"adapter.pt", "best.pt", "last.pt", "metrics.csv", "config.json", "split.json", "finetune.json", "test.csv"} <= names
    doc = json.loads((run / "finetune.json").read_text())
    assert doc["options"]["mode"] == "decoder" and doc["parameters"]["trainable"] > 0 and doc["epochs"] == 1
    n_cached = len(list(cache.glob("*.npz")))
    assert n_cached == 4  # train + val pictures
    test_id = read_split(run / "split.json").test[0]
    image = data / "images" / f"{test_id}.png"

    mask_path = tmp_path / "mask.png"
    args = ["segment", str(image), "--box", "8,8,50,50", "--adapter", str(run / "adapter.pt"), "-o", str(mask_path), "-q"]
    assert main(args) == 0
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1} and mask.any()
    side = json.loads((tmp_path / "mask.png.json").read_text())
    assert side["model"] == "litemedsam+decoder" and side["backend"] == "torch"

    auto = tmp_path / "autosam"
    assert main(["finetune", str(data), "-o", str(auto), "--mode", "autosam", "--autosam-input", "embedding", *common]) == 0
    capsys.readouterr()
    assert len(list(cache.glob("*.npz"))) == n_cached  # the same pictures: nothing encoded again
    seg_path = tmp_path / "auto.png"
    assert main(["autoseg", str(image), "--autosam", str(auto), "-o", str(seg_path), "-q"]) == 0
    seg = np.asarray(Image.open(seg_path))
    assert seg.shape == (64, 64) and set(np.unique(seg)) <= {0, 1}
    assert json.loads((tmp_path / "auto.png.json").read_text())["model"] == "litemedsam+autosam"

    # each run is used by the command made for it
    code = main(["segment", str(image), "--box", "8,8,50,50", "--adapter", str(auto / "adapter.pt"), "-o", str(mask_path)])
    assert "autoseg" in one_line_error(capsys, code, 2)
    code = main(["autoseg", str(image), "--autosam", str(run), "-o", str(seg_path)])
    assert "not an AutoSAM run" in one_line_error(capsys, code, 2)


def test_finetune_usage_errors(tmp_path, capsys) -> None:
    data, _ = make_dataset(tmp_path, n=4, size=(32, 32))
    code = main(["finetune", str(data), "-o", str(tmp_path / "r"), "--mode", "adapter", "--cache-embeddings", str(tmp_path)])
    assert "frozen image encoder" in one_line_error(capsys, code, 2)
    code = main(["finetune", str(data), "-o", str(tmp_path / "r"), "--mode", "prefix"])
    assert "invalid choice" in one_line_error(capsys, code, 2)
    code = main(["finetune", str(data), "-o", str(tmp_path / "r"), "--size", "100"])
    assert "multiple of 16" in one_line_error(capsys, code, 2)
    code = main(["finetune", str(tmp_path / "missing"), "-o", str(tmp_path / "r")])
    assert "not found" in one_line_error(capsys, code, 2)
    code = main(["autoseg", str(data / "images" / "c00.png"), "--autosam", str(tmp_path / "no"), "-o", str(tmp_path / "a.png")])
    assert "adapter file not found" in one_line_error(capsys, code, 2)
