"""What the engine needs to know about a request, independent of any HTTP framework."""

from __future__ import annotations

from typing import Any


class TokenMemo:
    """What one client connection last presented: its ``Authorization`` value and the cache key derived from it.

    A client sends the same token on every request of a keep-alive connection; with this the engine checks the
    token's syntax and hashes it once per connection instead of once per request (two SHA-256 and a regex, about
    a fifth of the hit path). It lives as long as the connection, in its memory only, never shared with another
    connection and never stored or logged; the front door drops it with the connection.

    It also holds two facts of the connection, set once by the front door when it is made (never per request, so
    they cost a request nothing): ``client_cert_sha256``, the RFC 8705 thumbprint of the TLS client certificate
    (base64url SHA-256 of its DER, the form of ``cnf["x5t#S256"]``; None: none), and ``trusted_peer``, whether the
    socket peer is in ``trusted_proxies`` (so a certificate it forwards in a plugin's ``client_cert_header`` is
    believed). The engine reads them (as ``RequestInfo``'s) only for a token bound to a certificate.
    """

    __slots__ = ("allow", "allowed", "client_cert_sha256", "fingerprint", "fingerprinted", "key", "pending", "plugin",
                 "tag", "token", "trusted_peer", "value")

    def __init__(self) -> None:
        self.plugin: Any = None  # the PluginConfig the key was derived under (compared by identity)
        self.tag = b""  # that plugin's namespace tag (``keys.namespace_tag``), for the next token's key
        # The engine's step for ``token`` on its route (an immutable ``engine._Pending``), reused while the client
        # repeats the token on that route: set with the four above, by the engine only.
        self.pending: Any = None
        # The engine's ``Allow`` for ``pending`` and the cache entry ``allowed`` (compared by identity), made by
        # ``Engine.try_authorize`` for a request without a proof whose entry has no ``extra`` (no binding, no claim
        # headers): while the client repeats the token and the cache returns that very entry, the verdict is the
        # same object with ``expires_in`` set again for this request (a hit makes no new Allow). The entry is
        # taken only once the cache has returned it (unexpired, not purged): the memo never answers for it.
        self.allow: Any = None
        self.allowed: Any = None
        self.value = ""  # the whole Authorization header value
        self.token = ""
        self.key = b""
        # The access log's fingerprint of ``token`` (``frontends.access_log``), and the token string it was
        # computed from (compared by identity): computed once per token per connection, only when the log is on.
        self.fingerprint = ""
        self.fingerprinted = ""
        self.client_cert_sha256: str | None = None
        self.trusted_peer = False


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
    ``client_cert_sha256`` and ``trusted_peer`` are the connection's (``TokenMemo``): the client certificate's RFC
    8705 thumbprint (TLS terminated by the front door, Envoy's ``attributes.source.certificate``, the ASGI TLS
    extension) and whether the peer is a trusted proxy; None and False without a memo. Read by ``core.rfc8705``.
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

    @property
    def client_cert_sha256(self) -> str | None:
        memo = self.memo
        return memo.client_cert_sha256 if memo is not None else None

    @property
    def trusted_peer(self) -> bool:
        memo = self.memo
        return memo.trusted_peer if memo is not None else False

    def __eq__(self, other: object) -> bool:  # the memo is the connection's, not part of the request
        return (isinstance(other, RequestInfo) and self.method == other.method and self.host == other.host
                and self.path == other.path and self.headers == other.headers)

    def __repr__(self) -> str:
        return f"RequestInfo({self.method!r}, {self.host!r}, {self.path!r})"
