"""CPU per request of the Python hot path alone, no sockets: ``serve`` at cache hit and ``authz`` at cache hit.

The real server protocol with the proxy's ``ProxyHandler`` (and the real engine, router, memory cache and upstream
``Connection``) and with the decision service's ``DecisionHandler`` are driven through in-memory transports: a
request is fed to ``data_received``, the upstream's
response (the five headers nginx sends) to the upstream connection. What is left out is exactly what nginx pays
too: the event loop and the syscalls. Use it to compare changes to the hot path; ``bench/run.py`` gives the real
figures.

    python bench/hotpath.py [--requests 200000] [--profile]
    python bench/hotpath.py --instructions      # CPU instructions per request, under valgrind (apt install valgrind)
    python bench/hotpath.py --access-log ...    # the same with the access log on (its lines go to /dev/null)
    python bench/hotpath.py --claims ...        # the same with three claims_to_headers (bench/run.py's row)
    python bench/hotpath.py --tracing ...       # the same with tracing on (every span sampled, batched, discarded)
    python bench/hotpath.py --tokens 1000 ...   # N distinct tokens round robin on the same connections (all cached)
    python bench/hotpath.py --miss ...          # serve at cache miss: every request a new token, introspected

``--miss``: each request carries a token never seen, so the engine's async path runs: the single flight, the
introspection request written to an in-memory transport that stands for the authorization server's pooled
keep-alive connection, a canned answer of the demo AS's shape (``application/jwt``, a 413-byte ES256 JWT with its
claims, ``Cache-Control: max-age``) fed back into that connection, the JWT's payload read, the cache insert, then
the upstream request and response as at a hit. The event loop (uvloop, as ``serve`` runs) is stepped between the
two answers, so its task and future callbacks are in the count; its syscalls are not.

Time per request on a shared machine moves by tens of percent from run to run; ``--instructions`` counts the
instructions executed per request instead (valgrind's callgrind, the difference between 0 and N requests, so
start-up cancels out), which does not move: use it to judge a change of a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import itertools
import logging
import os
import pstats
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import uvloop
import yaml
from run import CLAIMS_TO_HEADERS, SERVE_YML  # run puts the repository on sys.path: tests.memory_transport
from tests.memory_transport import MemoryTransport

from phantom_token.config.loader import parse_settings
from phantom_token.core.keys import cache_key
from phantom_token.core.ports import CacheEntry
from phantom_token.gateway import Gateway
from phantom_token.log import setup_logging

# The configuration the benchmark's `serve` row runs (the upstream and AS ports are never dialled here).
CONFIG = SERVE_YML.format(upstream=9, auth=9, secret="secret")

TOKEN = "a1b2c3d4-e5f6-4711-8899-aabbccddeeff"
ROUNDS = 40
ONLY: str | None = None  # --only serve|authz
ACCESS_LOG = False  # --access-log: the access log on, its lines written to /dev/null
CLAIMS = False  # --claims: the route sets three claims_to_headers (the cached entry carries their values)
CLAIM_VALUES = (("X-User-Id", "demo-client"), ("X-Client-Id", "demo-client"), ("X-Scope", "read write"))
TRACING = False  # --tracing: tracing on (the otel extra), spans exported to an exporter that discards them
TOKENS = 1  # --tokens N: N distinct tokens, round robin, so consecutive requests on a connection differ
MISS = False  # --miss: serve at cache miss, every request a new token introspected through an in-memory AS
PLAIN = False  # --plain: just run the requests (for an instruction count under valgrind)
JWT = "eyJhbGciOiJFUzI1NiJ9." + "x" * 300 + "." + "y" * 86  # the size of the demo AS's JWT (413 bytes)


def request(token: str) -> bytes:
    return (b"GET /api/orders?page=2 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")


def authz_request(token: str) -> bytes:
    return (b"GET /authz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Original-URI: /api/orders?page=2\r\n"
            b"X-Original-Method: GET\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n")


def tokens(n: int) -> list[str]:
    """``n`` distinct tokens of the same length as TOKEN (the first is TOKEN), so request sizes do not change."""
    return [TOKEN] + [f"{TOKEN[:-12]}{i:012x}" for i in range(1, n)]


REQUEST = request(TOKEN)
AUTHZ_REQUEST = authz_request(TOKEN)
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 29 Nov 2026 03:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")


def _check(ok: bool, what: object) -> None:
    """The set-up must behave like the real thing before anything is timed (not an assert: -O must not skip it)."""
    if not ok:
        raise RuntimeError(f"the hot path did not answer as expected: {what!r}")


def _time(label: str, step: Callable[[], None], requests: int, profile: bool) -> None:
    if PLAIN:
        for _ in range(requests):
            step()
        return
    for _ in range(2000):
        step()
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests // 10):
            step()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    rounds = []
    gc.collect()
    gc.disable()  # a collection landing in one round or another is noise, not the hot path's cost
    for _ in range(ROUNDS):  # the best of several rounds: other work on the machine only ever adds time
        started = time.perf_counter()
        for _ in range(requests // ROUNDS):
            step()
        rounds.append((time.perf_counter() - started) / (requests // ROUNDS) * 1e6)
    gc.enable()
    rounds.sort()
    print(f"{label:20s} best {rounds[0]:6.2f} us/request, median {rounds[len(rounds) // 2]:6.2f} "
          f"(Python only, {ROUNDS} rounds of {requests // ROUNDS})")


def start_discarding_tracer() -> None:
    """Tracing on as ``OTEL_TRACES_EXPORTER=otlp`` turns it on (every span sampled, a batch span processor), with an
    exporter that discards the batches instead of sending them."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from phantom_token import tracing

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracing.ACTIVE = tracing.Tracing(provider)


