"""Authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0). Pure: no I/O.

With the plugin option ``issuer`` set, ``introspection_endpoint`` (and, for ``signed``, ``jwks_uri``) may be
omitted: they are read from the server's metadata. Where it is looked for, in order:
1. RFC 8414 section 3.1: ``/.well-known/oauth-authorization-server`` inserted between the host and the issuer's
   path (``https://as/tenant`` -> ``https://as/.well-known/oauth-authorization-server/tenant``);
2. OpenID Connect Discovery section 4: ``/.well-known/openid-configuration`` appended to the issuer.

Invariants: the metadata's ``issuer`` must equal the configured one exactly (RFC 8414 section 3.3; this is what
stops a server, or anyone who can answer for that URL, from passing itself off as another); endpoints must be
http(s) URLs without a fragment. Any failure is ``MetadataError`` with a reason for one log line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from phantom_token.core.errors import PhantomTokenError

RFC8414_SUFFIX = "/.well-known/oauth-authorization-server"
OIDC_SUFFIX = "/.well-known/openid-configuration"


class MetadataError(PhantomTokenError):
    """The metadata could not be fetched, or it is not valid for the configured issuer."""


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    issuer: str
    introspection_endpoint: str | None = None
    jwks_uri: str | None = None
    token_endpoint: str | None = None


def metadata_urls(issuer: str) -> list[str]:
    """Where to look for the metadata of ``issuer``, in order (RFC 8414 first, then OpenID Connect)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, RFC8414_SUFFIX + path, "", ""))
    oidc = urlunsplit((parts.scheme, parts.netloc, path + OIDC_SUFFIX, "", ""))
    return [rfc8414, oidc]


def read_metadata(body: bytes, expected_issuer: str) -> ServerMetadata:
    """The metadata document, checked against the configured issuer; raises ``MetadataError``."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise MetadataError("the metadata is not JSON") from None
    if not isinstance(document, dict):
        raise MetadataError("the metadata is not a JSON object")
    issuer = document.get("issuer")
    if issuer != expected_issuer:
        raise MetadataError(
            f"the metadata's issuer {issuer!r} is not the configured issuer {expected_issuer!r} (they must be equal)"
        )
    return ServerMetadata(
        issuer=expected_issuer,
        introspection_endpoint=_endpoint(document, "introspection_endpoint"),
        jwks_uri=_endpoint(document, "jwks_uri"),
        token_endpoint=_endpoint(document, "token_endpoint"),
    )


def _endpoint(document: dict[str, object], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetadataError(f"the metadata's {name} is not a string")
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise MetadataError(f"the metadata's {name} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise MetadataError(f"the metadata's {name} is not an http(s) URL without a fragment")
    return value
