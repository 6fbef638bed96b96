"""HTTP/1.1 server: the thin asyncio shell around ``phantom_token.http.connection``.

``ServerProtocol`` is the asyncio protocol of one client connection: it hands what the transport delivers to the
connection's ``ServerConnection`` (bytes, EOF, write pressure) and carries out what it decides (``_Transport``:
close, lingering close, abort, pause and resume reading, and the one lazily rescheduled timer per connection). The
rules live in the connection; the front door is the ``RequestHandler`` that ``start_server``'s ``make_handler``
builds for each connection. ``serve_app`` serves a simple buffered app (admin listener, demo servers).

Invariants:
- Every connection of a listening server is in ``ServerState.connections`` from ``connection_made`` to
  ``connection_lost``; ``HttpServer.close`` shuts each down gracefully and ``wait_closed`` drops what is left after
  ``drain_timeout``.
- A closing transport waits for its write buffer; a client that reads none of it is dropped after the send timeout.
- A handler of ``serve_app`` that raises is a 500; only the exception type and where it was raised are logged.
- Over TLS (``start_server(ssl=...)``) a connection exists for the handler only once its handshake completed (a
  failed or too slow handshake closes it at the transport, logged by asyncio at debug level only); the client
  certificate (DER) is read once per connection, in ``connection_made``, for the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import traceback
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, cast

from phantom_token.http.connection import (
    Listening,
    Output,
    RequestHandler,
    ServerConnection,
    ServerLimits,
)
from phantom_token.http.messages import Handler, Request, Response
from phantom_token.http.request_head import RequestHead
from phantom_token.http.responses import ERROR_BODIES, json_error, render_response, status_line

logger: Final = logging.getLogger("phantom_token.http")

MiB: Final = 1024 * 1024
LINGER_SECONDS: Final = 2.0  # how long an early-closed connection keeps draining what the client still sends

MakeHandler = Callable[[ServerConnection], RequestHandler]


class ServerState(Listening):
    """What the connections of one listening server share: limits, the live connections, shutdown state."""

    def __init__(self, limits: ServerLimits, tls: bool = False) -> None:
        super().__init__(limits)
        self.tls = tls  # connections arrive over TLS: read the client certificate once each
        self.loop = asyncio.get_running_loop()
        self.connections: set[ServerProtocol] = set()
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    def add(self, conn: ServerProtocol) -> None:
        self.connections.add(conn)
        self.all_closed.clear()

    def discard(self, conn: ServerProtocol) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.all_closed.set()


class _Transport(Output):
    """Carries out a connection's decisions on its asyncio transport, and owns its one timer (the connection says
    when it wants to be woken; the timer is moved only when that is earlier)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, send_timeout: float) -> None:
        self.transport = transport
        self.loop = loop
        self.send_timeout = send_timeout
        self.conn: ServerConnection | None = None  # set once the connection is built
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.transport.writelines(parts)

    def wake_at(self, when: float) -> None:
        if self._timer is None or when < self._when:
            self._schedule(when)

    def close(self, linger: bool) -> None:
        self.stop()
        transport = self.transport
        if linger and transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
            transport.resume_reading()
            self._timer = self.loop.call_later(LINGER_SECONDS, self._close_now)
        else:
            self._close_now()

    def abort(self) -> None:
        self.stop()
        self.transport.abort()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_now(self) -> None:
        transport = self.transport
        transport.close()
        self._timer = None
        if transport.get_write_buffer_size():
            self._timer = self.loop.call_later(self.send_timeout, transport.abort)

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        conn = self.conn
        if conn is not None:
            when = conn.expire(self.loop.time())
            if when >= 0.0 and self._timer is None:
                self._schedule(when)


class ServerProtocol(asyncio.Protocol):
    """The asyncio protocol of one client connection: hands everything to its ``ServerConnection``. The loop's
    ``time`` is kept bound (compiled code then calls it directly on every read)."""

    conn: ServerConnection  # from connection_made on

    def __init__(self, state: ServerState, make_handler: MakeHandler) -> None:
        self.state = state
        self._make_handler = make_handler
        self._time: Callable[[], float] = state.loop.time
        self._out: _Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        tcp = cast(asyncio.Transport, transport)
        peer_address = transport.get_extra_info("peername")
        peer = (str(peer_address[0]), int(peer_address[1])) if isinstance(peer_address, tuple) else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = self.state
        certificate = _client_certificate(transport) if state.tls else None
        out = self._out = _Transport(tcp, state.loop, state.limits.send_timeout)
        conn = self.conn = ServerConnection(state, out, tcp.write, tcp.is_closing, peer, self._make_handler,
                                            self._time(), certificate)
        out.conn = conn
        state.add(self)
        if state.closing:
            conn.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._out is not None:
            self._out.stop()
        self.conn.lost()
        self.state.discard(self)

    def data_received(self, data: bytes) -> None:
        self.conn.receive(data, self._time())

    def eof_received(self) -> bool | None:
        return True if self.conn.receive_eof() else None

    def pause_writing(self) -> None:
        self.conn.write_paused(self._time())

    def resume_writing(self) -> None:
        self.conn.write_resumed()


