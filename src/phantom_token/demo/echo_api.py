"""An echo API: every method on every path answers 200 JSON describing the request it received.

The body is ``{"method", "path", "query", "headers", "raw_headers", "body_bytes", "body_sha256", "jwt_header",
"jwt_claims"}``:
- ``headers``: lower-case name -> value, repeated headers joined with ``", "`` (RFC 9110 section 5.3);
  ``raw_headers``: every ``[name, value]`` pair (grouped by name, in arrival order), so duplicates show;
- ``jwt_header``/``jwt_claims``: when ``Authorization: Bearer <jwt>`` decodes as a compact JWS, its header and
  claims, NOT verified (the echo API shows what arrived; checking it is the test's job); otherwise null.

End-to-end tests read this to see exactly what the gateway sent upstream. It keeps no state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from phantom_token.http.messages import Request, Response
from phantom_token.jose import JoseError, decode_unverified


def _bearer_jwt(request: Request) -> tuple[dict[str, Any], dict[str, Any]] | tuple[None, None]:
    values = request.headers.get("authorization", ())
    if len(values) != 1:
        return None, None
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None, None
    try:
        return decode_unverified(token.strip())
    except JoseError:
        return None, None


def describe(request: Request) -> dict[str, Any]:
    """What the echo API answers for ``request``."""
    jwt_header, jwt_claims = _bearer_jwt(request)
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": {name: ", ".join(values) for name, values in request.headers.items()},
        "raw_headers": [[name, value] for name, values in request.headers.items() for value in values],
        "body_bytes": len(request.body),
        "body_sha256": hashlib.sha256(request.body).hexdigest(),
        "jwt_header": jwt_header,
        "jwt_claims": jwt_claims,
    }


async def echo(request: Request) -> Response:
    """The echo ``Handler``."""
    body = json.dumps(describe(request), ensure_ascii=True).encode()
    return Response(200, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], body)


def main(argv: list[str] | None = None) -> int:
    """``python -m phantom_token.demo.echo_api --listen HOST:PORT``."""
    from phantom_token.demo._runner import parse_listen, run_handler

    parser = argparse.ArgumentParser(prog="python -m phantom_token.demo.echo_api", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:3001", help="HOST:PORT (default %(default)s)")
    args = parser.parse_args(argv)
    host, port = parse_listen(parser, args.listen)
    return run_handler(echo, host, port)


if __name__ == "__main__":
    raise SystemExit(main())
