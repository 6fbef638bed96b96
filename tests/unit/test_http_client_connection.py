"""The upstream ``Connection`` (``phantom_token.http.client``) driven with bytes through an in-memory transport, no
sockets: a connection that carried earlier responses (and remembers the last head, to find where the next one ends
without searching) reports exactly what a new connection reports for the same bytes, whatever came before them."""

from __future__ import annotations

import asyncio
import itertools

from phantom_token.http.client import (
    ClientResponse,
    Connection,
    ConnectionPool,
    _BufferedSink,
    _target,
    head_fields_text,
)
from tests.memory_transport import MemoryTransport

KEY = ("http", "127.0.0.1", 9, None)
OK = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 03:00:00 GMT\r\nContent-Length: 2\r\n\r\nok"
RESPONSES: list[tuple[str, list[bytes], bool]] = [  # (name, reads, a response to HEAD)
    ("ok", [OK], False),
    ("same head, other body", [OK[:-2] + b"no"], False),
    ("another Date, same length", [OK.replace(b"03:00:00", b"03:00:01")], False),
    ("a longer head that begins like the last one's status line", [
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 03:00:00 GMT\r\nX-A: b\r\nContent-Length: 2"
        b"\r\n\r\nok"], False),
    ("a shorter head", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], False),
    ("the head in two reads", [OK[:40], OK[40:]], False),
    ("the head's last byte alone", [OK[:OK.index(b"\r\n\r\n") + 3], OK[OK.index(b"\r\n\r\n") + 3:]], False),
    ("byte by byte", [OK[i:i + 1] for i in range(len(OK))], False),
    ("100 Continue first", [b"HTTP/1.1 100 Continue\r\n\r\n" + OK], False),
    ("103 then the response in another read", [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", OK], False),
    ("chunked", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"], False),
    ("Set-Cookie", [b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Length: 2\r\n\r\nok"], False),
    ("Set-Cookie again", [b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Length: 2\r\n\r\nok"], False),
    ("204", [b"HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n"], False),
    ("to HEAD", [OK[:-2]], True),
    ("to HEAD again", [OK[:-2]], True),
    ("Connection: close", [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"], False),
    ("two Content-Length", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"], False),
    ("garbage", [b"HTTP/1.1 2x0 OK\r\n\r\n"], False),
    ("more than the response", [OK + b"HTTP/1.1 200 OK\r\n"], False),
    ("a large head", [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 3000 + b"\r\nContent-Length: 2\r\n\r\nok"], False),
    ("a large head again", [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 3000 + b"\r\nContent-Length: 2\r\n\r\nok"], False),
]


def connection(pool: ConnectionPool) -> Connection:
    conn = Connection(pool, KEY)
    conn.connection_made(MemoryTransport())
    return conn


def exchange(conn: Connection, reads: list[bytes], head_request: bool) -> tuple[object, ...]:
    """One request on ``conn`` and ``reads`` as its response: what the whole-body sink got (status, headers, body or
    the failure; a ``ResponseSink`` the compiled build accepts, unlike a test's own subclass), the head the connection
    took, and whether the connection is still usable and pooled."""
    future: asyncio.Future[ClientResponse] = asyncio.get_running_loop().create_future()
    sink = _BufferedSink(future, conn, 1 << 20, _target("http://a/"), 5.0)
    conn.begin(sink, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", head_request=head_request, timeout=5.0, chunked=False)
    conn.end_body()
    for data in reads:
        conn.data_received(data)
    outcome: object
    if not future.done():
        outcome = ("pending", sink.status, head_fields_text(sink.head), b"".join(sink.body))
    elif future.exception() is not None:
        exc = future.exception()
        outcome = ("failed", type(exc).__name__, str(exc))
    else:
        response = future.result()
        outcome = (response.status, response.headers, response.body)
    result = outcome, conn._head, conn.usable, conn.in_pool
    if conn.in_pool:
        conn.pool.forget(conn)  # the test keeps it (the pool would close connections past its size)
    return result


def exchange_without_memo(conn: Connection, reads: list[bytes], head_request: bool) -> tuple[object, ...]:
    """As before the head memo: the head's end always searched for, its status and keep-alive asked of llhttp."""
    conn._last_head = b""
    conn._last_status = 0
    conn._last_keep_alive = -1
    return exchange(conn, reads, head_request)


async def test_the_head_memo_never_changes_what_a_connection_reports() -> None:
    """Differential: two connections fed the same responses in the same order, one with the memo, one with it
    cleared before each response (the search every time); every event, and whether the connection stays usable
    and pooled, are the same. Every ordered pair of responses, then a long run of all of them."""
    pool = ConnectionPool()
    try:
        for first, second in itertools.product(RESPONSES, repeat=2):
            memo, plain = connection(pool), connection(pool)
            assert exchange(memo, first[1], first[2]) == exchange_without_memo(plain, first[1], first[2])
            if not memo.usable:
                continue  # the first response closed it: nothing follows on that connection
            assert exchange(memo, second[1], second[2]) == exchange_without_memo(plain, second[1], second[2]), (
                first[0], second[0])
        memo, plain = connection(pool), connection(pool)
        for name, reads, head_request in RESPONSES * 3:
            if not memo.usable:
                memo, plain = connection(pool), connection(pool)
            assert exchange(memo, reads, head_request) == exchange_without_memo(plain, reads, head_request), name
    finally:
        await pool.aclose()


async def test_only_small_heads_are_remembered() -> None:
    """The memo is used (so the differential test above compares two paths): after a small head the connection
    holds it (a repeated head is the very same object); after a head over 2 KiB it holds nothing."""
    pool = ConnectionPool()
    try:
        conn = connection(pool)
        exchange(conn, [OK], False)
        assert conn._last_head == OK[:-2]
        exchange(conn, [OK[:-2] + b"no"], False)
        assert conn._last_head == OK[:-2]
        exchange(conn, [OK], False)
        assert conn._head is conn._last_head  # the repeated head is the remembered object itself
        assert (conn._last_status, conn._last_keep_alive) == (200, 1)  # and what llhttp said of it
        exchange(conn, RESPONSES[20][1], False)  # over 2 KiB
        assert conn._last_head == b""
    finally:
        await pool.aclose()
