"""The ``medsamkit`` command: outputs, and one-line errors (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsamkit.cli.main import main
from tests.conftest import box_of, dice, disk_image

CLI = [sys.executable, "-m", "medsamkit.cli.main"]


@pytest.fixture
def two_disks(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    img, d1 = disk_image(180, 260, 60, 90, 30)
    img2, d2 = disk_image(180, 260, 190, 80, 35, seed=4)
    path = tmp_path / "two.png"
    Image.fromarray(np.maximum(img, img2)).save(path)
    return path, d1, d2


def _one_line_error(capsys, code: int, expect_code: int = 2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expect_code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("medsamkit")
    return err


def test_segment_boxes_and_overlay(two_disks, tmp_path, capsys) -> None:
    path, d1, d2 = two_disks
    out, ov = tmp_path / "mask.png", tmp_path / "ov.png"
    b1, b2 = ",".join(map(str, box_of(d1))), ",".join(map(str, box_of(d2)))
    assert main(["segment", str(path), "--box", b1, "--box", b2, "-o", str(out), "--overlay", str(ov)]) == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == (180, 260) and mask.dtype == np.uint8
    assert dice(mask == 1, d1) > 0.9 and dice(mask == 2, d2) > 0.9
    assert np.asarray(Image.open(ov)).shape == (180, 260, 3)
    err = capsys.readouterr().err
    assert "2 object(s)" in err and "label values 1..2 on 0: dark in an image viewer; picture in" in err


def test_segment_box_with_point_and_rgba_input(tmp_path, capsys) -> None:
    img, disk = disk_image(120, 160, 80, 60, 25, rgb=True)
    rgba = np.concatenate([img, np.full((120, 160, 1), 255, np.uint8)], axis=-1)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    out = tmp_path / "m.png"
    b = ",".join(map(str, box_of(disk)))
    assert main(["segment", str(path), "--box", b, "--point", "80,60,1", "-o", str(out), "-q"]) == 0
    mask = np.asarray(Image.open(out))
    assert set(np.unique(mask)) == {0, 1} and dice(mask == 1, disk) > 0.75  # box-trained model, click added
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--box", "1,2,3"], 2, "X0,Y0,X1,Y1"),
        (["--box", "a,b,c,d"], 2, "X0,Y0,X1,Y1"),
        (["--point", "1,2,5"], 2, "LABEL must be 1"),
        ([], 2, "at least one --box, --box3d or --point"),
        (["--box", "10,10,400,50"], 2, "lies outside the 260x180 image"),
        (["--box", "50,10,40,50"], 2, "x0 <= x1"),
        (["--box", "1,1,5,5", "--model", "no_such"], 2, "unknown model 'no_such'"),
        (["--box", "1,1,5,5", "--threads", "0"], 2, "must be at least 1"),
        (["--box", "1,1,5,5", "--backend", "cuda"], 2, "invalid choice"),
    ],
)
def test_segment_errors_are_one_line(two_disks, tmp_path, capsys, args, code, fragment) -> None:
    path, _, _ = two_disks
    rc = main(["segment", str(path), *args, "-o", str(tmp_path / "m.png")])
    assert fragment in _one_line_error(capsys, rc, code)
    assert not (tmp_path / "m.png").exists()


def test_bad_files_and_outputs(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    rc = main(["segment", str(bad), "--box", "1,1,5,5", "-o", str(tmp_path / "m.png")])
    assert "cannot read bad.png" in _one_line_error(capsys, rc)
    rc = main(["segment", str(tmp_path / "missing.png"), "--box", "1,1,5,5", "-o", str(tmp_path / "m.png")])
    assert "not found" in _one_line_error(capsys, rc)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(good)
    rc = main(["segment", str(good), "--box", "1,1,5,5", "-o", str(tmp_path / "m.nii.gz")])
    assert "written as .png" in _one_line_error(capsys, rc, 2)
    rc = main(["segment", str(good), "--box3d", "1,1,1,5,5,5", "-o", str(tmp_path / "m.png")])
    assert "are for volumes" in _one_line_error(capsys, rc, 2)
    rc = main(["segment", str(bad), "--box", "1,1,5,5"])
    assert "required" in _one_line_error(capsys, rc, 2)
    rc = main(["frobnicate"])
    assert "invalid choice" in _one_line_error(capsys, rc, 2)


def test_models_lists_the_bundled_model(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("litemedsam"))
    assert "available" in line and "lite_medsam.pth" in line
    assert "sam_vit_h" in out and "medsam_vit_b" in out


def test_demo_writes_mask_overlay_and_dice(tmp_path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([*CLI, "demo", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "result.json").read_text())
    assert info["dice_vs_ground_truth"] > 0.75  # measured 0.8235
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (393, 462) and set(np.unique(mask)) == {0, 1}
    assert np.asarray(Image.open(out / "overlay.png")).shape == (393, 462, 3)


def test_subprocess_error_has_no_traceback(tmp_path) -> None:
    env = {**os.environ, "MEDSAMKIT_DEBUG": ""}
    proc = subprocess.run(
        [*CLI, "segment", str(tmp_path / "nope.png"), "--box", "1,1,2,2", "-o", str(tmp_path / "m.png")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2  # an input error
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
