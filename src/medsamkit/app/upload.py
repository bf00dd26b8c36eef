"""Request bodies as the routes read them: JSON and raw bodies read within a byte limit, and a multipart volume
upload streamed to disk under a name the server chooses.

Bodies are also counted by :class:`~medsamkit.app.guard.Guard` while they stream in; the limits here are the
routes' own (a declared ``Content-Length`` over the limit is refused before anything is read). An upload keeps
only its client's file ending, which must be one of :data:`~medsamkit.app.sessions.UPLOAD_SUFFIXES` (endings of
:mod:`medsamkit.io.formats`, told by :func:`~medsamkit.io.formats.split_suffix`).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from fastapi import Request

from ..io.formats import split_suffix
from .limits import MiB
from .sessions import UPLOAD_SUFFIXES, AppError

FIELD_LIMIT = 4096  # bytes of one form field beside the file
MAX_FIELDS = 8  # form fields beside the file


def content_type(request: Request) -> str:
    """The request's media type, lower case, without parameters (``""`` when none is given)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; 413 as soon as it (or its declared ``Content-Length``) is over ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise AppError(413, f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise AppError(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    """The body (at most ``limit`` bytes, else 413) decoded as JSON; 400 when it is not JSON."""
    raw = await read_body(request, limit)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AppError(400, "the body is not valid JSON") from None


async def receive_upload(
    request: Request,
    folder: Path,
    room: int,
    max_upload: int,
    suffixes: tuple[str, ...] = UPLOAD_SUFFIXES,
    prefix: str = "source",
) -> tuple[Path, str, dict[str, Any]]:
    """Stream a multipart upload's ``file`` part into ``folder`` (mode 0600) under a name the server chooses
    (``<prefix>-<random><suffix>``; only the client's extension is kept, one of ``suffixes``), refusing it as soon
    as it exceeds ``room`` bytes (413 over the upload limit ``max_upload``, 507 over the disk quota). Returns the
    file, the client's base name (for display only) and the other form fields (``window`` "LEVEL,WIDTH" as two
    floats, ``resample`` as a bool, others as text; empty ones left out). A refused or broken upload leaves no
    file behind."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise AppError(400, "multipart body without boundary")
    limit = min(room, max_upload)

    def too_large() -> AppError:
        if limit >= max_upload:
            return AppError(413, f"the file is larger than the server's limit of {max_upload} bytes")
        return AppError(507, f"the server's disk quota for sessions leaves room for {limit} bytes; the file is larger")

    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MiB:
        raise too_large()

    st: dict[str, Any] = {"field": None, "header": b"", "value": b"", "headers": {}, "file": None, "size": 0}
    fields: dict[str, str] = {}
    found: dict[str, Any] = {}

    def on_part_begin() -> None:
        st.update(field=None, headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        st["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        st["value"] += data[start:end]

    def on_header_end() -> None:
        st["headers"][st["header"].lower()] = st["value"]
        st["header"] = st["value"] = b""

    def on_headers_finished() -> None:
        _, opts = parse_options_header(st["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in opts:
            if name != "file" or "path" in found:
                raise AppError(400, "send exactly one file, in the form field 'file'")
            client = opts[b"filename"].decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
            suffix = split_suffix(client)[1]
            if suffix not in suffixes:
                raise AppError(415, f"unsupported file type {suffix or '(none)'}; upload one of {', '.join(suffixes)}")
            found["path"] = folder / f"{prefix}-{secrets.token_hex(8)}{suffix}"
            found["name"] = "".join(c for c in client if c.isprintable())[:200] or f"upload{suffix}"
            st["file"] = os.fdopen(os.open(found["path"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        else:
            if len(fields) >= MAX_FIELDS:
                raise AppError(400, "too many form fields")
            st["field"] = name

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if st["file"] is not None:
            st["size"] += end - start
            if st["size"] > limit:
                raise too_large()
            st["file"].write(data[start:end])
        else:
            st["data"] += data[start:end]
            if len(st["data"]) > FIELD_LIMIT:
                raise AppError(400, "form field too long")

    def on_part_end() -> None:
        if st["file"] is not None:
            st["file"].close()
            st["file"] = None
        elif st["field"]:
            fields[st["field"]] = st["data"].decode("utf-8", "replace")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException as e:
        if st["file"] is not None:
            st["file"].close()
        if "path" in found:
            found["path"].unlink(missing_ok=True)
        if isinstance(e, FormParserError):
            raise AppError(400, "malformed multipart body") from None
        raise
    if "path" not in found:
        raise AppError(422, "no file: send the volume in the form field 'file'")
    parsed: dict[str, Any] = {}
    for k, v in fields.items():
        if k == "window" and v:
            try:
                parsed[k] = [float(x) for x in v.split(",")]
            except ValueError:
                found["path"].unlink(missing_ok=True)
                raise AppError(422, "window: expected LEVEL,WIDTH") from None
        elif k == "resample" and v:
            if v.strip().lower() not in ("true", "false", "1", "0"):
                found["path"].unlink(missing_ok=True)
                raise AppError(422, "resample: expected true or false")
            parsed[k] = v.strip().lower() in ("true", "1")
        elif v:
            parsed[k] = v
    return found["path"], found["name"], parsed
