"""``medsamkit`` command line: thin commands that parse arguments and call the library."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import TextIO

from .common import CliError, Parser

#: the command modules, in the order ``medsamkit --help`` lists their commands
_MODULES = ("segment", "everything", "evaluate", "demo", "models", "serve", "samaug", "train", "batch", "finetune", "autoseg")


def build_parser(command: str | None = None) -> Parser:
    """The ``medsamkit`` parser. ``command=None`` builds every command's parser; ``command="segment"`` builds that
    command's module in full and the others as one-line entries (enough for ``--help`` and for refusing an unknown
    command), so starting a command never imports what another command's options need (PyTorch for ``finetune``)."""
    import importlib

    from .._version import __version__

    parser = Parser(
        prog="medsamkit",
        description="Segment-Anything-class models (SAM, MedSAM, LiteMedSAM) for medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"medsamkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in _MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        if command is None or command in module.COMMANDS:
            module.add_parser(sub)
        else:
            for cmd, text in module.COMMANDS.items():
                sub.add_parser(cmd, help=text)
    return parser


def _command_of(args: list[str]) -> str:
    """The command ``args`` run: the first argument that names one ("" when none does)."""
    import importlib

    names = {c for name in _MODULES for c in importlib.import_module(f"{__package__}.{name}").COMMANDS}
    return next((a for a in args if a in names), "")


# options whose value may start with "-" (negative coordinates): "--box3d -10,2,..." is read as "--box3d=-10,2,..."
_NUMERIC_OPTIONS = ("--box", "--box3d", "--point", "--window")


def _attach_negative_values(args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in _NUMERIC_OPTIONS and i + 1 < len(args) and re.match(r"^-[\d.]", args[i + 1]):
            out.append(f"{a}={args[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` while a command runs: one line on stderr, without the source location."""
    print(f"medsamkit: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run a command; every failure becomes one line on stderr and a non-zero exit status."""
    args_list = _attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    saved_showwarning = warnings.showwarning
    warnings.showwarning = _one_line_warning
    log = logging.getLogger("medsamkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("medsamkit: %(message)s"))
    quiet = "-q" in args_list or "--quiet" in args_list
    log.addHandler(handler)
    saved_level = log.level
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        return _run(args_list)
    finally:
        warnings.showwarning = saved_showwarning
        log.removeHandler(handler)
        log.setLevel(saved_level)


def _run(args_list: list[str]) -> int:
    """Exit status: 0 done; 1 an internal error (a bug: the traceback goes to a log file) or a failure of the
    environment (memory, disk); 2 an input error (:class:`~medsamkit.errors.InputError`: a bad file, prompt or
    option); 3 a job that finished with failed items (``batch``, ``evaluate``, ``samaug prepare``:
    finished work is kept); 130 interrupted."""
    from ..errors import MedsamkitError, one_line

    try:
        parser = build_parser(_command_of(args_list))
        args = parser.parse_args(args_list)
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        args.func(args)
        return 0
    except CliError as e:
        msg = str(e)
        print(msg if msg.startswith("medsamkit") else f"medsamkit: error: {msg}", file=sys.stderr)
        return e.code
    except MedsamkitError as e:
        print(f"medsamkit: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("medsamkit: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("medsamkit: error: out of memory (the input may be larger than this machine can hold)", file=sys.stderr)
        return 1
    except OSError as e:  # the environment: a full disk, a permission, a vanished file
        if os.environ.get("MEDSAMKIT_DEBUG"):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"medsamkit: error: {where}{e.strerror or one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug: one line here, the traceback in a log file
        if os.environ.get("MEDSAMKIT_DEBUG"):
            raise
        log_file = _log_traceback(e, args_list)
        where = f"; traceback in {log_file}" if log_file else ""
        text = f"{type(e).__name__}: {one_line(e, 200)}{where}"
        print(f"medsamkit: internal error (a bug, please report it): {text}", file=sys.stderr)
        return 1


def _log_traceback(exc: BaseException, args_list: list[str]) -> str | None:
    """Write the command line and ``exc``'s traceback to ``<cache>/logs/``; the file's path (None if that
    fails)."""
    import shlex
    import time
    import traceback

    from ..models.weights import cache_dir

    try:
        folder = cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        path.write_text(f"medsamkit {shlex.join(args_list)}\n\n{text}", encoding="utf-8")
        return str(path)
    except OSError:
        return None


def run() -> None:
    """Console-script target."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
