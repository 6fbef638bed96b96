"""The end-to-end rig: real processes on 127.0.0.1, a stdlib HTTP client, and helpers to drive them.

Fixtures:
- ``auth_server`` (session): the demo authorization server with ``--test-controls``; its controls and stats are
  reset before every test by ``_reset_auth_server``.
- ``echo_api`` (session): the echo API, which answers with what it received.
- ``gateway``: a factory, ``gateway(config_yaml_text) -> Gateway``, running
  ``python -m phantom_token serve -c <file> --listen 127.0.0.1:<free port>``; every gateway it started is sent
  SIGTERM at teardown and must exit 0.
- ``plugin_config``/``config_text``: the usual configuration (one service to the echo API, route ``/api``, plugin
  pointing at the demo AS) as a dict to tweak, and as YAML text.
- ``run_cli``: runs ``python -m phantom_token ARGS`` to completion (bounded) for the commands that exit.

Invariants: readiness is the ``listening on http://`` line on stdout, awaited with a deadline (no sleeps); every
process started is stopped (SIGTERM, then SIGKILL after a timeout) even when a test fails; a process's stderr is
kept in a file and shown when it fails to start or to stop cleanly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from phantom_token.demo.authorization_server import fingerprint

# Ports come from the benchmark's process plumbing (bench/harness.py), one rule for both.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from harness import free_port as free_port  # re-exported: the e2e tests take their ports from here

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
REPO = Path(__file__).resolve().parents[2]
INTROSPECTION_CLIENT = ("introspection-client", "demo-introspection-secret")
DEMO_CLIENT = ("demo-client", "demo-secret")
UNAUTHORIZED_BODY = {"code": "unauthorized", "message": "Missing, invalid or expired access token"}


# --- HTTP client (stdlib only) ------------------------------------------------------------------------------

HeaderValue = str | bytes


@dataclass
class HttpResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of a response header (case-insensitive name)."""
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(
    method: str,
    url: str,
    headers: Sequence[tuple[str, HeaderValue]] | Mapping[str, HeaderValue] = (),
    body: bytes | None = None,
    timeout: float = 15.0,
) -> HttpResult:
    """One request on a fresh connection. ``headers`` may repeat a name and carry raw bytes values."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn.putrequest(method, target, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return HttpResult(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def raw_exchange(host: str, port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` as is on a new connection; return every byte received until the peer closes or times out."""
    chunks: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


# --- processes ----------------------------------------------------------------------------------------------


@dataclass
class Process:
    """A child process whose readiness is its ``listening on http://`` line."""

    name: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    host: str
    port: int
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return int(self.proc.returncode)


