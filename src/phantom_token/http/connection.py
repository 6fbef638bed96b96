"""The server side of one HTTP/1.1 connection, without I/O: bytes in; request heads, body chunks, and keep-alive
and close decisions out.

``ServerConnection`` owns the connection's rules: framing (llhttp, through httptools), limits, request sequencing
and pipelining, keep-alive, early answers, the deadlines of slow clients, and shutdown. It never touches a socket,
a loop or a timer: the asyncio shell (``phantom_token.http.server``) feeds it what arrives (``receive``,
``receive_eof``, ``write_paused``, ``expire`` when a deadline it asked for comes) and carries out what it decides
through an ``Output`` (close, abort, pause and resume reading, wake me at). Tests drive it with bytes and a
recording ``Output`` (tests/unit/test_http_connection.py), as h11's tests do.

A front door is a ``RequestHandler`` the connection is handed (composition, not a subclass): it sees each request
(``handle_request``/``handle_body``/``handle_body_end``) and calls ``finish_response`` exactly once per request.

The connection's state is one value (``state``):

    IDLE ──first byte──► HEAD ──head complete──► BODY ──body complete──► IDLE ...
      │                                                 (pipelined heads queue up while one is answered)
      ├──peer EOF, or an upgrade, with a response still owed──► ENDING ──owed responses written──► CLOSED
      │                                                           └──the handler accepted the upgrade──► TUNNEL
      └──close decided (error, Connection: close, timeout, shutdown) or connection lost──────────► CLOSED

In TUNNEL (an upgrade the upstream accepted with 101, e.g. WebSocket) bytes are no longer HTTP: they go to the
handler as they come (``handle_tunnel``) and the handler's go back with ``tunnel_send``, until either side closes
or nothing moves either way for ``tunnel_idle_timeout``.

The request being answered is ``active`` (``responded`` once its response is written); the read side may be
paused for several reasons at once (``PAUSE_*`` bits: a pipelined request waits, the client does not read, the
handler asked).

Invariants:
- Responses leave in request order: at most one request is *active*; pipelined requests parsed ahead are queued and
  reading is paused, so memory per connection is bounded by one socket read.
- Framing is llhttp's strict mode: Content-Length with Transfer-Encoding, duplicate Content-Length, an invalid
  Transfer-Encoding or chunk, obs-fold and bare LF are all rejected. Every parse error answers 400 JSON and closes;
  a later pipelined request that is broken is answered after the responses owed before it.
- Only HTTP/1.0 and HTTP/1.1 are served: llhttp refuses most other versions (400), the rest (0.9, 2.0) get 505.
- The header block is bounded by ``max_header_bytes`` (431), the request target by ``max_url_bytes`` (414) and,
  when set, the body by ``max_body_bytes`` (413). Heads are parsed by ``phantom_token.http.request_head``.
- A half-sent request head times out after ``header_timeout`` (measured from its first byte, so a slow drip of
  bytes does not extend it), a stalled request body after ``body_timeout``, an idle keep-alive connection after
  ``keepalive_timeout``; a client that reads nothing of what is written to it for ``send_timeout`` is dropped.
- A rejected connection logs exactly one line on the ``phantom_token.http`` logger with the peer and a fixed reason;
  header values (which may carry tokens) are never logged.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import httptools

from phantom_token._trait import mypyc_attr
from phantom_token.http.messages import RawHeaders
from phantom_token.http.request_head import (
    HeaderMemo,
    Reject,
    RequestHead,
    index_headers,
    method_name,
    split_target,
    version_at,
)
from phantom_token.http.responses import CONTINUE_100, ERROR_BODIES, MALFORMED, render_response

logger: Final = logging.getLogger("phantom_token.http")

# The connection's state (see the module docstring).
IDLE: Final = 0  # between requests: the next byte begins a request head
HEAD: Final = 1  # a request head is arriving
BODY: Final = 2  # the body of the request last parsed is arriving
ENDING: Final = 3  # the peer will send no more requests (EOF, upgrade): the responses owed are written, then close
TUNNEL: Final = 4  # an accepted upgrade: raw bytes both ways
CLOSED: Final = 5
STATE_NAMES: Final = ("IDLE", "HEAD", "BODY", "ENDING", "TUNNEL", "CLOSED")

# Reasons to keep reading from the client paused; reading resumes only when none holds. Handlers add their own
# bits above these (the proxy: 8, 16).
PAUSE_PIPELINE: Final = 1  # a pipelined request waits for the one before it
PAUSE_WRITE: Final = 2  # the client is not reading what we write
PAUSE_APP: Final = 4  # the handler asked (e.g. the upstream cannot take the body yet)
PAUSE_UPGRADE: Final = 32  # an upgrade request waits for the handler to accept it (its protocol's bytes wait too)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int = 64 * 1024  # request line excluded; every header name, value and separator counted
    max_url_bytes: int = 8 * 1024
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    drain_timeout: float = 30.0
    send_timeout: float = 60.0  # a client that reads nothing of what we write for this long is dropped
    tunnel_idle_timeout: float = 60.0  # an upgraded connection with no byte either way for this long is closed
    max_body_bytes: int = 0  # a larger request body is answered 413; 0: no limit


class Listening:
    """What the connections of one listening server share with them: whether it is shutting down."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.closing = False


