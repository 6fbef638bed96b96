"""Operating the gateway: the demo command, the admin listener and its metrics, JSON logs, workers, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from phantom_token.core.bearer import fingerprint

from .conftest import (
    DEMO_CLIENT,
    AuthServer,
    GatewayFactory,
    HttpResult,
    _basic,
    child_pids,
    dump,
    free_port,
    http_request,
    plugin_options,
    start_process,
)

pytestmark = pytest.mark.e2e


def wait_for(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_version(run_cli: Any) -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("phantom-token 0.")
    assert ", hot path compiled (mypyc)" in result.stdout or ", hot path pure Python (" in result.stdout


def test_demo_shows_200_401_and_403(e2e_logs: Path) -> None:
    port = free_port(3)  # the demo takes port, port + 1 and port + 2
    demo = start_process("demo", [sys.executable, "-m", "phantom_token", "demo", "--port", str(port)], port, e2e_logs)
    try:
        token_answer = http_request(
            "POST", f"http://127.0.0.1:{port + 1}/oauth/token",
            {"Content-Type": "application/x-www-form-urlencoded", "Authorization": _basic(*DEMO_CLIENT)},
            b"grant_type=client_credentials",
        )
        token = token_answer.json()["access_token"]
        ok = http_request("GET", f"{demo.base_url}/api/hello", {"Authorization": f"Bearer {token}"})
        assert ok.status == 200
        assert ok.json()["jwt_claims"]["client_id"] == "demo-client"
        assert token not in ok.text
        assert http_request("GET", f"{demo.base_url}/api/hello").status == 401
        assert http_request("GET", f"{demo.base_url}/admin/x", {"Authorization": f"Bearer {token}"}).status == 403
        wait_for(lambda: any("TOKEN=$(curl" in line for line in demo.stdout_lines), what="the curl commands")
        assert not any(token in line for line in demo.stdout_lines)
    finally:
        assert demo.stop() == 0


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def test_admin_listener_health_and_metrics(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    admin_port = free_port()
    plugin_config["phantom_token"] = {"admin_token": "{vault://env/ADMIN_TOKEN}"}
    gw = gateway(dump(plugin_config), env={"ADMIN_TOKEN": "s3cret-admin"},
                 args=["--admin-listen", f"127.0.0.1:{admin_port}"])
    admin = f"http://127.0.0.1:{admin_port}"
    assert any(f"admin on http://127.0.0.1:{admin_port}" in line for line in gw.stdout_lines)
    assert http_request("GET", f"{admin}/healthz").status == 401
    auth = {"Authorization": "Bearer s3cret-admin"}
    assert http_request("GET", f"{admin}/healthz", {"Authorization": "Bearer wrong"}).status == 401
    health = http_request("GET", f"{admin}/healthz", auth)
    assert (health.status, health.json()) == (200, {"status": "ok"})
    assert http_request("GET", f"{admin}/readyz", auth).status == 200

    token = auth_server.issue_token()
    assert gw.get_with_token(token).status == 200
    assert gw.get_with_token(token).status == 200
    assert gw.request("/api/x").status == 401
    metrics = http_request("GET", f"{admin}/metrics", auth)
    assert metrics.status == 200
    assert (metrics.header("Content-Type") or "").startswith("text/plain")
    text = metrics.text
    assert metric(text, "phantom_token_introspections_total") == 1
    assert metric(text, "phantom_token_cache_hits_total") == 1
    assert metric(text, "phantom_token_cache_misses_total") == 1
    assert 'phantom_token_requests_total{route="business-api-route",outcome="allowed",status="200"} 2' in text
    assert 'phantom_token_requests_total{route="business-api-route",outcome="unauthorized",status="401"} 1' in text
    assert metric(text, "phantom_token_upstream_seconds_count") == 2
    assert metric(text, 'phantom_token_cache_entries{kind="active"}') == 1
    assert metric(text, "phantom_token_introspection_seconds_count") == 1
    assert token not in text


def test_json_logs_name_the_fault_and_never_the_token(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    auth_server.set_controls(failure="status", failure_status=503)
    gw = gateway(dump(plugin_config), args=["--log-format", "json"])
    token = auth_server.issue_token()
    result = gw.get_with_token(token)
    assert result.status == 502
    assert result.json()["code"] == "server_error"
    wait_for(lambda: "introspection failed" in gw.stderr(), what="the error log line")
    records = [json.loads(line) for line in gw.stderr().splitlines() if line.startswith("{")]
    errors = [r for r in records if r["level"] == "error"]
    assert len(errors) == 1, records
    assert "HTTP 503" in errors[0]["message"]
    assert f"token={fingerprint(token)}" in errors[0]["message"]
    assert token not in gw.stderr()


def test_sigterm_drains_in_flight_requests(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    gw = gateway(dump(plugin_config))
    token = auth_server.issue_token()
    auth_server.set_controls(delay_ms=700)
    results: list[HttpResult] = []
    worker = threading.Thread(target=lambda: results.append(gw.get_with_token(token)))
    worker.start()
    # the demo AS counts a call when it starts answering it, before its delay: then the request is in flight
    wait_for(lambda: auth_server.introspections() == 1, what="the introspection call to start")
    gw.proc.send_signal(signal.SIGTERM)
    worker.join(15)
    assert len(results) == 1
    assert results[0].status == 200
    assert gw.proc.wait(15) == 0


def test_workers_share_the_port_and_are_restarted(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer
) -> None:
    plugin_options(plugin_config)["token_cache_seconds"] = 60
    gw = gateway(dump(plugin_config), args=["--workers", "2"])
    token = auth_server.issue_token()
    for _ in range(6):
        assert gw.get_with_token(token).status == 200
    children = child_pids(gw.proc.pid)
    assert len(children) == 2
    os.kill(children[0], signal.SIGKILL)
    wait_for(lambda: len(child_pids(gw.proc.pid)) == 2 and children[0] not in child_pids(gw.proc.pid),
             what="a replacement worker")
    for _ in range(6):
        assert gw.get_with_token(token).status == 200


