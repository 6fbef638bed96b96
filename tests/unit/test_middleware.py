"""The ASGI middleware protecting a real FastAPI app, with no sockets: its lifespan, websocket decisions and
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


def websocket_scope(path: str, *headers: tuple[bytes, bytes], extensions: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "websocket", "asgi": {"version": "3.0"}, "path": path,
                             "raw_path": path.encode(), "query_string": b"", "scheme": "ws", "subprotocols": [],
                             "headers": [(b"host", b"api.example.com"), *headers]}
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def run_websocket(app: PhantomTokenMiddleware, scope: dict[str, Any]) -> list[Message]:
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await inbox.put({"type": "websocket.connect"})
    await asyncio.wait_for(app(scope, inbox.get, send), 5)
    return sent


def websocket_app(tmp_path: Path) -> PhantomTokenMiddleware:
    """/ws is protected; /open/ws is a route without the plugin."""
    config = tmp_path / "phantom-token.yml"
    config.write_text(
        "_format_version: '2.1'\nservices:\n- name: api\n  routes:\n  - name: api\n    paths: [/ws, /api]\n"
        "  plugins:\n  - name: phantom-token\n    config:\n      introspection_endpoint: http://127.0.0.1:9/introspect\n"
        "      client_id: c\n      client_secret: s\n- name: open\n  routes:\n  - name: open\n    paths: [/open]\n"
        "    strip_path: false\n", encoding="utf-8")
    api = business_app()

    @api.websocket("/open/ws")
    async def open_ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("open")
        await socket.close()

    return PhantomTokenMiddleware.from_config(api, config)


async def test_a_websocket_without_a_token_is_refused_before_the_app_accepts_it(tmp_path: Path) -> None:
    app = websocket_app(tmp_path)
    assert await run_websocket(app, websocket_scope("/ws")) == [{"type": "websocket.close", "code": 1008}]
    forged = await run_websocket(app, websocket_scope("/open/../ws"))  # normalised, so the /ws route decides
    assert forged == [{"type": "websocket.close", "code": 1008}]


async def test_a_refused_websocket_gets_the_json_answer_where_the_server_can_send_one(tmp_path: Path) -> None:
    sent = await run_websocket(websocket_app(tmp_path),
                               websocket_scope("/ws", extensions={"websocket.http.response": {}}))
    assert [m["type"] for m in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert sent[0]["status"] == 401
    assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
    assert sent[1]["body"] == b'{"code":"unauthorized","message":"Missing, invalid or expired access token"}'


async def test_a_websocket_on_a_route_without_the_plugin_passes(tmp_path: Path) -> None:
    app = websocket_app(tmp_path)
    sent = await run_websocket(app, websocket_scope("/open/ws"))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "open"
    async with await client_for(app) as client:
        outside = await client.get("/elsewhere")  # the file's routes apply: no route matches, 404 from the engine
    assert (outside.status_code, outside.json()["code"]) == (404, "not_found")


def test_a_config_mistake_fails_when_the_middleware_is_built() -> None:
    with pytest.raises(ConfigError, match="client_id"):
        PhantomTokenMiddleware(business_app(), introspection_endpoint="http://127.0.0.1:9/x", client_secret="s")
