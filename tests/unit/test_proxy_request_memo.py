"""The proxy's per-connection memo of the whole upstream request head (``ProxyHandler._request_head``): a differential
test, no sockets. The real server protocol, ``ProxyHandler``, engine, router and memory cache run on in-memory
transports (as bench/hotpath.py drives them); every request of a sequence goes once on one keep-alive connection
(where the memo answers whenever the request repeats the last) and once on a new connection (where the head is built
from scratch, as before the memo), and what reaches the upstream, and what the client gets back, must be the same
bytes."""

from __future__ import annotations

import time

import yaml

from phantom_token.config.loader import parse_settings
from phantom_token.core.keys import cache_key
from phantom_token.core.ports import CacheEntry
from phantom_token.core.request import RequestInfo
from phantom_token.core.verdict import Verdict
from phantom_token.frontends.proxy import ProxyHandler, _Shared
from phantom_token.gateway import Gateway
from phantom_token.http.client import Connection
from phantom_token.http.server import ServerLimits, ServerProtocol, ServerState
from tests.memory_transport import MemoryTransport

CONFIG = """_format_version: '2.1'
services:
- name: api
  url: http://127.0.0.1:9
  routes:
  - name: api
    paths: [/api]
  - name: kept
    paths: [/kept]
    preserve_host: true
    strip_path: true
  plugins:
  - name: phantom-token
    config:
      introspection_endpoint: http://127.0.0.1:9/oauth/introspect
      client_id: introspection-client
      client_secret: secret
      token_cache_seconds: 3600
- name: public
  url: http://127.0.0.1:10/base
  routes:
  - name: public
    paths: [/public]
"""
TOKENS = ("tok-a", "tok-b")
JWTS = {"tok-a": "Bearer h.a.s", "tok-b": "Bearer h.b.s"}
RESPONSE = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\nok"