@mypyc_attr(allow_interpreted_subclasses=True)
class Output:
    """What a connection asks of its transport. The asyncio shell implements it; tests record it."""

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def close(self, linger: bool) -> None:
        """Close once what is written is flushed. ``linger``: the client may still be sending (an early answer):
        send FIN, keep reading and discarding for a moment, so the kernel does not reset the connection and lose
        the answer. A client that reads nothing of what is buffered is dropped after the send timeout."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection at once (a response was cut short, or nothing more can be written)."""
        raise NotImplementedError

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        """Write several buffers without joining them (large bodies)."""
        raise NotImplementedError

    def wake_at(self, when: float) -> None:
        """Call ``ServerConnection.expire`` no later than ``when`` (loop time)."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class RequestHandler:
    """A front door's side of one connection. The connection calls these, in order, for each request; the handler
    calls ``ServerConnection.finish_response`` (or ``send_response``) exactly once per request."""

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
        """The client is not reading; a streaming handler stops its source."""

    def handle_write_resumed(self) -> None:
        """The client reads again."""

    def handle_tunnel(self, data: bytes) -> None:
        """Bytes from the client after ``ServerConnection.start_tunnel`` (not HTTP any more)."""
        raise NotImplementedError

    def handle_refused(self, status: int) -> None:
        """The connection itself answered a request with ``status`` and closes (broken framing, a limit, a
        timeout: its ``_reject``); the handler saw no such request. For the access log."""


class ServerConnection:
    """One client connection's HTTP/1.1 rules (see the module docstring). ``send``/``is_closing`` are the
    transport's own bound methods (compiled code then calls them directly on every response)."""

    def __init__(self, listening: Listening, out: Output, send: Callable[[bytes], None],
                 is_closing: Callable[[], bool], peer: tuple[str, int] | None,
                 make_handler: Callable[[ServerConnection], RequestHandler], now: float,
                 peer_certificate: bytes | None = None) -> None:
        self.listening = listening
        # The DER certificate the TLS client presented, verified by the handshake (None: no TLS, or none), for the
        # handler (which derives what it needs once per connection).
        self.peer_certificate = peer_certificate
        limits = self.limits = listening.limits
        self.out = out
        self.send = send
        self.is_closing = is_closing
        self.peer = peer
        self.client_ip = peer[0] if peer is not None else ""
        self.state = IDLE
        parser = self._parser = httptools.HttpRequestParser(self)
        self._feed: Callable[[bytes], None] = parser.feed_data
        self._parsed_method: Callable[[], bytes] = parser.get_method
        self._parsed_keep_alive: Callable[[], bool] = parser.should_keep_alive
        self._url = b""
        # The last origin-form target (``/path?query``) and what ``split_target`` made of it: a keep-alive client
        # repeats its targets, and comparing bytes is cheaper than scanning and decoding them again.
        self._last_target = b"/"  # never b"": that is no target split_target would accept
        self._last_path = "/"
        self._last_query = ""
        self._header_memo = HeaderMemo()  # the previous head's names and Host, for ``index_headers``
        self._raw: RawHeaders = []
        self._header_bytes = 0
        self._receiving: RequestHead | None = None  # the request whose body is arriving (state BODY)
        self.active: RequestHead | None = None  # request whose response is being produced
        self.responded = False  # the response of ``active`` is fully written
        self._queue: deque[RequestHead] = deque()
        self._advancing = False  # ``_advance`` is running (it is not re-entered)
        self._pause = 0
        self._pending_error: int | None = None  # a later pipelined request was broken: answered after ``active``
        # The read that began with the request line of the message being parsed, until its head is complete: the
        # version is then read off that line (``version_at``). None for a message that began inside a read.
        self._line: bytes | None = None
        self._t_rx = self._t_idle = now
        # The loop's time while ``receive`` runs (the bytes' arrival), else 0: a handler deciding a request within
        # that call may use it instead of reading the clock again (a request started later, e.g. a pipelined one
        # after the previous response, sees 0 and reads it).
        self.turn_time = 0.0
        self._t_begin = 0.0
        self._t_blocked = 0.0  # when the client last stopped reading (write_paused)
        self._upgrade: RequestHead | None = None  # the upgrade request llhttp stopped at, until it is decided
        self._held = b""  # what followed that head in its read: the upgraded protocol's first bytes
        self._tunnel_sent = False  # bytes went to the client since the tunnel's idle deadline was last checked
        self._t_sent = 0.0  # when that was last noticed
        self.handler = make_handler(self)
        out.wake_at(now + min(limits.keepalive_timeout, limits.header_timeout))

    def __repr__(self) -> str:
        return f"<ServerConnection {STATE_NAMES[self.state]} {self._peer_text()}>"

    # -- what the shell feeds in ----------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the client."""
        state = self.state
        if state >= ENDING or self._pending_error is not None:
            if state == TUNNEL:
                self._t_rx = now
                self.handler.handle_tunnel(data)
            elif self._upgrade is not None:  # a read already under way when reading paused: the tunnel's too
                self._held += data
            return  # no more requests are read (after a parse error the parser must not be fed again)
        self._t_rx = self.turn_time = now
        if state != HEAD:  # a head under way keeps the read it began in
            self._line = data if state == IDLE else None
        try:
            self._feed(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Reject):
                self._reject(cause.status, cause.reason)
            else:
                logger.error("connection from %s: internal error while parsing: %s", self._peer_text(),
                             type(cause).__name__, exc_info=cause)
                self._reject(500, "internal error")
        except httptools.HttpParserUpgrade as upgrade:
            # What follows the head is another protocol: no more requests are read. The handler may accept the
            # upgrade (``start_tunnel``); else the request is answered as plain HTTP (RFC 9110 7.8) and the
            # connection ends after the response. Until then the new protocol's bytes wait, unread.
            self.state = ENDING
            self._upgrade = self._queue[-1] if self._queue else self.active  # the head llhttp stopped at
            offset = upgrade.args[0] if upgrade.args and isinstance(upgrade.args[0], int) else len(data)
            self._held = data[offset:]
            self.pause_reading(PAUSE_UPGRADE)
            if self.active is None:
                self._close()
        except httptools.HttpParserError as exc:
            # llhttp's reasons are fixed strings from its source, never bytes of the request.
            self._reject(400, f"malformed request ({exc})")
        finally:
            self.turn_time = 0.0

    def receive_eof(self) -> bool:
        """The client sent FIN; True to keep the connection half-open (it may still read the responses owed)."""
        state = self.state
        if state == CLOSED:
            return False  # lingering close: the client is done too
        if state == TUNNEL:
            self._abort_active_request()  # the handler closes its side (the upstream)
            self._close()
            return False
        if state in (HEAD, BODY):
            self._log_reject("connection closed in the middle of a request")
            self._abort_active_request()
            return False
        if self.active is not None or self._queue:
            self.state = ENDING
            return True
        self._close()
        return False

    def lost(self) -> None:
        """The transport is gone."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if self.active is not None and not self.responded:
            self.handler.handle_abort()

    def write_paused(self, now: float) -> None:
        self.pause_reading(PAUSE_WRITE)
        self._t_blocked = now
        self.out.wake_at(now + self.limits.send_timeout)
        self.handler.handle_write_paused()

    def write_resumed(self) -> None:
        self.resume_reading(PAUSE_WRITE)
        self.handler.handle_write_resumed()

    def expire(self, now: float) -> float:
        """A deadline asked for came (or the shell's periodic check); the next time to be woken, or -1.0 for none."""
        if self.state == CLOSED:
            return -1.0
        if self.state == TUNNEL and not self._pause & PAUSE_WRITE:
            # Idle means no byte either way. Bytes to the client are noticed here (at least twice per timeout), not
            # timed one by one: the timeout holds to within half of itself.
            idle = self.limits.tunnel_idle_timeout
            if self._tunnel_sent:
                self._tunnel_sent = False
                self._t_sent = now
            deadline = max(self._t_rx, self._t_sent) + idle
            if now < deadline:
                return min(deadline, now + idle / 2)
            self._log_reject("upgraded connection idle")
            self._abort_active_request()
            self._close()
            return -1.0
        deadline, reason = self._deadline()
        if deadline < 0.0:
            return now + min(self.limits.header_timeout, self.limits.keepalive_timeout)
        if now < deadline:
            return deadline
        if self._pause & PAUSE_WRITE:
            # nothing more can be written to this client, an error response included: drop it
            self._log_reject(reason)
            self._abort_active_request()
            self._drop()
        elif reason:
            self._reject(408, reason)
        else:
            self._close()  # idle keep-alive connection: a normal end, not worth a log line
        return -1.0 if self.state == CLOSED else now + min(self.limits.header_timeout, self.limits.keepalive_timeout)

    def shutdown(self) -> None:
        """Graceful close: idle connections close now, busy ones after their current response."""
        if self.active is None and self.state != BODY:
            self._close()

    # -- what handlers call ----------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.is_closing():
            self.send(data)

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def should_keep_alive(self, head: RequestHead) -> bool:
        """Whether the response to ``head`` may keep the connection open (sets ``Connection: close`` if not)."""
        return head.keep_alive and self.state != ENDING and not self.listening.closing

    def can_drain(self, head: RequestHead) -> bool:
        """Whether the connection can stay open after an early response: the rest of the body is small."""
        if head.complete:
            return True
        if head.expect_continue or head.chunked:
            return False  # the client waits for 100 or the size is unknown: closing is the only safe choice
        remaining = (head.content_length or 0) - head.body_received
        return remaining <= 64 * 1024

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
        self.send_response(status, [("Content-Type", "application/json")], ERROR_BODIES[status])

    def finish_response(self, keep_alive: bool) -> None:
        """The response of ``active`` is fully written. Any body still arriving is discarded."""
        self.responded = True
        if not keep_alive:
            self._close()
        else:
            self._advance()

    def pause_reading(self, reason: int = PAUSE_APP) -> None:
        if not self._pause and not self.is_closing():
            self.out.pause_reading()
        self._pause |= reason

    def resume_reading(self, reason: int = PAUSE_APP) -> None:
        if self._pause & reason:
            self._pause &= ~reason
            if not self._pause and not self.is_closing():
                self.out.resume_reading()

    def abort(self) -> None:
        """Drop the connection at once (used when a response was cut short)."""
        if self.state != CLOSED:
            self.out.abort()

    # -- upgrades ----------------------------------------------------------------------------------------------------

    def can_tunnel(self, head: RequestHead) -> bool:
        """Whether ``head`` is an upgrade request whose connection can become a tunnel (llhttp stopped at it)."""
        return head.upgrade and head is self._upgrade and self.state == ENDING

    def start_tunnel(self) -> None:
        """The handler wrote the 101 head: from now on bytes both ways are the new protocol's. What the client sent
        after the request head is handed over first."""
        self.state = TUNNEL
        self._upgrade = None
        held, self._held = self._held, b""
        self.out.wake_at(self._t_rx + self.limits.tunnel_idle_timeout / 2)
        self.resume_reading(PAUSE_UPGRADE)
        if held:
            self.handler.handle_tunnel(held)

    def tunnel_send(self, data: bytes) -> None:
        """Bytes for the client from the other end of the tunnel."""
        self._tunnel_sent = True
        self.write(data)

    def end_tunnel(self) -> None:
        """The other end closed: close once what is written is flushed."""
        self.responded = True
        self._close()

    # -- httptools callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._raw = []
        self._header_bytes = 0
        self.state = HEAD
        self._receiving = None
        self._t_begin = self._t_rx
        self.out.wake_at(self._t_rx + self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        part = self._url
        self._url = part + url if part else url  # llhttp gives the target in one piece unless a read splits it
        if len(self._url) > self.limits.max_url_bytes:
            raise Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise Reject(431, "header block too large")
        if self.state == HEAD:
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
            version = version_at(line, len(method) + 1 + len(self._url))
        if not version:
            # llhttp also accepts 0.9, 2.0 and 3.0 on a request line; each means another protocol
            text = self._parser.get_http_version()
            version = 11 if text == "1.1" else 10 if text == "1.0" else 0
            if not version:
                raise Reject(505, "unsupported HTTP version")
        head = RequestHead(method_name(method, self._header_memo), self._url, self._raw, self._parsed_keep_alive(),
                           version == 10)
        self.state = BODY
        self._receiving = head
        try:
            index_headers(head, self._header_memo)
        except ValueError as exc:
            raise Reject(400, "invalid header") from exc
        limit = self.limits.max_body_bytes
        if limit and head.content_length is not None and head.content_length > limit:
            raise Reject(413, "request body larger than max_body_bytes")
        target = head.target
        if target == self._last_target:  # only ever an origin-form target that split_target accepted
            head.path, head.query = self._last_path, self._last_query
        else:
            split_target(head)
            if target[:1] == b"/":
                self._last_target, self._last_path, self._last_query = target, head.path, head.query
        if self.active is None:
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
            raise Reject(413, "request body larger than max_body_bytes")
        if head is self.active:
            if not self.responded:
                self.handler.handle_body(body)
            # else: the response went out early (e.g. a denial); the rest of the body is discarded.
        elif head.early_body is not None:
            head.early_body.append(body)

    def on_message_complete(self) -> None:
        head = self._receiving
        assert head is not None
        head.complete = True
        self._receiving = None
        if self.state == BODY:
            self.state = IDLE
        if head is self.active:
            if not self.responded:
                self.handler.handle_body_end()
            if self.responded:
                self._advance()

    # -- request sequencing --------------------------------------------------------------------------------------

    def _start(self, head: RequestHead) -> None:
        self.active = head
        self.responded = False
        handler = self.handler
        handler.handle_request(head)
        early = head.early_body
        if early:
            head.early_body = None
            for chunk in early:
                if self.responded or self.active is not head:
                    break
                handler.handle_body(chunk)
        if head.complete and not self.responded and self.active is head:
            handler.handle_body_end()

    def _advance(self) -> None:
        """Move on once the active request is both fully received and answered. Iterative, so a burst of
        pipelined requests answered synchronously does not recurse."""
        if self._advancing:
            return
        self._advancing = True
        try:
            while True:
                head = self.active
                if head is None or not self.responded or not head.complete or self.state == CLOSED:
                    return
                self.active = None
                if not self.should_keep_alive(head):
                    self._close()
                    return
                if not self._queue:
                    if self._pending_error is not None:
                        self._write_error_and_close(self._pending_error)
                        return
                    self._t_idle = self._t_rx
                    if self.state != BODY and self.listening.closing:
                        self._close()
                        return
                    self.resume_reading(PAUSE_PIPELINE)
                    return
                self._start(self._queue.popleft())
        finally:
            self._advancing = False

    def _abort_active_request(self) -> bool:
        """Tell the handler its request is broken; True if a response head already went out."""
        if self.active is not None and not self.responded:
            self.responded = True
            return self.handler.handle_abort()
        return False

    def _reject(self, status: int, reason: str) -> None:
        """Answer a broken request with ``status`` (JSON) and close, keeping responses in request order."""
        if self.state >= ENDING or self._pending_error is not None:
            return
        self._log_reject(reason)
        self.pause_reading(PAUSE_PIPELINE)
        active = self.active
        if active is not None:
            if active.complete and not self.responded:
                self._pending_error = status  # a later pipelined request is broken: answer after this one
                return
            if self.responded or self._abort_active_request():
                self._drop()  # its response is written or under way: no error can follow it in order
                return
        self._write_error_and_close(status)

    def _write_error_and_close(self, status: int) -> None:
        self.handler.handle_refused(status)
        self.write(render_response(status, [("Content-Type", "application/json")],
                                   ERROR_BODIES.get(status, MALFORMED), head_only=False, keep_alive=False))
        self._close()

    def _log_reject(self, reason: str) -> None:
        logger.info("rejected connection from %s: %s", self._peer_text(), reason)

    def _peer_text(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}" if self.peer else "unknown peer"

    def _close(self) -> None:
        """Close after what is written is flushed; nothing more is parsed. Lingering when the client may still be
        sending (an early answer to a request whose head or body has not all arrived)."""
        state = self.state
        if state == CLOSED:
            return
        self.state = CLOSED
        self._queue.clear()
        self._pause = 0
        self.out.close(state in (HEAD, BODY))

    def _drop(self) -> None:
        self.state = CLOSED
        self._queue.clear()
        self.out.abort()

    def _deadline(self) -> tuple[float, str]:
        """When the client is late and why (-1.0: no deadline now)."""
        limits = self.limits
        state = self.state
        if self._pause & PAUSE_WRITE:
            return self._t_blocked + limits.send_timeout, "the client did not read the response in time"
        if state == HEAD:
            return self._t_begin + limits.header_timeout, "request head not received in time"
        if state == BODY:
            if self._pause & ~PAUSE_PIPELINE:
                return -1.0, ""  # we stopped reading ourselves; the client is not at fault
            return self._t_rx + limits.body_timeout, "request body not received in time"
        if self.active is None and state == IDLE:
            return self._t_idle + limits.keepalive_timeout, ""
        return -1.0, ""


__all__ = [
    "BODY",
    "CLOSED",
    "ENDING",
    "HEAD",
    "IDLE",
    "PAUSE_APP",
    "PAUSE_PIPELINE",
    "PAUSE_UPGRADE",
    "PAUSE_WRITE",
    "TUNNEL",
    "Listening",
    "Output",
    "RequestHandler",
    "ServerConnection",
    "ServerLimits",
]
