"""The responses the server writes itself, as bytes: status lines, JSON errors, whole small responses.

Invariants: pure functions of their arguments; a header name or value with CR or LF is refused (``ValueError``),
so no response this module renders can be split.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Final

_STATUS_LINES: Final[dict[int, bytes]] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


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


MALFORMED: Final = json_error("invalid_request", "Malformed HTTP request")
ERROR_BODIES: Final[dict[int, bytes]] = {
    400: MALFORMED,
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


__all__ = ["CONTINUE_100", "ERROR_BODIES", "MALFORMED", "encode_headers", "json_error", "render_response",
           "status_line"]