def _pump_stdout(proc: subprocess.Popen[bytes], lines: list[str], ready: queue.Queue[str | None]) -> None:
    """Read the child's stdout to the end (so its pipe never fills); report each line, then None at EOF."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        lines.append(line)
        ready.put(line)
    ready.put(None)


def start_process(
    name: str, argv: Sequence[str], port: int, log_dir: Path, env: Mapping[str, str] | None = None,
    scheme: str = "http",
) -> Process:
    """Start ``argv`` and wait (bounded) for its ``listening on http://127.0.0.1:PORT`` line (``scheme``: grpc for
    ``authz --listen off --grpc-listen``)."""
    stderr_path = log_dir / f"{name}-{port}.stderr"
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=child_env, cwd=REPO
        )
    process = Process(name, proc, stderr_path, "127.0.0.1", port)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump_stdout, args=(proc, process.stdout_lines, lines), daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.001))
        except queue.Empty:
            process.stop()
            pytest.fail(f"{name} did not print 'listening on {scheme}://' within {READY_TIMEOUT}s:\n"
                        f"{process.stderr()}")
        if line is None:
            code = process.stop()
            pytest.fail(f"{name} exited with {code} before it was ready:\n{process.stderr()}")
        if f"listening on {scheme}://" in line:
            assert f"127.0.0.1:{port}" in line, f"{name} announced {line!r}, expected port {port}"
            return process


# --- the demo authorization server --------------------------------------------------------------------------


class AuthServer:
    """The demo authorization server process and helpers for its endpoints and test controls."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.base_url = process.base_url
        self.introspection_endpoint = f"{self.base_url}/oauth/introspect"
        self.token_endpoint = f"{self.base_url}/oauth/token"

    def issue_token(self, scope: str | None = None, client: tuple[str, str] = DEMO_CLIENT) -> str:
        """A fresh opaque token from the client credentials grant."""
        form = {"grant_type": "client_credentials"}
        if scope is not None:
            form["scope"] = scope
        result = http_request(
            "POST",
            self.token_endpoint,
            {"Content-Type": "application/x-www-form-urlencoded", "Authorization": _basic(*client)},
            urllib.parse.urlencode(form).encode(),
        )
        assert result.status == 200, result.text
        token = result.json()["access_token"]
        assert isinstance(token, str)
        return token

    def register_token(self, token: str, scope: str = "read write", expires_in: int | None = None,
                       x5t_s256: str | None = None) -> None:
        """Make exactly ``token`` a valid access token (for tokens with unusual characters); with ``x5t_s256``,
        bound to that client certificate (RFC 8705: the answers carry ``cnf``)."""
        spec: dict[str, Any] = {"token": token, "scope": scope}
        if expires_in is not None:
            spec["expires_in"] = expires_in
        if x5t_s256 is not None:
            spec["x5t#S256"] = x5t_s256
        self.set_controls(register=spec)

    def revoke(self, token: str) -> None:
        self.set_controls(revoke=token)

    def set_controls(self, **controls: Any) -> dict[str, Any]:
        """POST /controls: delay_ms, failure ('none'|'status'|'garbage'|'hang'), failure_status, reset, ..."""
        result = http_request(
            "POST", f"{self.base_url}/controls", {"Content-Type": "application/json"}, json.dumps(controls).encode()
        )
        assert result.status == 200, result.text
        answer: dict[str, Any] = result.json()
        return answer

    def stats(self) -> dict[str, Any]:
        result = http_request("GET", f"{self.base_url}/stats")
        assert result.status == 200, result.text
        answer: dict[str, Any] = result.json()
        return answer

    def introspections(self, token: str | None = None) -> int:
        """Introspection calls received since the last reset: all of them, or those for ``token``."""
        stats = self.stats()["introspection"]
        if token is None:
            return int(stats["total"])
        return int(stats["by_token"].get(fingerprint(token), 0))

    def introspect(self, token: str, accept: str = "application/jwt") -> HttpResult:
        """Call the introspection endpoint directly, as the gateway would."""
        return http_request(
            "POST",
            self.introspection_endpoint,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": _basic(*INTROSPECTION_CLIENT),
                "Accept": accept,
            },
            urllib.parse.urlencode({"token": token}).encode(),
        )


def _basic(client_id: str, secret: str) -> str:
    import base64

    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


@pytest.fixture(scope="session")
def e2e_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="session")
def auth_server(e2e_logs: Path) -> Iterator[AuthServer]:
    port = free_port()
    argv = [sys.executable, "-m", "phantom_token.demo.authorization_server", "--listen", f"127.0.0.1:{port}"]
    process = start_process("auth-server", [*argv, "--test-controls"], port, e2e_logs)
    try:
        yield AuthServer(process)
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def _reset_auth_server(request: pytest.FixtureRequest) -> None:
    """Every test starts with no delay, no failure mode and zeroed stats (only if it uses the AS)."""
    if "auth_server" in request.fixturenames:
        server: AuthServer = request.getfixturevalue("auth_server")
        server.set_controls(reset=True)


@pytest.fixture(scope="session")
def echo_api(e2e_logs: Path) -> Iterator[Process]:
    port = free_port()
    argv = [sys.executable, "-m", "phantom_token.demo.echo_api", "--listen", f"127.0.0.1:{port}"]
    process = start_process("echo-api", argv, port, e2e_logs)
    try:
        yield process
    finally:
        process.stop()


