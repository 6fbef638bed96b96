"""The ASGI middleware protecting a real FastAPI app, against the real demo authorization server on 127.0.0.1.

The app and the authorization server share the test's event loop: httpx's ASGITransport drives the app.
The middleware's lifespan and what needs no socket: tests/unit/test_middleware.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from phantom_token.demo.authorization_server import DemoAuthorizationServer
from phantom_token.frontends.middleware import PhantomTokenMiddleware
from phantom_token.http.server import HttpServer, serve_app
from phantom_token.jose import jwks, verify

from ..unit.test_middleware import business_app, client_for

INTROSPECTION = ("introspection-client", "demo-introspection-secret")
UNAUTHORIZED = {"code": "unauthorized", "message": "Missing, invalid or expired access token"}


class Stack:
    def __init__(self, server: DemoAuthorizationServer, listener: HttpServer) -> None:
        self.server = server
        self.listener = listener
        self.endpoint = f"{server.issuer}/oauth/introspect"

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"introspection_endpoint": self.endpoint, "client_id": INTROSPECTION[0],
                "client_secret": INTROSPECTION[1], **extra}


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    holder: list[DemoAuthorizationServer] = []

    async def handler(request: Any) -> Any:
        return await holder[0](request)

    listener = await serve_app(handler, "127.0.0.1", 0)
    holder.append(DemoAuthorizationServer(f"http://127.0.0.1:{listener.port}"))
    try:
        yield Stack(holder[0], listener)
    finally:
        listener.close()
        await listener.wait_closed()


async def test_the_app_sees_the_jwt_and_its_claims_never_the_opaque_token(stack: Stack) -> None:
    app = PhantomTokenMiddleware(business_app(), **stack.options())
    token = stack.server.issue("demo-client", ["read", "write"])
    async with await client_for(app) as client:
        answer = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        again = await client.get("/api/me", headers={"Authorization": f"bearer   {token}"})
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert token not in answer.text
    [authorization] = seen["authorization"]
    scheme, _, jwt = authorization.partition(" ")
    assert scheme == "Bearer"
    _, claims = verify(jwt, jwks([stack.server.signing_key]), algorithms=["ES256"])
    assert seen["claims"] == claims
    assert claims["scope"] == "read write"
    assert again.json() == seen  # the second request is a cache hit with the same answer
    assert stack.server.stats()["introspection"]["total"] == 1
    await app.close()


async def test_failures_are_the_section_8_responses_and_the_app_is_not_called(stack: Stack) -> None:
    app = PhantomTokenMiddleware(business_app(), **stack.options(scope="admin", realm="api"))
    token = stack.server.issue("demo-client", ["read"])
    async with await client_for(app) as client:
        missing = await client.get("/api/me")
        bad = await client.get("/api/me", headers={"Authorization": "Bearer not-issued"})
        scope = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        head = await client.head("/api/me")
        twice = await client.get("/api/me", headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert (missing.status_code, missing.json()) == (401, UNAUTHORIZED)
    assert missing.headers.get_list("www-authenticate") == [  # both schemes are accepted (dpop: allowed)
        'Bearer realm="api"', 'DPoP realm="api", algs="ES256 ES384 ES512 PS256 RS256 EdDSA"']
    assert missing.headers["content-type"] == "application/json"
    assert (bad.status_code, bad.headers["www-authenticate"]) == (401, 'Bearer realm="api", error="invalid_token"')
    assert scope.status_code == 403
    assert scope.json() == {"code": "forbidden", "message": "The token does not contain the required scope"}
    assert scope.headers["www-authenticate"] == 'Bearer realm="api", error="insufficient_scope", scope="admin"'
    assert (head.status_code, head.content) == (401, b"")
    assert (twice.status_code, twice.json()["code"]) == (400, "invalid_request")
    await app.close()


async def test_authorization_server_down_is_a_502(stack: Stack) -> None:
    app = PhantomTokenMiddleware(business_app(), **stack.options(introspection_endpoint="http://127.0.0.1:9/x"))
    async with await client_for(app) as client:
        answer = await client.get("/api/me", headers={"Authorization": "Bearer abc"})
    assert (answer.status_code, answer.json()["code"]) == (502, "server_error")
    await app.close()


async def test_request_body_reaches_the_app_untouched(stack: Stack) -> None:
    app = PhantomTokenMiddleware(business_app(), **stack.options())
    token = stack.server.issue("demo-client", ["read"])
    async with await client_for(app) as client:
        answer = await client.post("/api/echo", content=b"x" * 100_000, headers={"Authorization": f"Bearer {token}"})
    assert answer.json() == {"body": "x" * 100_000}
    await app.close()
