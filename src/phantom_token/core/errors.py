"""The engine's error: the authorization server could not give an answer. The whole tree is drawn in
``phantom_token/errors.py``; the part the engine knows:

    PhantomTokenError                  phantom_token.errors (re-exported here)
    └── IntrospectionUnavailable       the authorization server gave no usable answer -> 502 server_error
        ├── UnknownSigningKey          introspection.rfc9701: no key of the JWKS has the answer's ``kid``
        └── TokenExchangeFailed        the token endpoint refused or botched an RFC 8693 exchange

Invariants: adapters translate every foreign fault of a call to the authorization server (connect, TLS, timeout,
status, garbage) into ``IntrospectionUnavailable`` before it reaches the engine, which answers it with 502 and
never caches it. No message here ever contains a raw token: use ``fingerprint()`` from ``core.bearer``.
"""

from __future__ import annotations

from phantom_token.errors import PhantomTokenError
from phantom_token.metrics import INTROSPECTION_FAILURE_KINDS

FAILURE_KINDS = INTROSPECTION_FAILURE_KINDS
"""Why introspection gave no answer: the ``kind`` of ``IntrospectionUnavailable`` (``metrics``)."""


class IntrospectionUnavailable(PhantomTokenError):
    """The introspection endpoint did not give a usable answer (down, slow, 5xx, bad credentials, garbage).

    ``kind`` is one of ``FAILURE_KINDS`` (default ``invalid_answer``), for metrics; the message is for the log."""

    def __init__(self, message: str = "", kind: str = "invalid_answer") -> None:
        super().__init__(message)
        self.kind = kind


class TokenExchangeFailed(IntrospectionUnavailable):
    """The token endpoint gave no usable answer to an RFC 8693 exchange (an error such as ``invalid_target``, a
    5xx, garbage, a timeout): a 502 like any fault of the authorization server, never cached."""


__all__ = ["FAILURE_KINDS", "IntrospectionUnavailable", "PhantomTokenError", "TokenExchangeFailed"]
