"""The I/O-free server connection (phantom_token.http.connection): bytes in, requests and decisions out.

No socket, loop or timer: a recording ``Output`` stands for the transport and the tests pass the time themselves.
"""

from __future__ import annotations

import json

import pytest

from phantom_token.http.connection import (
    BODY,
    CLOSED,
    ENDING,
    HEAD,
    IDLE,
    PAUSE_APP,
    TUNNEL,
    Listening,
    Output,
    RequestHandler,
    ServerConnection,
    ServerLimits,
)
from phantom_token.http.request_head import RequestHead


class Recorder(Output):
    """What the connection asked of its transport."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.calls: list[str] = []
        self.wakes: list[float] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def close(self, linger: bool) -> None:
        self.calls.append("close lingering" if linger else "close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.sent.append(b"".join(parts))

    def wake_at(self, when: float) -> None:
        self.wakes.append(when)

    def is_closing(self) -> bool:
        return self.closing

    @property
    def text(self) -> bytes:
        return b"".join(self.sent)


class Handler(RequestHandler):
    """Answers every request at once with its path (unless ``hold``), and records what it was given."""

    def __init__(self, conn: ServerConnection, hold: bool) -> None:
        self.conn = conn
        self.hold = hold
        self.heads: list[RequestHead] = []
        self.turn_times: list[float] = []  # the connection's ``turn_time`` as each request began
        self.bodies: list[bytes] = []
        self.ends = 0
        self.aborted = 0

    def handle_request(self, head: RequestHead) -> None:
        self.heads.append(head)
        self.turn_times.append(self.conn.turn_time)
        if not self.hold:
            self.answer()

    def answer(self) -> None:
        head = self.conn.active
        assert head is not None
        self.conn.send_response(200, [("X-Path", head.path)], head.path.encode())

    def handle_body(self, data: bytes) -> None:
        self.bodies.append(data)

    def handle_body_end(self) -> None:
        self.ends += 1

    def handle_abort(self) -> bool:
        self.aborted += 1
        return False


DEFAULTS = ServerLimits()


def connect(*, hold: bool = False, limits: ServerLimits = DEFAULTS) -> tuple[ServerConnection, Handler, Recorder]:
    out = Recorder()
    handlers: list[Handler] = []

    def make(conn: ServerConnection) -> Handler:
        handlers.append(Handler(conn, hold))
        return handlers[0]

    conn = ServerConnection(Listening(limits), out, out.sent.append, out.is_closing, ("192.0.2.7", 4711), make, 100.0)
    return conn, handlers[0], out


def test_a_request_is_answered_and_the_connection_stays_open() -> None:
    conn, handler, out = connect()
    assert conn.state == IDLE
    conn.receive(b"GET /a/../b?q=1 HTTP/1.1\r\nHost: Example.COM.\r\n\r\n", 101.0)
    head = handler.heads[0]
    assert (head.method, head.path, head.query, head.host) == ("GET", "/b", "q=1", "example.com")
    assert out.text == b"HTTP/1.1 200 OK\r\nX-Path: /b\r\nContent-Length: 2\r\n\r\n/b"
    assert conn.state == IDLE
    assert conn.active is None
    assert "close" not in " ".join(out.calls)


def test_the_state_follows_the_bytes() -> None:
    conn, handler, _ = connect(hold=True)
    conn.receive(b"POST /x HTTP/1.1\r\nHo", 101.0)
    assert conn.state == HEAD
    conn.receive(b"st: h\r\nContent-Length: 5\r\n\r\nhe", 101.1)
    assert conn.state == BODY
    assert handler.bodies == [b"he"]
    conn.receive(b"llo", 101.2)
    assert conn.state == IDLE
    assert (handler.bodies, handler.ends) == ([b"he", b"llo"], 1)


def test_pipelined_requests_wait_their_turn_and_are_answered_in_order() -> None:
    conn, handler, out = connect(hold=True)
    conn.receive(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n", 101.0)
    assert [head.path for head in handler.heads] == ["/1"]  # the second waits, and reading is paused
    assert out.calls == ["pause"]
    handler.answer()
    assert [head.path for head in handler.heads] == ["/1", "/2"]
    handler.answer()
    assert out.text.count(b"HTTP/1.1 200 OK") == 2
    assert out.text.index(b"/1") < out.text.index(b"/2")
    assert out.calls == ["pause", "resume"]


def test_turn_time_is_the_reads_time_only_while_the_read_is_handled() -> None:
    """A request begun while ``receive`` runs sees that read's time (a handler may use it for the clock); one begun
    later, once the request before it was answered, sees 0 (the read's time would be stale: it must read the
    clock). A read that ends in a parse error leaves 0 behind too."""
    conn, handler, _ = connect()
    conn.receive(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n", 101.0)
    assert handler.turn_times == [101.0, 101.0]  # both answered at once, within the read
    assert conn.turn_time == 0.0
    conn, handler, _ = connect(hold=True)
    conn.receive(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n", 102.0)
    assert conn.turn_time == 0.0
    handler.answer()  # later, outside any read: the pipelined request begins now
    assert handler.turn_times == [102.0, 0.0]
    conn, handler, _ = connect()
    conn.receive(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/9.9\r\n\r\n", 103.0)
    assert handler.turn_times == [103.0]
    assert conn.turn_time == 0.0


def test_connection_close_closes_after_the_response() -> None:
    conn, handler, out = connect(hold=True)
    conn.receive(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 101.0)
    handler.answer()
    assert b"Connection: close\r\n" in out.text
    assert out.calls == ["close"]
    assert conn.state == CLOSED


def test_an_answer_before_the_request_is_all_read_closes_lingering() -> None:
    # answered from handle_request, before llhttp completed the message: what else the client sent must be read
    # and discarded, or the kernel resets the connection and the answer is lost
    conn, _, out = connect()
    conn.receive(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 101.0)
    assert b"Connection: close\r\n" in out.text
    assert out.calls == ["close lingering"]


@pytest.mark.parametrize(
    ("data", "status", "limits"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 2000 + b"\r\n\r\n", 431, {"max_header_bytes": 1024}),
        (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, {"max_url_bytes": 64}),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", 413, {"max_body_bytes": 10}),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, {}),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400, {}),
        (b"GET /a/..%2fb HTTP/1.1\r\nHost: h\r\n\r\n", 400, {}),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, {}),
    ],
)
def test_a_broken_request_is_answered_with_its_status_and_the_connection_closes(data: bytes, status: int,
                                                                                  limits: dict[str, float]) -> None:
    conn, handler, out = connect(limits=ServerLimits(**limits))  # type: ignore[arg-type]
    conn.receive(data, 101.0)
    assert out.text.startswith(b"HTTP/1.1 %d " % status)
    assert json.loads(out.text.partition(b"\r\n\r\n")[2])["code"]
    assert out.calls[-1] in ("close", "close lingering")
    assert conn.state == CLOSED
    assert handler.heads == []
    conn.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 102.0)  # nothing more is read
    assert handler.heads == []


def test_a_broken_pipelined_request_is_answered_after_the_one_before_it() -> None:
    conn, handler, out = connect(hold=True)
    conn.receive(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/9.9\r\n\r\n", 101.0)
    assert out.text == b""
    handler.answer()
    first, second = out.text.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK")
    assert second.startswith(b"400 Bad Request")
    assert conn.state == CLOSED


def test_a_chunked_body_over_the_limit_aborts_the_request() -> None:
    conn, handler, out = connect(hold=True, limits=ServerLimits(max_body_bytes=4))
    conn.receive(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n", 101.0)
    assert handler.aborted == 1
    assert out.text.startswith(b"HTTP/1.1 413 ")
    assert out.calls[-1] == "close lingering"  # the client may still be sending


def test_eof_with_a_response_owed_keeps_the_connection_half_open() -> None:
    conn, handler, out = connect(hold=True)
    conn.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 101.0)
    assert conn.receive_eof() is True
    assert conn.state == ENDING
    handler.answer()
    assert b"Connection: close\r\n" in out.text  # the client said it is done
    assert out.calls[-1] == "close"


def test_eof_in_the_middle_of_a_request_aborts_it() -> None:
    conn, handler, _ = connect(hold=True)
    conn.receive(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc", 101.0)
    assert conn.receive_eof() is False
    assert handler.aborted == 1


def test_deadlines_are_asked_for_and_met() -> None:
    conn, _, out = connect(limits=ServerLimits(header_timeout=5.0, keepalive_timeout=20.0))
    assert out.wakes == [105.0]  # min(keep-alive, header) from the start
    conn.receive(b"GET / HTTP/1.1\r\n", 101.0)
    assert out.wakes[-1] == 106.0  # the head's deadline, from its first byte
    assert conn.expire(103.0) == 106.0  # not yet
    assert conn.expire(106.0) == -1.0
    assert out.text.startswith(b"HTTP/1.1 408 ")
    assert out.calls == ["pause", "close lingering"]


def test_an_idle_keep_alive_connection_ends_quietly() -> None:
    conn, _, out = connect(limits=ServerLimits(keepalive_timeout=20.0))
    conn.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 101.0)
    assert conn.expire(110.0) == 121.0
    assert conn.expire(121.0) == -1.0
    assert out.calls == ["close"]


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout() -> None:
    conn, handler, out = connect(hold=True, limits=ServerLimits(send_timeout=3.0))
    conn.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 101.0)
    conn.write_paused(102.0)
    assert out.wakes[-1] == 105.0
    assert conn.expire(104.0) == 105.0
    conn.write_resumed()
    conn.write_paused(104.5)
    assert conn.expire(105.0) == 107.5  # the clock starts again at each pause
    assert conn.expire(107.5) == -1.0
    assert out.calls[-1] == "abort"
    assert handler.aborted == 1
    assert conn.state == CLOSED


def test_pause_reasons_add_up() -> None:
    conn, _, out = connect(hold=True)
    conn.pause_reading(PAUSE_APP)
    conn.pause_reading(8)
    conn.resume_reading(PAUSE_APP)
    assert out.calls == ["pause"]
    conn.resume_reading(8)
    assert out.calls == ["pause", "resume"]


def test_shutdown_closes_an_idle_connection_and_lets_a_busy_one_finish() -> None:
    idle, _, idle_out = connect()
    idle.shutdown()
    assert idle_out.calls == ["close"]
    busy, handler, out = connect(hold=True)
    busy.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 101.0)
    busy.listening.closing = True
    busy.shutdown()
    assert out.calls == []
    handler.answer()
    assert b"Connection: close\r\n" in out.text
    assert out.calls == ["close"]


def test_a_lost_connection_aborts_the_active_request() -> None:
    conn, handler, _ = connect(hold=True)
    conn.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 101.0)
    conn.lost()
    assert handler.aborted == 1
    assert conn.state == CLOSED
    assert repr(conn) == "<ServerConnection CLOSED 192.0.2.7:4711>"


class Tunneller(Handler):
    """Forwards an upgrade as a proxy would: accepts it (``accept``) and records the tunnel's bytes."""

    def __init__(self, conn: ServerConnection, hold: bool) -> None:
        super().__init__(conn, hold=True)
        self.tunnelled: list[bytes] = []

    def handle_tunnel(self, data: bytes) -> None:
        self.tunnelled.append(data)

    def accept(self) -> bool:
        head = self.conn.active
        assert head is not None
        if not self.conn.can_tunnel(head):
            return False
        self.conn.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        self.conn.start_tunnel()
        return True