# --- the gateway --------------------------------------------------------------------------------------------


class Gateway(Process):
    """A running ``phantom-token serve``."""

    def request(
        self,
        path: str = "/api/hello",
        headers: Sequence[tuple[str, HeaderValue]] | Mapping[str, HeaderValue] = (),
        method: str = "GET",
        body: bytes | None = None,
        timeout: float = 15.0,
    ) -> HttpResult:
        return http_request(method, f"{self.base_url}{path}", headers, body, timeout)

    def get_with_token(self, token: str, path: str = "/api/hello") -> HttpResult:
        return self.request(path, [("Authorization", f"Bearer {token}")])


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway(tmp_path: Path, e2e_logs: Path) -> Iterator[GatewayFactory]:
    """``gateway(config_yaml_text, env=None, args=(), scheme="http") -> Gateway`` (``scheme``: ``https`` for a
    gateway with ``phantom_token.tls``); all are stopped at teardown and must exit 0."""
    started: list[Gateway] = []

    def start(config_text: str, env: Mapping[str, str] | None = None, args: Sequence[str] = (),
              scheme: str = "http") -> Gateway:
        config = tmp_path / f"gateway-{len(started)}.yml"
        config.write_text(config_text, encoding="utf-8")
        port = free_port()
        argv = [sys.executable, "-m", "phantom_token", "serve", "-c", str(config), "--listen", f"127.0.0.1:{port}",
                *args]
        process = start_process("gateway", argv, port, e2e_logs, env, scheme)
        gw = Gateway(process.name, process.proc, process.stderr_path, process.host, port, process.stdout_lines)
        started.append(gw)
        return gw

    yield start
    failures = []
    for gw in started:
        code = gw.stop()
        # pytest shows captured output only for failing tests: the gateway's log then explains the failure
        print(f"--- gateway on port {gw.port}, exit {code}, stderr:\n{gw.stderr()}")
        if code != 0:
            failures.append(f"gateway on port {gw.port} exited {code} after SIGTERM:\n{gw.stderr()}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def plugin_config(auth_server: AuthServer, echo_api: Process) -> dict[str, Any]:
    """The usual configuration as a dict (tests tweak it and pass ``yaml.safe_dump(...)`` to ``gateway``)."""
    return {
        "_format_version": "2.1",
        "services": [
            {
                "name": "business-api",
                "url": echo_api.base_url,
                "routes": [{"name": "business-api-route", "paths": ["/api"]}],
                "plugins": [
                    {
                        "name": "phantom-token",
                        "config": {
                            "introspection_endpoint": auth_server.introspection_endpoint,
                            "client_id": INTROSPECTION_CLIENT[0],
                            "client_secret": INTROSPECTION_CLIENT[1],
                            "token_cache_seconds": 900,
                        },
                    }
                ],
            }
        ],
    }


def plugin_options(config: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` block of the first service's phantom-token plugin, for in-place tweaks."""
    options: dict[str, Any] = config["services"][0]["plugins"][0]["config"]
    return options


def dump(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)


@pytest.fixture
def started_gateway(gateway: GatewayFactory, plugin_config: dict[str, Any]) -> Gateway:
    """A gateway with the usual configuration."""
    return gateway(dump(plugin_config))


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*args, config_text=None)``: run ``python -m phantom_token`` to completion (at most 30 s).

    With ``config_text`` the text is written to a file and ``-c FILE`` is added after the command name.
    """

    def run(*args: str, config_text: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "phantom_token", *args]
        if config_text is not None:
            path = tmp_path / "cli-config.yml"
            path.write_text(config_text, encoding="utf-8")
            argv[3:4] = [args[0], "-c", str(path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO, check=False)

    return run


def child_pids(parent: int) -> list[int]:
    """The live (not zombie) children of ``parent``, from /proc: a supervisor's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                found.append(int(entry.name))
    return found
