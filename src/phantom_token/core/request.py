"""What the engine needs to know about a request, independent of any HTTP framework."""

from __future__ import annotations

from typing import Any


class TokenMemo:
    """What one client connection last presented: its ``Authorization`` value and the cache key derived from it.

    A client sends the same token on every request of a keep-alive connection; with this the engine checks the
    token's syntax and hashes it once per connection instead of once per request (two SHA-256 and a regex, about
    a fifth of the hit path). It lives as long as the connection, in its memory only, never shared with another
    connection and never stored or logged; the front door drops it with the connection.
    """

    __slots__ = ("fingerprint", "fingerprinted", "key", "plugin", "token", "value")

    def __init__(self) -> None:
        self.plugin: Any = None  # the PluginConfig the key was derived under (compared by identity)
        self.value = ""  # the whole Authorization header value
        self.token = ""
        self.key = b""
        # The access log's fingerprint of ``token`` (``frontends.access_log``), and the token string it was
        # computed from (compared by identity): computed once per token per connection, only when the log is on.
        self.fingerprint = ""
        self.fingerprinted = ""


class RequestInfo:
    """One incoming request as plain values.

    ``headers`` maps lower-case header names to every value received, in order (so a duplicated
    ``Authorization`` header is visible). ``host`` is the Host header without its port, lower case.
    ``path`` is the raw request path without the query string. (``headers`` is a dict of lists, not any mapping:
    the compiled engine then reads it with dict and list operations, not calls by name.)

    A plain class, not a dataclass: one is made per request, and a dataclass's generated ``__init__`` would run
    interpreted even in the compiled build (phantom_token/compiled.py).

    ``origin`` is ``scheme://authority`` of the URL the client used (``core.dpop.request_origin``), which a DPoP
    proof's ``htu`` must name; front doors set it only when the request carries a ``DPoP`` header ("" otherwise).
    """

    __slots__ = ("headers", "host", "memo", "method", "origin", "path")

    def __init__(self, method: str, host: str, path: str, headers: dict[str, list[str]],
                 memo: TokenMemo | None = None, origin: str = "") -> None:
        self.method = method
        self.host = host
        self.path = path
        self.headers = headers
        self.memo = memo  # the connection's, when the front door keeps one
        self.origin = origin

    def __eq__(self, other: object) -> bool:  # the memo is the connection's, not part of the request
        return (isinstance(other, RequestInfo) and self.method == other.method and self.host == other.host
                and self.path == other.path and self.headers == other.headers)

    def __repr__(self) -> str:
        return f"RequestInfo({self.method!r}, {self.host!r}, {self.path!r})"
