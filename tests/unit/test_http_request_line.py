"""The server's reading of a request line's HTTP version, without sockets (the server itself runs on sockets in
tests/integration/test_http_server.py)."""

from __future__ import annotations

import pytest

from phantom_token.http.request_head import version_at


@pytest.mark.parametrize(("data", "method", "target", "version"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET", b"/", 11),
    (b"DELETE /x?y=1 HTTP/1.0\r\n\r\n", b"DELETE", b"/x?y=1", 10),
    (b"GET / HTTP/1.1", b"GET", b"/", 0),  # the line is not all in this read
    (b"GET / HTTP/1.1\r", b"GET", b"/", 11),
    (b"GET / HTTP/1.", b"GET", b"/", 0),
    (b"GET /abc", b"GET", b"/abcdefgh", 0),  # the target went on in the next read
    (b"\r\nGET / HTTP/1.1\r\n", b"GET", b"/", 0),  # an empty line first: the parser decides
    (b"GET / HTTP/2.0\r\n\r\n", b"GET", b"/", 0),
    (b"GET / HTTP/1.2\r\n\r\n", b"GET", b"/", 0),
    (b"GET / HTTP/1.1 \r\n", b"GET", b"/", 0),
    (b"GET /a HTTP/1.1\r\n", b"GET", b"/", 0),  # not where the line puts it
])
def test_the_version_is_read_where_the_request_line_has_it(data: bytes, method: bytes, target: bytes,
                                                           version: int) -> None:
    assert version_at(data, len(method) + 1 + len(target)) == version