def tunnel(limits: ServerLimits = DEFAULTS) -> tuple[ServerConnection, Tunneller, Recorder]:
    out = Recorder()
    made: list[Tunneller] = []

    def make(conn: ServerConnection) -> Tunneller:
        made.append(Tunneller(conn, hold=True))
        return made[0]

    conn = ServerConnection(Listening(limits), out, out.sent.append, out.is_closing, ("192.0.2.7", 4711), make, 100.0)
    return conn, made[0], out


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_an_accepted_upgrade_becomes_a_tunnel_both_ways() -> None:
    conn, handler, out = tunnel()
    conn.receive(UPGRADE + b"early frame", 101.0)
    assert handler.heads[0].upgrade
    assert conn.state == ENDING  # no more requests are read; the early bytes wait, unread
    assert out.calls == ["pause"]
    assert handler.tunnelled == []
    assert handler.accept()
    assert conn.state == TUNNEL
    assert handler.tunnelled == [b"early frame"]  # handed over first
    assert out.calls == ["pause", "resume"]
    conn.receive(b"\x81\x02hi", 102.0)
    assert handler.tunnelled[-1] == b"\x81\x02hi"
    conn.tunnel_send(b"\x81\x02yo")
    assert out.text.endswith(b"\r\n\r\n\x81\x02yo")
    conn.end_tunnel()
    assert out.calls[-1] == "close"


