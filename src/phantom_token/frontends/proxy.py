"""The reverse-proxy front door (``phantom-token serve``): contract section 9.

Each request becomes a ``RequestInfo``; the engine's ``Verdict`` is applied as it is: a ``Deny`` is answered
here, an ``Allow`` is forwarded to ``allow.route.upstream`` over a pooled keep-alive connection. ``ProxyHandler`` is
both the ``RequestHandler`` of a client connection and the ``ResponseSink`` of the upstream connection it forwards
on (a mypyc trait, so compiled code calls it directly both ways).

Invariants:
- Nothing is written upstream before the engine allowed the request. On a denial the request body is read and
  discarded, or the connection is closed when the rest is large or the client still waits for 100-continue.
- What goes upstream and back is built by the pure functions of ``frontends.forwarding`` (hop-by-hop headers, the
  gateway's own framing, Authorization, Host, X-Forwarded-*; then the route's ``claims_to_headers``), each remembered
  per connection (``_Memo``) or per listener (``_Shared``) when it repeats; the listener's memos hold no query
  string, and a connection's only its own last request (never another connection's token).
- The path sent upstream is the normalised one the route matched (``phantom_token.http.uri``), after Kong's
  ``strip_path``; the query string goes as received.
- Bodies stream both ways and at most one socket read is held per side: the client is not read while the upstream's
  write buffer is high (or while the verdict or a connection is awaited), the upstream is not read while the
  client's write buffer is high.
- A failure before any byte of the response reached the client answers 502 ``bad_gateway`` or 504
  ``gateway_timeout``; after that the client connection is dropped, so a cut-short response never looks complete.
- The fast path (``try_authorize`` answers, a pooled connection is free) runs in protocol callbacks only: no
  await, no task. Header values are never logged.
- A cache miss runs in one task (``_authorize``), which is never cancelled, not even when the client goes away:
  the engine runs the introspection in it (``Engine.authorize(uncancelled=True)``), and other requests for the same
  token may be waiting for that call. The verdict of a request gone meanwhile is dropped.
- With the access log on (``settings.access_log``; ``frontends.access_log``) every answered request writes one line
  (a denial, the upstream's response at its end, a failure, a refusal by the connection core) and goes upstream
  with exactly one ``X-Request-Id``: the client's when valid, else a new one replacing every copy it sent. Off, the
  only cost is one boolean test per request and per answer, and the request goes as it came.
- Client certificates (RFC 8705, ``frontends.tls``): over TLS the certificate's thumbprint is computed once per
  connection and given to the engine with each request. A header that carries a certificate (a plugin's
  ``client_cert_header``) is believed only from a ``trusted_proxies`` peer (``RequestInfo.trusted_peer``, decided
  once per connection, and only when some plugin names such a header); from any other peer it is removed from what
  goes upstream, so the API behind never mistakes a client's header for its proxy's.
- Tracing (``phantom_token.tracing``, on only through ``OTEL_*``) rides on the same boolean (``_Shared.record``):
  a server span per request, current in the engine's asynchronous path, and a ``traceparent`` naming it upstream
  instead of the client's. Off, it adds nothing per request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

from phantom_token import tracing
from phantom_token.config.settings import PluginConfig, Route, Settings, Upstream
from phantom_token.core.claim_headers import header_names
from phantom_token.core.dpop import request_origin
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.routes import upstream_path
from phantom_token.core.verdict import Allow, Deny, Verdict, bad_gateway, gateway_timeout, server_error
from phantom_token.frontends import Authorizer, Observe, authorization_failed, listener_limits
from phantom_token.frontends import access_log as access
from phantom_token.frontends.decisions import is_trusted
from phantom_token.frontends.forwarding import (
    HOP_BY_HOP,
    authorization_line,
    claim_lines,
    forwarding_lines,
    host_header,
    request_lines,
    rewrite_response_head,
    switching_head,
    tunnels,
    with_claim_headers,
    with_request_id,
    without_headers,
)
from phantom_token.frontends.tls import requiring_certificate, thumbprint
from phantom_token.http.client import (
    ClientError,
    ConnectError,
    Connection,
    ConnectionPool,
    PoolKey,
    ProtocolError,
    RequestTimeout,
    ResponseSink,
    StaleConnection,
)
from phantom_token.http.connection import RequestHandler, ServerConnection, ServerLimits
from phantom_token.http.messages import RawHeaders
from phantom_token.http.request_head import RequestHead
from phantom_token.http.server import HttpServer, start_server
from phantom_token.memo import remember
from phantom_token.metrics import Metrics

logger: Final = logging.getLogger("phantom_token.http")

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

PAUSE_VERDICT: Final = 8  # waiting for the engine or for an upstream connection
PAUSE_UPSTREAM: Final = 16  # the upstream's write buffer is full


class _Origin:
    """What is constant per upstream: the pool key, its idle connections and the Host header value."""

    __slots__ = ("host_header", "idle", "key", "upstream")

    def __init__(self, upstream: Upstream, context: ssl.SSLContext | None, pool: ConnectionPool) -> None:
        self.upstream = upstream
        self.key: PoolKey = (upstream.scheme, upstream.host, upstream.port, context)
        self.idle = pool.idle_list(self.key)
        self.host_header = host_header(upstream)


class _Shared:
    """Per-listener state shared by all client connections."""

    def __init__(self, engine: Authorizer, settings: Settings, observe: Observe | None,
                 metrics: Metrics | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine = engine
        # Bound once: ``Authorizer`` is a protocol, so compiled code would look the method up by name per request.
        self.try_authorize: Callable[[RequestInfo], Verdict | None] = engine.try_authorize
        self.observe = observe
        self.metrics = metrics  # upstream latency and errors (requests go through ``observe``)
        self.access_log = settings.access_log
        self.public_base_url = settings.public_base_url
        self.trusted_proxies = settings.trusted_proxies
        self.tracing = tracing.ACTIVE  # None unless OTEL_* turned tracing on in this process
        self.record = self.access_log or self.tracing is not None  # what a request keeps for either
        self.timeout = settings.upstream_timeout_seconds
        self.connect_timeout = settings.upstream_connect_timeout_seconds
        self.pool = ConnectionPool(max_idle_per_origin=256, idle_timeout=30.0)
        self.origins: dict[int, _Origin] = {}
        self._tls: ssl.SSLContext | None = None
        # Response heads as received -> as sent on (and whether they have Content-Length). An upstream sends the
        # same few heads over and over (nginx's differ by Date, once a second), so the rewrite is done once per
        # distinct head. Heads with Set-Cookie or over 2 KiB are never remembered; the memo stays small.
        self.response_heads: dict[bytes, tuple[bytes, bool]] = {}
        self._paths: dict[int, tuple[Route, dict[str, bytes]]] = {}
        # The certificate headers some plugin reads (``client_cert_header``), lower case: believed from trusted
        # peers only, removed from what anyone else sends upstream. Empty (the default): nothing is looked at.
        self.cert_headers: tuple[str, ...] = tuple(sorted({
            route.plugin.client_cert_header.lower() for route in settings.routes
            if route.plugin is not None and route.plugin.client_cert_header is not None}))
        self.trusted_proxies = settings.trusted_proxies
        self._trust: dict[str, bool] = {}

    def trusts(self, peer_ip: str) -> bool:
        """Whether a peer is in ``trusted_proxies`` (remembered per address, bounded as the decision service's)."""
        trusted = self._trust.get(peer_ip)
        if trusted is None:
            trusted = remember(self._trust, peer_ip, is_trusted(peer_ip, self.trusted_proxies), 4097)
        return trusted

    def upstream_path(self, route: Route, path: str) -> bytes:
        """The path sent upstream for ``path`` on ``route`` (Kong's path rules), remembered per route: clients ask
        for the same paths again and again; a route's memo starts over when it is full. Query strings are never
        remembered (they may carry anything, credentials included)."""
        known = self._paths.get(id(route))  # by identity, like origin(): routes are built once
        if known is None or known[0] is not route:
            known = remember(self._paths, id(route), (route, {}), 4096)  # bounded: reloads bring new routes
        paths = known[1]
        upstream = paths.get(path)
        if upstream is None:
            upstream = remember(paths, path, upstream_path(route, path).encode("latin-1"), 1024)
        return upstream

    def rewrite_response_head(self, raw: bytes, status: int) -> tuple[bytes, bool]:
        """The whole head sent to the client for ``raw`` (see ``rewrite_response_head``) and whether it has
        Content-Length; remembered when it may be."""
        head, length, memo = rewrite_response_head(raw, status)
        rewritten = (head + b"\r\n", length)
        if memo:
            remember(self.response_heads, raw, rewritten, 256)
        return rewritten

    def origin(self, upstream: Upstream) -> _Origin:
        # Keyed by identity: upstreams are frozen objects built once at start-up, and hashing them per request
        # would cost more than the lookup saves. The stored reference keeps the id from being reused.
        origin = self.origins.get(id(upstream))
        if origin is None or origin.upstream is not upstream:
            context = None
            if upstream.scheme == "https":
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                context = self._tls
            # bounded: reloads bring new upstream objects (an _Origin made again shares the pool's idle list)
            origin = remember(self.origins, id(upstream), _Origin(upstream, context, self.pool), 4096)
        return origin


class _Memo:
    """What one client connection last sent and received, compared with the next request and response before the
    shared, hashed memos are asked (a keep-alive client repeats itself). It holds only that connection's own data
    (its last path, the response head it last got, the gateway lines built for its own token's JWT), for the
    connection's life."""

    __slots__ = ("claims_lines", "claims_names", "claims_plugin", "claims_source", "forwarding", "head_auth",
                 "head_client", "head_forwarding", "head_method", "head_raw", "head_route",
                 "head_target", "info", "lines", "lines_auth", "lines_host", "lines_route", "origin", "path",
                 "path_route", "query", "raw_head", "request_head", "rewritten_head", "strip", "target", "tokens")

    def __init__(self) -> None:
        self.tokens = TokenMemo()  # the engine's: the token this connection last sent and its cache key
        # The engine's view of the request (``RequestInfo``), filled in again for each request rather than made
        # anew; None while an async verdict (``_authorize``) holds the last one, so the next request makes its own.
        self.info: RequestInfo | None = None
        # The upstream's ``_Origin`` the last request went to (its pool key and Host line), compared by the upstream's
        # identity before the shared table is asked by ``id(upstream)``.
        self.origin: _Origin | None = None
        # The last response head from upstream and its rewrite (a hit of the shared memo): comparing bytes is
        # cheaper than hashing them.
        self.raw_head = b""
        self.rewritten_head: tuple[bytes, bool] = (b"", False)
        # The last request path and query, its route and the upstream target for them (the upstream path from the
        # shared memo, then ``?query`` when there is one).
        self.path = ""
        self.query = ""
        self.path_route: Route | None = None
        self.target = b""
        # The gateway's own header lines of the last request sent upstream and what they were made from. A token
        # change alone (a connection from a load balancer or a BFF carries many users' tokens) rebuilds only the
        # Authorization line: ``forwarding`` (Host, X-Forwarded-*) depends on the route and Host only.
        self.lines = b""
        self.lines_auth: str | None = None  # compared by identity: the cache entry's own string
        self.lines_route: Route | None = None  # its upstream (origin) and preserve_host decide the Host line
        self.lines_host = ""
        self.forwarding = b""
        # claims_to_headers: the lines of the last values sent (by the cache entry's tuple) and the route's names.
        self.claims_source: tuple[tuple[str, str], ...] | None = None
        self.claims_lines = b""
        self.claims_plugin: PluginConfig | None = None
        self.claims_names: frozenset[str] = frozenset()
        # The last head sent upstream (``request_head``, before claims and the access log's lines) and everything it
        # was made from: the client's method, target and raw headers (the head is a function of these, of the route
        # and the verdict's Authorization value, and of this connection's constants). A keep-alive client that
        # repeats its request exactly gets the same bytes without rebuilding them.
        self.request_head = b""
        self.head_method = ""
        self.head_target = b""
        self.head_raw: RawHeaders = []  # the head's own list: compared by identity (``RequestHead.previous_raw``)
        self.head_route: Route | None = None
        self.head_auth: str | None = None  # compared by identity: the cache entry's own string
        # The two parts of the last head built in full around its Authorization line: the request line with the
        # client's lines, and the gateway's lines after it ("" when the connection strips certificate headers).
        self.head_client = b""
        self.head_forwarding = b""
        # Whether the client's certificate headers are removed from what goes upstream: it is no trusted proxy.
        # Here, not on the handler: its attributes are many already (past CPython's shared-key limit, slower).
        self.strip = False

    def client_certificate(self, conn: ServerConnection, shared: _Shared) -> None:
        """Set the connection's certificate facts (once, when it is made over TLS or some plugin reads a header):
        the engine's (``TokenMemo``), and ``strip``."""
        tokens = self.tokens
        tokens.client_cert_sha256 = thumbprint(conn)
        if shared.cert_headers:
            tokens.trusted_peer = shared.trusts(conn.client_ip)
            self.strip = not tokens.trusted_peer


class ProxyHandler(RequestHandler, ResponseSink):
    """One client connection of the proxy: its requests (``RequestHandler``), and the responses of the upstream
    connection it forwards them on (``ResponseSink``)."""

    def __init__(self, conn: ServerConnection, shared: _Shared) -> None:
        self.conn = conn
        self._send = conn.send
        self._is_closing = conn.is_closing
        self._shared = shared
        self._engine = shared.engine
        self._try_authorize = shared.try_authorize
        self._origins = shared.origins
        self._response_heads = shared.response_heads
        self._memo = _Memo()
        self._ip = conn.client_ip.encode("ascii")
        if conn.peer_certificate is not None or shared.cert_headers:
            self._memo.client_certificate(conn, shared)
        self._route: Route | None = None
        self._upstream: Connection | None = None
        self._replay: tuple[_Origin, bytes] | None = None
        self._pending: list[bytes] | None = None  # body received before the upstream was ready
        # A miss's verdict being made (``_authorize``, while ``_route`` is None), or the connection to the upstream
        # (``_connect``). Only the latter is cancelled when the request is aborted: the engine may run the
        # introspection in the verdict's task (``Engine.authorize(uncancelled=True)``); a request aborted meanwhile
        # has its verdict dropped. (One attribute for both: as Python, a 31st attribute would cost every hit.)
        self._task: asyncio.Task[None] | None = None
        self._status = 0
        self._out_head: bytes | None = None  # response head, held back to leave in one write with the body
        self._head_written = False
        self._chunk_out = False
        self._keep_alive = True
        self._access = shared.record
        self._span: Any = None  # the active request's span (tracing on only)
        # The access log's record of the active request (only kept when it is on): its head, request id, when it
        # began, how long the engine's async path took, when it went upstream (0.0: not yet).
        self._log_head: RequestHead | None = None
        self._request_id = ""
        self._own_request_id = False
        self._t_start = 0.0
        self._t_introspection = 0.0
        self._t_upstream = 0.0
        self._trusted_peer: bool | None = None  # the peer is in trusted_proxies (asked once, when DPoP needs it)

    # -- requests from the client --------------------------------------------------------------------------------

    def handle_request(self, head: RequestHead) -> None:
        self._status = 0
        self._head_written = False
        self._out_head = None
        self._pending = None
        self._route = None
        if self._access:
            self._begin_log(head)
        memo = self._memo
        info = memo.info
        if info is None:
            info = memo.info = RequestInfo(head.method, head.host, head.path, head.headers, memo.tokens)
        else:  # the last request's, decided without waiting: nothing else holds it
            info.method, info.host, info.path, info.headers, info.origin = (head.method, head.host, head.path,
                                                                            head.headers, "")
        if "dpop" in head.headers:
            info.origin = self._origin(head)
        verdict = self._try_authorize(info)
        if verdict is None:
            memo.info = None  # the verdict's task keeps this one
            self._pending = []
            self.conn.pause_reading(PAUSE_VERDICT)
            self._task = self._shared.loop.create_task(self._authorize(head, info))
            return
        self._apply(head, verdict, self.conn.turn_time)  # 0 unless decided in the loop turn that read it

    def _origin(self, head: RequestHead) -> str:
        """``scheme://authority`` the client used (``core.dpop.request_origin``): for a DPoP proof's ``htu``."""
        shared = self._shared
        if self._trusted_peer is None:
            self._trusted_peer = is_trusted(self.conn.client_ip, shared.trusted_proxies)
        headers = head.headers
        return request_origin(public_base_url=shared.public_base_url, scheme="http", host=head.raw_host,
                              forwarded_proto=headers.get("x-forwarded-proto"),
                              forwarded_host=headers.get("x-forwarded-host"), trusted=self._trusted_peer)

    def handle_body(self, data: bytes) -> None:
        conn = self._upstream
        if conn is not None:
            conn.send_body(data)
        elif self._pending is not None:
            self._pending.append(data)  # bounded: reading is paused until the upstream is ready

    def handle_body_end(self) -> None:
        if self._upstream is not None:
            self._upstream.end_body()

    def handle_abort(self) -> bool:
        task = self._task
        if task is not None:
            self._task = None
            if self._route is not None:  # connecting upstream: stop. A verdict's task is left to finish (it may be
                task.cancel()  # running an introspection others wait for); _authorize then drops the verdict.
        if self._upstream is not None:
            self._upstream.abort()
            self._upstream = None
        return self._head_written

    def handle_write_paused(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def handle_write_resumed(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    def handle_tunnel(self, data: bytes) -> None:
        if self._upstream is not None:
            self._upstream.send_body(data)

    async def _authorize(self, head: RequestHead, info: RequestInfo) -> None:
        if self._span is not None:  # the engine's asynchronous path (and its calls) under the request's span
            self._attach_span()
        started = time.perf_counter()
        try:  # frontends.authorize_timed, inlined: its two interpreted coroutines cost a miss more than this
            verdict = await self._engine.authorize(info, uncancelled=True)  # handle_abort never cancels this task
        except Exception as exc:
            verdict = authorization_failed(exc)
        self._t_introspection = time.perf_counter() - started
        self._task = None
        conn = self.conn
        if conn.active is head and not conn.responded and not conn.closed:
            self._apply(head, verdict)

    def _apply(self, head: RequestHead, verdict: Verdict, now: float = 0.0) -> None:
        """Forward the request as ``verdict`` allows, or answer its denial. ``now``: the loop's time when it was
        read in this loop turn (0: not known, ``Connection.begin`` reads the clock)."""
        if isinstance(verdict, Deny):
            self._deny(head, verdict)
            return
        route = self._route = verdict.route
        upstream = route.upstream
        authorization = verdict.authorization
        memo = self._memo
        # The value goes into the head as it is: a line break in it would split the head. The last head's value
        # (``memo.head_auth``, the cache entry's own string, compared by identity) passed this test already.
        if upstream is None or (authorization is not None and authorization is not memo.head_auth
                                and ("\r" in authorization or "\n" in authorization)):
            self._deny(head, server_error(route))
            return
        origin = memo.origin  # the last request's: the same upstream, unless the route changed
        if origin is None or origin.upstream is not upstream:
            origin = self._origins.get(id(upstream))
            if origin is None or origin.upstream is not upstream:
                origin = self._shared.origin(upstream)
            memo.origin = origin
        request_head = self._request_head(head, verdict, origin)
        claims = verdict.headers
        if claims is not None:  # the route sets claims_to_headers
            request_head = self._with_claims(request_head, head, route, claims)
        if self._access:
            request_head = self._decorate(request_head)
        conn = self._shared.pool.take(origin.idle)
        if conn is None:
            self._connect_later(head, origin, request_head)
        else:
            self._forward(head, conn, request_head, origin, fresh=False, now=now)

    def _connect_later(self, head: RequestHead, origin: _Origin, request_head: bytes) -> None:
        if self._pending is None:
            self._pending = []
        self.conn.pause_reading(PAUSE_VERDICT)
        self._task = self._shared.loop.create_task(self._connect(head, origin, request_head))

    async def _connect(self, head: RequestHead, origin: _Origin, request_head: bytes) -> None:
        try:
            conn = await self._shared.pool.connect(origin.key, self._shared.connect_timeout)
        except ClientError as exc:
            self._task = None
            if self.conn.active is head and not self.conn.responded:
                self.upstream_failed(exc)
            return
        self._task = None
        client = self.conn
        if client.active is not head or client.responded or client.closed:
            self._shared.pool.release(conn)
            return
        self._forward(head, conn, request_head, origin, fresh=True)

    def _forward(self, head: RequestHead, conn: Connection, request_head: bytes, origin: _Origin, *,
                 fresh: bool, now: float = 0.0) -> None:
        try:
            conn.begin(self, request_head, head_request=head.method == "HEAD", timeout=self._shared.timeout,
                       chunked=head.chunked, upgrade=head.upgrade and tunnels(head), now=now)
        except StaleConnection:
            if fresh:
                self.upstream_failed(ClientError("the new connection closed at once"))
            else:
                self._connect_later(head, origin, request_head)  # nothing was sent: safe to try a new one
            return
        self._upstream = conn
        if self._access:
            self._t_upstream = time.perf_counter()
        # A pooled connection the upstream closed while we wrote on it (its idle timeout, keepalive_requests) fails
        # with no response: a request without a body and with an idempotent method is then sent once more, on a
        # new connection (RFC 9110 9.2.2), as nginx's proxy_next_upstream does.
        self._replay = None if fresh or head.has_body or head.method not in _IDEMPOTENT else (origin, request_head)
        pending = self._pending
        if pending:
            for chunk in pending:
                conn.send_body(chunk)
        self._pending = None
        if head.complete:
            conn.end_body()
        else:
            self.conn.send_continue(head)
        self.conn.resume_reading(PAUSE_VERDICT)

    def _request_head(self, head: RequestHead, allow: Allow, origin: _Origin) -> bytes:
        """The head sent upstream (``forwarding``): the request line with the route's upstream path, the client's
        headers as forwarded, and the gateway's own lines, each from this connection's memo when it repeats; the
        whole head when the request repeats the last one exactly (same method, target and raw header bytes, same
        route and the same cache entry's Authorization value)."""
        memo = self._memo
        route = allow.route
        authorization = allow.authorization
        # ``index_headers`` compared this head's raw headers with the connection's previous head's
        # (``RequestHead.previous_raw``); that head is the one this memo was made from when the list is the memo's.
        previous = head.previous_raw
        repeats = previous is not None and previous is memo.head_raw and route is memo.head_route \
            and head.target == memo.head_target and head.method == memo.head_method
        if repeats and authorization is memo.head_auth and memo.request_head and head.raw_repeated:
            memo.head_raw = head.raw_headers  # the same bytes: this list is the one the next head is compared with
            return memo.request_head
        if repeats and authorization is not None and memo.head_client and memo.head_auth is not None:
            # Only the token changed (a load balancer's or a BFF's connection): the client's part as before (it never
            # includes the client's Authorization on a route with the plugin), this entry's line, the same lines after
            request_head = authorization_line(authorization, memo.head_client, memo.head_forwarding)
        else:
            request_head = self._build_request_head(head, allow, origin)
        memo.request_head, memo.head_auth, memo.head_route = request_head, authorization, route
        memo.head_target, memo.head_method, memo.head_raw = head.target, head.method, head.raw_headers
        return request_head

    def _build_request_head(self, head: RequestHead, allow: Allow, origin: _Origin) -> bytes:
        memo = self._memo
        route = allow.route
        path, query = head.path, head.query
        if path == memo.path and route is memo.path_route and query == memo.query:
            target = memo.target
        else:
            target = self._shared.upstream_path(route, path)
            if query:
                target = b"%b?%b" % (target, query.encode("latin-1"))
            memo.path, memo.path_route, memo.query, memo.target = path, route, query, target
        authorization = allow.authorization
        parts, forwarded_for = request_lines(head, target, authorization, route.plugin)
        client = b"".join(parts)  # the request line and the client's lines as forwarded (``_request_head`` reuses it)
        raw_host = head.raw_host
        if forwarded_for is None and route is memo.lines_route and raw_host == memo.lines_host and memo.lines:
            if authorization is not memo.lines_auth:  # another token's entry: its line, then the same forwarding
                memo.lines, memo.lines_auth = authorization_line(authorization, after=memo.forwarding), authorization
            lines, forwarding = memo.lines, memo.forwarding
        else:
            raw = raw_host.encode("latin-1")
            host = raw if route.preserve_host and raw else origin.host_header
            forwarding = forwarding_lines(host, raw, self._ip, forwarded_for)
            lines = authorization_line(authorization, after=forwarding)
            if forwarded_for is None:  # a client's own X-Forwarded-For makes the lines its own: not remembered
                memo.lines, memo.lines_auth, memo.lines_route, memo.lines_host = lines, authorization, route, raw_host
                memo.forwarding = forwarding
        if memo.strip:  # the certificate headers are removed from the whole head: no part of it is reused
            memo.head_client = memo.head_forwarding = b""
            return without_headers(client + lines, head.headers, self._shared.cert_headers)
        memo.head_client, memo.head_forwarding = client, forwarding
        return client + lines

    def _with_claims(self, request_head: bytes, head: RequestHead, route: Route,
                     claims: tuple[tuple[str, str], ...]) -> bytes:
        """``request_head`` with the route's claims headers (``forwarding.with_claim_headers``); their lines and the
        route's names are remembered per connection (the lines by the cache entry's own tuple)."""
        memo = self._memo
        if claims is not memo.claims_source:
            memo.claims_source, memo.claims_lines = claims, claim_lines(claims)
        plugin = route.plugin
        if plugin is not memo.claims_plugin:
            memo.claims_plugin = plugin
            memo.claims_names = header_names(plugin.claims_to_headers) if plugin is not None else frozenset()
        return with_claim_headers(request_head, head.lnames, memo.claims_names, memo.claims_lines)

    def _deny(self, head: RequestHead, deny: Deny) -> None:
        self._status = deny.status
        self._pending = None
        route = deny.route if deny.route is not None else self._route
        self._observe(deny.status, deny.code, route)
        if self._access:
            self._log(deny.status, deny.code, route)
        self.conn.resume_reading(PAUSE_VERDICT)  # what is left of the body has to be read to be discarded
        self.conn.send_response(deny.status, deny.headers(), deny.body())

    def handle_refused(self, status: int) -> None:
        self._observe(status, "refused", self._route)
        if self._access:
            if self._log_head is None:  # a request the handler never saw (broken framing, a slow head): unknown
                self._request_id, self._own_request_id = access.new_request_id(), False
                self._t_start = self._t_introspection = self._t_upstream = 0.0
            self._log(status, "refused", self._route)

    def _decorate(self, request_head: bytes) -> bytes:
        """The head sent upstream with the access log's ``X-Request-Id`` and tracing's ``traceparent``."""
        if self._shared.access_log:
            request_head = with_request_id(request_head, self._request_id.encode("ascii"), self._own_request_id)
        tracer = self._shared.tracing
        if tracer is not None and self._span is not None:
            request_head = tracing.with_trace_context(request_head, tracer.upstream_lines(self._span))
        return request_head

    def _attach_span(self) -> None:
        tracer = self._shared.tracing
        if tracer is not None:
            tracer.attach(self._span)

    def _begin_log(self, head: RequestHead) -> None:
        self._log_head = head
        self._request_id, own = access.request_id(head.headers)
        # The client's own goes upstream as it came, unless its Connection header removes it on the way.
        self._own_request_id = own and access.REQUEST_ID_HEADER not in head.connection_tokens
        self._t_start = time.perf_counter()
        self._t_introspection = 0.0
        self._t_upstream = 0.0
        tracer = self._shared.tracing
        if tracer is not None:
            self._span = tracer.start_request("serve", head)

    def _log(self, status: int, outcome: str, route: Route | None) -> None:
        """Write the active request's access log line and end its span (whichever is on)."""
        head = self._log_head
        self._log_head = None
        span = self._span
        if span is not None:
            self._span = None
            tracer = self._shared.tracing
            if tracer is not None:
                token = access.token_fingerprint(self._memo.tokens, head.headers) if head is not None else None
                tracer.end_request(span, status, outcome, route.name if route is not None else None,
                                   token if token != access.NO_VALUE else None)
        if not self._shared.access_log:
            return
        now = time.perf_counter()
        start, upstream = self._t_start, self._t_upstream
        access.write(access.fields(
            "serve", route.name if route is not None else None, head.method if head is not None else "",
            head.path if head is not None else "", status, outcome,
            access.token_fingerprint(self._memo.tokens, head.headers) if head is not None else access.NO_VALUE,
            (now - start) * 1000.0 if start else 0.0, self._t_introspection * 1000.0,
            (now - upstream) * 1000.0 if upstream else 0.0, self._request_id))

    def _observe(self, status: int, outcome: str, route: Route | None) -> None:
        observe = self._shared.observe
        if observe is not None:
            observe(status, outcome, route.name if route is not None else None)

    # -- the upstream's response (ResponseSink) ----------------------------------------------------------------------

    def upstream_head(self, status: int, raw: bytes, has_body: bool) -> None:
        client = self.conn
        head = client.active
        assert head is not None
        self._status = status
        if status == 101:  # the upstream accepted the upgrade (the connection only lets it when one was asked)
            self._switch(client, head, raw)
            return
        keep_alive = client.should_keep_alive(head) and client.can_drain(head)
        memo = self._memo
        if raw == memo.raw_head:  # the same head as the last response (nginx's change once a second, with Date)
            whole, length = memo.rewritten_head
        else:
            known = self._response_heads.get(raw)
            if known is None:
                whole, length = self._shared.rewrite_response_head(raw, status)
            else:  # only heads the shared memo keeps: small, no Set-Cookie
                memo.raw_head, memo.rewritten_head = raw, known
                whole, length = known
        self._chunk_out = False
        self._keep_alive = keep_alive
        if keep_alive and (length or not has_body) and not head.http10:
            self._out_head = whole  # the usual case: the rewritten head as it is
            return
        parts = [whole[:-2]]  # without its final empty line: more header lines follow
        # A body without Content-Length (chunked, or delimited by the close) is sent on re-chunked.
        if has_body and not length:
            if head.http10:
                keep_alive = False  # an HTTP/1.0 client cannot read chunks: the close ends the body
            else:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self._chunk_out = True
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif head.http10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._keep_alive = keep_alive
        self._out_head = b"".join(parts)

    def upstream_body(self, data: bytes) -> None:
        if not data or self._is_closing():
            return
        out = self._out_head
        if out is not None:
            self._out_head = None
            self._head_written = True
        if self._chunk_out:
            pieces = (out or b"", b"%x\r\n" % len(data), data, b"\r\n")
            if len(data) < 16384:
                self._send(b"".join(pieces))
            else:
                self.conn.out.writelines(pieces)
        elif out is None:
            self._send(data)
        elif len(data) < 16384:
            self._send(out + data)  # head and body in one send(): one small copy beats a second syscall
        else:
            self.conn.out.writelines((out, data))

    def upstream_flush(self) -> None:
        out = self._out_head
        if out is not None:
            self._out_head = None
            self._head_written = True
            self.conn.write(out)

    def upstream_end(self) -> None:
        conn = self._upstream
        self._upstream = None
        out = self._out_head
        self._out_head = None
        self._head_written = True
        if self._chunk_out:
            self.conn.write(out + b"0\r\n\r\n" if out is not None else b"0\r\n\r\n")
        elif out is not None:
            self.conn.write(out)
        metrics = self._shared.metrics
        route = self._route
        if metrics is not None and conn is not None and route is not None:
            metrics.observe_forwarded(self._status, route.name, conn.elapsed)  # the request and its latency
        else:
            self._observe(self._status, "allowed", route)
        if self._access:
            self._log(self._status, "allowed", self._route)
        self.conn.resume_reading(PAUSE_UPSTREAM | PAUSE_VERDICT)
        self.conn.finish_response(self._keep_alive)

    def upstream_failed(self, exc: ClientError) -> None:
        self._upstream = None
        client = self.conn
        head = client.active
        if head is None or client.responded or client.closed:
            return
        route = self._route
        where = f"{route.upstream.host}:{route.upstream.port}" if route and route.upstream else "upstream"
        if self._head_written:
            logger.warning("upstream %s failed mid-response, dropping the client connection: %s", where, exc)
            self._observe(self._status, "aborted", route)
            self._upstream_failed("aborted")
            if self._access:
                self._log(self._status, "aborted", route)
            client.responded = True
            client.abort()
            return
        replay, self._replay = self._replay, None
        if replay is not None and isinstance(exc, ProtocolError) and not self._head_written:
            logger.debug("upstream %s closed a reused connection: %s; sending again on a new one", where, exc)
            self._connect_later(head, *replay)
            return
        self._out_head = None
        logger.warning("upstream %s failed: %s", where, exc)
        self._upstream_failed("timeout" if isinstance(exc, RequestTimeout)
                              else "connect" if isinstance(exc, ConnectError) else "protocol")
        self._deny(head, gateway_timeout(route) if isinstance(exc, RequestTimeout) else bad_gateway(route))

    def _switch(self, client: ServerConnection, head: RequestHead, raw: bytes) -> None:
        if not client.can_tunnel(head):  # not the request llhttp stopped at: nothing sane can follow
            logger.warning("upstream switched protocols for a request that cannot be tunnelled; closing")
            self.handle_abort()
            client.responded = True
            client.abort()
            return
        client.write(switching_head(raw))
        self._head_written = True
        self._observe(101, "allowed", self._route)
        if self._access:
            self._log(101, "allowed", self._route)
        client.start_tunnel()

    def _upstream_failed(self, kind: str) -> None:
        metrics = self._shared.metrics
        if metrics is not None:
            metrics.upstream_failed(kind)

    def upstream_tunnel(self, data: bytes) -> None:
        self.conn.tunnel_send(data)

    def upstream_closed(self) -> None:
        self._upstream = None
        self.conn.end_tunnel()

    def upstream_write_paused(self) -> None:
        self.conn.pause_reading(PAUSE_UPSTREAM)

    def upstream_write_resumed(self) -> None:
        self.conn.resume_reading(PAUSE_UPSTREAM)


async def start_proxy(engine: Authorizer, settings: Settings, host: str, port: int, *, reuse_port: bool = False,
                      observe: Observe | None = None, limits: ServerLimits | None = None,
                      tls: ssl.SSLContext | None = None, metrics: Metrics | None = None) -> HttpServer:
    """Listen on ``host:port`` (over TLS with ``tls``: ``phantom_token.tls``'s context) and proxy every request the
    engine allows. ``close()``/``wait_closed()`` drain in-flight requests, then close the upstream pool.
    ``metrics``: where upstream latency and errors are counted (the latency from the upstream connection's own clock
    readings: no clock call of its own); with it, a response forwarded in full is counted by
    ``metrics.observe_forwarded`` (one call for the request and its latency) instead of ``observe``, so pass
    ``metrics.observe_request`` as ``observe``."""
    shared = _Shared(engine, settings, observe, metrics)
    make = requiring_certificate(lambda conn: ProxyHandler(conn, shared),
                                 tls is not None and settings.tls.client_certificate == "required", observe)
    return await start_server(make, host, port, limits=limits or listener_limits(settings),
                              reuse_port=reuse_port, on_closed=shared.pool.aclose, tls=tls)


__all__ = ["HOP_BY_HOP", "Observe", "ProxyHandler", "start_proxy"]
