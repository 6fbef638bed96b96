"""The access log on a real ``serve`` and ``authz`` (demo authorization server, echo API): one line per request
with the right fields under every outcome, JSON with ``--log-format json``, no token or JWT in any log line, and
``X-Request-Id`` forwarded upstream (the client's when valid, else a generated one, exactly once)."""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from phantom_token.core.bearer import fingerprint

from .conftest import (
    INTROSPECTION_CLIENT,
    AuthServer,
    Gateway,
    GatewayFactory,
    Process,
    dump,
    free_port,
    http_request,
    raw_exchange,
    start_process,
)

pytestmark = pytest.mark.e2e

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
_GENERATED = re.compile(r"[0-9a-f]{16}")


def _config(plugin_config: dict[str, Any], echo_api: Process) -> dict[str, Any]:
    """The usual service, plus: /admin needs a scope nobody has, /as-down introspects at a closed port, /down
    forwards to a closed port."""
    config = copy.deepcopy(plugin_config)
    base = config["services"][0]
    plugin = base["plugins"][0]

    def service(name: str, url: str, path: str, **options: Any) -> dict[str, Any]:
        return {"name": name, "url": url, "routes": [{"name": f"{name}-route", "paths": [path]}],
                "plugins": [{"name": "phantom-token", "config": {**plugin["config"], **options}}]}

    closed = f"http://127.0.0.1:{free_port()}"
    config["services"] += [
        service("admin-api", echo_api.base_url, "/admin", scope="admin"),
        service("as-down", echo_api.base_url, "/as-down", introspection_endpoint=f"{closed}/introspect"),
        service("down", closed, "/down"),
    ]
    return config


def _access_lines(stderr: str) -> list[dict[str, str]]:
    """The text access log lines of a process's stderr, as field -> value."""
    lines = []
    for line in stderr.splitlines():
        if " phantom_token.access: " in line:
            message = line.split(" phantom_token.access: ", 1)[1]
            lines.append({name: json.loads(value) if value.startswith('"') else value
                          for name, value in _PAIR.findall(message)})
    return lines


def _wait_lines(process: Process, count: int, parse: Any = _access_lines) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        lines: list[dict[str, Any]] = parse(process.stderr())
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def _exercise(gw: Gateway, auth_server: AuthServer) -> dict[str, Any]:
    """One request of every outcome; what the test needs to check the lines."""
    token = auth_server.issue_token()
    inactive = "inactive-token-0123456789"
    ok = gw.request("/api/hello?code=secret-query", [("Authorization", f"Bearer {token}"),
                                                     ("X-Request-Id", "client-id_1:a.b")])
    assert ok.status == 200
    jwt = ok.json()["headers"]["authorization"].removeprefix("Bearer ")
    assert ok.json()["headers"]["x-request-id"] == "client-id_1:a.b"
    generated = gw.get_with_token(token)
    assert generated.status == 200
    assert _GENERATED.fullmatch(generated.json()["headers"]["x-request-id"])
    bad = gw.request("/api/hello", [("Authorization", f"Bearer {token}"), ("X-Request-Id", "a b\"c"),
                                    ("X-Request-Id", "second")])
    replaced = [value for name, value in bad.json()["raw_headers"] if name.lower() == "x-request-id"]
    assert bad.status == 200
    assert len(replaced) == 1
    assert _GENERATED.fullmatch(replaced[0])
    too_long = gw.request("/api/hello", [("Authorization", f"Bearer {token}"), ("X-Request-Id", "x" * 129)])
    assert _GENERATED.fullmatch(too_long.json()["headers"]["x-request-id"])
    assert gw.request("/api/hello").status == 401
    assert gw.get_with_token(inactive).status == 401
    assert gw.get_with_token(token, "/admin/x").status == 403
    assert gw.get_with_token(token, "/nowhere").status == 404
    assert gw.get_with_token(token, "/as-down/x").status == 502
    assert gw.get_with_token(token, "/down/x").status == 502
    answer = raw_exchange(gw.host, gw.port, b"GET /api/hello HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                          token.encode() + b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    return {"token": token, "inactive": inactive, "jwt": jwt, "generated": generated.json()["headers"]["x-request-id"],
            "replaced": replaced[0]}


