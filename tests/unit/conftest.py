"""The unit tests open no sockets (README): every test here runs with ``socket.socket.bind``, ``connect`` and
``connect_ex`` refused, and fails if it tried one even when the code under test caught the error (an adapter turns
a refused connect into a 502, which a test could mistake for the answer it expects). Tests that need a listener
or a connection belong in tests/integration. (asyncio's own wake-up ``socketpair`` goes through none of these.)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    attempts: list[str] = []

    def refuse(name: str) -> Any:
        def refused(self: socket.socket, *args: object, **kwargs: object) -> object:
            attempts.append(f"socket.{name}{args[:1]}")
            raise RuntimeError(f"tests/unit opens no sockets: socket.{name}{args[:1]} (move the test to "
                               "tests/integration)")

        return refused

    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse(name))
    yield
    if attempts:
        pytest.fail(f"{os.environ.get('PYTEST_CURRENT_TEST', 'this test')} tried to open sockets: {attempts}")