async def main(requests: int, profile: bool) -> None:
    if MISS:
        await main_miss(requests, profile)
        return
    config = CONFIG
    if CLAIMS:
        line = "      token_cache_seconds: 3600\n"
        config = config.replace(line, line + CLAIMS_TO_HEADERS)
    settings = parse_settings(yaml.safe_load(config), source="hotpath")
    if ACCESS_LOG:  # as `serve --access-log` sets it up, writing to a file rather than a terminal
        settings = dataclasses.replace(settings, access_log=True)
    if TRACING:
        start_discarding_tracer()
    app = Gateway(settings)
    plugin = settings.routes[0].plugin
    assert plugin is not None
    used = tokens(TOKENS)
    for token in used:
        await app.cache.put(cache_key(plugin, token), CacheEntry("Bearer " + JWT, frozenset(), time.time() + 1e6,
                                                                 CLAIM_VALUES if CLAIMS else None))
    requests_ = [request(token) for token in used]
    authz_requests = [authz_request(token) for token in used]
    serve_turns = itertools.islice(itertools.cycle(requests_), 1, None)  # round robin, from the warm-up's next
    authz_turns = itertools.islice(itertools.cycle(authz_requests), 1, None)

    from phantom_token.frontends.proxy import ProxyHandler, _Shared
    from phantom_token.http.client import Connection
    from phantom_token.http.server import ServerLimits, ServerProtocol, ServerState

    shared = _Shared(app.engine, settings, app.metrics.observe_request, app.metrics)  # as `serve` runs it
    client = ServerProtocol(ServerState(ServerLimits()), lambda conn: ProxyHandler(conn, shared))
    client_out = MemoryTransport(("127.0.0.1", 50000))
    client.connection_made(client_out)
    upstream = settings.routes[0].upstream
    assert upstream is not None
    origin = shared.origin(upstream)
    conn = Connection(shared.pool, origin.key)
    upstream_out = MemoryTransport(("127.0.0.1", 9))
    conn.connection_made(upstream_out)
    shared.pool.release(conn)

    def serve_step() -> None:
        client.data_received(REQUEST)
        conn.data_received(RESPONSE)
        client_out.out.clear()
        upstream_out.out.clear()

    def serve_step_mixed() -> None:
        client.data_received(next(serve_turns))
        conn.data_received(RESPONSE)
        client_out.out.clear()
        upstream_out.out.clear()

    client.data_received(REQUEST)
    _check(len(upstream_out.out) == 1 and JWT.encode() in upstream_out.out[0], upstream_out.out)
    _check(TOKEN.encode() not in upstream_out.out[0], "the opaque token went upstream")
    _check(not CLAIMS or b"\r\nX-Scope: read write\r\n" in upstream_out.out[0], upstream_out.out)
    conn.data_received(RESPONSE)
    _check(len(client_out.out) == 1 and client_out.out[0].startswith(b"HTTP/1.1 200 OK\r\n"), client_out.out)
    client_out.out.clear()
    upstream_out.out.clear()
    if ONLY in (None, "serve"):
        _time("serve, cache hit", serve_step if TOKENS == 1 else serve_step_mixed, requests, profile)

    from phantom_token.frontends import decisions

    authz_shared = decisions._Shared(app.engine, settings, app.metrics.observe_request)
    authz = ServerProtocol(ServerState(ServerLimits()), lambda conn: decisions.DecisionHandler(conn, authz_shared))
    authz_out = MemoryTransport(("127.0.0.1", 50001))
    authz.connection_made(authz_out)

    def authz_step() -> None:
        authz.data_received(AUTHZ_REQUEST)
        authz_out.out.clear()

    def authz_step_mixed() -> None:
        authz.data_received(next(authz_turns))
        authz_out.out.clear()

    authz.data_received(AUTHZ_REQUEST)
    _check(bool(authz_out.out) and authz_out.out[0].startswith(b"HTTP/1.1 200 OK\r\n"), authz_out.out)
    _check(not CLAIMS or b"\r\nX-Scope: read write\r\n" in authz_out.out[0], authz_out.out)
    authz_out.out.clear()
    if ONLY in (None, "authz"):
        _time("authz, cache hit", authz_step if TOKENS == 1 else authz_step_mixed, requests, profile)


