"""``medsamkit serve``: run the annotation web app (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from .common import CliError, positive_int, say


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "medsamkit" / "sessions"


def _port(text: str) -> int:
    v = positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1..65535)")
    return v


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the annotation web app (segment, propagate, correct and save masks in a browser)",
        description="Serve the annotation app: open a volume (upload, or a path under --data), click boxes or points "
        "to segment slices, propagate through the volume, correct with the brush, undo, save masks on the source grid. "
        "Sessions are kept in --state and survive a restart. There is no authentication: keep the default "
        "--host 127.0.0.1 unless every machine that can reach the port may read and annotate the volumes.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--data", type=Path, metavar="DIR", help="folder whose volumes clients may open by relative path")
    p.add_argument("--state", type=Path, metavar="DIR", help=f"session folder (default {_default_state()})")
    p.add_argument("--model", default="litemedsam", help="registered model (see `medsamkit models`)")
    p.add_argument("--checkpoint", type=Path, help="weight file to use for --model's architecture")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch"))
    p.add_argument("--threads", type=positive_int, help="CPU threads for the model (default: all cores)")
    p.add_argument("--max-upload-mb", type=positive_int, default=512, metavar="MB", help="largest upload (default 512)")
    p.add_argument(
        "--embedding-memory-mb",
        type=positive_int,
        default=1024,
        metavar="MB",
        help="memory for cached slice embeddings, all sessions together (4 MB per slice; default 1024)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from ..app import create_app
    except ImportError as e:
        raise CliError(
            f"serve: the web app needs FastAPI, uvicorn and python-multipart ({e.name} is missing); "
            "they are dependencies of medsamkit: reinstall it"
        ) from e
    from ..models import WeightsError
    from ..predict import Predictor

    if args.data is not None and not args.data.is_dir():
        raise CliError(f"serve: --data {args.data} is not a folder")
    state = args.state or _default_state()
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"serve: cannot create the state folder {state}: {e.strerror}") from e
    try:
        predictor = Predictor(args.model, checkpoint=args.checkpoint, backend=args.backend, threads=args.threads)
    except (WeightsError, ValueError) as e:
        raise CliError(str(e).strip().splitlines()[0], code=1) from e
    app = create_app(
        args.data,
        state_dir=state,
        max_upload_bytes=args.max_upload_mb << 20,
        embedding_memory=args.embedding_memory_mb << 20,
        model=args.model,
        predictor=predictor,
    )
    try:
        local = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        local = args.host == "localhost"
    if not local:
        say(
            f"medsamkit serve: warning: listening on {args.host} without authentication; anyone who can reach it can "
            "read and annotate the volumes"
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    say(f"medsamkit serve: http://{host}:{args.port}/ (sessions in {state}{f', data from {args.data}' if args.data else ''})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