def get(target: bytes = b"/api/x?q=1", *headers: bytes, method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    return b"%s %s HTTP/%s\r\n%s\r\n" % (method, target, version, b"".join(h + b"\r\n" for h in headers))


HOST = b"Host: api.test"
A = b"Authorization: Bearer tok-a"
B = b"Authorization: Bearer tok-b"
REQUESTS = [
    get(b"/api/x?q=1", HOST, A),
    get(b"/api/x?q=1", HOST, A),  # the same again: from the memo
    get(b"/api/x?q=1", HOST, B),  # another token, same bytes otherwise
    get(b"/api/x?q=1", HOST, B),
    get(b"/api/x?q=2", HOST, B),  # another query
    get(b"/api/y?q=2", HOST, B),  # another path
    get(b"/api/y?q=2", HOST, B, method=b"HEAD"),  # another method
    get(b"/api/y?q=2", b"host: api.test", B),  # another spelling of a name
    get(b"/api/y?q=2", HOST, b"authorization: Bearer tok-b"),
    get(b"/api/y?q=2", b"Host: other.test", B),  # another Host
    get(b"/kept/y?q=2", b"Host: other.test", B),  # another route (preserve_host, strip_path)
    get(b"/kept/y?q=2", b"Host: other.test", B),
    get(b"/kept/y?q=2", b"Host: other.test", A),  # only the token, on the route that keeps the Host
    get(b"/api/y?q=2", HOST, B, b"X-Forwarded-For: 10.0.0.1"),  # the client's own X-Forwarded-For
    get(b"/api/y?q=2", HOST, B, b"X-Forwarded-For: 10.0.0.1"),
    get(b"/api/y?q=2", HOST, B, b"X-Forwarded-For: 10.0.0.2"),
    get(b"/api/y?q=2", HOST, A, b"X-Forwarded-For: 10.0.0.2"),  # only the token changes, with the client's XFF
    get(b"/api/y?q=2", A, HOST, b"X-Forwarded-For: 10.0.0.2"),  # the same headers in another order
    get(b"/api/y?q=2", B, HOST, b"X-Forwarded-For: 10.0.0.2"),
    get(b"/api/y?q=2", B, b"Host: other.test", b"X-Forwarded-For: 10.0.0.2"),  # the token and the Host both
    get(b"/api/y?q=2", HOST, B, b"Connection: X-A", b"X-A: 1"),  # a header the Connection header removes
    get(b"/api/y?q=2", HOST, B, b"Connection: X-B", b"X-A: 1"),
    get(b"/api/y?q=2", HOST, B, b"X_A: 1"),  # an underscore name: ignored
    get(b"/api/y?q=2", HOST, B, b"X-A: 1"),
    get(b"/api/y?q=2", HOST, B, b"Content-Length: 3", method=b"POST") + b"abc",
    get(b"/api/y?q=2", HOST, B, b"Content-Length: 3", method=b"POST") + b"xyz",
    get(b"/api/y?q=2", HOST, B, b"Transfer-Encoding: chunked", method=b"POST") + b"3\r\nabc\r\n0\r\n\r\n",
    get(b"/api/y?q=2", HOST, B, b"Transfer-Encoding: chunked", method=b"POST") + b"3\r\nabc\r\n0\r\n\r\n",
    get(b"/api/y?q=2", HOST, B, version=b"1.0"),  # HTTP/1.0 with the same headers
    get(b"/api/y?q=2", HOST, B),
    get(b"http://api.test/api/y?q=2", HOST, B),  # absolute form: its authority wins
    get(b"http://other.test/api/y?q=2", HOST, B),
    get(b"http://other.test/api/y?q=2", HOST, A),  # only the token, absolute form
    get(b"http://other.test/api/y?q=2", HOST, b"authorization: Bearer tok-b"),  # and the name's spelling
    get(b"/api/y?q=2", HOST, A, b"DPoP: x.y.z"),  # a DPoP header with a Bearer token (not forwarded)
    get(b"/api/y?q=2", HOST, B, b"DPoP: x.y.z"),
    get(b"/public/z", HOST, B),  # no plugin: the client's Authorization goes through
    get(b"/public/z", HOST, A),
    get(b"/public/z", HOST, A),
    get(b"/api/y?q=2", HOST, b"Authorization: Basic YTpi"),  # a denial (401, decided at once)
    get(b"/api/y?q=2", HOST, B),
    get(b"/api/y?q=2", HOST, B, b"Upgrade: websocket", b"Connection: Upgrade"),  # an upgrade
]


class Side:
    """One client connection to its own proxy listener, with one pooled upstream connection per upstream."""

    def __init__(self, app: Gateway) -> None:
        settings = app.settings
        shared = _Shared(app.engine, settings, None, None)
        # what the engine is asked, as it is when asked (the handler fills one RequestInfo in again per request)
        self.asked: list[tuple[object, ...]] = []
        decide = shared.try_authorize

        def spy(info: RequestInfo) -> Verdict | None:
            self.asked.append((info.method, info.host, info.path, dict(info.headers), info.origin, info.memo))
            return decide(info)

        shared.try_authorize = spy
        self.client = ServerProtocol(ServerState(ServerLimits()), lambda conn: ProxyHandler(conn, shared))
        self.client_out = MemoryTransport(("127.0.0.1", 50000), can_write_eof=False)
        self.client.connection_made(self.client_out)
        self.upstreams: list[tuple[Connection, MemoryTransport]] = []
        for route in settings.routes:
            assert route.upstream is not None
            origin = shared.origin(route.upstream)
            if not origin.idle:
                conn = Connection(shared.pool, origin.key)
                out = MemoryTransport(("127.0.0.1", route.upstream.port), can_write_eof=False)
                conn.connection_made(out)
                shared.pool.release(conn)
                self.upstreams.append((conn, out))

    def send(self, request: bytes) -> tuple[list[bytes], list[bytes]]:
        self.client.data_received(request)
        upstream: list[bytes] = []
        for conn, out in self.upstreams:
            if out.out:
                upstream += out.out
                out.out.clear()
                conn.data_received(RESPONSE)
        answer = list(self.client_out.out)
        self.client_out.out.clear()
        return upstream, answer


async def test_a_kept_connection_sends_upstream_what_a_new_one_sends() -> None:
    settings = parse_settings(yaml.safe_load(CONFIG), source="test")
    app = Gateway(settings)
    plugin = settings.routes[0].plugin
    assert plugin is not None
    for token in TOKENS:
        await app.cache.put(cache_key(plugin, token), CacheEntry(JWTS[token], frozenset(), time.time() + 1e6, None))
    kept = Side(app)
    for round_ in range(2):
        for i, request in enumerate(REQUESTS):
            fresh = Side(app)
            expected = fresh.send(request)
            asked = len(kept.asked)
            got = kept.send(request)
            assert got == expected, (round_, i, request)
            # the engine saw the same request (origin included: one set for a DPoP header is not left for the next)
            assert [entry[:5] for entry in kept.asked[asked:]] == [entry[:5] for entry in fresh.asked], (round_, i)
            assert all(entry[5] is kept.client.conn.handler._memo.tokens  # type: ignore[attr-defined]
                       for entry in kept.asked[asked:])
            if not kept.client_out.closing and kept.client.conn.closed:
                kept = Side(app)
            if kept.client_out.closing:  # an HTTP/1.0 request or an upgrade ends the connection
                kept = Side(app)
    # the memo is used at all: a repeated request is answered with the very bytes object sent the last time, every
    # time it repeats; a request whose token alone changes keeps the client's part of the head (built once)
    side = Side(app)
    side.send(REQUESTS[0])
    memo = side.client.conn.handler._memo  # type: ignore[attr-defined]
    first = memo.request_head
    for _ in range(4):
        side.send(REQUESTS[1])
        assert memo.request_head is first
    client_part = memo.head_client
    for request in (REQUESTS[2], REQUESTS[1], REQUESTS[3], REQUESTS[0]):
        side.send(request)
        assert memo.head_client is client_part
        assert memo.request_head is not first


async def test_a_new_cache_entry_for_the_same_request_sends_its_own_jwt() -> None:
    """The same request bytes after the token's entry was replaced (re-introspected: another JWT) are not answered
    from the memo: the memo holds the entry's own Authorization string, compared by identity."""
    settings = parse_settings(yaml.safe_load(CONFIG), source="test")
    app = Gateway(settings)
    plugin = settings.routes[0].plugin
    assert plugin is not None
    await app.cache.put(cache_key(plugin, "tok-a"), CacheEntry("Bearer h.a.s", frozenset(), time.time() + 1e6, None))
    side = Side(app)
    assert b"Authorization: Bearer h.a.s\r\n" in side.send(REQUESTS[0])[0][0]
    await app.cache.put(cache_key(plugin, "tok-a"), CacheEntry("Bearer h.a2.s", frozenset(), time.time() + 1e6, None))
    upstream = side.send(REQUESTS[0])[0][0]
    assert b"Authorization: Bearer h.a2.s\r\n" in upstream
    assert b"h.a.s" not in upstream


async def test_an_entry_whose_authorization_would_split_the_head_is_refused_on_a_kept_connection_too() -> None:
    """A cache entry's Authorization value goes into the upstream head as it is; one with a line break (a shared
    cache another writer filled) would add lines of its own. It is refused (``server_error``, 502) and nothing goes
    upstream: on a new connection, and on one whose last request forwarded a good value (the check is skipped only
    for that very string, by identity, never for an equal-looking or new one)."""

    def refused(upstream: list[bytes], answer: list[bytes]) -> bool:
        return upstream == [] and answer[0].startswith(b"HTTP/1.1 502 ") and b'"code":"server_error"' in answer[0]

    settings = parse_settings(yaml.safe_load(CONFIG), source="test")
    app = Gateway(settings)
    plugin = settings.routes[0].plugin
    assert plugin is not None
    key = cache_key(plugin, "tok-a")
    good = CacheEntry("Bearer h.a.s", frozenset(), time.time() + 1e6, None)
    for bad in ("Bearer h.a.s\r\nX-Injected: 1", "Bearer h.a.s\nX-Injected: 1", "Bearer h.a.s\rX-Injected: 1"):
        side = Side(app)
        await app.cache.put(key, CacheEntry(bad, frozenset(), time.time() + 1e6, None))
        upstream, answer = side.send(REQUESTS[0])
        assert refused(upstream, answer), (bad, answer)
        side = Side(app)
        await app.cache.put(key, good)
        upstream, answer = side.send(REQUESTS[0])
        assert len(upstream) == 1
        assert answer[0].startswith(b"HTTP/1.1 200 OK\r\n")
        await app.cache.put(key, CacheEntry(bad, frozenset(), time.time() + 1e6, None))
        upstream, answer = side.send(REQUESTS[0])  # the same request bytes, the entry replaced by a bad one
        assert refused(upstream, answer), (bad, answer)
