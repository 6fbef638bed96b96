"""``serve --workers 2`` spreads keep-alive connections over its workers (issue 18, point 5).

Each worker listens on its own SO_REUSEPORT socket and the kernel hashes every new connection to one of them, so the
workers share long-lived connections (a load balancer's pool, wrk's 50) instead of the first worker to wake taking
them all, which is what one shared socket gives (nginx's default on this kernel: docs/performance.md, "Workers").
Real processes: the gateway with two workers, the demo authorization server and the echo API; which worker holds a
connection is read from /proc (the socket inodes of each worker's descriptors against /proc/net/tcp).
"""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import pytest

from .conftest import AuthServer, GatewayFactory, child_pids, dump

pytestmark = pytest.mark.e2e

CONNECTIONS = 40
AT_LEAST = 5  # per worker; the chance that hashing puts fewer than 5 of 40 on one of two workers is about 2e-7


def _established_inodes(port: int) -> set[int]:
    """Socket inodes of the established TCP connections whose local port is ``port`` (IPv4)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], int(fields[9])
        if int(local.rsplit(":", 1)[1], 16) == port and state == "01":  # 01: ESTABLISHED
            inodes.add(inode)
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_two_workers_share_the_keep_alive_connections(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    gw = gateway(dump(plugin_config), args=["--workers", "2"])
    token = auth_server.issue_token()
    connections = [http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15) for _ in range(CONNECTIONS)]
    try:
        for connection in connections:  # one request each, answered: every connection is accepted by a worker
            connection.request("GET", "/api/hello", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert not response.will_close
        accepted = _established_inodes(gw.port)
        workers = child_pids(gw.proc.pid)
        assert len(workers) == 2
        held = {pid: len(_socket_inodes(pid) & accepted) for pid in workers}
        assert sum(held.values()) == CONNECTIONS, held
        assert min(held.values()) >= AT_LEAST, held
        for connection in connections:  # and both keep answering on the same connections
            connection.request("GET", "/api/hello", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        for connection in connections:
            connection.close()
