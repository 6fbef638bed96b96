"""Plain HTTP message values shared by the server, the client and every handler.

Header names are kept as the peer sent them in ``raw_headers`` (bytes) and lower-cased in ``headers``
(str, ISO-8859-1 decoded so no byte is ever lost). These types do no I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

RawHeaders = list[tuple[bytes, bytes]]
"""Header lines in arrival order, names and values as raw bytes."""


def not_connected() -> bool:
    """A protocol's bound ``is_closing`` before its connection is made: nothing may be written yet."""
    return True


def drop_before_connected(data: bytes) -> None:
    """A protocol's bound ``write`` before its connection is made (never called: ``not_connected`` says closing)."""


@dataclass(slots=True)
class Request:
    """A fully received request (the body is read completely, up to the server's limit)."""

    method: str
    path: str  # raw path, percent-encoding untouched, without the query string
    query: str  # without the leading '?', '' when absent
    headers: Mapping[str, Sequence[str]]  # lower-case name -> values in arrival order
    body: bytes = b""
    client: tuple[str, int] | None = None  # peer address as seen on the socket

    def header(self, name: str) -> str | None:
        """The first value of a header (``name`` in lower case), or None."""
        values = self.headers.get(name)
        return values[0] if values else None


@dataclass(slots=True)
class Response:
    """A complete response. ``headers`` must not contain Content-Length or Transfer-Encoding: the server adds them."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


Handler = Callable[[Request], Awaitable[Response]]
"""A simple application: one request in, one response out."""
