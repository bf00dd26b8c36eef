"""Starting the ``medsamkit`` command: ``--help`` builds no command's parser and imports no heavy library; a
command builds its own parser in full and the others as the same one-line entries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medsamkit.cli import main as cli_main

HEAVY = ("torch", "numpy", "scipy", "onnxruntime", "fastapi", "dask")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["models", "--help"]])
def test_help_and_version_import_no_heavy_library(args) -> None:
    # argparse ends --help / --version with SystemExit(0): the child catches it and lists what it imported
    code = (
        "import sys\n"
        "from medsamkit.cli.main import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES ' + ' '.join(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("MODULES "))
    loaded = set(line.split()[1:])
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_command_of_finds_the_command_name() -> None:
    assert cli_main._command_of(["--version"]) == ""
    assert cli_main._command_of(["-q", "segment", "img.png", "-o", "models"]) == "segment"
    assert cli_main._command_of(["batch", "segment", "m.csv"]) == "batch"
    assert cli_main._command_of(["predict-unet", "run"]) == "predict-unet"
    assert cli_main._command_of(["bogus"]) == ""


def test_top_level_help_is_the_same_with_or_without_the_command_parsers() -> None:
    full = cli_main.build_parser().format_help()
    light = cli_main.build_parser("").format_help()
    assert light == full
    assert "finetune" in light and "predict-unet" in light


def test_each_module_builds_the_commands_it_lists() -> None:
    import importlib

    for name in cli_main._MODULES:
        module = importlib.import_module(f"medsamkit.cli.{name}")
        parser = cli_main.build_parser(next(iter(module.COMMANDS)))
        sub = next(a for a in parser._actions if a.dest == "command")
        for cmd in module.COMMANDS:
            # built in full: the parser has options beyond -h
            assert len(sub.choices[cmd]._actions) > 1, (name, cmd)


def test_a_stub_command_still_runs_through_main(capsys) -> None:
    # `models` is a stub when another command is asked for; asked for itself it runs
    assert cli_main.main(["models"]) == 0
    assert "litemedsam" in capsys.readouterr().out


def test_a_2d_segment_on_onnx_runtime_imports_no_torch(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from importlib import resources

    image = resources.files("medsamkit") / "assets" / "demo" / "busi_malignant_10.png"
    code = (
        "import sys\n"
        "from medsamkit.cli.main import main\n"
        f"rc = main(['segment', {str(image)!r}, '--box', '60,40,200,160', '-o', sys.argv[1], '--backend', 'onnxruntime'])\n"
        "print('RC', rc, 'torch' in sys.modules, 'scipy' in sys.modules)\n"
    )
    # the first run may export the ONNX model (that needs PyTorch, once per machine); the second is the user's call
    for i in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / f"m{i}.png")], capture_output=True, text=True, check=True
        ).stdout
    assert out.split()[-3:] == ["0", "False", "False"], out
