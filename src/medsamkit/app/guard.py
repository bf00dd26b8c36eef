"""The server's outer layer (plain ASGI, before any route runs): which ``Host`` may be asked, how many body
bytes a request may send, and the security headers of every response.

- **Host** (DNS rebinding): a page on another site whose name resolves to 127.0.0.1 reaches the server with its
  own name in ``Host``; only the names the server was started for are answered (421 otherwise).
- **Body size**: bytes are counted as the ``http.request`` messages arrive, chunked bodies included; as soon as
  a route's limit is passed the request is answered 413 and nothing more is read (a declared
  ``Content-Length`` over the limit is refused before reading).
- **Headers**: ``X-Frame-Options: DENY`` and a Content-Security-Policy (scripts, styles, connections only from
  the server itself; no framing), ``nosniff``, no referrer, ``no-store`` for the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..errors import LimitError
from .limits import Limits, MiB

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "worker-src 'self' blob:; font-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_UPLOAD = re.compile(r"^/api/sessions/[^/]+/volume$")
_EDIT = re.compile(r"^/api/sessions/[^/]+/mask/[^/]+/[^/]+$")


class BodyTooLarge(LimitError):
    """Raised inside the app when a request body passes its route's limit (answered 413 by :class:`Guard`)."""


class HostRule:
    """Which ``Host`` header values are answered.

    names: host names or addresses (IPv6 in brackets), each optionally with ``:port``; a name without a port
    matches on ``port`` only (any port when ``port`` is None). ``*`` allows every host (no DNS-rebinding
    protection)."""

    def __init__(self, names: Iterable[str], port: int | None) -> None:
        self.any = False
        self.exact: set[tuple[str, int | None]] = set()
        self.port = port
        for n in names:
            n = n.strip().lower()
            if n == "*":
                self.any = True
                continue
            name, p = split_host(n)
            if name:
                self.exact.add((name, p))

    def allows(self, host: str | None) -> bool:
        if self.any:
            return True
        if not host:
            return False
        name, port = split_host(host.strip().lower())
        if (name, port) in self.exact:
            return True
        if (name, None) in self.exact:
            return self.port is None or port == self.port or (port is None and self.port == 80)
        return False

    def describe(self) -> list[str]:
        if self.any:
            return ["*"]
        out = []
        for name, p in sorted(self.exact, key=lambda x: (x[0], x[1] or 0)):
            q = p if p is not None else self.port
            out.append(f"{name}:{q}" if q is not None else name)
        return out


def split_host(host: str) -> tuple[str, int | None]:
    """``"name:8000"`` -> ("name", 8000); ``"[::1]:8000"`` -> ("[::1]", 8000); a bare IPv6 address gets brackets."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        name, rest = host[: end + 1], host[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") > 1:  # a bare IPv6 address
        return f"[{host}]", None
    else:
        name, _, port = host.partition(":")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            return "", None
        return name, int(port)
    return name, None


def body_limit(limits: Limits, method: str, path: str, content_type: str) -> int:
    """The most body bytes ``method path`` may send: uploads ``max_upload_bytes`` (+1 MiB of form overhead),
    brush edits ``max_edit_bytes`` (+1/3 for base64 in JSON), everything else ``max_json_bytes``."""
    if method == "POST" and _UPLOAD.match(path) and content_type.startswith("multipart/"):
        return limits.max_upload_bytes + MiB
    if method == "PUT" and _EDIT.match(path):
        return limits.max_edit_json_bytes
    return limits.max_json_bytes


class Guard:
    """ASGI middleware: host check, streaming body limit, security headers (see the module docstring)."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, limits: Limits, hosts: HostRule) -> None:
        self.app = app
        self.limits = limits
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host", b"").decode("latin-1")
        path = scope.get("path", "")
        if not self.hosts.allows(host):
            allowed = ", ".join(self.hosts.describe())
            await _reply(
                send,
                421,
                f"this server does not answer for host {host[:100]!r}; it answers for {allowed} "
                "(add names with medsamkit serve --allowed-host)",
                path,
            )
            return
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        limit = body_limit(self.limits, scope.get("method", "GET"), path, ctype)
        declared = headers.get(b"content-length", b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > limit:
            await _reply(send, 413, _too_large(limit), path)
            return
        state = {"received": 0, "exceeded": False, "started": False}

        async def guarded_receive() -> Message:
            if state["exceeded"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise BodyTooLarge(_too_large(limit))
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"]:
                return  # the app's answer to the aborted read is replaced by our 413
            if message["type"] == "http.response.start":
                state["started"] = True
                message = {**message, "headers": _with_security_headers(message.get("headers", []), path)}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not state["exceeded"]:
                raise
        if state["exceeded"] and not state["started"]:
            await _reply(send, 413, _too_large(limit), path)


def _too_large(limit: int) -> str:
    return f"the request body is larger than this route's limit of {limit} bytes"


def _with_security_headers(headers: Iterable[tuple[bytes, bytes]], path: str) -> list[tuple[bytes, bytes]]:
    out = list(headers)
    present = {k.lower() for k, _ in out}
    extra = list(SECURITY_HEADERS)
    if path.startswith("/api/"):
        extra.append((b"cache-control", b"no-store"))
    out.extend((k, v) for k, v in extra if k not in present)
    return out


async def _reply(send: Send, status: int, message: str, path: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (413, 421):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": _with_security_headers(headers, path)})
    await send({"type": "http.response.body", "body": body})
