"""``medsamkit models``: what models exist, where their weights come from, whether they are here."""

from __future__ import annotations

import argparse

from .common import SubParsers

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "models": "list models and whether their weights are available",
}


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser(
        "models",
        help=COMMANDS["models"],
        description="List registered models, their licence and weight source, and whether the weights are "
        "on this machine; --download NAME fetches and verifies one.",
    )
    p.add_argument("--download", metavar="NAME", help="download (and checksum) this model's weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..models import availability, list_models, resolve_weights

    if args.download:
        path = resolve_weights(args.download, download=True)
        print(f"{args.download}: {path}")
        return
    rows = [("model", "arch", "input", "licence", "status", "weights / how to get them")]
    for e in list_models():
        ok, where = availability(e)
        rows.append((e.name, e.arch.name, str(e.arch.img_size), e.license, "available" if ok else "missing", where))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
