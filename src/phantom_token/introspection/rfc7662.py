"""Building an RFC 7662 introspection request; reading Curity's ``application/jwt`` answer (contract section 5)
and the standard JSON answer (``introspection_response: json``, RFC 7662 section 2.2).

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
from phantom_token.core.ports import Active, Inactive, IntrospectionResult
from phantom_token.core.ttl import parse_cache_control
from phantom_token.http.client import field_values
from phantom_token.jose import MalformedToken, decode_unverified, scan_json, scanner_of

FORM = "application/x-www-form-urlencoded"
ACCEPT_JWT = "application/jwt"
ACCEPT_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class IntrospectionRequest:
    headers: list[tuple[str, str]]
    body: bytes


def basic_credentials(client_id: str, client_secret: str) -> str:
    """``Basic`` value with id and secret form-urlencoded first (RFC 6749 section 2.3.1)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def build_request(
    token: str, client_id: str, client_secret: str, accept: str = ACCEPT_JWT
) -> IntrospectionRequest:
    """The request with ``client_secret_basic`` authentication."""
    return build_authenticated_request(token, accept, [("Authorization", basic_credentials(client_id, client_secret))])


def build_authenticated_request(
    token: str, accept: str, auth_headers: list[tuple[str, str]], auth_params: list[tuple[str, str]] | None = None
) -> IntrospectionRequest:
    """The request with whatever client authentication adds: headers (Basic) and/or form parameters (RFC 6749
    section 2.3.1 ``client_secret_post``, RFC 7523 assertions, RFC 8705 ``client_id``)."""
    fields = [("token", token), *(auth_params or [])]
    body = "&".join(f"{name}={quote(value, safe='')}" for name, value in fields).encode("ascii")
    headers = [*auth_headers, ("Content-Type", FORM), ("Accept", accept)]
    return IntrospectionRequest(headers, body)


def read_jwt_response(status: int, headers: list[tuple[str, str]], body: bytes) -> IntrospectionResult:
    """Interpret the answer to an ``Accept: application/jwt`` introspection request."""
    return read_jwt_answer(status, field_values(headers, "cache-control"), body)


def read_jwt_answer(status: int, cache_control: list[str], body: bytes) -> IntrospectionResult:
    """``read_jwt_response`` given the answer's ``Cache-Control`` values only (``ClientResponse.values``: the
    introspection client reads them from the head, which it then never splits)."""
    if status == 204:
        return Inactive()
    if status in (401, 403):
        raise IntrospectionUnavailable(
            f"the endpoint rejected the gateway's client credentials (HTTP {status}): check client_id/client_secret",
            "credentials_rejected",
        )
    if status != 200:
        raise IntrospectionUnavailable(f"the endpoint answered HTTP {status}", status_kind(status))
    text = body.strip()
    if text.startswith(b"{"):
        return _read_json_in_jwt_mode(text)
    try:
        jwt = text.decode("ascii")
        _header, claims = decode_unverified(jwt)
    except UnicodeDecodeError:
        raise IntrospectionUnavailable("the 200 body is not a JWT (not ASCII)") from None
    except MalformedToken as exc:
        raise IntrospectionUnavailable(f"the 200 body is not a JWT ({exc})") from None
    return Active(jwt, claims, parse_cache_control(cache_control))


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


def read_json_response(status: int, headers: list[tuple[str, str]], body: bytes) -> IntrospectionResult:
    """Interpret the answer to an ``Accept: application/json`` request (RFC 7662 section 2.2).

    ``active`` must be the JSON boolean ``true`` for the token to be active: ``"true"``, ``1`` or a missing member
    is the server's fault (502), never a pass. The body must be one JSON object with unique member names.
    """
    if status == 204:
        return Inactive()
    check_status(status)
    return read_introspection_object(_strict_json(body.strip()), headers, "the JSON body")


def read_introspection_object(document: object, headers: list[tuple[str, str]], what: str) -> IntrospectionResult:
    """An RFC 7662 section 2.2 response object: inactive unless ``active`` is the JSON boolean true; ``what`` names
    the object in the reason when it is not one."""
    if not isinstance(document, dict):
        raise IntrospectionUnavailable(f"{what} is not an object")
    active = document.get("active")
    if active is False:
        return Inactive()
    if active is not True:
        why = "has no 'active' member" if "active" not in document else "has an 'active' that is not a JSON boolean"
        raise IntrospectionUnavailable(f"{what} {why}")
    return Active(None, dict(document), parse_cache_control(field_values(headers, "cache-control")))


def check_status(status: int) -> None:
    if status in (401, 403):
        raise IntrospectionUnavailable(
            f"the endpoint rejected the gateway's client credentials (HTTP {status}): check client_id and the "
            "client authentication settings", "credentials_rejected"
        )
    if status != 200:
        raise IntrospectionUnavailable(f"the endpoint answered HTTP {status}", status_kind(status))


def status_kind(status: int) -> str:
    """The failure kind of an unexpected HTTP status (``core.errors.FAILURE_KINDS``)."""
    return "http_5xx" if 500 <= status <= 599 else "http_status"


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for name, value in pairs:
        if name in document:
            raise ValueError("duplicate member")
        document[name] = value
    return document


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# One decoder: ``json.loads`` with hooks would build a new JSONDecoder (and its scanner) on every answer.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constants)
_SCAN_STRICT = scanner_of(_STRICT_JSON)


def _strict_json(text: bytes) -> object:
    """RFC 8259 JSON: no duplicate member names (RFC 7662 answers are claim sets), no NaN/Infinity."""
    try:
        return scan_json(_SCAN_STRICT, text.decode("utf-8"))  # = _STRICT_JSON.decode, cheaper
    except UnicodeDecodeError:
        raise IntrospectionUnavailable("the 200 body is not UTF-8 JSON") from None
    except RecursionError:
        raise IntrospectionUnavailable("the 200 body is JSON nested too deeply") from None
    except json.JSONDecodeError:
        hint = " (it looks like a JWT: does the server ignore Accept?)" if text.count(b".") == 2 else ""
        raise IntrospectionUnavailable(f"the 200 body is not JSON{hint}") from None
    except ValueError as exc:
        raise IntrospectionUnavailable(f"the 200 body is not acceptable JSON: {exc}") from None
