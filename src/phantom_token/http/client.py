"""HTTP/1.1 client side on asyncio protocols and httptools: a keep-alive connection pool, a streaming connection
the reverse proxy drives, and ``HttpClient`` for whole-body requests (the introspection call).

Invariants:
- One request at a time per connection (no pipelining upstream). A connection goes back to the pool only when its
  response was read completely, its request was sent completely and both sides allow keep-alive.
- A pooled connection whose peer closed (EOF, reset) is dropped at once and never handed out; idle pooled
  connections are closed after ``idle_timeout``.
- A response body is passed on as it arrives; the consumer pauses reading with ``pause_reading`` (flow control), and
  is told when the connection's write buffer is high (``upstream_write_paused``) so it can stop its own source.
- No response byte within ``timeout`` of the request (or between two reads) is a ``RequestTimeout``.
- Every failure surfaces as a ``ClientError`` subclass; messages name hosts and causes, never header values.

    ClientError
    ├── ConnectError      could not open the connection (refused, DNS, TLS, connect timeout)
    ├── RequestTimeout    no answer in time
    ├── ProtocolError     the peer broke HTTP or closed the connection before the response was complete
    │   └── NoAnswer      ... closed (or reset) it before any byte of the response
    └── BodyTooLarge      the response body is larger than the caller accepts
"""

from __future__ import annotations

import asyncio
import logging
import select
import ssl as ssl_module
from collections.abc import Callable, Iterable
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

from phantom_token._trait import trait
from phantom_token.http.messages import RawHeaders, drop_before_connected, not_connected
from phantom_token.memo import remember

logger: Final = logging.getLogger("phantom_token.http")

MiB: Final = 1024 * 1024

# How the body of a response is delimited.
BODY_NONE: Final = 0  # HEAD, 1xx, 204, 304
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
BODY_CLOSE: Final = 3  # read until the peer closes

PoolKey = tuple[str, str, int, "ssl_module.SSLContext | None"]


MAX_RESPONSE_HEAD: Final = 64 * 1024  # a response head (status line and headers) larger than this is a ProtocolError


def head_fields(head: bytes) -> RawHeaders:
    """The ``(name, value)`` pairs of a response head llhttp accepted. llhttp is strict (CRLF only, no obs-fold, no
    space before the colon, no CR or LF inside a value), so every line after the status line is ``name:value``."""
    fields = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields.append((name, value.strip(b" \t")))
    return fields


def head_fields_text(head: bytes) -> list[tuple[str, str]]:
    """``head_fields`` as text (ISO-8859-1): the same split, on the head decoded once rather than each name and
    value (a cache miss reads one such head)."""
    fields = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            fields.append((name, value.strip(" \t")))
    return fields


def field_values(fields: list[tuple[str, str]], lname: str) -> list[str]:
    """The values of header ``lname`` (given in lower case) in ``fields`` (``head_fields_text``'s), in order; names
    of another length are not lowered (read per cache miss)."""
    size = len(lname)
    return [value for name, value in fields if len(name) == size and name.lower() == lname]


_NEEDLES: dict[str, str] = {}  # "\r\n<name>:" by name, for head_values (a few names: bounded all the same)


def head_values(head: bytes, lname: str) -> list[str]:
    """``[value for name, value in head_fields_text(head) if name.lower() == lname]`` without splitting the head: the
    lines ``lname:`` starts are found in its lower-case copy (a line begins after CRLF; llhttp let no CR or LF
    inside a field, nor a space before the colon), their values read from the head itself. As text: ``str.lower``
    maps ISO-8859-1 one character to one (the offsets hold), and compiled, ``str``'s methods are direct C calls
    where ``bytes.find`` is a call by name."""
    found: list[str] = []
    text = head.decode("latin-1")
    lowered = text.lower()
    needle = _NEEDLES.get(lname)
    if needle is None:
        needle = remember(_NEEDLES, lname, "\r\n" + lname + ":", 64)
    at = lowered.find(needle)
    while at >= 0:
        start = at + len(needle)
        end = text.find("\r\n", start)
        found.append(text[start:end].strip(" \t"))
        at = lowered.find(needle, end)
    return found


