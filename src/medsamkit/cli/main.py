"""``medsamkit`` command line: thin commands that parse arguments and call the library."""

from __future__ import annotations

import os
import sys

from .common import CliError, Parser


def build_parser() -> Parser:
    from .. import __version__
    from . import demo, models, segment

    parser = Parser(
        prog="medsamkit",
        description="Segment-Anything-class models (SAM, MedSAM, LiteMedSAM) for medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"medsamkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (segment, demo, models):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; every failure becomes one line on stderr and a non-zero exit status."""
    args_list = sys.argv[1:] if argv is None else argv
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
