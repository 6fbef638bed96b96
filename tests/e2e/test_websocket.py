"""WebSocket through the real ``phantom-token serve``, the demo authorization server and a real WebSocket echo server
(the websockets package, sync API in a thread): the handshake is authorized like any request, then the connection is
a tunnel both ways; without a token the client gets the 401 JSON answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from .conftest import AuthServer, GatewayFactory, dump

pytestmark = pytest.mark.e2e


class Echo:
    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        self.port = 0


@pytest.fixture
def ws_echo() -> Iterator[Echo]:
    echo = Echo()

    def handler(ws: ServerConnection) -> None:
        echo.authorizations.append(ws.request.headers.get("Authorization") if ws.request else None)
        for message in ws:
            ws.send(message)

    server = serve(handler, "127.0.0.1", 0)
    echo.port = int(server.socket.getsockname()[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield echo
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def ws_config(plugin_config: dict[str, Any], ws_echo: Echo) -> dict[str, Any]:
    plugin_config["services"][0]["url"] = f"http://127.0.0.1:{ws_echo.port}"
    return plugin_config


def test_a_websocket_echo_through_serve_carries_the_jwt(gateway: GatewayFactory, auth_server: AuthServer,
                                                       ws_config: dict[str, Any], ws_echo: Echo) -> None:
    gw = gateway(dump(ws_config))
    token = auth_server.issue_token()
    with connect(f"ws://127.0.0.1:{gw.port}/api/chat", additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=10) as ws:
        for text in ("hello", "é" * 50_000):
            ws.send(text)
            assert ws.recv(timeout=10) == text
    (authorization,) = ws_echo.authorizations
    assert authorization is not None
    assert authorization.startswith("Bearer ey")  # the JWT from the authorization server
    assert token not in authorization
    assert auth_server.introspections(token) == 1


def test_a_websocket_without_a_token_gets_401(gateway: GatewayFactory, ws_config: dict[str, Any],
                                              ws_echo: Echo) -> None:
    gw = gateway(dump(ws_config))
    with pytest.raises(InvalidStatus) as caught:
        connect(f"ws://127.0.0.1:{gw.port}/api/chat", open_timeout=10)
    response = caught.value.response
    assert response.status_code == 401
    assert response.headers.get_all("WWW-Authenticate") == [  # Bearer, and DPoP (dpop: allowed)
        "Bearer", 'DPoP algs="ES256 ES384 ES512 PS256 RS256 EdDSA"']
    assert json.loads(response.body or b"")["code"] == "unauthorized"
    assert ws_echo.authorizations == []
