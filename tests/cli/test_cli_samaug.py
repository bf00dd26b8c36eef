"""``medsamkit samaug prepare`` on real Kvasir-SEG images: summary line, failures named, resume, bad arguments."""

from __future__ import annotations

import json
import shutil

import pytest

from medsamkit.cli.main import main
from medsamkit.data import load_dataset
from tests.conftest import DATA

KVASIR = DATA / "kvasir_seg"


@pytest.mark.skipif(not (KVASIR / "images").is_dir(), reason=f"real data not found at {KVASIR} (set MEDSAMKIT_SHARED)")
def test_samaug_prepare_summary_failures_and_resume(tmp_path, capsys):
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    cid = sorted(p.stem for p in (KVASIR / "images").iterdir())[0]
    shutil.copy(KVASIR / "images" / f"{cid}.jpg", ds / "images")
    shutil.copy(KVASIR / "masks" / f"{cid}.png", ds / "masks")
    (ds / "images" / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    shutil.copy(KVASIR / "masks" / f"{cid}.png", ds / "masks" / "zz_bad.png")
    out = tmp_path / "out"
    args = ["samaug", "prepare", str(ds), "-o", str(out), "--points-per-side", "2", "--quiet"]

    assert main(args) == 3  # finished, with a failed case
    cap = capsys.readouterr()
    assert cap.out.strip().splitlines() == [cap.out.strip()]  # one summary line
    assert "2 cases (1 computed, 0 cached, 1 failed)" in cap.out
    assert "zz_bad" in cap.err.splitlines()[-1] and "1 case(s) failed" in cap.err and "Traceback" not in cap.err
    assert load_dataset(out).ids == [cid]
    assert json.loads((out / "samaug.json").read_text())["options"]["points_per_side"] == 2

    (ds / "images" / "zz_bad.png").unlink()
    (ds / "masks" / "zz_bad.png").unlink()
    assert main(args) == 0
    assert "1 cases (0 computed, 1 cached, 0 failed)" in capsys.readouterr().out

    assert main([*args[:-1], "--mode", "stack"]) == 2  # OUT already holds an add-mode preparation
    assert "mode='add'" in capsys.readouterr().err


def test_samaug_argument_errors(tmp_path, capsys):
    assert main(["samaug"]) == 2
    assert "choose an action" in capsys.readouterr().err
    assert main(["samaug", "prepare", str(tmp_path), "-o", str(tmp_path / "o"), "--mode", "stack", "--alpha", "0.3"]) == 2
    assert "--alpha applies to --mode add only" in capsys.readouterr().err
    assert main(["samaug", "prepare", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert main(["samaug", "prepare", str(tmp_path), "-o", str(tmp_path / "o"), "--alpha", "2"]) == 2
    assert "--alpha must be in [0, 1]" in capsys.readouterr().err
