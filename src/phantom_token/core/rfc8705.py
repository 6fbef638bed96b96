"""Certificate-bound access tokens (RFC 8705 section 3): a token bound to a client certificate is accepted only
from a client that presents that certificate. Pure: no I/O.

The binding is the answer's ``cnf["x5t#S256"]`` (the JWT's claim in ``jwt`` mode, the introspection answer's
member in ``json``/``signed`` mode), read once per answer into ``CacheEntry.x5t_s256``; the check runs on every
request, cache hit or not, and only for bound tokens (an unbound entry costs the engine one ``is None`` test).

Where the presented certificate comes from (``presented``):
- from a header, when the route's plugin sets ``client_cert_header`` AND the socket peer is in ``trusted_proxies``
  (``RequestInfo.trusted_peer``): the proxy that terminated the client's TLS says which certificate it saw
  (``core.client_cert``). The header is then the only source: the TLS certificate of such a peer is the proxy's own.
- otherwise from the TLS connection the front door terminated (``RequestInfo.client_cert_sha256``), or Envoy's
  ``attributes.source.certificate`` in the gRPC decision service.

A bound token without a matching certificate is refused (the engine answers 401 ``invalid_token`` and logs the
reason with the token's fingerprint); so is a token whose binding is malformed (fail closed). Thumbprints are
compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from phantom_token.core.claims import cnf_member
from phantom_token.core.client_cert import InvalidCertificateHeader, thumbprint

if TYPE_CHECKING:
    from phantom_token.config.settings import PluginConfig
    from phantom_token.core.request import RequestInfo

__all__ = ["MEMBER", "bound_thumbprint", "presented", "refusal"]

MEMBER = "x5t#S256"
"""The ``cnf`` member of a certificate binding (RFC 8705 section 3.1)."""


def bound_thumbprint(claims: Mapping[str, object]) -> str | None:
    """The certificate the token is bound to (None: not bound; ``""``: a malformed binding)."""
    bound = cnf_member(claims, MEMBER)
    return bound.rstrip("=") if bound else bound  # base64url is unpadded (RFC 7515); tolerate a padded one


def presented(request: RequestInfo, plugin: PluginConfig) -> str | None:
    """The thumbprint of the certificate the client presented (see the module docstring); None when there is none.
    Raises ``InvalidCertificateHeader`` when the trusted header is there but unusable."""
    header = plugin.client_cert_header
    if header is not None and request.trusted_peer:
        return thumbprint(header, request.headers.get(header.lower()))
    return request.client_cert_sha256


def refusal(bound: str, request: RequestInfo, plugin: PluginConfig) -> str | None:
    """Why a token bound to ``bound`` must be refused for ``request`` (a reason for one log line), or None."""
    if not bound:
        return "the token's cnf x5t#S256 is malformed"
    try:
        certificate = presented(request, plugin)
    except InvalidCertificateHeader as exc:
        return f"the {plugin.client_cert_header} header is unusable: {exc}"
    if certificate is None:
        return "the token is bound to a client certificate (cnf x5t#S256) and none was presented"
    if not hmac.compare_digest(certificate.encode(), bound.encode()):
        return f"the client certificate {certificate[:8]} is not the one the token is bound to"
    return None
