"""Operating a running gateway (issue 17): /metrics summed over workers, /readyz and Redis, SIGHUP reloads.

Real processes only: ``phantom-token serve`` (one or two workers, with its admin listener), the demo authorization
server, the echo API and a real redis-server (tests/integration/redis_server.py).
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..integration.redis_server import RedisServer, running_redis
from .conftest import AuthServer, Gateway, GatewayFactory, child_pids, dump, free_port, http_request, plugin_options
from .test_operations import wait_for

pytestmark = pytest.mark.e2e

ROUTE = "business-api-route"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from running_redis()


def series(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def requests_by_outcome(samples: dict[str, float]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for name, value in samples.items():
        if name.startswith(f'phantom_token_requests_total{{route="{ROUTE}",'):
            outcome = name.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0) + value
    return counts


def metrics(admin_port: int) -> dict[str, float]:
    """The admin listener's /metrics; {} while it is not there (its worker being replaced)."""
    try:
        answer = http_request("GET", f"http://127.0.0.1:{admin_port}/metrics")
    except OSError:
        return {}
    assert answer.status == 200
    return series(answer.text)


def readyz(admin_port: int) -> tuple[int, Any]:
    """/readyz's status and JSON body; (0, None) when the admin listener does not answer."""
    try:
        answer = http_request("GET", f"http://127.0.0.1:{admin_port}/readyz")
    except OSError:
        return 0, None
    return answer.status, answer.json()


def config_path(gw: Gateway) -> Path:
    argv = [str(arg) for arg in gw.proc.args]  # type: ignore[union-attr]
    return Path(argv[argv.index("-c") + 1])


