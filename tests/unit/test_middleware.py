"""The ASGI middleware protecting a real FastAPI app, with no sockets: its lifespan, websocket pass-through and
configuration mistakes. Against the real demo authorization server on 127.0.0.1: tests/integration/test_middleware.py.

httpx's ASGITransport drives the app, and the lifespan protocol is driven by hand (ASGITransport does not send
lifespan events).
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
from phantom_token.frontends.middleware import PhantomTokenMiddleware

Message = MutableMapping[str, Any]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


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


async def run_lifespan(app: PhantomTokenMiddleware, phase: str, inbox: asyncio.Queue[Message],
                       outbox: asyncio.Queue[Message]) -> None:
    await inbox.put({"type": f"lifespan.{phase}"})
    answer = await asyncio.wait_for(outbox.get(), 5)
    assert answer["type"] == f"lifespan.{phase}.complete", answer


async def client_for(app: PhantomTokenMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.example.com")


async def test_lifespan_opens_before_the_app_starts_and_closes_after_it_stops() -> None:
    """Opening needs no socket here: the endpoint is configured (no discovery) and nothing is introspected."""
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        events.append(f"app startup, middleware open={app.is_open}")
        yield
        events.append(f"app shutdown, middleware open={app.is_open}")

    app = PhantomTokenMiddleware(business_app(lifespan), introspection_endpoint="http://127.0.0.1:9/introspect",
                                 client_id="c", client_secret="s")

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