def _client_certificate(transport: asyncio.BaseTransport) -> bytes | None:
    """The DER certificate a TLS client presented (verified by the handshake), or None."""
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, (ssl.SSLObject, ssl.SSLSocket)):  # a tuple: compiled isinstance takes it
        return None
    return ssl_object.getpeercert(binary_form=True) or None


class HttpServer:
    """A listening server: ``close()`` stops accepting and closes idle connections; ``wait_closed()`` lets
    in-flight requests finish for up to ``drain_timeout`` seconds, then drops what is left."""

    def __init__(self, server: asyncio.Server, state: ServerState,
                 on_closed: Callable[[], Awaitable[None]] | None = None) -> None:
        self._server = server
        self.state = state
        self._on_closed = on_closed

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        # typeshed says tuple, uvloop's is a list, and compiled code checks the declared type: read it untyped
        sockets: Iterable[socket.socket] = getattr(self._server, "sockets")  # noqa: B009
        return tuple(sockets)

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def close(self) -> None:
        self.state.closing = True
        self._server.close()
        for protocol in list(self.state.connections):
            protocol.conn.shutdown()

    async def wait_closed(self) -> None:
        try:
            await asyncio.wait_for(self.state.all_closed.wait(), self.state.limits.drain_timeout)
        except TimeoutError:
            logger.warning("drain timed out; dropping %d connection(s)", len(self.state.connections))
            for protocol in list(self.state.connections):
                protocol.conn.abort()
        await self._server.wait_closed()
        if self._on_closed is not None:
            on_closed, self._on_closed = self._on_closed, None
            await on_closed()


async def start_server(make_handler: MakeHandler, host: str, port: int, *, limits: ServerLimits,
                       reuse_port: bool = False, backlog: int = 1024,
                       on_closed: Callable[[], Awaitable[None]] | None = None,
                       tls: ssl.SSLContext | None = None) -> HttpServer:
    """Listen on ``host:port``; each connection gets the ``RequestHandler`` ``make_handler`` builds for it. With
    ``tls``, over TLS (the handshake may take ``header_timeout`` seconds)."""
    state = ServerState(limits, tls=tls is not None)
    server = await state.loop.create_server(lambda: ServerProtocol(state, make_handler), host, port,
                                            reuse_port=reuse_port or None, backlog=backlog, ssl=tls,
                                            ssl_handshake_timeout=limits.header_timeout if tls else None)
    return HttpServer(server, state, on_closed)


class _AppHandler(RequestHandler):
    """Reads the whole body (up to ``max_body``), calls the app, writes its Response."""

    def __init__(self, conn: ServerConnection, app: Handler, max_body: int, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self._app = app
        self._max_body = max_body
        self._loop = loop
        self._body: list[bytes] = []
        self._size = 0
        self._task: asyncio.Task[None] | None = None

    def handle_request(self, head: RequestHead) -> None:
        self._body = []
        self._size = 0
        if head.content_length is not None and head.content_length > self._max_body:
            self.conn.send_error(413)
            return
        self.conn.send_continue(head)

    def handle_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_body:
            self.conn.send_error(413)
            return
        self._body.append(data)

    def handle_body_end(self) -> None:
        conn = self.conn
        head = conn.active
        assert head is not None
        request = Request(head.method, head.path, head.query, head.headers, b"".join(self._body), conn.peer)
        self._body = []
        self._task = self._loop.create_task(self._run(head, request))

    def handle_abort(self) -> bool:
        if self._task is not None:
            self._task.cancel()
        return False

    async def _run(self, head: RequestHead, request: Request) -> None:
        conn = self.conn
        try:
            response = await self._app(request)
            payload = render_response(response.status, response.headers, response.body,
                                      head_only=head.method == "HEAD", keep_alive=conn.should_keep_alive(head),
                                      http10=head.http10)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The message may quote request data, so only the type and where it was raised are logged.
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            logger.error("handler failed: %s at %s:%s", type(exc).__name__,
                         where.filename if where else "?", where.lineno if where else "?")
            payload = render_response(500, [("Content-Type", "application/json")], ERROR_BODIES[500],
                                      head_only=head.method == "HEAD", keep_alive=conn.should_keep_alive(head),
                                      http10=head.http10)
        finally:
            self._task = None
        if conn.closed or conn.active is not head:
            return
        conn.write(payload)
        conn.finish_response(conn.should_keep_alive(head))


async def serve_app(handler: Handler, host: str, port: int, *, max_body: int = MiB,
                    limits: ServerLimits | None = None, reuse_port: bool = False) -> HttpServer:
    """Serve a simple app (admin listener, demo servers) on ``host:port``."""
    loop = asyncio.get_running_loop()
    return await start_server(lambda conn: _AppHandler(conn, handler, max_body, loop), host, port,
                              limits=limits or ServerLimits(), reuse_port=reuse_port)


__all__ = [
    "HttpServer",
    "MiB",
    "RequestHandler",
    "RequestHead",
    "Response",
    "ServerConnection",
    "ServerLimits",
    "ServerProtocol",
    "ServerState",
    "json_error",
    "render_response",
    "serve_app",
    "start_server",
    "status_line",
]