def test_metrics_with_two_workers_sum_every_worker_and_survive_a_restart(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    admin_port = free_port()
    gw = gateway(dump(plugin_config), args=["--workers", "2", "--admin-listen", f"127.0.0.1:{admin_port}"])
    token = auth_server.issue_token()
    # Each request on a new connection: the kernel spreads them over both workers (SO_REUSEPORT hashing).
    for _ in range(30):
        assert gw.get_with_token(token).status == 200
    for _ in range(10):
        assert gw.request("/api/hello").status == 401
    for _ in range(5):
        assert gw.get_with_token("not-a-known-token").status == 401
    expected = {"allowed": 30, "unauthorized": 15}
    wait_for(lambda: requests_by_outcome(metrics(admin_port)) == expected, what="the totals of both workers")
    samples = metrics(admin_port)
    assert samples["phantom_token_workers"] == 2
    assert samples["phantom_token_upstream_seconds_count"] == 30
    introspections = samples["phantom_token_introspections_total"]
    assert introspections == auth_server.introspections()
    # A worker that stops gracefully publishes last; its replacement carries its counts on: none vanish or double.
    children = child_pids(gw.proc.pid)
    assert len(children) == 2
    os.kill(children[1], signal.SIGTERM)
    wait_for(lambda: len(child_pids(gw.proc.pid)) == 2 and children[1] not in child_pids(gw.proc.pid),
             what="a replacement worker")
    wait_for(lambda: metrics(admin_port).get("phantom_token_workers") == 2, what="both workers publishing")
    assert requests_by_outcome(metrics(admin_port)) == expected
    for _ in range(10):
        assert gw.get_with_token(token).status == 200
    expected["allowed"] += 10
    wait_for(lambda: requests_by_outcome(metrics(admin_port)) == expected, what="the totals after the restart")
    assert metrics(admin_port)["phantom_token_introspections_total"] >= introspections


def test_readiness_follows_redis_while_requests_are_still_served(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, redis_server: RedisServer
) -> None:
    admin_port = free_port()
    plugin_config["phantom_token"] = {"cache": {"redis_url": redis_server.url, "redis_timeout_seconds": 0.5}}
    gw = gateway(dump(plugin_config), args=["--admin-listen", f"127.0.0.1:{admin_port}"])
    assert readyz(admin_port) == (200, {"status": "ready"})
    token = auth_server.issue_token()
    assert gw.get_with_token(token).status == 200

    redis_server.kill()
    wait_for(lambda: readyz(admin_port)[0] == 503, what="/readyz to say 503")
    assert readyz(admin_port) == (503, {"status": "redis_unreachable"})
    assert gw.get_with_token(token).status == 200  # served from the memory cache
    assert gw.get_with_token(auth_server.issue_token()).status == 200  # and by introspection
    assert metrics(admin_port)["phantom_token_redis_unavailable"] == 1
    assert http_request("GET", f"http://127.0.0.1:{admin_port}/healthz").status == 200  # alive, not ready

    redis_server.start()
    wait_for(lambda: readyz(admin_port)[0] == 200, timeout=20, what="/readyz to recover")
    assert metrics(admin_port)["phantom_token_redis_unavailable"] == 0


def test_readiness_says_draining_while_in_flight_requests_finish(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    admin_port = free_port()
    gw = gateway(dump(plugin_config), args=["--admin-listen", f"127.0.0.1:{admin_port}"])
    token = auth_server.issue_token()
    auth_server.set_controls(delay_ms=1500)
    results: list[int] = []
    client = threading.Thread(target=lambda: results.append(gw.get_with_token(token).status))
    client.start()
    wait_for(lambda: auth_server.introspections() == 1, what="the introspection call to start")
    assert readyz(admin_port) == (200, {"status": "ready"})
    gw.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: readyz(admin_port)[0] != 200, what="/readyz to change")
    assert readyz(admin_port) == (503, {"status": "draining"})  # the admin listener stays while requests drain
    client.join(15)
    assert results == [200]
    assert gw.proc.wait(15) == 0


class KeepAliveLoad:
    """Clients sending requests in a loop, each on its own keep-alive connection, until stopped; every answer's
    status is recorded, and any failure (a refused, reset or unanswered request) too."""

    def __init__(self, gw: Gateway, token: str, clients: int = 3) -> None:
        self.gw, self.token = gw, token
        self.statuses: list[int] = []
        self.answers: list[tuple[int, int]] = []  # (client, status), in the order they were recorded
        self.failures: list[str] = []
        self.connections: set[int] = set()
        self._stop = threading.Event()
        self.clients = clients
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> KeepAliveLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self, client: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        try:
            while not self._stop.is_set():
                try:
                    conn.request("GET", "/api/hello", headers={"Authorization": f"Bearer {self.token}"})
                    response = conn.getresponse()
                    response.read()
                    self.statuses.append(response.status)
                    self.answers.append((client, response.status))
                    if response.getheader("Connection", "").lower() == "close":
                        self.failures.append("the gateway closed a keep-alive connection")
                        return
                    self.connections.add(id(conn))
                except (OSError, http.client.HTTPException) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    return
        finally:
            conn.close()

    def count(self) -> int:
        return len(self.statuses)

    def each_client_after(self, seen: int) -> list[list[int]]:
        """Every client's statuses recorded after the first ``seen`` ones, in its own order."""
        answers = self.answers[seen:]
        return [[status for who, status in answers if who == client] for client in range(self.clients)]


def test_sighup_applies_a_good_file_under_load_and_refuses_a_bad_one(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    admin_port = free_port()
    gw = gateway(dump(plugin_config), args=["--workers", "2", "--admin-listen", f"127.0.0.1:{admin_port}"])
    token = auth_server.issue_token(scope="read")
    path = config_path(gw)
    with KeepAliveLoad(gw, token) as load:
        wait_for(lambda: load.count() >= 30, what="the load to run")
        assert set(load.statuses) == {200}
        plugin_options(plugin_config)["scope"] = ["write"]  # a scope the token does not have
        path.write_text(dump(plugin_config), encoding="utf-8")
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: gw.stderr().count("configuration reloaded") == 2, what="both workers to reload")
        seen = load.count()
        wait_for(lambda: load.count() >= seen + 30, what="more load after the reload")
        # Keep-alive connections opened before the reload get the new rule, past each client's first answer after
        # it (which may have been decided before it). Per client: the three clients' answers interleave, so a
        # late one decided before the reload can be recorded after other clients' newer ones.
        per_client = load.each_client_after(seen)
        after = [status for statuses in per_client for status in statuses[1:]]
        assert len(after) >= 30 - load.clients, per_client
        assert set(after) == {403}, per_client
    assert load.failures == []
    assert set(load.statuses) == {200, 403}
    assert gw.get_with_token(token).status == 403
    assert gw.get_with_token(auth_server.issue_token(scope="read write")).status == 200
    # The cache entry of the unchanged namespace was kept: the token was introspected once, before the reload.
    assert auth_server.introspections(token) <= 2  # at most once per worker

    # A file that fails `check`: one log line, and nothing changes.
    path.write_text("_format_version: '2.1'\nservices: [unclosed\n", encoding="utf-8")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in gw.stderr(), what="the refusal")
    assert len([line for line in gw.stderr().splitlines() if "reload refused" in line]) == 1
    assert gw.get_with_token(token).status == 403
    assert gw.get_with_token(auth_server.issue_token(scope="read write")).status == 200
    # A change that needs a restart is refused the same way.
    plugin_config["phantom_token"] = {"max_header_bytes": 4096}
    path.write_text(dump(plugin_config), encoding="utf-8")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "needs a restart" in gw.stderr() or "need a restart" in gw.stderr(),
             what="the second refusal")
    assert "phantom_token.max_header_bytes" in gw.stderr()
    assert gw.get_with_token(token).status == 403
    applied = 'phantom_token_config_reloads_total{result="applied"}'
    wait_for(lambda: metrics(admin_port).get(applied) == 2, what="both workers' reload counted")
    assert token not in gw.stderr()


def test_sighup_reloads_a_single_process_too(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    gw = gateway(dump(plugin_config))  # no --workers: the process that serves handles SIGHUP itself
    token = auth_server.issue_token(scope="read")
    assert gw.get_with_token(token).status == 200
    path = config_path(gw)
    plugin_options(plugin_config)["scope"] = ["write"]
    path.write_text(dump(plugin_config), encoding="utf-8")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in gw.stderr(), what="the reload")
    assert gw.get_with_token(token).status == 403
    path.write_text("services: [unclosed\n", encoding="utf-8")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in gw.stderr(), what="the refusal")
    assert len([line for line in gw.stderr().splitlines() if "reload refused" in line]) == 1
    assert gw.get_with_token(token).status == 403
    assert gw.get_with_token(auth_server.issue_token(scope="read write")).status == 200
