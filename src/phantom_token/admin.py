"""The admin listener (contract section 11): health, readiness, metrics, the JWKS and ``POST /cache/purge``.

``/readyz`` answers 200 ``{"status": "ready"}`` or 503 ``{"status": "<why>"}`` (``starting``, ``draining``,
``redis_unreachable``: ``process.Listeners.readiness``). ``/metrics`` is the Prometheus text of the whole process
(every worker summed under a supervisor: ``exposition``).

Off unless configured. With ``admin_token`` set, every request must carry ``Authorization: Bearer <admin_token>``,
compared in constant time.

``POST /cache/purge`` takes ``{"token": "<token>"}`` or ``{"token_sha256": "<64 hex digits>"}`` (SHA-256 of the
token's ASCII bytes) and answers 200 with what was removed (``cache.purge.PurgeReport``), 503 when a shared store
is configured but could not be reached (removed from this process only), 400 for a body that is not one of
those two documents. The token is hashed at once and never echoed or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable

from phantom_token.cache.purge import PurgeReport
from phantom_token.exposition import render as render_text
from phantom_token.http.messages import Handler, Request, Response
from phantom_token.metrics import Metrics

JSON = [("Content-Type", "application/json")]
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

Purge = Callable[[bytes], Awaitable[PurgeReport]]
"""Removes the token whose SHA-256 is given from every cache (``cache.purge.Purger.purge``)."""


def _json(status: int, document: object) -> Response:
    return Response(status, list(JSON), json.dumps(document, separators=(",", ":")).encode())


Readiness = Callable[[], Awaitable[tuple[bool, str]]]
"""Whether the process should get traffic, and the word for ``/readyz``'s ``status``."""


def admin_handler(metrics: Metrics, *, admin_token: str | None, ready: Callable[[], bool],
                  jwks: Callable[[], dict[str, object]] | None = None,
                  purge: Purge | None = None, render: Callable[[], str] | None = None,
                  readiness: Readiness | None = None) -> Handler:
    """``render`` (default: ``metrics``' own series) makes ``/metrics``; ``readiness`` (default: ``ready()``, else
    ``starting``) answers ``/readyz``."""
    render_metrics = render if render is not None else lambda: render_text(metrics.samples())
    expected = ("Bearer " + admin_token).encode() if admin_token else None

    async def handle(request: Request) -> Response:
        if expected is not None:
            given = (request.header("authorization") or "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, expected):
                return Response(401, [*JSON, ("WWW-Authenticate", 'Bearer realm="admin"')],
                                b'{"code":"unauthorized","message":"Missing or wrong admin token"}')
        if request.path == "/healthz":
            return _json(200, {"status": "ok"})
        if request.path == "/readyz":
            is_ready, why = await readiness() if readiness is not None else (ready(), "starting")
            return _json(200, {"status": "ready"}) if is_ready else _json(503, {"status": why})
        if request.path == "/metrics":
            return Response(200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                            render_metrics().encode())
        if request.path == "/.well-known/jwks.json":
            return _json(200, jwks() if jwks is not None else {"keys": []})
        if request.path == "/cache/purge" and purge is not None:
            return await _purge(request, purge)
        return _json(404, {"code": "not_found", "message": "No such admin endpoint"})

    return handle


def _bad_request(message: str) -> Response:
    return _json(400, {"code": "invalid_request", "message": message})


def _purge_digest(body: bytes) -> bytes | str:
    """The SHA-256 of the token named by the body, or why the body is not acceptable."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "The body is not JSON"
    if not isinstance(document, dict) or len(document) != 1 or not document.keys() <= {"token", "token_sha256"}:
        return 'Expected {"token": "..."} or {"token_sha256": "<64 hex digits>"}'
    token, hexdigest = document.get("token"), document.get("token_sha256")
    if token is not None:
        if not isinstance(token, str) or not token or not token.isascii():
            return "token must be a non-empty ASCII string"
        return hashlib.sha256(token.encode("ascii")).digest()
    if not isinstance(hexdigest, str) or not _SHA256_HEX.fullmatch(hexdigest):
        return "token_sha256 must be 64 hex digits"
    return bytes.fromhex(hexdigest)


async def _purge(request: Request, purge: Purge) -> Response:
    if request.method != "POST":
        return Response(405, [*JSON, ("Allow", "POST")],
                        b'{"code":"method_not_allowed","message":"Use POST"}')
    digest = _purge_digest(request.body)
    if isinstance(digest, str):
        return _bad_request(digest)
    report = await purge(digest)
    if report.complete:
        return _json(200, report.document())
    message = "The shared cache could not be reached: removed from this process only"
    return _json(503, {"code": "unavailable", "message": message, **report.document()})
