"""The root of the project's exception tree. Foreign exceptions are translated at the I/O boundary into these.

    PhantomTokenError                  phantom_token.errors (this module: it imports nothing of the project)
    ├── ConfigError                    config.errors: the configuration is wrong (start-up only; never a runtime
    │                                  500); carries every ``ConfigProblem`` found
    ├── IntrospectionUnavailable       core.errors: the authorization server gave no usable answer -> 502
    │   │                              server_error
    │   ├── UnknownSigningKey          introspection.rfc9701: no key of the JWKS has the answer's ``kid``
    │   └── TokenExchangeFailed        core.errors: an RFC 8693 exchange got no usable answer -> 502
    └── MetadataError                  introspection.discovery: metadata missing or invalid (start-up: exit 1)

The base lives here, below every package, so that ``config`` and ``core`` can each derive their errors from it
without importing one another's (``core`` imports ``config.settings``; ``config`` imports nothing of ``core``).
A failing upstream API is not an exception of ours: the proxy turns the HTTP client's own errors
(``http.client.ClientError``: ``ConnectError``, ``RequestTimeout``...) into 502 ``bad_gateway`` or 504
``gateway_timeout`` where they happen, as the introspection adapter turns them into ``IntrospectionUnavailable``.

Invariant: no message of these errors ever contains a raw token: use ``fingerprint()`` from ``core.bearer``.
"""

from __future__ import annotations


class PhantomTokenError(Exception):
    """Base of every error this project raises on purpose."""


__all__ = ["PhantomTokenError"]
