"""Gateway processes sharing a real Redis: one introspection per token across them, purge everywhere, faults.

Uses the e2e rig (demo authorization server, echo API, ``gateway`` factory) and a redis-server started here.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ..integration.redis_server import RedisServer, running_redis
from .conftest import REPO, AuthServer, Gateway, GatewayFactory, HttpResult, dump, free_port

pytestmark = pytest.mark.e2e
ADMIN_TOKEN = "e2e-admin-token-0123456789"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from running_redis()


@pytest.fixture
def shared_config(plugin_config: dict[str, Any], redis_server: RedisServer) -> Callable[..., str]:
    def make(admin_port: int | None = None) -> str:
        cache = {"redis_url": redis_server.url, "encryption_key": "e" * 44, "redis_timeout_seconds": 1.0}
        section: dict[str, Any] = {"cache": cache}
        if admin_port is not None:
            section |= {"admin_listen": f"127.0.0.1:{admin_port}", "admin_token": ADMIN_TOKEN}
        return dump({**plugin_config, "phantom_token": section})

    return make


def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_token_introspected_through_one_gateway_is_served_by_the_others(
    gateway: GatewayFactory, shared_config: Callable[..., str], auth_server: AuthServer
) -> None:
    gateways = [gateway(shared_config()) for _ in range(3)]
    token = auth_server.issue_token()
    for gw in gateways:
        result = gw.get_with_token(token)
        assert result.status == 200, result.text
    assert auth_server.introspections(token) == 1


def test_64_concurrent_requests_over_2_gateways_with_a_slow_server_make_one_call(
    gateway: GatewayFactory, shared_config: Callable[..., str], auth_server: AuthServer
) -> None:
    gateways = [gateway(shared_config()) for _ in range(2)]
    token = auth_server.issue_token()
    auth_server.set_controls(delay_ms=500)
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda i: gateways[i % 2].get_with_token(token), range(64)))
    assert [r.status for r in results] == [200] * 64
    assert auth_server.introspections(token) == 1


def purge_cli(config: Path, token: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "phantom_token", "purge", "-c", str(config), "--token-stdin"]
    return subprocess.run(argv, input=token + "\n", capture_output=True, text=True, timeout=30, cwd=REPO,
                          check=False)


def test_purge_takes_effect_on_every_gateway_within_a_second(
    gateway: GatewayFactory, shared_config: Callable[..., str], auth_server: AuthServer, tmp_path: Path
) -> None:
    admin_port = free_port()
    gateways = [gateway(shared_config(admin_port)), gateway(shared_config()), gateway(shared_config())]
    token = auth_server.issue_token()
    assert all(gw.get_with_token(token).status == 200 for gw in gateways)
    auth_server.revoke(token)
    assert all(gw.get_with_token(token).status == 200 for gw in gateways)  # cached: revocation unseen
    config = tmp_path / "purge.yml"
    config.write_text(shared_config(admin_port))
    purged = purge_cli(config, token)
    assert purged.returncode == 0, purged.stderr
    assert '"complete": true' in purged.stdout
    assert token not in purged.stdout + purged.stderr
    started = time.monotonic()
    until(lambda: all(gw.get_with_token(token).status == 401 for gw in gateways), within=1.0)
    assert time.monotonic() - started < 1.0


def test_killing_redis_mid_test_loses_no_request(
    gateway: GatewayFactory, shared_config: Callable[..., str], auth_server: AuthServer, redis_server: RedisServer
) -> None:
    gateways = [gateway(shared_config()) for _ in range(2)]
    tokens = [auth_server.issue_token() for _ in range(10)]
    results: list[HttpResult] = []
    stop = threading.Event()

    def traffic(gw: Gateway) -> None:
        n = 0
        while not stop.is_set():
            token = auth_server.issue_token() if n % 5 == 0 else tokens[n % 10]  # new tokens miss every cache
            results.append(gw.get_with_token(token))
            n += 1

    threads = [threading.Thread(target=traffic, args=(gw,)) for gw in gateways]
    for thread in threads:
        thread.start()
    try:
        until(lambda: len(results) > 40)
        redis_server.kill()
        seen = len(results)
        until(lambda: len(results) > seen + 80, within=15)
        redis_server.start()
        seen = len(results)
        until(lambda: len(results) > seen + 80, within=15)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    bad = [(r.status, r.text) for r in results if r.status != 200]
    assert not bad, bad[:3]
    for gw in gateways:
        warnings = gw.stderr().count("redis unavailable")
        assert 1 <= warnings <= 2, gw.stderr()  # logged once per outage (listener and commands share the flag)


def test_workers_share_redis_and_purge_reaches_every_worker(
    gateway: GatewayFactory, shared_config: Callable[..., str], auth_server: AuthServer, tmp_path: Path
) -> None:
    admin_port = free_port()
    gw = gateway(shared_config(admin_port), args=["--workers", "3"])
    token = auth_server.issue_token()
    for _ in range(30):  # a new connection each time: SO_REUSEPORT spreads them over the workers
        assert gw.get_with_token(token).status == 200
    assert auth_server.introspections(token) == 1
    auth_server.revoke(token)
    config = tmp_path / "purge.yml"
    config.write_text(shared_config(admin_port))
    assert purge_cli(config, token).returncode == 0
    until(lambda: all(gw.get_with_token(token).status == 401 for _ in range(30)), within=1.0)
