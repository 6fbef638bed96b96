"""Redis beyond one node (issue 17, point 6), live: Sentinel (a primary, a replica, three sentinels) with a primary
failover under load, and a three-node Redis Cluster with the cache, purge and the cluster-wide single-flight.

Every server here is a real ``redis-server`` (plain, ``--sentinel``, ``--cluster-enabled yes``) started on free
loopback ports and stopped at teardown; the cluster is formed with ``redis-cli --cluster create``. The gateways
are real ``phantom-token serve`` processes (the e2e rig: demo authorization server, echo API).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from .conftest import AuthServer, Gateway, GatewayFactory, HttpResult, dump, free_port
from .test_redis_cluster import ADMIN_TOKEN, purge_cli, until

pytestmark = pytest.mark.e2e
SERVICE = "phantom"
PREFIX = "phantom-token:"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"no {name} on PATH (apt-get install redis-server)")
    return found


class Node:
    """One redis-server process (any mode), on a loopback port."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.argv, self.port = argv, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(self.answers, within=10)

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, **options)

    def answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, f"{self.argv} exited with {self.process.returncode}"
        with contextlib.suppress(redis.RedisError):
            return bool(self.client().ping())
        return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def command(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def data_node(port: int, *extra: str) -> Node:
    return Node([_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", *extra], port)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


@pytest.fixture
def redis_config(plugin_config: dict[str, Any]) -> Callable[..., str]:
    def make(url: str, admin_port: int | None = None) -> str:
        section: dict[str, Any] = {"cache": {"redis_url": url, "encryption_key": "e" * 44,
                                             "redis_timeout_seconds": 0.5}}
        if admin_port is not None:
            section |= {"admin_listen": f"127.0.0.1:{admin_port}", "admin_token": ADMIN_TOKEN}
        return dump({**plugin_config, "phantom_token": section})

    return make


def run_traffic(gateways: list[Gateway], auth_server: AuthServer, during: Callable[[list[HttpResult]], None]
                ) -> list[HttpResult]:
    """Requests from one thread per gateway (known tokens, and a new token every 5th request, which misses every
    cache) while ``during(results)`` runs; every result."""
    tokens = [auth_server.issue_token() for _ in range(10)]
    results: list[HttpResult] = []
    stop = threading.Event()

    def traffic(gw: Gateway) -> None:
        n = 0
        while not stop.is_set():
            token = auth_server.issue_token() if n % 5 == 0 else tokens[n % 10]
            results.append(gw.get_with_token(token))
            n += 1

    threads = [threading.Thread(target=traffic, args=(gw,)) for gw in gateways]
    for thread in threads:
        thread.start()
    try:
        until(lambda: len(results) > 40, within=15)
        during(results)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    return results


# --- Sentinel -----------------------------------------------------------------------------------------------


class SentinelSet:
    def __init__(self, primary: Node, replica: Node, sentinels: list[Node]) -> None:
        self.primary, self.replica, self.sentinels = primary, replica, sentinels

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{SERVICE}"

    def master_port(self) -> int:
        with contextlib.suppress(redis.RedisError):
            host_port = command(self.sentinels[0].client(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(host_port[1])
        return 0

    def ready(self) -> bool:
        """Every sentinel knows the replica (in sync) and the other sentinels: a failover can be carried out."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                client = sentinel.client(decode_responses=True)
                replicas = command(client, "SENTINEL", "REPLICAS", SERVICE)
                others = command(client, "SENTINEL", "SENTINELS", SERVICE)
                if not (replicas and "s_down" not in str(replicas) and len(others) == len(self.sentinels) - 1):
                    return False
                continue
            return False
        info = self.replica.client(decode_responses=True).info("replication")
        return info.get("master_link_status") == "up"


@pytest.fixture
def sentinel_set(nodes: list[Node], tmp_path: Path) -> SentinelSet:
    # --dir: a replica writes the RDB of its full sync to disk (dump.rdb), even with --save ''
    primary = data_node(free_port(), "--dir", str(tmp_path))
    replica = data_node(free_port(), "--dir", str(tmp_path), "--replicaof", "127.0.0.1", str(primary.port))
    sentinels = []
    for index in range(3):
        port = free_port()
        conf = tmp_path / f"sentinel-{index}.conf"  # a sentinel rewrites its file: one each
        conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel resolve-hostnames no\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 10000\n", encoding="utf-8")
        sentinels.append(Node([_binary("redis-server"), str(conf), "--sentinel"], port))
    for node in [primary, replica, *sentinels]:
        nodes.append(node)
        node.start()
    found = SentinelSet(primary, replica, sentinels)
    until(found.ready, within=30)
    return found


@pytest.mark.parametrize("how", ["sentinel-failover", "primary-killed"])
def test_a_sentinel_failover_under_load_loses_no_request(
    gateway: GatewayFactory, redis_config: Callable[..., str], auth_server: AuthServer, sentinel_set: SentinelSet,
    how: str,
) -> None:
    gateways = [gateway(redis_config(sentinel_set.url)) for _ in range(2)]
    token = auth_server.issue_token()
    assert all(gw.get_with_token(token).status == 200 for gw in gateways)
    assert auth_server.introspections(token) == 1  # shared through the primary found by the sentinels
    assert sentinel_set.primary.client().dbsize() >= 1
    old, new = sentinel_set.primary, sentinel_set.replica

    def failover(results: list[HttpResult]) -> None:
        if how == "sentinel-failover":
            command(sentinel_set.sentinels[0].client(), "SENTINEL", "FAILOVER", SERVICE)
        else:
            old.kill()
        until(lambda: sentinel_set.master_port() == new.port, within=30)
        until(lambda: new.client().info("replication").get("role") == "master", within=30)
        before = new.client().dbsize()
        seen = len(results)
        # The gateways find the new primary: entries for the new tokens are written there.
        until(lambda: len(results) > seen + 60 and new.client().dbsize() > before + 5, within=30)

    results = run_traffic(gateways, auth_server, failover)
    bad = [(r.status, r.text) for r in results if r.status != 200]
    assert not bad, bad[:3]
    assert len(results) > 100


# --- Cluster ------------------------------------------------------------------------------------------------


class Cluster:
    def __init__(self, members: list[Node]) -> None:
        self.members = members

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.members[:2])

    def ok(self) -> bool:
        for node in self.members:
            with contextlib.suppress(redis.RedisError):
                if "cluster_state:ok" in command(node.client(decode_responses=True), "CLUSTER", "INFO"):
                    continue
            return False
        return True

    def entries(self) -> list[int]:
        """Cache entries (not locks) per node."""
        return [sum(1 for key in n.client().scan_iter(match=PREFIX + "*") if b"lock:" not in key)
                for n in self.members]


@pytest.fixture
def cluster(nodes: list[Node], tmp_path: Path) -> Cluster:
    members = []
    for _ in range(3):
        port = free_port()
        # the bus port chosen free too (by default it is port + 10000, which may be taken or out of range)
        node = data_node(port, "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file",
                         str(tmp_path / f"nodes-{port}.conf"), "--cluster-node-timeout", "2000", "--dir", str(tmp_path))
        nodes.append(node)
        node.start()
        members.append(node)
    created = subprocess.run([_binary("redis-cli"), "--cluster", "create",
                              *(f"127.0.0.1:{n.port}" for n in members), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stdout + created.stderr
    found = Cluster(members)
    until(found.ok, within=30)
    return found


def test_a_three_node_cluster_shares_the_cache_purges_and_single_flights_across_slots(
    gateway: GatewayFactory, redis_config: Callable[..., str], auth_server: AuthServer, cluster: Cluster,
    tmp_path: Path,
) -> None:
    admin_port = free_port()
    gateways = [gateway(redis_config(cluster.url, admin_port)), gateway(redis_config(cluster.url))]
    tokens = [auth_server.issue_token() for _ in range(20)]
    for token in tokens:
        for gw in gateways:
            result = gw.get_with_token(token)
            assert result.status == 200, result.text
    assert auth_server.introspections() == 20  # one per token across both gateways: each found the other's entry
    per_node = cluster.entries()
    assert sum(per_node) == 20, per_node
    assert sum(1 for n in per_node if n) >= 2, per_node  # spread over the slots of several nodes

    # Cluster-wide single-flight: 64 concurrent requests over both gateways for a new token, a slow server: 1 call.
    token = auth_server.issue_token()
    auth_server.set_controls(delay_ms=500)
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda i: gateways[i % 2].get_with_token(token), range(64)))
    assert [r.status for r in results] == [200] * 64
    assert auth_server.introspections(token) == 1
    auth_server.set_controls(delay_ms=0)

    # Purge: revoked at the server, purged through worker 0's admin listener, refused by both within a second.
    revoked = tokens[:3]
    config = tmp_path / "purge.yml"
    config.write_text(redis_config(cluster.url, admin_port))
    for token in revoked:
        auth_server.revoke(token)
        purged = purge_cli(config, token)
        assert purged.returncode == 0, purged.stderr
        assert '"complete": true' in purged.stdout, purged.stdout
        assert '"shared": 1' in purged.stdout, purged.stdout
    until(lambda: all(gw.get_with_token(t).status == 401 for gw in gateways for t in revoked), within=1.0)
    assert all(gw.get_with_token(t).status == 200 for gw in gateways for t in tokens[3:])
    for gw in gateways:
        assert "redis unavailable" not in gw.stderr()


def test_a_cluster_that_cannot_be_reached_never_fails_a_request(
    gateway: GatewayFactory, redis_config: Callable[..., str], auth_server: AuthServer, nodes: list[Node]
) -> None:
    down = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"  # nothing listens there
    gw = gateway(redis_config(down))
    deadline = time.monotonic() + 3.0  # long enough for the link's backoff to let probes through to the "cluster"
    while time.monotonic() < deadline:
        result = gw.get_with_token(auth_server.issue_token())  # a new token: Redis is asked (GET, lock SET)
        assert result.status == 200, result.text
    assert "redis unavailable" in gw.stderr()
