"""The reverse-proxy front door (``phantom-token serve``): contract section 9.

Each request becomes a ``RequestInfo``; the engine's ``Verdict`` is applied as it is: a ``Deny`` is answered
here, an ``Allow`` is forwarded to ``allow.route.upstream`` over a pooled keep-alive connection.

Invariants:
- Nothing is written upstream before the engine allowed the request. On a denial the request body is read and
  discarded, or the connection is closed when the rest is large or the client still waits for 100-continue.
- The upstream sees exactly one ``Authorization`` header when the verdict carries one (every client one removed).
  Hop-by-hop headers (RFC 9110 7.6.1) and those named in ``Connection`` are removed in both directions, but
  ``Connection`` never removes what the gateway sets or frames the message with: the request's ``Content-Length`` or
  ``Transfer-Encoding: chunked`` is written by the gateway from what it parsed (never copied), as are ``Host``,
  ``Authorization`` and ``X-Forwarded-*``; a response keeps its ``Content-Length`` whatever its ``Connection`` says.
  ``X-Forwarded-For`` gets the client address appended, ``X-Forwarded-Proto``/``-Host`` are replaced. Headers whose
  names hold ``_`` are never forwarded (the server ignores them).
- The path sent upstream is the normalised one the route matched (``phantom_token.http.uri``), after Kong's
  ``strip_path``; the query string goes as received.
- Bodies stream both ways and at most one socket read is held per side: the client is not read while the upstream's
  write buffer is high (or while the verdict or a connection is awaited), the upstream is not read while the
  client's write buffer is high.
- A failure before any byte of the response reached the client answers 502 ``bad_gateway`` or 504
  ``gateway_timeout``; after that the client connection is dropped, so a cut-short response never looks complete.
- The fast path (``try_authorize`` answers, a pooled connection is free) runs in protocol callbacks only: no
  await, no task. Header values are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Final

from phantom_token.config.settings import Route, Settings, Upstream
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.routes import upstream_path
from phantom_token.core.verdict import Allow, Deny, Verdict, bad_gateway, gateway_timeout, server_error
from phantom_token.frontends import Authorizer, Observe, listener_limits
from phantom_token.http.client import (
    ClientError,
    Connection,
    ConnectionPool,
    PoolKey,
    ProtocolError,
    RequestTimeout,
    ResponseSink,
    StaleConnection,
    head_fields,
)
from phantom_token.http.server import (
    HttpServer,
    HttpServerProtocol,
    RequestHead,
    ServerLimits,
    ServerState,
    start_server,
    status_line,
)
from phantom_token.memo import remember

logger: Final = logging.getLogger("phantom_token.http")

HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"})
_HOP_BY_HOP_BYTES: Final = frozenset(name.encode() for name in HOP_BY_HOP)
# Request headers that need more than copying; everything else is copied byte for byte unless ``Connection`` names
# it. These never are: the gateway writes the framing (Content-Length, Transfer-Encoding), Host, Authorization and
# X-Forwarded-* itself, so a Connection token naming one of them is ignored. Expect is answered here. "" stands for
# every name with "_" (the server ignores those headers: http.server._lname).
_SPECIAL: Final = HOP_BY_HOP | {"content-length", "host", "authorization", "expect", "x-forwarded-for",
                                "x-forwarded-proto", "x-forwarded-host", ""}
# Response headers a Connection token cannot remove: the framing the client reads the body by.
_FRAMING_BYTES: Final = frozenset({b"content-length", b"transfer-encoding"})

# How a hop-by-hop header line starts in a lower-cased response head (llhttp allows no space before the colon).
_HOP_MARKERS: Final = tuple(b"\n" + name + b":" for name in sorted(_HOP_BY_HOP_BYTES))

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

PAUSE_VERDICT: Final = 8  # waiting for the engine or for an upstream connection
PAUSE_UPSTREAM: Final = 16  # the upstream's write buffer is full


def rewrite_response_head(raw: bytes, status: int) -> tuple[bytes, bool, bool]:
    """The response head as sent to the client, without its final empty line: our status line, then the header
    lines as received (llhttp validated them) minus the hop-by-hop ones and those named in ``Connection`` (never
    Content-Length: ``Connection: Content-Length`` would leave a keep-alive client without a length). Also
    whether it has Content-Length, and whether it may be remembered (no Set-Cookie, small)."""
    low = raw.lower()
    length = b"\ncontent-length:" in low
    named: set[bytes] = set()
    cuts: list[tuple[int, int]] = []
    for marker in _HOP_MARKERS:
        at = low.find(marker)
        while at >= 0:
            line_end = low.find(b"\r\n", at) + 2
            cuts.append((at + 1, line_end))
            if marker == b"\nconnection:":
                named |= {token.strip() for token in low[at + 12:line_end - 2].split(b",")}
            at = low.find(marker, line_end - 1)
    named -= _HOP_BY_HOP_BYTES | _FRAMING_BYTES  # a Connection token never removes the framing
    parts = [status_line(status)]
    if named:  # rare: the upstream named further hop-by-hop headers in Connection
        for name, value in head_fields(raw):
            lname = name.lower()
            if lname not in _HOP_BY_HOP_BYTES and lname not in named:
                parts += (name, b": ", value, b"\r\n")
    else:
        pos = raw.find(b"\r\n") + 2
        for cut_start, cut_end in sorted(cuts):
            parts.append(raw[pos:cut_start])
            pos = cut_end
        parts.append(raw[pos:-2])
    return b"".join(parts), length, len(raw) <= 2048 and b"\nset-cookie:" not in low


class _Origin:
    """What is constant per upstream: the pool key, its idle connections and the Host header value."""

    __slots__ = ("host_header", "idle", "key", "upstream")

    def __init__(self, upstream: Upstream, context: ssl.SSLContext | None, pool: ConnectionPool) -> None:
        self.upstream = upstream
        self.key: PoolKey = (upstream.scheme, upstream.host, upstream.port, context)
        self.idle = pool.idle_list(self.key)
        default = 443 if upstream.scheme == "https" else 80
        host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
        self.host_header = (host if upstream.port == default else f"{host}:{upstream.port}").encode("idna")


class _Shared:
    """Per-listener state shared by all client connections."""

    def __init__(self, engine: Authorizer, settings: Settings, observe: Observe | None) -> None:
        self.engine = engine
        # Bound once: ``Authorizer`` is a protocol, so compiled code would look the method up by name per request.
        self.try_authorize: Callable[[RequestInfo], Verdict | None] = engine.try_authorize
        self.observe = observe
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

    def upstream_path(self, route: Route, path: str) -> bytes:
        """The path sent upstream for ``path`` on ``route`` (Kong's path rules), remembered per route: clients ask
        for the same paths again and again; a route's memo starts over when it is full. Query strings are never
        remembered (they may carry anything, credentials included)."""
        known = self._paths.get(id(route))  # by identity, like origin(): routes are built once
        if known is None or known[0] is not route:
            known = self._paths[id(route)] = (route, {})
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
            origin = self.origins[id(upstream)] = _Origin(upstream, context, self.pool)
        return origin


class _Sink(ResponseSink):
    """Hands a proxy connection the responses of its upstream connection (the proxy cannot itself be a
    ``ResponseSink``: it already is an ``HttpServerProtocol``). Made once per client connection."""

    __slots__ = ("proxy",)

    def __init__(self, proxy: ProxyProtocol) -> None:
        self.proxy = proxy

    def upstream_head(self, status: int, head: bytes, has_body: bool) -> None:
        self.proxy.upstream_head(status, head, has_body)

    def upstream_body(self, data: bytes) -> None:
        self.proxy.upstream_body(data)

    def upstream_flush(self) -> None:
        self.proxy.upstream_flush()

    def upstream_end(self) -> None:
        self.proxy.upstream_end()

    def upstream_failed(self, exc: ClientError) -> None:
        self.proxy.upstream_failed(exc)

    def upstream_write_paused(self) -> None:
        self.proxy.upstream_write_paused()

    def upstream_write_resumed(self) -> None:
        self.proxy.upstream_write_resumed()


class ProxyProtocol(HttpServerProtocol):
    """One client connection of the proxy; its ``_Sink`` gives it the upstream's responses."""

    def __init__(self, state: ServerState, shared: _Shared) -> None:
        super().__init__(state)
        self._shared = shared
        self._engine = shared.engine
        self._try_authorize = shared.try_authorize
        self._origins = shared.origins
        self._response_heads = shared.response_heads
        # The last response head from upstream and its rewrite (a memo hit of ``response_heads``): comparing bytes
        # is cheaper than hashing them for the memo.
        self._last_raw = b""
        self._last_rewritten: tuple[bytes, bool] = (b"", False)
        # The last request path, its route and the path sent upstream for it (from the shared memo): a str compare
        # instead of two hashed look-ups when a client asks for the same path again.
        self._last_path = ""
        self._last_path_route: Route | None = None
        self._last_target = b""
        self._memo = TokenMemo()
        # The gateway's own header lines of the last request sent upstream (Authorization, Host, X-Forwarded-*, the
        # final empty line) and what they were made from: a keep-alive client sends the same Host and token
        # request after request, so they are built once per connection and token.
        self._tail = b""
        self._tail_auth: str | None = None  # compared by identity: the cache entry's own string
        self._tail_route: Route | None = None  # its upstream (origin) and preserve_host decide the Host line
        self._tail_host = ""
        self._ip = b""
        self._route: Route | None = None
        self._upstream: Connection | None = None
        self._replay: tuple[_Origin, bytes] | None = None
        self._pending: list[bytes] | None = None  # body received before the upstream was ready
        self._task: asyncio.Task[None] | None = None
        self._status = 0
        self._out_head: bytes | None = None  # response head, held back to leave in one write with the body
        self._head_written = False
        self._chunk_out = False
        self._keep_alive = True
        self._sink = _Sink(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ip = self.client_ip.encode("ascii")

    # -- requests from the client --------------------------------------------------------------------------------

    def handle_request(self, head: RequestHead) -> None:
        self._status = 0
        self._head_written = False
        self._out_head = None
        self._pending = None
        self._route = None
        info = RequestInfo(head.method, head.host, head.path, head.headers, self._memo)
        verdict = self._try_authorize(info)
        if verdict is None:
            self._pending = []
            self.pause_reading(PAUSE_VERDICT)
            self._task = self.loop.create_task(self._authorize(head, info))
            return
        self._apply(head, verdict)

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
        if self._task is not None:
            self._task.cancel()
            self._task = None
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

    async def _authorize(self, head: RequestHead, info: RequestInfo) -> None:
        try:
            verdict = await self._engine.authorize(info)
        except Exception as exc:
            logger.error("authorization failed: %s", type(exc).__name__)
            verdict = server_error()
        self._task = None
        if self.active is head and not self.responded and not self.closed:
            self._apply(head, verdict)

    def _apply(self, head: RequestHead, verdict: Verdict) -> None:
        if isinstance(verdict, Deny):
            self._deny(head, verdict)
            return
        route = self._route = verdict.route
        upstream = route.upstream
        authorization = verdict.authorization
        if upstream is None or (authorization is not None and ("\r" in authorization or "\n" in authorization)):
            self._deny(head, server_error(route))
            return
        origin = self._origins.get(id(upstream))
        if origin is None or origin.upstream is not upstream:
            origin = self._shared.origin(upstream)
        request_head = self._request_head(head, verdict, origin)
        conn = self._shared.pool.take(origin.idle)
        if conn is None:
            self._connect_later(head, origin, request_head)
        else:
            self._forward(head, conn, request_head, origin, fresh=False)

    def _connect_later(self, head: RequestHead, origin: _Origin, request_head: bytes) -> None:
        if self._pending is None:
            self._pending = []
        self.pause_reading(PAUSE_VERDICT)
        self._task = self.loop.create_task(self._connect(head, origin, request_head))

    async def _connect(self, head: RequestHead, origin: _Origin, request_head: bytes) -> None:
        try:
            conn = await self._shared.pool.connect(origin.key, self._shared.connect_timeout)
        except ClientError as exc:
            self._task = None
            if self.active is head and not self.responded:
                self.upstream_failed(exc)
            return
        self._task = None
        if self.active is not head or self.responded or self.closed:
            self._shared.pool.release(conn)
            return
        self._forward(head, conn, request_head, origin, fresh=True)

    def _forward(self, head: RequestHead, conn: Connection, request_head: bytes, origin: _Origin, *,
                 fresh: bool) -> None:
        try:
            conn.begin(self._sink, request_head, head_request=head.method == "HEAD", timeout=self._shared.timeout,
                       chunked=head.chunked)
        except StaleConnection:
            if fresh:
                self.upstream_failed(ClientError("the new connection closed at once"))
            else:
                self._connect_later(head, origin, request_head)  # nothing was sent: safe to try a new one
            return
        self._upstream = conn
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
            self.send_continue(head)
        self.resume_reading(PAUSE_VERDICT)

    def _request_head(self, head: RequestHead, allow: Allow, origin: _Origin) -> bytes:
        """The head sent upstream: method, rewritten path, the client's headers minus hop-by-hop ones, and
        Host, Authorization and X-Forwarded-* set by the gateway."""
        route = allow.route
        path = head.path
        if path == self._last_path and route is self._last_path_route:
            target = self._last_target
        else:
            target = self._shared.upstream_path(route, path)
            self._last_path, self._last_path_route, self._last_target = path, route, target
        if head.query:
            target = b"%b?%b" % (target, head.query.encode("latin-1"))
        parts = [head.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        tokens = head.connection_tokens
        authorization = allow.authorization
        forwarded_for: bytes | None = None
        raw_headers, lnames = head.raw_headers, head.lnames
        for i in range(len(raw_headers)):  # indexes, not zip(): the compiled loop then makes no iterator objects
            lname = lnames[i]
            if lname not in _SPECIAL:
                if lname not in tokens:
                    name, value = raw_headers[i]
                    parts.extend((name, b": ", value, b"\r\n"))
            elif lname == "authorization":
                if authorization is None:  # a route without the plugin: the client's own goes through
                    name, value = raw_headers[i]
                    parts.extend((name, b": ", value, b"\r\n"))
            elif lname == "x-forwarded-for":
                value = raw_headers[i][1]
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
        # The framing is the gateway's own, from what the server parsed (llhttp refused CL with TE and duplicates)
        if head.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif head.content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % head.content_length)
        raw_host = head.raw_host
        if (forwarded_for is None and authorization is self._tail_auth and route is self._tail_route
                and raw_host == self._tail_host and self._tail):
            parts.append(self._tail)
        else:
            parts.append(self._gateway_lines(route, origin, authorization, raw_host, forwarded_for))
        return b"".join(parts)

    def _gateway_lines(self, route: Route, origin: _Origin, authorization: str | None, raw_host: str,
                       forwarded_for: bytes | None) -> bytes:
        """Authorization, Host and X-Forwarded-* as the gateway sets them, and the head's final empty line;
        remembered for the next request unless the client sent its own X-Forwarded-For."""
        raw = raw_host.encode("latin-1")
        host = raw if route.preserve_host and raw else origin.host_header
        parts = [b"Authorization: " + authorization.encode("latin-1") + b"\r\n" if authorization is not None
                 else b"",
                 b"Host: %b\r\nX-Forwarded-For: %b\r\nX-Forwarded-Proto: http\r\n" % (
                     host, forwarded_for + b", " + self._ip if forwarded_for else self._ip)]
        if raw:
            parts.extend((b"X-Forwarded-Host: ", raw, b"\r\n"))
        parts.append(b"\r\n")
        lines = b"".join(parts)
        if forwarded_for is None:
            self._tail, self._tail_auth, self._tail_route, self._tail_host = lines, authorization, route, raw_host
        return lines

    def _deny(self, head: RequestHead, deny: Deny) -> None:
        self._status = deny.status
        self._pending = None
        self._observe(deny.status)
        self.resume_reading(PAUSE_VERDICT)  # what is left of the body has to be read to be discarded
        self.send_response(deny.status, deny.headers(), deny.body())

    def _observe(self, status: int) -> None:
        observe = self._shared.observe
        if observe is not None:
            observe(status)

    # -- the upstream's response (through _Sink) --------------------------------------------------------------------

    def upstream_head(self, status: int, raw: bytes, has_body: bool) -> None:
        head = self.active
        assert head is not None
        self._status = status
        keep_alive = self.should_keep_alive(head) and self.can_drain(head)
        if raw == self._last_raw:  # the same head as the last response (nginx's change once a second, with Date)
            whole, length = self._last_rewritten
        else:
            known = self._response_heads.get(raw)
            if known is None:
                whole, length = self._shared.rewrite_response_head(raw, status)
            else:  # only heads the shared memo keeps: small, no Set-Cookie
                self._last_raw, self._last_rewritten = raw, known
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
        transport = self.transport
        if not data or transport is None or self._is_closing():
            return
        out = self._out_head
        if out is not None:
            self._out_head = None
            self._head_written = True
        if self._chunk_out:
            pieces = [out or b"", b"%x\r\n" % len(data), data, b"\r\n"]
            if len(data) < 16384:
                self._send(b"".join(pieces))
            else:
                transport.writelines(pieces)
        elif out is None:
            self._send(data)
        elif len(data) < 16384:
            self._send(out + data)  # head and body in one send(): one small copy beats a second syscall
        else:
            transport.writelines((out, data))

    def upstream_flush(self) -> None:
        out = self._out_head
        if out is not None:
            self._out_head = None
            self._head_written = True
            self.write(out)

    def upstream_end(self) -> None:
        self._upstream = None
        out = self._out_head
        self._out_head = None
        self._head_written = True
        if self._chunk_out:
            self.write(out + b"0\r\n\r\n" if out is not None else b"0\r\n\r\n")
        elif out is not None:
            self.write(out)
        self._observe(self._status)
        self.resume_reading(PAUSE_UPSTREAM | PAUSE_VERDICT)
        self.finish_response(self._keep_alive)

    def upstream_failed(self, exc: ClientError) -> None:
        self._upstream = None
        head = self.active
        if head is None or self.responded or self.closed:
            return
        route = self._route
        where = f"{route.upstream.host}:{route.upstream.port}" if route and route.upstream else "upstream"
        if self._head_written:
            logger.warning("upstream %s failed mid-response, dropping the client connection: %s", where, exc)
            self._observe(self._status)
            self.responded = True
            self.abort()
            return
        replay, self._replay = self._replay, None
        if replay is not None and isinstance(exc, ProtocolError) and not self._head_written:
            logger.debug("upstream %s closed a reused connection: %s; sending again on a new one", where, exc)
            self._connect_later(head, *replay)
            return
        self._out_head = None
        logger.warning("upstream %s failed: %s", where, exc)
        self._deny(head, gateway_timeout(route) if isinstance(exc, RequestTimeout) else bad_gateway(route))

    def upstream_write_paused(self) -> None:
        self.pause_reading(PAUSE_UPSTREAM)

    def upstream_write_resumed(self) -> None:
        self.resume_reading(PAUSE_UPSTREAM)


async def start_proxy(engine: Authorizer, settings: Settings, host: str, port: int, *, reuse_port: bool = False,
                      observe: Observe | None = None, limits: ServerLimits | None = None) -> HttpServer:
    """Listen on ``host:port`` and proxy every request the engine allows. ``close()``/``wait_closed()`` drain
    in-flight requests, then close the upstream pool."""
    shared = _Shared(engine, settings, observe)
    return await start_server(lambda state: ProxyProtocol(state, shared), host, port,
                              limits=limits or listener_limits(settings),
                              reuse_port=reuse_port, on_closed=shared.pool.aclose)


__all__ = ["HOP_BY_HOP", "Observe", "ProxyProtocol", "start_proxy"]
