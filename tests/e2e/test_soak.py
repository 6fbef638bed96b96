"""Soak (issue 17, Show): ``serve`` under mixed traffic for a while, with faults, must answer everything and stay flat.

``PHANTOM_TOKEN_SOAK_SECONDS`` sets the length (default 25 s, what CI runs; e.g. 300 for a real soak). For that
time, four client threads send, on fresh connections: good tokens (a fixed set, plus a new token every 4th request,
so the number of distinct tokens grows far past the cache bounds), bad tokens (random strings, new ones all the
time: negative entries) and expired tokens, through a gateway with the access log on, small cache bounds and a
shared redis-server. The demo authorization server fails every 10th introspection call (HTTP 500), and Redis is
killed and started again in the middle.

It checks: every request got an answer (no connection reset, no timeout), each in the set expected for its kind
(good: 200, or 502 when its introspection was one of the failed calls; bad and expired: 401, or 502), the fault
was seen (some 502), the process never died, its RSS at the end is within a tolerance of its RSS after warm-up (the
caches were full by then), and no log line holds a raw token.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ..integration.redis_server import RedisServer, running_redis
from .conftest import AuthServer, Gateway, GatewayFactory, dump
from .test_redis_cluster import until

pytestmark = pytest.mark.e2e

SECONDS = float(os.environ.get("PHANTOM_TOKEN_SOAK_SECONDS", "25"))
MAX_ENTRIES, NEGATIVE_MAX_ENTRIES = 200, 100
EXPECTED = {"good": {200, 502}, "bad": {401, 502}, "expired": {401, 502}}
RSS_TOLERANCE = 1.10  # RSS may end at most 10 % + 4 MiB above its level after warm-up
RSS_SLACK_KIB = 4096
_WORDS = re.compile(r"[A-Za-z0-9_~+/.=-]{16,}")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from running_redis()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_soak_mixed_tokens_failing_server_and_a_redis_restart(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, redis_server: RedisServer
) -> None:
    cache = {"redis_url": redis_server.url, "redis_timeout_seconds": 0.5, "max_entries": MAX_ENTRIES,
             "negative_max_entries": NEGATIVE_MAX_ENTRIES}
    gw: Gateway = gateway(dump({**plugin_config, "phantom_token": {"cache": cache}}), args=["--access-log"])
    good = [auth_server.issue_token() for _ in range(20)]
    expired = ["expired-" + secrets.token_urlsafe(24) for _ in range(10)]
    for token in expired:
        auth_server.register_token(token, expires_in=1)
    until(lambda: all(auth_server.introspect(t).status == 204 for t in expired), within=10)
    auth_server.set_controls(reset=True, failure="status", failure_status=500, failure_every=10)

    used: set[str] = set(good) | set(expired)
    statuses: dict[str, Counter[int]] = {kind: Counter() for kind in EXPECTED}
    unexpected: list[tuple[str, int, str]] = []
    errors: list[str] = []
    count = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def traffic(seed: int) -> None:
        n = seed
        while not stop.is_set():
            n += 1
            if n % 10 < 6:
                kind, token = "good", auth_server.issue_token() if n % 4 == 0 else good[n % len(good)]
            elif n % 10 < 8:
                kind, token = "bad", "bad-" + secrets.token_urlsafe(24)
            else:
                kind, token = "expired", expired[n % len(expired)]
            try:
                result = gw.get_with_token(token)
            except Exception as exc:  # a reset, a timeout: a request without an answer
                with lock:
                    errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                continue
            with lock:
                used.add(token)
                count[0] += 1
                statuses[kind][result.status] += 1
                if result.status not in EXPECTED[kind]:
                    unexpected.append((kind, result.status, result.text[:200]))

    threads = [threading.Thread(target=traffic, args=(seed * 1000,)) for seed in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(SECONDS * 0.3)  # the soak's length is the point here: nothing to wait for
        warm_rss = rss_kib(gw.proc.pid)
        time.sleep(SECONDS * 0.1)
        redis_server.kill()
        time.sleep(SECONDS * 0.1)
        redis_server.start()
        time.sleep(max(0.0, SECONDS - (time.monotonic() - started)))
        end_rss = rss_kib(gw.proc.pid)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    assert gw.proc.poll() is None, "the gateway died"
    assert not errors, errors[:5]
    assert not unexpected, unexpected[:5]
    assert all(statuses[kind] for kind in EXPECTED), statuses
    assert sum(c[502] for c in statuses.values()) > 0, statuses  # the failing server was exercised
    distinct = len(used)
    assert distinct > 2 * (MAX_ENTRIES + NEGATIVE_MAX_ENTRIES), distinct  # well past the cache bounds
    assert end_rss <= warm_rss * RSS_TOLERANCE + RSS_SLACK_KIB, (warm_rss, end_rss)
    print(f"soak: {SECONDS:.0f} s, {count[0]} requests, {distinct} distinct tokens, statuses {statuses}, "
          f"RSS {warm_rss} KiB after warm-up, {end_rss} KiB at the end")

    stderr = gw.stderr()
    assert stderr.count("redis unavailable") >= 1  # the restart was seen ...
    assert "redis reachable again" in stderr  # ... and its end
    assert stderr.count(" front_door=serve ") + stderr.count('"front_door":"serve"') >= count[0]  # the access log
    leaked = {word for word in _WORDS.findall(stderr) if word in used}
    leaked |= {token for token in good + expired if token in stderr}
    assert not leaked, f"{len(leaked)} raw tokens in the gateway's log"
