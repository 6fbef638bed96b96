"""OAuth 2.0 Token Exchange (RFC 8693): the request the gateway sends and how the answer is read. Pure: no I/O.

The request (section 2.1), form-encoded, with the plugin's client authentication (``client_auth``):
``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``, ``subject_token`` (the client's token),
``subject_token_type=urn:ietf:params:oauth:token-type:access_token``, ``requested_token_type``, and ``audience``,
``resource``, ``scope`` when configured.

The answer (section 2.2.1): 200 JSON with a string ``access_token`` of RFC 6750 ``b64token`` characters (it goes
into an ``Authorization: Bearer`` header), a string ``issued_token_type``, a ``token_type`` of ``Bearer`` or
``N_A`` (any case), and optionally a positive number ``expires_in``. Anything else raises ``TokenExchangeFailed``
with a reason for one log line that says which: the server's ``error`` code for a 400 (``invalid_target``,
``invalid_request``...; section 2.2.2), the rejected client credentials for a 401/403, the status for any other,
or what is wrong with a 200 body. No reason contains a token, nor the server's free-text ``error_description``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from urllib.parse import quote

from phantom_token.config.settings import TOKEN_TYPE_ACCESS_TOKEN, TokenExchange
from phantom_token.core.errors import TokenExchangeFailed
from phantom_token.core.ports import Exchanged
from phantom_token.introspection.rfc7662 import FORM

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_ERROR_CODE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 section 5.2 error: NQSCHAR, bounded


def exchange_request(token: str, settings: TokenExchange, auth_headers: Sequence[tuple[str, str]],
                     auth_params: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and form body of the exchange request for ``token``."""
    fields = [("grant_type", GRANT_TYPE), ("subject_token", token), ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
              ("requested_token_type", settings.requested_token_type)]
    for name, value in (("audience", settings.audience), ("resource", settings.resource), ("scope", settings.scope)):
        if value is not None:
            fields.append((name, value))
    fields.extend(auth_params)
    body = "&".join(f"{name}={quote(value, safe='')}" for name, value in fields).encode("ascii")
    return [*auth_headers, ("Content-Type", FORM), ("Accept", "application/json")], body


def read_exchange_response(status: int, body: bytes) -> Exchanged:
    """The issued token, or ``TokenExchangeFailed`` saying why not."""
    if status == 200:
        return _issued(_json_object(body, "the 200 answer"))
    if status in (401, 403):
        raise TokenExchangeFailed(f"the token endpoint rejected the gateway's client credentials (HTTP {status})")
    if 400 <= status < 500:
        try:
            error = _json_object(body, "the error answer").get("error")
        except TokenExchangeFailed:
            error = None
        code = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else "no valid error code"
        raise TokenExchangeFailed(f"the token endpoint refused the exchange (HTTP {status}, {code})")
    raise TokenExchangeFailed(f"the token endpoint answered HTTP {status}")


def _json_object(body: bytes, what: str) -> dict[str, object]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise TokenExchangeFailed(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise TokenExchangeFailed(f"{what} is not a JSON object")
    return document


def _issued(document: dict[str, object]) -> Exchanged:
    token = document.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenExchangeFailed("the answer has no access_token string")
    if not _B64TOKEN.fullmatch(token):
        raise TokenExchangeFailed("the issued access_token is not a valid bearer token (RFC 6750 b64token)")
    issued_type = document.get("issued_token_type")
    if not isinstance(issued_type, str) or not issued_type:
        raise TokenExchangeFailed("the answer has no issued_token_type string")
    token_type = document.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() not in ("bearer", "n_a"):
        raise TokenExchangeFailed("the answer's token_type is not Bearer or N_A")
    expires_in = document.get("expires_in")
    if expires_in is None:
        return Exchanged(token, issued_type)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not math.isfinite(expires_in) \
            or expires_in <= 0:
        raise TokenExchangeFailed("the answer's expires_in is not a positive number")
    return Exchanged(token, issued_type, float(expires_in))


__all__ = ["GRANT_TYPE", "exchange_request", "read_exchange_response"]
