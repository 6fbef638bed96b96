"""HTTP/1.1 server side, written directly on asyncio protocols and httptools (llhttp).

One base protocol, ``HttpServerProtocol``, owns everything about the client connection: framing, limits,
timeouts, pipelining, keep-alive and shutdown. Subclasses only see requests (``handle_request``/``handle_body``/
``handle_body_end``) and say when their response is written (``finish_response``). ``serve_app`` is the subclass
for simple buffered apps; the reverse proxy in ``frontends.proxy`` is the other one.

Invariants:
- Responses leave in request order: a connection has at most one *active* request; pipelined requests parsed
  ahead are queued and reading is paused, so memory per connection is bounded by one socket read.
- Framing is llhttp's strict mode: Content-Length with Transfer-Encoding, duplicate Content-Length, an invalid
  Transfer-Encoding or chunk, obs-fold and bare LF are all rejected. Every parse error answers 400 JSON and closes.
- Only HTTP/1.0 and HTTP/1.1 are served: llhttp refuses most other versions (400), the rest (0.9, 2.0) get 505. An
  upgrade request with a body is a 400 (llhttp never parses that body, so it could not be forwarded as one).
- ``RequestHead.path`` is the normalised path and ``host`` the normalised host (``phantom_token.http.uri``): every
  front door matches routes on them; a target or Host that is not valid or is ambiguous is a 400. An absolute-form
  target's authority wins over the Host header (RFC 9112 3.2.2).
- A header whose name holds ``_`` is ignored (nginx's ``underscores_in_headers off``): it is in ``raw_headers`` with
  ``""`` in ``lnames``, and nowhere in ``headers``.
- The header block is bounded by ``max_header_bytes`` (431), the request target by ``max_url_bytes`` (414) and,
  when set, the body by ``max_body_bytes`` (413).
- A half-sent request head times out after ``header_timeout`` (measured from its first byte, so a slow drip of
  bytes does not extend it), a stalled request body after ``body_timeout``, an idle keep-alive connection after
  ``keepalive_timeout``; a client that reads nothing of what is written to it for ``send_timeout`` is dropped (also
  after the connection was closed with data still buffered).
- A rejected connection logs exactly one line on the ``phantom_token.http`` logger with the peer and a fixed reason;
  header values (which may carry tokens) are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, cast

import httptools

from phantom_token.http.messages import (
    Handler,
    RawHeaders,
    Request,
    Response,
    drop_before_connected,
    not_connected,
)
from phantom_token.http.uri import InvalidTarget, normalise_host, normalise_path, plain_path_end
from phantom_token.memo import remember

logger: Final = logging.getLogger("phantom_token.http")

MiB: Final = 1024 * 1024

_STATUS_LINES: Final[dict[int, bytes]] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# Reasons to keep reading from the client paused; reading resumes only when none holds.
PAUSE_PIPELINE: Final = 1  # a pipelined request waits for the one before it
PAUSE_WRITE: Final = 2  # the client is not reading what we write
PAUSE_APP: Final = 4  # the subclass asked (e.g. the upstream cannot take the body yet)

LINGER_SECONDS: Final = 2.0  # how long an early-closed connection keeps draining what the client still sends


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, pre-encoded for known statuses."""
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def json_error(code: str, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode()


_MALFORMED: Final = json_error("invalid_request", "Malformed HTTP request")
_ERRORS: Final[dict[int, bytes]] = {
    400: _MALFORMED,
    408: json_error("request_timeout", "The request was not received in time"),
    413: json_error("payload_too_large", "The request body is too large"),
    414: json_error("uri_too_long", "The request target is too long"),
    431: json_error("request_header_fields_too_large", "The request header block is too large"),
    500: json_error("internal_error", "Internal server error"),
    505: json_error("http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are supported"),
}


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """Header lines for a response we build ourselves; refuses CR/LF so no header can split the response."""
    out = []
    for name, value in headers:
        line = f"{name}: {value}\r\n"
        if line.count("\n") != 1 or "\r" in line[:-2]:
            raise ValueError("header name or value contains CR or LF")
        out.append(line)
    return "".join(out).encode("latin-1")


def render_response(status: int, headers: list[tuple[str, str]], body: bytes, *, head_only: bool,
                    keep_alive: bool, http10: bool = False) -> bytes:
    """A complete response with Content-Length; ``head_only`` keeps the headers and drops the body (HEAD)."""
    parts = [status_line(status), encode_headers(headers), b"Content-Length: %d\r\n" % len(body)]
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int = 64 * 1024  # request line excluded; every header name, value and separator counted
    max_url_bytes: int = 8 * 1024
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    drain_timeout: float = 30.0
    send_timeout: float = 60.0  # a client that reads nothing of what we write for this long is dropped
    max_body_bytes: int = 0  # a larger request body is answered 413; 0: no limit


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestHead:
    """The parsed head of one request. ``headers`` maps lower-case names to every value (ISO-8859-1);
    ``lnames`` holds the lower-case name of each entry of ``raw_headers`` at the same index."""

    __slots__ = ("body_received", "chunked", "complete", "connection_tokens", "content_length", "early_body",
                 "expect_continue", "headers", "host", "http10", "keep_alive", "lnames", "method", "path", "query",
                 "raw_headers", "raw_host", "target")

    def __init__(self, method: str, target: bytes, raw_headers: RawHeaders, keep_alive: bool, http10: bool) -> None:
        self.method = method
        self.target = target
        self.raw_headers = raw_headers
        self.keep_alive = keep_alive
        self.http10 = http10
        self.lnames: list[str] = []
        self.headers: dict[str, list[str]] = {}
        self.path = "/"
        self.query = ""
        self.host = ""
        self.raw_host = ""
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.connection_tokens: frozenset[str] = frozenset()
        self.early_body: list[bytes] | None = None  # body parsed while the request waited in the pipeline
        self.complete = False  # the whole request (head and body) has been received
        self.body_received = 0

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def _split_target(head: RequestHead) -> None:
    """The normalised path (``phantom_token.http.uri``: routes match it and it is what is forwarded) and the query
    string as received; for an absolute-form target also its authority, which wins over the Host header (RFC 9112
    3.2.2)."""
    target = head.target
    try:
        if target[:1] == b"/":
            end = plain_path_end(target)
            if end == len(target):
                head.path = target.decode("latin-1")
            elif end > 0:
                head.path = target[:end].decode("latin-1")
                head.query = target[end + 1 :].decode("latin-1")
            else:
                raw_path, _sep, raw_query = target.partition(b"?")
                head.path = normalise_path(raw_path.decode("latin-1"))
                head.query = raw_query.decode("latin-1")
            return
        if target == b"*":
            head.path = "*"
            return
        scheme, sep, rest = target.decode("latin-1").partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise _Reject(400, "invalid request target")
        end = len(rest)
        for mark in "/?#":
            at = rest.find(mark)
            if 0 <= at < end:
                end = at
        authority = rest[:end]
        if "@" in authority:  # RFC 9110 4.2.4: userinfo is never sent in a target
            raise _Reject(400, "invalid request target")
        host = normalise_host(authority)
        if not host:
            raise _Reject(400, "invalid request target")
        path, _, query = rest[end:].partition("?")
        head.path = normalise_path(path or "/")
        head.query = query
        head.raw_host = authority
        head.host = host
    except InvalidTarget as exc:
        raise _Reject(400, exc.reason) from exc


def _version_at(data: bytes, pos: int) -> int:
    """10 or 11 when ``data`` holds b" HTTP/1.0\\r" or b" HTTP/1.1\\r" at ``pos``; 0 otherwise.

    ``pos`` is where the request line's second space is when the line starts the read: ``len(method) + 1 +
    len(target)``, both as llhttp parsed them. That needs no search: a request line has single spaces and its
    method and target hold none, so the bytes match only where the line really has its version (after an empty line
    llhttp skipped, or when the line did not start the read or is not all in it, they do not, and the parser is
    asked instead)."""
    # byte by byte (compiled, an index is a C read; a slice would be a new bytes object)
    if (pos + 9 >= len(data) or data[pos] != 32 or data[pos + 1] != 72 or data[pos + 2] != 84
            or data[pos + 3] != 84 or data[pos + 4] != 80 or data[pos + 5] != 47 or data[pos + 6] != 49
            or data[pos + 7] != 46 or data[pos + 9] != 13):
        return 0
    minor = data[pos + 8]
    return 11 if minor == 49 else 10 if minor == 48 else 0  # b"1", b"0"


_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")}

# Header names as sent -> lower-case str. Clients send the same few names over and over; one lookup replaces a
# decode and a lower() per header. Bounded: a client inventing names only makes it start over.
_LNAMES: Final[dict[bytes, str]] = {}


def _lname(name: bytes) -> str:
    """The lower-case name, or "" for a name with ``_``: such headers are ignored as nginx ignores them by default
    (``underscores_in_headers off``), so ``X_Forwarded_Host`` can never alias a header the gateway sets for a
    framework that folds ``_`` into ``-``. They stay in ``raw_headers`` (at "" in ``lnames``) and nowhere else."""
    lname = name.decode("latin-1").lower()
    return remember(_LNAMES, name, "" if "_" in lname else lname, 1024)


def _index_headers(head: RequestHead) -> None:
    """One pass over the raw headers for the lower-case mapping, then what framing and routing need from it."""
    headers = head.headers
    lnames = head.lnames
    for name, value in head.raw_headers:
        lname = _LNAMES.get(name)
        if lname is None:
            lname = _lname(name)
        lnames.append(lname)
        if not lname:
            continue
        values = headers.get(lname)
        if values is None:
            headers[lname] = [value.decode("latin-1")]
        else:
            values.append(value.decode("latin-1"))
    hosts = headers.get("host")
    if hosts is not None:
        if len(hosts) > 1:
            raise _Reject(400, "more than one Host header")
        host = head.raw_host = hosts[0]
        known = _HOSTS.get(host)
        if known is None:
            try:
                known = remember(_HOSTS, host, normalise_host(host), 1024)
            except InvalidTarget as exc:
                raise _Reject(400, exc.reason) from exc
        head.host = known
    elif not head.http10:
        raise _Reject(400, "missing Host header")
    length = headers.get("content-length")
    if length is not None:
        head.content_length = int(length[0])  # llhttp already checked digits-only and no duplicates
    if "transfer-encoding" in headers:
        head.chunked = True  # llhttp only accepts a request TE whose last coding is chunked
    expect = headers.get("expect")
    if expect is not None:
        # Other expectations are ignored (RFC 9110 10.1.1 allows it).
        head.expect_continue = expect[-1].strip().lower() == "100-continue" and not head.http10
    connection = headers.get("connection")
    if connection is not None:
        tokens = head.connection_tokens = frozenset(t.strip().lower() for value in connection for t in value.split(","))
        if "upgrade" in tokens and "upgrade" in headers and (head.chunked or head.content_length):
            # llhttp stops at the head of an upgrade and never parses its body: what follows would be taken for
            # the body by the upstream but not by us (and the request would wait for it forever)
            raise _Reject(400, "upgrade request with a body")


# Valid Host header values -> the host as routes compare it (``normalise_host``: lower case, no trailing dot, no
# port). Few distinct values; bounded like _LNAMES; an invalid value is never stored.
_HOSTS: Final[dict[str, str]] = {}


class ServerState:
    """What the connections of one listening server share: limits, the live connections, shutdown state."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpServerProtocol] = set()
        self.closing = False
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    def add(self, conn: HttpServerProtocol) -> None:
        self.connections.add(conn)
        self.all_closed.clear()

    def discard(self, conn: HttpServerProtocol) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.all_closed.set()


class HttpServerProtocol(asyncio.Protocol):
    """One client connection. Subclasses implement ``handle_request``, ``handle_body``, ``handle_body_end``,
    ``handle_abort`` and call ``finish_response`` exactly once per request when the response is fully written.

    The methods called on every request (the transport's ``write``/``is_closing``, the loop's ``time``, the
    parser's ``feed_data`` and getters) are kept bound: compiled code then calls them directly instead of looking
    each one up by name on every call."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.limits = state.limits
        self.transport: asyncio.Transport | None = None
        self._send: Callable[[bytes], None] = drop_before_connected
        self._is_closing: Callable[[], bool] = not_connected
        self._time: Callable[[], float] = state.loop.time
        self.peer: tuple[str, int] | None = None
        self.client_ip = ""
        parser = self._parser = httptools.HttpRequestParser(self)
        self._feed: Callable[[bytes], None] = parser.feed_data
        self._parsed_method: Callable[[], bytes] = parser.get_method
        self._parsed_keep_alive: Callable[[], bool] = parser.should_keep_alive
        self._url = b""
        self._raw: RawHeaders = []
        self._header_bytes = 0
        self._receiving: RequestHead | None = None  # message being parsed
        self._head_done = False  # the head of ``_receiving`` is complete
        self.active: RequestHead | None = None  # request whose response is being produced
        self.responded = False  # the response of ``active`` is fully written
        self._queue: deque[RequestHead] = deque()
        self._advancing = False
        self._pause = 0
        self._closed = False
        self._failed = False  # a parse error happened; the parser must not be fed again
        self._pending_error: int | None = None
        self._eof = False
        self._in_head = False  # between the first byte of a request and the end of its head
        # The read that began with the request line of the message being parsed, until its head is complete: the
        # version is then read off that line (``_version_at``). None for a message that began inside a read.
        self._line: bytes | None = None
        self._t_rx = 0.0
        self._t_idle = 0.0
        self._t_begin = 0.0
        self._t_blocked = 0.0  # when the client last stopped reading (pause_writing)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    # -- subclass interface -------------------------------------------------------------------------------------

    def handle_request(self, head: RequestHead) -> None:
        raise NotImplementedError

    def handle_body(self, data: bytes) -> None:
        raise NotImplementedError

    def handle_body_end(self) -> None:
        raise NotImplementedError

    def handle_abort(self) -> bool:
        """The connection is going away (lost, timed out or broken framing). Stop work for ``active``; return
        True when a response head was already written (so no error response can follow)."""
        return False

    def handle_write_paused(self) -> None:
        """The client is not reading; a streaming subclass stops its source."""

    def handle_write_resumed(self) -> None:
        """The client reads again."""

    def write(self, data: bytes) -> None:
        if not self._is_closing():
            self._send(data)

    def should_keep_alive(self, head: RequestHead) -> bool:
        """Whether the response to ``head`` may keep the connection open (sets ``Connection: close`` if not)."""
        return head.keep_alive and not self.state.closing and not self._eof

    def send_continue(self, head: RequestHead) -> None:
        """Answer ``Expect: 100-continue`` when the body is still to come (once per request)."""
        if head.expect_continue and not head.complete:
            head.expect_continue = False
            self.write(CONTINUE_100)

    def send_response(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write a complete response to ``active`` and finish it. When the request body has not all arrived it is
        drained and discarded if small, otherwise (or after 100-continue was not sent) the connection closes."""
        head = self.active
        assert head is not None
        keep_alive = self.should_keep_alive(head) and self.can_drain(head)
        self.write(render_response(status, headers, body, head_only=head.method == "HEAD",
                                   keep_alive=keep_alive, http10=head.http10))
        self.finish_response(keep_alive)

    def send_error(self, status: int) -> None:
        self.send_response(status, [("Content-Type", "application/json")], _ERRORS[status])

    def finish_response(self, keep_alive: bool) -> None:
        """The response of ``active`` is fully written. Any body still arriving is discarded."""
        self.responded = True
        if not keep_alive:
            self._close()
        else:
            self._advance()

    def pause_reading(self, reason: int = PAUSE_APP) -> None:
        if not self._pause and self.transport is not None and not self._is_closing():
            self.transport.pause_reading()
        self._pause |= reason

    def resume_reading(self, reason: int = PAUSE_APP) -> None:
        if self._pause & reason:
            self._pause &= ~reason
            if not self._pause and self.transport is not None and not self._is_closing():
                self.transport.resume_reading()

    @property
    def closed(self) -> bool:
        return self._closed

    def abort(self) -> None:
        """Drop the connection at once (used when a response was cut short)."""
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def can_drain(self, head: RequestHead) -> bool:
        """Whether the connection can stay open after an early response: the rest of the body is small."""
        if head.complete:
            return True
        if head.expect_continue or head.chunked:
            return False  # the client waits for 100 or the size is unknown: closing is the only safe choice
        remaining = (head.content_length or 0) - head.body_received
        return remaining <= 64 * 1024

    # -- asyncio protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._send = self.transport.write
        self._is_closing = self.transport.is_closing
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (str(peer[0]), int(peer[1]))
            self.client_ip = self.peer[0]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.state.add(self)
        if self.state.closing:
            self._close()
            return
        now = self._time()
        self._t_idle = self._t_rx = now
        self._schedule(now + min(self.limits.keepalive_timeout, self.limits.header_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            self.state.discard(self)
            return
        self._closed = True
        if self.active is not None and not self.responded:
            self.handle_abort()
        self.state.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._closed or self._failed:
            return
        self._t_rx = self._time()
        if not self._in_head:  # a head under way keeps the read it began in
            self._line = data if self._receiving is None else None
        try:
            self._feed(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.reason)
            else:
                logger.error("connection from %s: internal error while parsing: %s", self._peer_text(),
                             type(cause).__name__, exc_info=cause)
                self._reject(500, "internal error")
        except httptools.HttpParserUpgrade:
            # Upgrade is not supported: the request is answered as plain HTTP (RFC 9110 7.8 lets a server ignore
            # it), but what follows it would be another protocol, so the connection ends after the response.
            self._failed = True
            self._eof = True
            if self.active is None:
                self._close()
        except httptools.HttpParserError as exc:
            # llhttp's reasons are fixed strings from its source, never bytes of the request.
            self._reject(400, f"malformed request ({exc})")

    def eof_received(self) -> bool | None:
        if self._closed:
            return None  # lingering close: the client is done too
        if self._in_head or (self._receiving is not None and not self._receiving.complete):
            self._log_reject("connection closed in the middle of a request")
            self._abort_active_request()
        elif self.active is not None or self._queue:
            self._eof = True
            return True  # half-close: the client may still read the responses it is owed
        self._close()
        return None

    def pause_writing(self) -> None:
        self.pause_reading(PAUSE_WRITE)
        now = self._t_blocked = self._time()
        deadline = now + self.limits.send_timeout
        if self._timer is None or self._timer_when > deadline:
            self._schedule(deadline)
        self.handle_write_paused()

    def resume_writing(self) -> None:
        self.resume_reading(PAUSE_WRITE)
        self.handle_write_resumed()

    # -- httptools callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._raw = []
        self._header_bytes = 0
        self._head_done = False
        self._in_head = True
        self._receiving = None
        self._t_begin = self._t_rx
        deadline = self._t_rx + self.limits.header_timeout
        if self._timer_when > deadline:
            self._schedule(deadline)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url_bytes:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, "header block too large")
        if not self._head_done:
            self._raw.append((name, value))
        # else: a trailer of a chunked body; counted against the limit, then dropped.

    def on_headers_complete(self) -> None:
        method = self._parsed_method()
        # httptools builds the version string with str.format (a fifth of this method): asked only when the
        # request line cannot be read directly
        line = self._line
        version = 0
        if line is not None:
            self._line = None
            version = _version_at(line, len(method) + 1 + len(self._url))
        if not version:
            # llhttp also accepts 0.9, 2.0 and 3.0 on a request line; each means another protocol
            text = self._parser.get_http_version()
            version = 11 if text == "1.1" else 10 if text == "1.0" else 0
            if not version:
                raise _Reject(505, "unsupported HTTP version")
        head = RequestHead(_METHODS.get(method) or method.decode("ascii"), self._url, self._raw,
                           self._parsed_keep_alive(), version == 10)
        self._head_done = True
        self._in_head = False
        self._receiving = head
        try:
            _index_headers(head)
        except ValueError as exc:
            raise _Reject(400, "invalid header") from exc
        limit = self.limits.max_body_bytes
        if limit and head.content_length is not None and head.content_length > limit:
            raise _Reject(413, "request body larger than max_body_bytes")
        _split_target(head)
        if self.active is None and not self._closed:
            self._start(head)
        else:
            head.early_body = []
            self._queue.append(head)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        head = self._receiving
        assert head is not None
        head.body_received += len(body)
        limit = self.limits.max_body_bytes
        if limit and head.body_received > limit:  # a chunked body (a Content-Length was checked with the head)
            raise _Reject(413, "request body larger than max_body_bytes")
        if head is self.active:
            if not self.responded:
                self.handle_body(body)
            # else: the response went out early (e.g. a denial); the rest of the body is discarded.
        elif head.early_body is not None:
            head.early_body.append(body)

    def on_message_complete(self) -> None:
        head = self._receiving
        assert head is not None
        head.complete = True
        self._receiving = None
        if head is self.active:
            if not self.responded:
                self.handle_body_end()
            if self.responded:
                self._advance()

    # -- request sequencing --------------------------------------------------------------------------------------

    def _start(self, head: RequestHead) -> None:
        self.active = head
        self.responded = False
        self.handle_request(head)
        early = head.early_body
        if early:
            head.early_body = None
            for chunk in early:
                if self.responded or self.active is not head:
                    break
                self.handle_body(chunk)
        if head.complete and not self.responded and self.active is head:
            self.handle_body_end()

    def _advance(self) -> None:
        """Move on once the active request is both fully received and answered. Iterative, so a burst of
        pipelined requests answered synchronously does not recurse."""
        if self._advancing:
            return
        self._advancing = True
        try:
            while True:
                head = self.active
                if head is None or not self.responded or not head.complete or self._closed:
                    return
                self.active = None
                if not self.should_keep_alive(head):
                    self._close()
                    return
                if not self._queue:
                    if self._pending_error is not None:
                        self._write_error_and_close(self._pending_error)
                        return
                    self._t_idle = self._time()
                    if self._receiving is None and (self.state.closing or self._eof):
                        self._close()
                        return
                    self.resume_reading(PAUSE_PIPELINE)
                    return
                self._start(self._queue.popleft())
        finally:
            self._advancing = False

    def _abort_active_request(self) -> bool:
        """Tell the subclass its request is broken; True if a response head already went out."""
        if self.active is not None and not self.responded:
            self.responded = True
            return self.handle_abort()
        return False

    def _reject(self, status: int, reason: str) -> None:
        """Answer a broken request with ``status`` (JSON) and close, keeping responses in request order."""
        if self._closed or self._failed:
            return
        self._failed = True  # the parser is in an error state: nothing more is fed to it
        self._log_reject(reason)
        self.pause_reading(PAUSE_PIPELINE)
        active = self.active
        if active is not None:
            if active.complete and not self.responded:
                self._pending_error = status  # a later pipelined request is broken: answer after this one
                return
            if self.responded or self._abort_active_request():
                self.abort()  # its response is written or under way: no error can follow it in order
                self._closed_now()
                return
        self._write_error_and_close(status)

    def _write_error_and_close(self, status: int) -> None:
        self.write(render_response(status, [("Content-Type", "application/json")], _ERRORS.get(status, _MALFORMED),
                                   head_only=False, keep_alive=False))
        self._close()

    def _log_reject(self, reason: str) -> None:
        logger.info("rejected connection from %s: %s", self._peer_text(), reason)

    def _peer_text(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}" if self.peer else "unknown peer"

    def _close(self) -> None:
        """Close after the write buffer is flushed; nothing more is parsed. When the client may still be sending
        (an early answer to a request whose body or head has not all arrived), close lingering: send FIN, keep
        reading and discarding for a moment, so the kernel does not reset the connection and lose the answer."""
        if self._closed:
            return
        incomplete = self._in_head or (self._receiving is not None and not self._receiving.complete)
        self._closed_now()
        transport = self.transport
        if transport is None:
            return
        if incomplete and transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
            if self._pause:
                self._pause = 0
                transport.resume_reading()
            self._timer = self.loop.call_later(LINGER_SECONDS, self._close_transport, transport)
        else:
            self._close_transport(transport)

    def _close_transport(self, transport: asyncio.Transport) -> None:
        """Close once what is buffered is written; a client that reads none of it is dropped after the send
        timeout (a closing transport otherwise waits for its buffer forever)."""
        transport.close()
        if transport.get_write_buffer_size():
            self.loop.call_later(self.limits.send_timeout, transport.abort)

    def _closed_now(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()

    def shutdown(self) -> None:
        """Graceful close: idle connections close now, busy ones after their current response."""
        if self.active is None and self._receiving is None:
            self._close()

    # -- timeouts: one lazily rescheduled timer per connection -----------------------------------------------------

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _deadline(self) -> tuple[float | None, str]:
        limits = self.limits
        receiving = self._receiving
        if self._pause & PAUSE_WRITE:
            return self._t_blocked + limits.send_timeout, "the client did not read the response in time"
        if self._in_head:
            return self._t_begin + limits.header_timeout, "request head not received in time"
        if receiving is not None and not receiving.complete:
            if self._pause & ~PAUSE_PIPELINE:
                return None, ""  # we stopped reading ourselves; the client is not at fault
            return self._t_rx + limits.body_timeout, "request body not received in time"
        if self.active is None and receiving is None:
            return self._t_idle + limits.keepalive_timeout, ""
        return None, ""

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._time()
        deadline, reason = self._deadline()
        if deadline is None:
            self._schedule(now + min(self.limits.header_timeout, self.limits.keepalive_timeout))
        elif now < deadline:
            self._schedule(deadline)
        elif self._pause & PAUSE_WRITE:
            # nothing more can be written to this client, an error response included: drop it
            self._log_reject(reason)
            self._abort_active_request()
            self.abort()
            self._closed_now()
        elif reason:
            self._reject(408, reason)
        else:
            self._close()  # idle keep-alive connection: a normal end, not worth a log line


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
        for conn in list(self.state.connections):
            conn.shutdown()

    async def wait_closed(self) -> None:
        try:
            await asyncio.wait_for(self.state.all_closed.wait(), self.state.limits.drain_timeout)
        except TimeoutError:
            logger.warning("drain timed out; dropping %d connection(s)", len(self.state.connections))
            for conn in list(self.state.connections):
                conn.abort()
        await self._server.wait_closed()
        if self._on_closed is not None:
            on_closed, self._on_closed = self._on_closed, None
            await on_closed()


async def start_server(factory: Callable[[ServerState], HttpServerProtocol], host: str, port: int, *,
                       limits: ServerLimits, reuse_port: bool = False, backlog: int = 1024,
                       on_closed: Callable[[], Awaitable[None]] | None = None) -> HttpServer:
    """Listen on ``host:port`` with one ``factory(state)`` protocol per connection."""
    state = ServerState(limits)
    server = await state.loop.create_server(lambda: factory(state), host, port, reuse_port=reuse_port or None,
                                            backlog=backlog)
    return HttpServer(server, state, on_closed)


class _AppProtocol(HttpServerProtocol):
    """Reads the whole body (up to ``max_body``), calls the handler, writes its Response."""

    def __init__(self, state: ServerState, handler: Handler, max_body: int) -> None:
        super().__init__(state)
        self._handler = handler
        self._max_body = max_body
        self._body: list[bytes] = []
        self._size = 0
        self._task: asyncio.Task[None] | None = None

    def handle_request(self, head: RequestHead) -> None:
        self._body = []
        self._size = 0
        if head.content_length is not None and head.content_length > self._max_body:
            self.send_error(413)
            return
        self.send_continue(head)

    def handle_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_body:
            self.send_error(413)
            return
        self._body.append(data)

    def handle_body_end(self) -> None:
        head = self.active
        assert head is not None
        request = Request(head.method, head.path, head.query, head.headers, b"".join(self._body), self.peer)
        self._body = []
        self._task = self.loop.create_task(self._run(head, request))

    def handle_abort(self) -> bool:
        if self._task is not None:
            self._task.cancel()
        return False

    async def _run(self, head: RequestHead, request: Request) -> None:
        try:
            response = await self._handler(request)
            payload = render_response(response.status, response.headers, response.body,
                                      head_only=head.method == "HEAD", keep_alive=self.should_keep_alive(head),
                                      http10=head.http10)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The message may quote request data, so only the type and where it was raised are logged.
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            logger.error("handler failed: %s at %s:%s", type(exc).__name__,
                         where.filename if where else "?", where.lineno if where else "?")
            payload = render_response(500, [("Content-Type", "application/json")], _ERRORS[500],
                                      head_only=head.method == "HEAD", keep_alive=self.should_keep_alive(head),
                                      http10=head.http10)
        finally:
            self._task = None
        if self._closed or self.active is not head:
            return
        self.write(payload)
        self.finish_response(self.should_keep_alive(head))


async def serve_app(handler: Handler, host: str, port: int, *, max_body: int = MiB,
                    limits: ServerLimits | None = None, reuse_port: bool = False) -> HttpServer:
    """Serve a simple app (admin listener, demo servers, decision service) on ``host:port``."""
    return await start_server(lambda state: _AppProtocol(state, handler, max_body), host, port,
                              limits=limits or ServerLimits(), reuse_port=reuse_port)


__all__ = [
    "HttpServer",
    "HttpServerProtocol",
    "MiB",
    "RequestHead",
    "Response",
    "ServerLimits",
    "ServerState",
    "json_error",
    "render_response",
    "serve_app",
    "start_server",
    "status_line",
]