def framing(headers: RawHeaders) -> int:
    """How the body of a response that has one is delimited, from its headers."""
    for name, _ in headers:
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            return BODY_LENGTH
        if size == 17 and name.lower() == b"transfer-encoding":
            # llhttp rejects Content-Length with Transfer-Encoding; a TE not ending in chunked is read to close.
            return BODY_CHUNKED if _value(headers, b"transfer-encoding").endswith(b"chunked") else BODY_CLOSE
    return BODY_CLOSE


def _value(headers: RawHeaders, lname: bytes) -> bytes:
    return b",".join(v for n, v in headers if n.lower() == lname).lower().rstrip(b" \t")


class ClientError(Exception):
    """Base of every error the HTTP client raises."""


class ConnectError(ClientError):
    """The connection could not be opened."""


class RequestTimeout(ClientError):
    """The peer did not answer in time."""


class ProtocolError(ClientError):
    """The peer sent something that is not HTTP/1.1, or closed the connection too early."""


class NoAnswer(ProtocolError):
    """The connection closed (or was reset) after the request was written and before any byte of the answer: on a
    reused connection, the peer had most likely closed it as idle just then (``HttpClient`` retries a repeatable
    request once, on a new connection)."""


class BodyTooLarge(ClientError):
    """The response body exceeds the limit the caller set."""


class StaleConnection(Exception):
    """The pooled connection turned out closed before anything was written on it."""


class _HeadResponseDone(Exception):
    """Stops the parser after the head of a response to HEAD, which has no body whatever its headers say."""


class ClientResponse:
    """A whole response. (A plain class: one is made per call, and a dataclass's generated ``__init__`` runs
    interpreted even in the compiled build.)

    Made from a head as received (``HttpClient``), its ``headers`` are split out of it on first use only: a cache
    miss reads one header of the AS's answer (``values("cache-control")``), found in the head itself."""

    __slots__ = ("_head", "_headers", "body", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]] | None, body: bytes, head: bytes = b"") -> None:
        self.status = status
        self._headers = headers  # names as received; None: not split out of ``head`` yet
        self._head = head  # the head as llhttp accepted it (status line, header lines, the empty line)
        self.body = body

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``(name, value)`` in order, names as received, values without surrounding blanks (ISO-8859-1)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = head_fields_text(self._head)
        return headers

    def __repr__(self) -> str:
        return f"ClientResponse(status={self.status}, {len(self.headers)} headers, {len(self.body)} bytes)"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def values(self, lname: str) -> list[str]:
        """Every value of header ``lname`` (given in lower case), in order: what ``headers`` would list for it."""
        if self._headers is not None:
            return field_values(self._headers, lname)
        return head_values(self._head, lname)