def _check(lines: list[dict[str, Any]], seen: dict[str, Any], stderr: str) -> None:
    for line in lines:
        assert set(line) >= {"front_door", "route", "method", "path", "status", "outcome", "token", "total_ms",
                             "introspection_ms", "upstream_ms", "request_id"}, line
        assert line["front_door"] == "serve"
    mine = fingerprint(seen["token"])
    assert [(line["route"], line["method"], line["path"], int(line["status"]), line["outcome"], line["token"])
            for line in lines] == [
        ("business-api-route", "GET", "/api/hello", 200, "allowed", mine),
        ("business-api-route", "GET", "/api/hello", 200, "allowed", mine),
        ("business-api-route", "GET", "/api/hello", 200, "allowed", mine),
        ("business-api-route", "GET", "/api/hello", 200, "allowed", mine),
        ("business-api-route", "GET", "/api/hello", 401, "unauthorized", "-"),
        ("business-api-route", "GET", "/api/hello", 401, "unauthorized", fingerprint(seen["inactive"])),
        ("admin-api-route", "GET", "/admin/x", 403, "forbidden", mine),
        ("-", "GET", "/nowhere", 404, "not_found", "-"),
        ("as-down-route", "GET", "/as-down/x", 502, "server_error", mine),
        ("down-route", "GET", "/down/x", 502, "bad_gateway", mine),
        ("-", "-", "-", 400, "refused", "-"),
    ]
    assert [line["request_id"] for line in lines[:3]] == ["client-id_1:a.b", seen["generated"], seen["replaced"]]
    assert all(_GENERATED.fullmatch(line["request_id"]) for line in lines[1:])
    first = lines[0]
    assert float(first["introspection_ms"]) > 0
    assert float(first["upstream_ms"]) > 0
    assert float(first["total_ms"]) >= float(first["introspection_ms"]) + float(first["upstream_ms"]) - 0.01
    assert float(lines[1]["introspection_ms"]) == 0
    assert float(lines[1]["upstream_ms"]) > 0
    assert float(lines[4]["upstream_ms"]) == 0  # denied: nothing went upstream
    for secret in (seen["token"], seen["inactive"], seen["jwt"], seen["jwt"].split(".")[1], "secret-query",
                   "a b", "second"):
        assert secret not in stderr, f"{secret[:12]}... appears in the log"


def test_serve_access_log_text(gateway: GatewayFactory, plugin_config: dict[str, Any], echo_api: Process,
                               auth_server: AuthServer) -> None:
    gw = gateway(dump(_config(plugin_config, echo_api)), args=["--access-log"])
    seen = _exercise(gw, auth_server)
    lines = _wait_lines(gw, 11)
    _check(lines, seen, gw.stderr())


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    documents = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [document for document in documents if document["logger"] == "phantom_token.access"]


def test_serve_access_log_json(gateway: GatewayFactory, plugin_config: dict[str, Any], echo_api: Process,
                               auth_server: AuthServer) -> None:
    gw = gateway(dump(_config(plugin_config, echo_api)), args=["--access-log", "--log-format", "json"])
    seen = _exercise(gw, auth_server)
    lines = _wait_lines(gw, 11, _json_lines)
    stderr = gw.stderr()
    assert all(json.loads(line) for line in stderr.splitlines() if line.strip())  # every line is one JSON object
    assert all(isinstance(line["status"], int) and "time" in line for line in lines)
    _check(lines, seen, stderr)


def test_serve_access_log_off_by_default(gateway: GatewayFactory, plugin_config: dict[str, Any],
                                         echo_api: Process, auth_server: AuthServer) -> None:
    gw = gateway(dump(plugin_config))
    answer = gw.request("/api/hello", [("Authorization", f"Bearer {auth_server.issue_token()}"),
                                       ("X-Request-Id", "a b")])
    assert answer.status == 200
    assert answer.json()["headers"]["x-request-id"] == "a b"  # off: the request goes as it came
    time.sleep(0.2)
    assert "phantom_token.access" not in gw.stderr()


def test_authz_access_log(plugin_config: dict[str, Any], auth_server: AuthServer, e2e_logs: Path,
                          tmp_path: Path) -> None:
    config = copy.deepcopy(plugin_config)
    config["phantom_token"] = {"access_log": True, "log_level": "warning"}  # the file's option; WARNING hides none
    path = tmp_path / "authz.yml"
    path.write_text(dump(config), encoding="utf-8")
    port = free_port()
    process = start_process("authz", [sys.executable, "-m", "phantom_token", "authz", "-c", str(path), "--listen",
                                      f"127.0.0.1:{port}"], port, e2e_logs,
                            {"INTROSPECTION_SECRET": INTROSPECTION_CLIENT[1]})
    try:
        token = auth_server.issue_token()
        url = f"http://127.0.0.1:{port}/authz/nginx"
        allowed = http_request("GET", url, {"X-Original-URI": "/api/x?code=secret-query", "X-Original-Method": "POST",
                                            "Authorization": f"Bearer {token}", "X-Request-Id": "gw-1"})
        assert allowed.status == 200
        jwt = allowed.header("authorization")
        assert jwt is not None
        assert http_request("GET", url, {"X-Original-URI": "/api/x", "X-Original-Method": "GET"}).status == 401
        assert http_request("GET", url, {"X-Original-Method": "GET"}).status == 400
        assert http_request("GET", f"http://127.0.0.1:{port}/other").status == 404
        lines = _wait_lines(process, 4)
    finally:
        process.stop()
    stderr = process.stderr()
    got = [(line["front_door"], line["route"], line["method"], line["path"], line["status"], line["outcome"],
            line["token"]) for line in lines]
    assert got == [
        ("authz", "business-api-route", "POST", "/api/x", "200", "allowed", fingerprint(token)),
        ("authz", "business-api-route", "GET", "/api/x", "401", "unauthorized", "-"),
        ("authz", "-", "GET", "/authz/nginx", "400", "invalid_request", "-"),
        ("authz", "-", "GET", "/other", "404", "not_found", "-"),
    ]
    assert lines[0]["request_id"] == "gw-1"
    assert float(lines[0]["introspection_ms"]) > 0
    assert "upstream_ms" not in lines[0]
    assert all(_GENERATED.fullmatch(line["request_id"]) for line in lines[1:])
    for secret in (token, jwt.removeprefix("Bearer "), "secret-query"):
        assert secret not in stderr
