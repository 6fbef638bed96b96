"""The ASGI middleware protecting a real FastAPI app, against the real demo authorization server on 127.0.0.1.

The app and the authorization server share the test's event loop: httpx's ASGITransport drives the app, and the
lifespan protocol is driven by hand (ASGITransport does not send lifespan events).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket

from phantom_token.config.errors import ConfigError
from phantom_token.demo.authorization_server import DemoAuthorizationServer
from phantom_token.frontends.middleware import PhantomTokenMiddleware
from phantom_token.http.server import HttpServer, serve_app
from phantom_token.jose import jwks, verify

Message = MutableMapping[str, Any]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
INTROSPECTION = ("introspection-client", "demo-introspection-secret")
UNAUTHORIZED = {"code": "unauthorized", "message": "Missing, invalid or expired access token"}


def business_app(lifespan: Lifespan | None = None) -> FastAPI:
    api = FastAPI(lifespan=lifespan)

    @api.get("/api/me")
    async def me(request: Request) -> dict[str, Any]:
        return {"authorization": request.headers.getlist("authorization"),
                "claims": request.state.phantom_token_claims}

    @api.post("/api/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"body": (await request.body()).decode()}

    @api.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    return api


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


async def run_lifespan(app: PhantomTokenMiddleware, phase: str, inbox: asyncio.Queue[Message],
                       outbox: asyncio.Queue[Message]) -> None:
    await inbox.put({"type": f"lifespan.{phase}"})
    answer = await asyncio.wait_for(outbox.get(), 5)
    assert answer["type"] == f"lifespan.{phase}.complete", answer


async def client_for(app: PhantomTokenMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.example.com")


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
    assert missing.headers["www-authenticate"] == 'Bearer realm="api"'
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


async def test_lifespan_opens_before_the_app_starts_and_closes_after_it_stops(stack: Stack) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        events.append(f"app startup, middleware open={app.is_open}")
        yield
        events.append(f"app shutdown, middleware open={app.is_open}")

    app = PhantomTokenMiddleware(business_app(lifespan), **stack.options())

    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                   inbox.get, outbox.put))
    await run_lifespan(app, "startup", inbox, outbox)
    assert app.is_open
    await run_lifespan(app, "shutdown", inbox, outbox)
    await asyncio.wait_for(task, 5)
    assert not app.is_open
    assert events == ["app startup, middleware open=True", "app shutdown, middleware open=True"]


async def test_websocket_scopes_pass_through_without_a_token(tmp_path: Path) -> None:
    config = tmp_path / "phantom-token.yml"
    config.write_text(
        "_format_version: '2.1'\nservices:\n- name: api\n  routes:\n  - name: api\n    paths: [/api]\n  plugins:\n"
        "  - name: phantom-token\n    config:\n      introspection_endpoint: http://127.0.0.1:9/introspect\n"
        "      client_id: c\n      client_secret: s\n", encoding="utf-8")
    app = PhantomTokenMiddleware.from_config(business_app(), config)
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await inbox.put({"type": "websocket.connect"})
    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": "/ws", "raw_path": b"/ws", "query_string": b"",
             "headers": [(b"host", b"api.example.com")], "scheme": "ws", "subprotocols": []}
    await asyncio.wait_for(app(scope, inbox.get, send), 5)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "hello"
    async with await client_for(app) as client:
        outside = await client.get("/elsewhere")  # the file's routes apply: no route matches, 404 from the engine
    assert (outside.status_code, outside.json()["code"]) == (404, "not_found")


def test_a_config_mistake_fails_when_the_middleware_is_built() -> None:
    with pytest.raises(ConfigError, match="client_id"):
        PhantomTokenMiddleware(business_app(), introspection_endpoint="http://127.0.0.1:9/x", client_secret="s")
