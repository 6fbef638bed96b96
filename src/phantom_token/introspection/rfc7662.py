"""Building an RFC 7662 introspection request and reading Curity's ``application/jwt`` answer (contract section 5).

Pure functions: no I/O. The request percent-encodes the token in the form body and form-encodes the client
credentials before Basic encoding (RFC 6749 section 2.3.1) -- two things the Lua original does not do.
Every way the server can misbehave becomes ``IntrospectionUnavailable`` with a reason fit for one log line;
no reason ever contains the token.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.jwt import MalformedJwt, read_claims
from phantom_token.core.ports import Active, Inactive, IntrospectionResult
from phantom_token.core.ttl import parse_cache_control

FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class IntrospectionRequest:
    headers: list[tuple[str, str]]
    body: bytes


def basic_credentials(client_id: str, client_secret: str) -> str:
    """``Basic`` value with id and secret form-urlencoded first (RFC 6749 section 2.3.1)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def build_request(
    token: str, client_id: str, client_secret: str, accept: str = "application/jwt"
) -> IntrospectionRequest:
    body = ("token=" + quote(token, safe="")).encode("ascii")
    headers = [
        ("Authorization", basic_credentials(client_id, client_secret)),
        ("Content-Type", FORM),
        ("Accept", accept),
    ]
    return IntrospectionRequest(headers, body)


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def read_jwt_response(status: int, headers: list[tuple[str, str]], body: bytes) -> IntrospectionResult:
    """Interpret the answer to an ``Accept: application/jwt`` introspection request."""
    if status == 204:
        return Inactive()
    if status in (401, 403):
        raise IntrospectionUnavailable(
            f"the endpoint rejected the gateway's client credentials (HTTP {status}): check client_id/client_secret"
        )
    if status != 200:
        raise IntrospectionUnavailable(f"the endpoint answered HTTP {status}")
    text = body.strip()
    if text.startswith(b"{"):
        return _read_json_in_jwt_mode(text)
    try:
        jwt = text.decode("ascii")
        _header, claims = read_claims(jwt)
    except UnicodeDecodeError:
        raise IntrospectionUnavailable("the 200 body is not a JWT (not ASCII)") from None
    except MalformedJwt as exc:
        raise IntrospectionUnavailable(f"the 200 body is not a JWT ({exc})") from None
    return Active(jwt, claims, parse_cache_control(header_values(headers, "cache-control")))


def _read_json_in_jwt_mode(text: bytes) -> IntrospectionResult:
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IntrospectionUnavailable("the 200 body is neither a JWT nor JSON") from None
    if isinstance(document, dict) and document.get("active") is False:
        return Inactive()
    raise IntrospectionUnavailable(
        "the endpoint answered JSON instead of a JWT: it does not support Accept: application/jwt"
    )
