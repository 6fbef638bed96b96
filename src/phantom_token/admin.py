"""The admin listener (contract section 11): health, readiness, metrics and the JWKS.

Off unless configured. With ``admin_token`` set, every request must carry ``Authorization: Bearer <admin_token>``,
compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from phantom_token.http.messages import Handler, Request, Response
from phantom_token.metrics import Metrics

JSON = [("Content-Type", "application/json")]


def _json(status: int, document: object) -> Response:
    return Response(status, list(JSON), json.dumps(document, separators=(",", ":")).encode())


def admin_handler(metrics: Metrics, *, admin_token: str | None, ready: Callable[[], bool],
                  jwks: Callable[[], dict[str, object]] | None = None) -> Handler:
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
            return _json(200, {"status": "ready"}) if ready() else _json(503, {"status": "starting"})
        if request.path == "/metrics":
            return Response(200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                            metrics.render().encode())
        if request.path == "/.well-known/jwks.json":
            return _json(200, jwks() if jwks is not None else {"keys": []})
        return _json(404, {"code": "not_found", "message": "No such admin endpoint"})

    return handle
