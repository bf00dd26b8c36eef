"""``medsamkit`` command line: thin commands that parse arguments and call the library."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

from .common import CliError, Parser


def build_parser() -> Parser:
    from .. import __version__
    from . import autoseg, batch, demo, evaluate, everything, finetune, models, samaug, segment, serve, train

    parser = Parser(
        prog="medsamkit",
        description="Segment-Anything-class models (SAM, MedSAM, LiteMedSAM) for medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"medsamkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (segment, everything, evaluate, demo, models, serve, samaug, train, batch, finetune, autoseg):
        module.add_parser(sub)
    return parser


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


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
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
    try:
        parser = build_parser()
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
    except KeyboardInterrupt:
        print("medsamkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if os.environ.get("MEDSAMKIT_DEBUG"):
            raise
        text = str(e).strip()
        print(f"medsamkit: error: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 1


def run() -> None:
    """Console-script target."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
