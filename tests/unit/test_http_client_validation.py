"""The HTTP client refuses what it must not send before it opens any connection (the client on real sockets:
tests/integration/test_http_client.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from phantom_token.http.client import HttpClient


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient()
    yield http
    await http.aclose()


async def test_header_injection_is_refused(client: HttpClient) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        await client.request("GET", "http://127.0.0.1:9/", [("X", "a\r\nEvil: 1")], timeout=5.0)