def test_a_refused_upgrade_is_answered_and_the_connection_closes() -> None:
    conn, handler, out = tunnel()
    conn.receive(UPGRADE + b"frame", 101.0)
    handler.answer()  # a plain answer (a denial, or an upstream that did not switch)
    assert out.text.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close\r\n" in out.text
    assert out.calls[-1] == "close"
    assert handler.tunnelled == []


def test_a_request_without_upgrade_cannot_be_tunnelled() -> None:
    conn, handler, _ = tunnel()
    conn.receive(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", 101.0)  # no Connection: upgrade
    assert not handler.heads[0].upgrade
    assert not handler.accept()


def test_an_idle_tunnel_is_closed_and_the_handler_told() -> None:
    conn, handler, out = tunnel(ServerLimits(tunnel_idle_timeout=10.0))
    conn.receive(UPGRADE, 101.0)
    handler.accept()
    assert conn.expire(104.0) == 109.0  # checked at least twice per timeout
    conn.tunnel_send(b"data")  # bytes the other way count as activity, noticed at the next check
    assert conn.expire(109.0) == 114.0
    assert conn.expire(114.0) == 119.0
    assert handler.aborted == 0
    assert conn.expire(119.0) == -1.0
    assert handler.aborted == 1
    assert out.calls[-1] == "close"


def test_eof_in_a_tunnel_ends_it() -> None:
    conn, handler, _ = tunnel()
    conn.receive(UPGRADE, 101.0)
    handler.accept()
    assert conn.receive_eof() is False
    assert handler.aborted == 1
    assert conn.state == CLOSED


def test_bytes_that_arrive_while_an_upgrade_is_decided_are_held_for_the_tunnel() -> None:
    conn, handler, _ = tunnel()
    conn.receive(UPGRADE + b"one", 101.0)
    conn.receive(b"two", 101.1)  # a read already under way when reading paused
    handler.accept()
    assert b"".join(handler.tunnelled) == b"onetwo"


def test_a_repeated_target_gives_what_a_fresh_connection_makes_of_it() -> None:
    """The connection remembers its last origin-form target and what it meant; every head, repeated or not, must
    carry the path, query and host a fresh connection (no memo) gives the same request, and a refused target is
    refused however often it follows an accepted one."""
    targets = [b"/", b"/", b"/a/../b?q=1", b"/a/../b?q=1", b"/b?q=1", b"/b", b"/b?", b"/b?", b"*",
               b"http://Other.example./x/./y?z", b"/b", b"http://Other.example./x/./y?z", b"/%41//c?x=%2F",
               b"/%41//c?x=%2F", b"/b", b"/b"]
    conn, handler, _ = connect()
    for target in targets:
        method = b"OPTIONS" if target == b"*" else b"GET"
        request = method + b" " + target + b" HTTP/1.1\r\nHost: h.example\r\n\r\n"
        conn.receive(request, 101.0)
        fresh, fresh_handler, _ = connect()
        fresh.receive(request, 101.0)
        head, expected = handler.heads[-1], fresh_handler.heads[0]
        assert (head.path, head.query, head.host, head.raw_host) == (
            expected.path, expected.query, expected.host, expected.raw_host), target
    assert [head.path for head in handler.heads][:6] == ["/", "/", "/b", "/b", "/b", "/b"]
    assert handler.heads[9].host == "other.example"
    assert handler.heads[10].host == "h.example"
    for refused in (b"/a/..%2F/b", b"/b#f"):
        conn, handler, out = connect()
        conn.receive(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n", 101.0)
        conn.receive(b"GET " + refused + b" HTTP/1.1\r\nHost: h\r\n\r\n", 101.1)
        assert out.text.count(b"HTTP/1.1 400 ") == 1, refused