def demo_as_answer() -> bytes:
    """What the demo AS answers an ``Accept: application/jwt`` introspection of an active token: a JWT signed by an
    ES256 key with the demo AS's claims (413 bytes, as in bench/run.py), ``Cache-Control: max-age``."""
    from phantom_token.jose import SigningKey

    now = 1_795_000_000  # a fixed instant: the same bytes on every run (the clock is not read here)
    claims = {"iss": "http://127.0.0.1:9", "sub": "demo-client", "client_id": "demo-client", "scope": "read write",
              "iat": now, "exp": now + 10**8, "jti": "k7bB1iBxPBdGdAqbbBzU4Q"}
    jwt = SigningKey.generate("ES256").sign(claims).encode("ascii")
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/jwt\r\nCache-Control: max-age=7199\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(jwt), jwt))


async def _time_async(label: str, step: Callable[[], Any], requests: int, profile: bool) -> None:
    """``_time`` for a step that is a coroutine function (the miss path needs the event loop between its parts)."""
    if PLAIN:
        for _ in range(requests):
            await step()
        return
    for _ in range(2000):
        await step()
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests // 10):
            await step()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    rounds = []
    gc.collect()
    gc.disable()
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(requests // ROUNDS):
            await step()
        rounds.append((time.perf_counter() - started) / (requests // ROUNDS) * 1e6)
    gc.enable()
    rounds.sort()
    print(f"{label:20s} best {rounds[0]:6.2f} us/request, median {rounds[len(rounds) // 2]:6.2f} "
          f"(Python only, {ROUNDS} rounds of {requests // ROUNDS})")


def _client_pool(client: Any) -> Any:
    """The pool of an ``HttpClient`` without ``pool()`` (before it had one: the count before the change)."""
    from phantom_token.http.client import ConnectionPool

    if client._pool is None:
        client._pool = ConnectionPool(max_idle_per_origin=client._max_idle, idle_timeout=client._idle_timeout)
    return client._pool


async def main_miss(requests: int, profile: bool) -> None:
    """``serve`` at cache miss (``--miss``): see the module's docstring."""
    settings = parse_settings(yaml.safe_load(CONFIG), source="hotpath")
    app = Gateway(settings)
    answer = demo_as_answer()

    from phantom_token.frontends.proxy import ProxyHandler, _Shared
    from phantom_token.http.client import Connection, ConnectionPool
    from phantom_token.http.server import ServerLimits, ServerProtocol, ServerState

    shared = _Shared(app.engine, settings, app.metrics.observe_request, app.metrics)  # as `serve` runs it
    client = ServerProtocol(ServerState(ServerLimits()), lambda conn: ProxyHandler(conn, shared))
    client_out = MemoryTransport(("127.0.0.1", 50000))
    client.connection_made(client_out)
    upstream = settings.routes[0].upstream
    assert upstream is not None
    conn = Connection(shared.pool, shared.origin(upstream).key)
    upstream_out = MemoryTransport(("127.0.0.1", 9))
    conn.connection_made(upstream_out)
    shared.pool.release(conn)
    # The authorization server's connection: the one the introspection client's pool holds for its endpoint.
    as_pool = app.client.pool() if hasattr(app.client, "pool") else _client_pool(app.client)
    as_conn = Connection(as_pool, ("http", "127.0.0.1", 9, None))
    as_out = MemoryTransport(("127.0.0.1", 9))
    as_conn.connection_made(as_out)
    as_pool.release(as_conn)
    assert isinstance(as_pool, ConnectionPool)

    # Every request a token never seen (the same length as TOKEN); made before the count, the same number whatever
    # --requests is under 1000, so valgrind's difference between two runs holds none of their making.
    fresh = iter([request(f"{TOKEN[:-12]}{i:012x}") for i in range(1, max(requests, 1000) * 11 // 10 + 2100)])
    sleep = asyncio.sleep

    async def miss_step() -> None:
        client.data_received(next(fresh))
        while not as_out.out:  # the engine's task runs: cache, single flight, the introspection request written
            await sleep(0)
        as_out.out.clear()
        as_conn.data_received(answer)
        while not upstream_out.out:  # the answer read and cached, the verdict applied, the request forwarded
            await sleep(0)
        upstream_out.out.clear()
        conn.data_received(RESPONSE)
        client_out.out.clear()

    first = next(fresh)
    client.data_received(first)
    while not as_out.out:
        await sleep(0)
    sent = b"".join(as_out.out)
    _check(sent.startswith(b"POST /oauth/introspect HTTP/1.1\r\n") and first.split(b"Bearer ")[1].split(b"\r\n")[0]
           in sent, sent)
    as_out.out.clear()
    as_conn.data_received(answer)
    while not upstream_out.out:
        await sleep(0)
    jwt = answer.rsplit(b"\r\n\r\n", 1)[1]
    _check(len(upstream_out.out) == 1 and b"Bearer " + jwt in upstream_out.out[0], upstream_out.out)
    _check(TOKEN[:-12].encode() not in upstream_out.out[0], "the opaque token went upstream")
    upstream_out.out.clear()
    conn.data_received(RESPONSE)
    _check(len(client_out.out) == 1 and client_out.out[0].startswith(b"HTTP/1.1 200 OK\r\n"), client_out.out)
    client_out.out.clear()
    _check(as_pool.acquire(as_conn.key) is as_conn, "the AS connection was not kept for the next miss")
    as_pool.release(as_conn)
    introspections = app.metrics.introspections
    await _time_async("serve, cache miss", miss_step, requests, profile)
    _check(app.metrics.introspections - introspections >= requests, "a request was not introspected")


def count_instructions(path: str, requests: int) -> int:
    """Instructions per request of one path, from two runs of this script under callgrind."""
    def total(n: int) -> int:
        done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                               __file__, "--plain", "--only", path, "--requests", str(n)]
                              + (["--access-log"] if ACCESS_LOG else []) + (["--claims"] if CLAIMS else [])
                              + (["--tracing"] if TRACING else []) + (["--miss"] if MISS else [])
                              + ["--tokens", str(TOKENS)],
                              capture_output=True, text=True, check=True,
                              # a fixed hash seed: dict probing varies with it by about 2 % of the count
                              env={**os.environ, "PYTHONHASHSEED": "0"})
        found = re.search(r"refs:\s+([\d,]+)", done.stderr)
        if found is None:
            raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
        return int(found.group(1).replace(",", ""))

    return (total(requests) - total(0)) // requests


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of each path")
    parser.add_argument("--only", choices=("serve", "authz"), help="one path only")
    parser.add_argument("--plain", action="store_true",
                        help="no timing: run the requests only (compare instruction counts of two --requests "
                             "values under 'valgrind --tool=callgrind', which a busy machine does not disturb)")
    parser.add_argument("--access-log", action="store_true", help="with the access log on (lines to /dev/null)")
    parser.add_argument("--claims", action="store_true", help="with three claims_to_headers on the route")
    parser.add_argument("--tracing", action="store_true", help="with tracing on (spans discarded by the exporter)")
    parser.add_argument("--tokens", type=int, default=1,
                        help="N distinct tokens (all cached), sent round robin on the same connections, so the "
                             "per-connection token memo misses on every request (default 1: one token repeated)")
    parser.add_argument("--miss", action="store_true",
                        help="serve at cache miss: every request a new token, introspected through an in-memory "
                             "connection to the authorization server (the demo AS's answer fed back)")
    parser.add_argument("--instructions", action="store_true",
                        help="print instructions per request of each path (runs this script under valgrind)")
    args = parser.parse_args()
    PLAIN, ONLY, ACCESS_LOG, CLAIMS = args.plain, args.only, args.access_log, args.claims
    TRACING, TOKENS, MISS = args.tracing, args.tokens, args.miss
    if TOKENS < 1:
        parser.error("--tokens must be at least 1")
    if MISS and (ONLY == "authz" or ACCESS_LOG or CLAIMS or TRACING or TOKENS > 1):
        parser.error("--miss measures serve alone, without --access-log, --claims, --tracing or --tokens")
    if MISS:
        ONLY = "serve"
    if args.instructions:
        count = min(args.requests, 1000)
        for name in (ONLY,) if ONLY else ("serve", "authz"):
            label = name + (", cache miss" if MISS else ", cache hit")
            print(f"{label:20s} {count_instructions(name, count):8d} instructions/request "
                  f"(valgrind, {count} requests, "
                  + ("each a new token)" if MISS else f"{TOKENS} token{'s' if TOKENS > 1 else ''})"))
        sys.exit(0)
    if ACCESS_LOG:  # as `serve --access-log` sets it up, but writing to /dev/null rather than a terminal
        setup_logging("text", "info", access_log=True)
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    uvloop.run(main(args.requests, args.profile))  # as the CLI runs it
