"""``medsamkit everything``: the files it writes for a real image, one-line errors for bad inputs and options."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from medsamkit.cli.main import main
from medsamkit.predict.masks import rle_decode
from tests.conftest import DATA, requires_shared


@requires_shared
def test_everything_cli_on_a_real_image(tmp_path, capsys):
    src = sorted((DATA / "kvasir_seg" / "images").glob("*.jpg"))[0]
    out = tmp_path / "out"
    code = main(["everything", str(src), "-o", str(out), "--points-per-side", "8", "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    stem = src.stem
    labels = np.array(Image.open(out / f"{stem}_labels.png"))
    doc = json.loads((out / f"{stem}_masks.json").read_text())
    overlay = np.array(Image.open(out / f"{stem}_overlay.png"))
    h, w = doc["shape"]
    assert labels.shape == (h, w) and overlay.shape == (h, w, 3)
    assert summary["masks"] == len(doc["records"]) == labels.max() > 0
    assert doc["options"]["prompt_mode"] == "boxes" and doc["model"]["name"] == "litemedsam"
    # each record's RLE decodes to its area; the label image shows each mask where no smaller mask covers it
    for i, r in enumerate(doc["records"]):
        m = rle_decode(r["segmentation"])
        assert m.shape == (h, w) and m.sum() == r["area"]
        assert (labels[m] >= i + 1).all()


def test_everything_cli_errors(tmp_path, capsys):
    vol = tmp_path / "vol.npz"
    np.savez(vol, image=np.zeros((4, 16, 16), np.float32), spacing=np.ones(3))
    assert main(["everything", str(tmp_path / "missing.png"), "-o", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["everything", str(bad), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["everything", str(bad), "-o", str(tmp_path), "--pred-iou-thresh", "2"]) == 2
    assert "pred_iou_thresh" in capsys.readouterr().err
