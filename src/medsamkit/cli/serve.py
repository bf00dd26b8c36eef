"""``medsamkit serve``: run the annotation web app (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
from pathlib import Path

from .common import (
    CliError,
    SubParsers,
    adapter_predictor,
    add_model_arguments,
    bounded_number,
    model_predictor,
    positive_int,
    say,
)

#: the top-level commands this module adds, with their one-line help (``medsamkit --help`` lists them without
#: building their parsers)
COMMANDS = {
    "serve": "run the annotation web app (segment, propagate, correct and save masks in a browser)",
}


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "medsamkit" / "sessions"


def _port(text: str) -> int:
    v = positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1..65535)")
    return v


def _hours(text: str) -> float:
    return bounded_number(text, float, lambda v: v > 0, "a number of hours", "more than 0 hours")


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` once and release it, so a busy port is one clear line (:class:`CliError`, exit 2)
    before the model loads, instead of uvicorn's error after the banner."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "busy"
        try:
            sock.bind((host, port))
        except socket.gaierror as e:
            raise CliError(f"serve: cannot listen on --host {host}: {e.strerror}") from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise CliError(
                    f"serve: port {port} on {host} is already in use; stop the other server or choose another --port"
                ) from None
            if e.errno == errno.EACCES:
                raise CliError(f"serve: no permission to listen on port {port} (ports below 1024 need privileges)") from None
            raise CliError(f"serve: cannot listen on {host}:{port}: {e.strerror}") from None


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser(
        "serve",
        help=COMMANDS["serve"],
        description="Serve the annotation app: open a volume (upload, or a path under --data), click boxes or points "
        "to segment slices, propagate through the volume, correct with the brush, undo, save masks on the source grid. "
        "Sessions are kept in --state and survive a restart. There is no authentication: keep the default "
        "--host 127.0.0.1 unless every machine that can reach the port may read and annotate the volumes.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--data", type=Path, metavar="DIR", help="folder whose volumes clients may open by relative path")
    p.add_argument("--state", type=Path, metavar="DIR", help=f"session folder (default {_default_state()})")
    add_model_arguments(
        p,
        adapter_help="serve a `medsamkit finetune` result, loaded on top of its base model (PyTorch backend unless "
        "--backend names one; --checkpoint: the base's weights)",
        threads_help="CPU threads for the model (default: all cores)",
    )
    p.add_argument("--max-upload-mb", type=positive_int, default=512, metavar="MB", help="largest upload (default 512)")
    p.add_argument(
        "--max-volume-mb",
        type=positive_int,
        default=2048,
        metavar="MB",
        help="memory one volume may take while it is opened: decoded values and the server's working copies, "
        "computed from the header before reading (default 2048: e.g. a 512x512x800 int16 CT)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="also answer requests for this Host name (repeatable; 127.0.0.1, localhost and [::1] always are, and a "
        "non-loopback --host itself); other Host headers get 421 (protects against DNS rebinding); '*' = any",
    )
    p.add_argument("--max-sessions", type=positive_int, default=64, help="sessions at once (default 64)")
    p.add_argument(
        "--session-ttl-hours", type=_hours, default=168.0, metavar="H", help="remove sessions idle this long (default 168)"
    )
    p.add_argument("--max-session-disk-mb", type=positive_int, default=2048, metavar="MB", help="disk per session (default 2048)")
    p.add_argument("--max-disk-mb", type=positive_int, default=20480, metavar="MB", help="disk of all sessions (default 20480)")
    p.add_argument(
        "--max-propagate-slices", type=positive_int, default=256, metavar="N", help="slices per propagation (default 256)"
    )
    p.add_argument(
        "--embedding-memory-mb",
        type=positive_int,
        default=1024,
        metavar="MB",
        help="memory for cached slice embeddings, all sessions together (4 MB per slice; default 1024)",
    )
    p.add_argument(
        "--preencode-slices",
        type=_non_negative,
        default=256,
        metavar="N",
        help="encode up to N slices of each opened volume in the background, nearest to the viewed slice first, so "
        "clicks and propagation find them ready (at most 3/4 of --embedding-memory-mb; 0: off; default 256)",
    )
    p.set_defaults(func=run)


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {v}")
    return v


def run(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from ..app import create_app
    except ImportError as e:
        raise CliError(
            f"serve: the web app needs FastAPI, uvicorn and python-multipart ({e.name} is missing); "
            "they are dependencies of medsamkit: reinstall it"
        ) from e
    from ..app.limits import Limits
    from ..models import WeightsError

    if args.data is not None and not args.data.is_dir():
        raise CliError(f"serve: --data {args.data} is not a folder")
    check_port(args.host, args.port)
    state = args.state or _default_state()
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"serve: cannot create the state folder {state}: {e.strerror}") from e
    model = args.model
    if args.adapter is not None:
        predictor, model = adapter_predictor(args)  # model: <base>+<mode>, what saved masks record
    else:
        try:
            predictor = model_predictor(args)
        except (WeightsError, ValueError) as e:
            raise CliError(str(e).strip().splitlines()[0], code=1) from e
    limits = Limits(
        max_upload_bytes=args.max_upload_mb << 20,
        max_volume_bytes=args.max_volume_mb << 20,
        max_sessions=args.max_sessions,
        session_ttl_s=args.session_ttl_hours * 3600,
        max_session_disk=args.max_session_disk_mb << 20,
        max_disk=args.max_disk_mb << 20,
        max_propagate_slices=args.max_propagate_slices,
    )
    try:
        addr = ipaddress.ip_address(args.host)
        local, wildcard = addr.is_loopback, addr.is_unspecified
    except ValueError:
        local, wildcard = args.host == "localhost", False
    host = f"[{args.host}]" if ":" in args.host else args.host
    allowed = list(args.allowed_host) + ([] if local or wildcard else [host])
    app = create_app(
        args.data,
        state_dir=state,
        limits=limits,
        embedding_memory=args.embedding_memory_mb << 20,
        model=model,
        predictor=predictor,
        allowed_hosts=allowed,
        port=args.port,
        preencode_slices=args.preencode_slices,
    )
    if not local:
        say(
            f"medsamkit serve: warning: listening on {args.host} without authentication; anyone who can reach it can "
            "read and annotate the volumes"
        )
    if wildcard and not args.allowed_host:
        say(
            "medsamkit serve: note: only requests for 127.0.0.1, localhost or [::1] are answered; name the host clients "
            "use with --allowed-host NAME"
        )
    say(f"medsamkit serve: http://{host}:{args.port}/ (sessions in {state}{f', data from {args.data}' if args.data else ''})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