@trait
class ResponseSink:
    """Who receives a response from a ``Connection``. Exactly one of ``upstream_end`` and ``upstream_failed`` is
    called per request, after which the sink is detached.

    A mypyc trait rather than a Protocol: in the compiled build (phantom_token/compiled.py) the connection then calls
    its sink's methods directly, four times per response, instead of looking each up by name; and a trait can be a
    second base, so the proxy's request handler receives its upstream's responses itself."""

    def upstream_head(self, status: int, head: bytes, has_body: bool) -> None:
        """``head`` is the response head as received (status line, header lines, the empty line), already
        validated by llhttp; ``head_fields`` splits it."""
        raise NotImplementedError

    def upstream_body(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_flush(self) -> None:
        """The body data of one read has been passed on."""

    def upstream_end(self) -> None:
        raise NotImplementedError

    def upstream_failed(self, exc: ClientError) -> None:
        raise NotImplementedError

    def upstream_write_paused(self) -> None:
        """The peer stopped reading what the connection writes."""

    def upstream_write_resumed(self) -> None:
        """It reads again."""

    def upstream_tunnel(self, data: bytes) -> None:
        """Bytes of the upgraded protocol, after a 101 to a request begun with ``upgrade=True``."""
        raise NotImplementedError

    def upstream_closed(self) -> None:
        """The upgraded connection's other end closed (or failed): the tunnel is over."""
        raise NotImplementedError

    def upstream_deadline(self) -> None:
        """The ``deadline`` given to ``Connection.begin`` passed before the response ended: the sink ends the call
        (``HttpClient.request``'s, with its own message); by default the connection fails it as a timeout."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to one origin, carrying one request at a time. The methods called on every
    request (the transport's ``write``/``is_closing``, the loop's ``time``, the parser's) are kept bound, so
    compiled code calls them directly instead of looking each one up by name."""

    def __init__(self, pool: ConnectionPool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.idle = pool.idle_list(key)  # where this connection waits between requests
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._send: Callable[[bytes], None] = drop_before_connected
        self._is_closing: Callable[[], bool] = not_connected
        self._time: Callable[[], float] = pool.loop.time
        self._new_parser()
        # The head of the last response on this connection, when small: a response that begins with the same
        # bytes has its head end at the same place (see ``on_headers_complete``).
        self._last_head = b""
        # What llhttp said of that head: its status, and whether the connection stays open after it (-1: not asked
        # yet). Both are functions of the head's bytes alone (the status line, Connection, Content-Length,
        # Transfer-Encoding), so a response that repeats the head repeats them.
        self._last_status = 0
        self._last_keep_alive = -1
        self._sink: ResponseSink | None = None
        self._buf = b""  # bytes of the response head received so far
        self._head = b""  # the head of the current response, once complete
        self._in_head = True
        self._informational = False
        self._head_request = False
        self._upgrade = False  # the request asked to switch protocols: a 101 opens a tunnel
        self._switching = False  # the 101 arrived; llhttp is about to stop
        self._tunnel = False  # bytes both ways are the upgraded protocol's (no more HTTP on this connection)
        self._chunked = False  # the request body is sent chunked
        self._request_sent = False
        self._keep_alive = True
        self._has_body = False
        self._head_seen = False
        self._closed = False
        self._reading_paused = False
        self.in_pool = False
        self.idle_since = 0.0
        self._timeout = 0.0
        self._t_last = 0.0
        self._t_begin = 0.0  # loop time the current request began
        # Once a response is complete: loop time from ``begin`` to its last bytes, i.e. how long the upstream took
        # (from the clock readings the timeout needs anyway: it costs no clock call).
        self.elapsed = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._deadline = 0.0  # loop time the current request must be answered by (begin's ``deadline``); 0: none

    @property
    def usable(self) -> bool:
        return not self._closed and not self._is_closing()

    def looks_closed(self) -> bool:
        """A poll of the socket: readable while idle means the peer closed (or sent garbage) even if the loop has
        not delivered that yet. One syscall, so only the whole-body client uses it, not the proxy's hot path."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return not self.usable
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable) or not self.usable

    def _new_parser(self) -> None:
        """A fresh llhttp parser for the next response, with the three methods the hot path calls bound once (the
        bound methods keep the parser alive)."""
        parser = httptools.HttpResponseParser(self)
        self._feed: Callable[[bytes], None] = parser.feed_data
        self._status_code: Callable[[], int] = parser.get_status_code
        self._parsed_keep_alive: Callable[[], bool] = parser.should_keep_alive

    # -- driving a request ---------------------------------------------------------------------------------------

    def begin(self, sink: ResponseSink, head: bytes, *, head_request: bool, timeout: float, chunked: bool,
              upgrade: bool = False, deadline: float = 0.0, now: float = 0.0) -> None:
        """Send a request head; the body follows with ``send_body``/``end_body``. Raises ``StaleConnection``
        (nothing written) when the connection is already closed. ``upgrade``: the request asks to switch protocols;
        a 101 answer then makes the connection a tunnel (``send_body`` one way, ``upstream_tunnel`` the other).
        ``deadline`` (loop time; 0: none): the whole response must have arrived by then, however steadily it drips
        (``timeout`` bounds each wait for bytes); past it the sink's ``upstream_deadline`` ends the call. The
        connection's one timer keeps both (``HttpClient.request`` needs no timer of its own per call). ``now``: the
        loop's time when the caller has just read it (the proxy, in the same loop turn as the request's bytes); 0:
        read here."""
        if self._closed or self._is_closing():
            raise StaleConnection
        self._sink = sink
        self._head_request = head_request
        self._upgrade = upgrade
        self._chunked = chunked
        self._request_sent = False
        self._head_seen = False
        self._buf = self._head = b""
        self._in_head = True
        self._informational = False
        self._timeout = timeout
        self._deadline = deadline
        if now == 0.0:
            now = self._time()
        self._t_last = self._t_begin = now
        due = now + timeout
        if 0.0 < deadline < due:
            due = deadline
        if self._timer is None or self._timer_when > due:
            self._schedule(due)
        self._send(head)

    def send_body(self, data: bytes) -> None:
        if self._sink is None or not data or self._is_closing():
            return
        if self._chunked and not self._tunnel:
            if len(data) < 8192:
                self._send(b"%x\r\n%b\r\n" % (len(data), data))
            elif self.transport is not None:
                self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._send(data)

    def end_body(self) -> None:
        self._request_sent = True
        if self._sink is not None and self._chunked and not self._is_closing():
            self._send(b"0\r\n\r\n")

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._t_last = self._time()  # time spent paused by the consumer is not the peer's delay
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection and detach the sink without telling it."""
        self._sink = None
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._sink = None
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._send = self.transport.write
        self._is_closing = self.transport.is_closing

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.in_pool:
            self.pool.forget(self)
        sink = self._sink
        if sink is None:
            return
        self._sink = None
        if self._tunnel or self._switching:
            sink.upstream_closed()
        elif self._head_seen and self._has_body and framing(head_fields(self._head)) == BODY_CLOSE:
            sink.upstream_end()  # a body delimited by the close is complete now
        elif self._head_seen:
            sink.upstream_failed(ProtocolError("the connection closed in the middle of the response body"))
        elif self._buf or self._informational:
            sink.upstream_failed(ProtocolError("the connection closed before a response arrived"))
        else:  # not one byte of an answer
            sink.upstream_failed(NoAnswer("the connection closed before a response arrived"))

    def data_received(self, data: bytes) -> None:
        # Checked through a local, so that ``self._sink`` is not taken as non-None below: the parser's callbacks
        # detach it, and compiled code checks the type a read is expected to have.
        expected = self._sink
        if expected is None:
            self.close()  # bytes nobody asked for: the connection's framing can no longer be trusted
            return
        if self._tunnel:
            expected.upstream_tunnel(data)
            return
        self._t_last = self._time()
        if self._in_head:
            buf = self._buf
            # no copy when the head starts in this read; not ``+=``, which takes both operands' buffers (~250
            # instructions) even when one is empty
            self._buf = buf + data if buf else data
        try:
            self._feed(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadResponseDone):
                self._new_parser()
                self._complete()
            elif isinstance(exc.__context__, ProtocolError):
                self._fail(exc.__context__)
            else:
                cause = exc.__context__
                logger.error("response handler failed: %s", type(cause).__name__, exc_info=cause)
                self._fail(ProtocolError(f"response handling failed: {type(cause).__name__}"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed response ({type(exc).__name__}: {exc})"))
        except httptools.HttpParserUpgrade as upgrade:
            if not self._switching:
                self._fail(ProtocolError("the peer switched protocols unasked"))
                return
            self._tunnel = True
            if self._timer is not None:  # the tunnel's idle time is the client side's to judge
                self._timer.cancel()
                self._timer = None
            offset = upgrade.args[0] if upgrade.args and isinstance(upgrade.args[0], int) else len(data)
            sink = self._sink
            if sink is not None and offset < len(data):
                sink.upstream_tunnel(data[offset:])
        else:
            if self._in_head and len(self._buf) > MAX_RESPONSE_HEAD:
                self._fail(ProtocolError(f"response head larger than {MAX_RESPONSE_HEAD} bytes"))
                return
            sink = self._sink
            if sink is not None:
                sink.upstream_flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost settles the request

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_write_paused()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_write_resumed()

    # -- httptools callbacks -------------------------------------------------------------------------------------

    # No on_message_begin: httptools skips callbacks the protocol lacks, and ``begin`` resets the state. No
    # on_header either: the head is taken whole from the bytes received (one slice instead of a Python call per
    # header), and trailers are dropped (RFC 9110 6.5.1 lets a recipient discard them).

    def on_headers_complete(self) -> None:
        buf = self._buf
        # Where the head ends: the first empty line. An upstream sends the same head again and again (nginx's
        # changes once a second, with Date): when the bytes begin with the last head, that is where it ends (the
        # last head holds exactly one CRLFCRLF, at its end, so none comes earlier), and one comparison replaces
        # the search (bytes.find: about 1 400 instructions with its call, against 200).
        last = self._last_head
        end = len(last)
        # byte reads first (C reads when compiled): a head of another length (another Content-Length) fails here,
        # before a slice is made
        if (end and len(buf) >= end and buf[end - 1] == 10 and buf[end - 2] == 13 and buf[end - 3] == 10
                and buf[end - 4] == 13 and buf[:end] == last):
            head = last
            status = self._last_status
        else:
            end = buf.find(b"\r\n\r\n") + 4
            if end < 4:  # cannot happen after llhttp accepted a head; refuse rather than guess
                raise ProtocolError("malformed response head")
            if end > MAX_RESPONSE_HEAD:
                raise ProtocolError(f"response head larger than {MAX_RESPONSE_HEAD} bytes")
            head = buf[:end]
            # Remembered when small. It is only ever compared with the next response's bytes on this connection
            # (never sent anywhere: a match means the new response carries those very bytes), and replaced by it.
            self._last_head = head if end <= 2048 else b""
            status = self._last_status = self._status_code()
            self._last_keep_alive = -1
        if status < 200:
            self._buf = buf[end:]  # only here is the rest of the read kept (it starts the real response)
            if status == 101 and self._upgrade:
                self._switch(head)
                return
            self._informational = True  # 100/103: the real response follows; what is left of the read starts it
            return
        self._in_head = False
        self._buf = b""
        self._head = head
        self._head_seen = True
        # llhttp already answers False for a body delimited by the close (no Content-Length, not chunked).
        keep_alive = self._last_keep_alive  # -1 unless this head is the last one again
        if keep_alive < 0:
            keep_alive = self._last_keep_alive = 1 if self._parsed_keep_alive() else 0
        self._keep_alive = keep_alive == 1
        self._has_body = not (self._head_request or status == 204 or status == 304)
        sink = self._sink
        if sink is not None:
            sink.upstream_head(status, head, self._has_body)
        if self._head_request:
            raise _HeadResponseDone

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None and not self._informational:
            sink.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._switching:
            return  # llhttp stops next (HttpParserUpgrade): the connection becomes a tunnel, never pooled again
        self._complete()

    # -- internals ----------------------------------------------------------------------------------------------

    def _switch(self, head: bytes) -> None:
        self._switching = True
        self._in_head = False
        self._buf = b""
        self._head = head
        self._head_seen = True
        self._keep_alive = False
        self._has_body = False
        sink = self._sink
        if sink is not None:
            sink.upstream_head(101, head, False)

    def _complete(self) -> None:
        sink = self._sink
        self._sink = None
        self.elapsed = self._t_last - self._t_begin
        if self._keep_alive and self._request_sent and not self._closed:
            self.pool.release(self, self._t_last)  # inside data_received: the time it took is now
        else:
            self.close()
        if sink is not None:
            sink.upstream_end()

    def _fail(self, exc: ClientError) -> None:
        sink = self._sink
        self.abort()
        if sink is not None:
            sink.upstream_failed(exc)

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._time()
        if self._tunnel:
            return  # the client side judges an upgraded connection's idle time
        sink = self._sink
        if sink is not None:
            deadline = now + self._timeout if self._reading_paused else self._t_last + self._timeout
            call = self._deadline
            if 0.0 < call <= now:  # the whole call's bound (begin's deadline)
                sink.upstream_deadline()
                if not self._closed and self._sink is sink:
                    self._fail(RequestTimeout(f"no response within {self._timeout:g}s"))
                return
            if now >= deadline:
                self._fail(RequestTimeout(f"no response within {self._timeout:g}s"))
                return
            if 0.0 < call < deadline:
                deadline = call
        elif self.in_pool:
            deadline = self.idle_since + self.pool.idle_timeout
            if now >= deadline:
                self.close()
                return
        else:
            deadline = now + self.pool.idle_timeout
        self._schedule(deadline)


class ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port, TLS context); most recently used first."""

    def __init__(self, *, max_idle_per_origin: int = 128, idle_timeout: float = 30.0) -> None:
        self.loop = asyncio.get_running_loop()
        # the loop's methods ``HttpClient`` calls per request, bound once (compiled, a call by name costs ~900
        # instructions)
        self.time: Callable[[], float] = self.loop.time
        self.create_future: Callable[[], asyncio.Future[ClientResponse]] = self.loop.create_future
        self.max_idle = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[Connection]] = {}
        self._closed = False

    def idle_list(self, key: PoolKey) -> list[Connection]:
        """The idle connections for ``key``, most recently used last: one list per key for the pool's life, so a
        caller may keep it (``take``) instead of hashing the key on every request."""
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        return idle

    def acquire(self, key: PoolKey) -> Connection | None:
        """An idle open connection for ``key``, or None (then ``connect``)."""
        idle = self.idle_list(key)
        while True:
            conn = self.take(idle)
            if conn is None or not conn._is_closing():
                return conn

    def take(self, idle: list[Connection]) -> Connection | None:
        """A connection from ``idle`` (a list from ``idle_list``) that was not closed, or None. Its transport may be
        closing, its ``connection_lost`` not run yet (the peer's FIN in this loop turn, a failed write): ``begin``
        then raises ``StaleConnection`` before it writes anything. Not asked here: the proxy calls ``begin`` next,
        which asks the transport anyway (one call per request instead of two)."""
        while idle:
            conn = idle.pop()
            conn.in_pool = False
            if not conn._closed:
                return conn
        return None

    async def connect(self, key: PoolKey, connect_timeout: float) -> Connection:
        scheme, host, port, context = key
        if scheme == "https" and context is None:
            raise ConnectError("https needs an SSL context")
        try:
            async with asyncio.timeout(connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: Connection(self, key), host, port, ssl=context,
                    server_hostname=host if context is not None else None)
        except TimeoutError as exc:
            raise ConnectError(f"timed out connecting to {host}:{port} after {connect_timeout:g}s") from exc
        except (OSError, ssl_module.SSLError, ssl_module.CertificateError) as exc:
            raise ConnectError(f"could not connect to {host}:{port}: {type(exc).__name__}: {exc}") from exc
        return protocol

    def release(self, conn: Connection, now: float | None = None) -> None:
        """Put ``conn`` back for reuse; ``now``: the loop's time, when the caller has just read it. A connection
        whose transport is closing may go back (``take`` explains why that is safe); its ``connection_lost`` takes
        it out."""
        if self._closed or conn._closed:
            conn.close()
            return
        idle = conn.idle
        if len(idle) >= self.max_idle:
            conn.close()
            return
        if conn._reading_paused:
            conn.resume_reading()  # an idle connection must see the peer's FIN to leave the pool at once
        conn.in_pool = True
        conn.idle_since = self.loop.time() if now is None else now
        idle.append(conn)

    def forget(self, conn: Connection) -> None:
        conn.in_pool = False
        if conn in conn.idle:
            conn.idle.remove(conn)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():  # emptied in place: connections and origins hold these lists
            conns = list(idle)
            idle.clear()
            for conn in conns:
                conn.in_pool = False
                conn.close()


def encode_request_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A request head; refuses CR/LF in any part so nothing can be smuggled into it."""
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("request head contains CR or LF inside a field")
    return (text + "\r\n").encode("latin-1")


class _BufferedSink(ResponseSink):
    """Collects one whole response for ``HttpClient.request``."""

    def __init__(self, future: asyncio.Future[ClientResponse], conn: Connection, max_body: int, target: _Target,
                 timeout: float) -> None:
        self.future = future
        self.conn = conn
        self.max_body = max_body
        self.target = target  # for the message of a call that outlives its deadline (only then built)
        self.timeout = timeout
        self.status = 0
        self.head = b""
        self.body: list[bytes] = []
        self.size = 0

    def upstream_head(self, status: int, head: bytes, has_body: bool) -> None:
        self.status = status
        self.head = head  # split (head_fields_text) only if the caller reads the headers

    def upstream_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_body:
            self.conn.abort()
            if not self.future.done():
                self.future.set_exception(BodyTooLarge(f"response body larger than {self.max_body} bytes"))
            return
        self.body.append(data)

    def upstream_end(self) -> None:
        if not self.future.done():
            self.future.set_result(ClientResponse(self.status, None, b"".join(self.body), self.head))

    def upstream_failed(self, exc: ClientError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def upstream_deadline(self) -> None:
        """The call's deadline passed without a whole answer: a ``RequestTimeout``, the connection dropped."""
        if not self.future.done():
            self.conn.abort()
            target = self.target
            self.future.set_exception(
                RequestTimeout(f"{target.scheme}://{target.authority} did not answer within {self.timeout:g}s"))

    # upstream_flush, upstream_write_paused/resumed: the base class's nothing (the body is collected in memory)


class _Target:
    """What ``HttpClient.request`` derives from a URL, once per URL (``HttpClient._targets``)."""

    __slots__ = ("authority", "default_port", "host", "https", "port", "scheme", "target")

    def __init__(self, scheme: str, host: str, port: int, authority: str, target: str) -> None:
        self.scheme = scheme
        self.https = scheme == "https"
        self.host = host
        self.port = port
        self.authority = authority
        self.target = target


# A pooled connection idle at least this long is polled (``Connection.looks_closed``, a syscall) before a request is
# written on it: long enough idle for the peer's keep-alive timeout to have closed it. One idle less is taken as it
# is (the common case under load, a poll saved per call): a repeatable request it fails unanswered is sent again.
POLL_AFTER_IDLE: Final = 1.0
_MAX_TARGETS: Final = 256  # distinct URLs remembered (the AS's endpoints: a handful); a full memo starts over
_MAX_HEADS: Final = 1024  # distinct (method, URL, header list) request heads remembered, likewise


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"unsupported URL scheme or missing host: {scheme}://")
    default_port = 443 if scheme == "https" else 80
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConnectError("invalid port in URL") from exc
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    authority = host if port == default_port else f"{host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, parts.hostname, port, authority, target)


class HttpClient:
    """Whole-body HTTP/1.1 requests over pooled keep-alive connections (http and https).

    A cache miss makes one call to the authorization server, so what a call costs is kept small (docs/performance.md,
    "Cache misses"): a URL is parsed once (``_targets``), a request head is encoded once per method, URL and header
    list (``_heads``: the introspection request's headers are the same on every call, only the body differs), head
    and body leave in one write, and up to ``max_idle_per_origin`` connections per origin stay open between calls
    (enough for a burst of concurrent misses: each one in flight holds its own connection)."""

    def __init__(self, *, max_idle_per_origin: int = 64, idle_timeout: float = 30.0) -> None:
        self._max_idle = max_idle_per_origin
        self._idle_timeout = idle_timeout
        self._pool: ConnectionPool | None = None
        self._default_ssl: ssl_module.SSLContext | None = None
        self._targets: dict[str, _Target] = {}
        self._heads: dict[tuple[str, str, tuple[tuple[str, str], ...]], bytes] = {}

    def pool(self) -> ConnectionPool:
        """The connection pool (made on first use: it needs the running loop)."""
        if self._pool is None:
            self._pool = ConnectionPool(max_idle_per_origin=self._max_idle, idle_timeout=self._idle_timeout)
        return self._pool

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes = b"", *,
                      timeout: float,  # noqa: ASYNC109 -- the callers' contract: one bound for the whole call
                      ssl: ssl_module.SSLContext | None = None, max_body: int = MiB,
                      repeatable: bool = False) -> ClientResponse:
        """Send one request and read the whole response; raises a ``ClientError`` subclass on failure.

        ``repeatable``: the request may be sent twice (a query without side effects: RFC 7662 introspection; GET and
        HEAD always are). Such a request that a reused connection fails before any byte of the answer (``NoAnswer``:
        the peer closed it as idle while the request was on its way) is sent once more, on a new connection, and a
        pooled connection idle less than ``POLL_AFTER_IDLE`` is used without a poll. Any other request is written
        only on a connection that a poll found open, and never sent twice (docs/design.md, "Connections to the
        authorization server")."""
        pool = self._pool if self._pool is not None else self.pool()
        target = self._targets.get(url)
        if target is None:
            target = remember(self._targets, url, _target(url), _MAX_TARGETS)
        context: ssl_module.SSLContext | None = None
        if target.https:
            if ssl is None:
                if self._default_ssl is None:
                    self._default_ssl = ssl_module.create_default_context()
                ssl = self._default_ssl
            context = ssl
        key: PoolKey = (target.scheme, target.host, target.port, context)
        fields = (method, url, tuple(headers))
        start = self._heads.get(fields)
        if start is None:  # everything but the Content-Length line and the blank line
            start = remember(self._heads, fields, encode_request_head(
                method, target.target, [("Host", target.authority), *headers])[:-2], _MAX_HEADS)
        if body or method in ("POST", "PUT", "PATCH"):
            message = b"%bContent-Length: %d\r\n\r\n%b" % (start, len(body), body)
        else:
            message = start + b"\r\n"
        return await self._exchange(pool, key, message, method == "HEAD", timeout, max_body, target,
                                    repeatable or method == "GET" or method == "HEAD")

    async def _exchange(self, pool: ConnectionPool, key: PoolKey, message: bytes, head_request: bool,
                        timeout: float,  # noqa: ASYNC109 -- one timer for the whole call (below)
                        max_body: int, target: _Target, repeatable: bool) -> ClientResponse:
        """``message``: the whole request, head and body, written at once. ``timeout`` bounds the whole call: the
        connect (when no pooled connection is free) and the answer share one deadline, kept by the connection's own
        timer (``begin``'s ``deadline``) rather than an ``asyncio.timeout`` block (a Python object, its coroutine and
        its timer per call) or a timer of the call's own."""
        now = pool.time()
        deadline = now + timeout
        retried = False
        fresh = False  # a reused connection failed unanswered: the one repetition goes on a new connection
        while True:
            conn = None if fresh else pool.acquire(key)
            reused = conn is not None
            if conn is not None and (not repeatable or now - conn.idle_since >= POLL_AFTER_IDLE) \
                    and conn.looks_closed():
                conn.close()  # nothing sent on it: take another (bounded by the pool's size)
                continue
            if conn is None:
                left = deadline - pool.time()
                if left <= 0.0:
                    raise RequestTimeout(f"{target.scheme}://{target.authority} did not answer within {timeout:g}s")
                conn = await pool.connect(key, left)
            future = pool.create_future()
            sink = _BufferedSink(future, conn, max_body, target, timeout)
            try:
                conn.begin(sink, message, head_request=head_request, timeout=timeout, chunked=False,
                           deadline=deadline)
            except StaleConnection as exc:
                if retried:
                    raise ProtocolError("the connection closed before the request could be sent") from exc
                retried = True  # nothing was written: one more try is safe even for POST
                continue
            conn.end_body()
            try:
                return await future
            except NoAnswer:
                if fresh or not reused or not repeatable:
                    raise
                fresh = True  # the peer closed the idle connection as the request went out: once more, anew
            except BaseException:
                if not future.done():
                    conn.abort()  # cancelled with the request in flight: the connection is unusable
                raise

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


__all__ = ["BODY_CHUNKED", "BODY_CLOSE", "BODY_LENGTH", "BODY_NONE", "BodyTooLarge", "ClientError",
           "ClientResponse", "ConnectError", "Connection", "ConnectionPool", "HttpClient", "NoAnswer", "PoolKey",
           "ProtocolError", "RequestTimeout", "ResponseSink", "StaleConnection", "encode_request_head",
           "field_values"]
