"""Fixtures for the integration tests: ``redis_server``, a real Redis on a free loopback port (see redis_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .redis_server import RedisServer, running_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from running_redis()
