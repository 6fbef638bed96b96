"""The engine's answer for one request, and the exact responses the gateway makes itself (contract section 8).

Each ``Deny`` renders itself: status, JSON body and ``WWW-Authenticate`` challenge (RFC 6750 section 3).
Front doors apply a verdict; they never decide one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from phantom_token.config.settings import Route  # at run time: compiled dataclasses resolve field types


class Allow:
    """Forward the request. ``authorization`` replaces the client's header; None leaves the request as it came
    (a route without the plugin, or a preflight), except that the route's ``claims_to_headers`` names are always
    removed from it. ``expires_in`` is how many seconds the decision stays valid.

    A plain class, not a dataclass: one is made per allowed request, and a dataclass's generated ``__init__``
    would run interpreted even in the compiled build (phantom_token/compiled.py). A cache hit on a connection that
    repeats its token gets its previous hit's object again (``TokenMemo.allow``) with ``expires_in`` set anew:
    front doors read a verdict when they get it and keep none past the request (``expires_in`` is the only
    attribute that ever changes, and only ever to the seconds left at a later request)."""

    __slots__ = ("authorization", "claims", "expires_in", "headers", "route")

    def __init__(self, route: Route, authorization: str | None = None, expires_in: float = 0.0,
                 claims: dict[str, object] | None = None, headers: tuple[tuple[str, str], ...] | None = None
                 ) -> None:
        self.route = route
        self.authorization = authorization  # the full header value: 'Bearer <jwt>'
        self.expires_in = expires_in
        self.claims = claims
        # ``claims_to_headers``: (name, wire value) to add upstream, after every client copy of the route's
        # configured names is removed (``core.claim_headers``); the cache entry's own tuple. None exactly when the
        # route's plugin sets no claims_to_headers (or the route has none): front doors test this one attribute.
        self.headers = headers

    def __repr__(self) -> str:
        return f"Allow(route={self.route.name!r}, expires_in={self.expires_in!r})"  # never the header value


@dataclass(frozen=True, slots=True)
class Deny:
    """Answer the client directly, and send nothing upstream."""

    status: int
    code: str
    message: str
    challenge: str | None = None  # the WWW-Authenticate value, if any
    route: Route | None = None
    more_headers: tuple[tuple[str, str], ...] = ()  # after the challenge: a second one (DPoP), DPoP-Nonce


    def body(self) -> bytes:
        return json.dumps({"code": self.code, "message": self.message}, separators=(",", ":")).encode()

    def headers(self) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json")]
        if self.challenge is not None:
            headers.append(("WWW-Authenticate", self.challenge))
        if self.more_headers:
            headers.extend(self.more_headers)
        return headers


Verdict = Allow | Deny


def _challenge(realm: str | None, *params: tuple[str, str]) -> str:
    parts = []
    if realm is not None:
        parts.append(f'realm="{_quote(realm)}"')
    parts.extend(f'{k}="{_quote(v)}"' for k, v in params)
    return "Bearer " + ", ".join(parts) if parts else "Bearer"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def malformed_request(realm: str | None = None, route: Route | None = None) -> Deny:
    return Deny(400, "invalid_request", "Malformed authorization header",
                _challenge(realm, ("error", "invalid_request")), route)


def unauthorized(realm: str | None = None, *, token_sent: bool, route: Route | None = None) -> Deny:
    params = (("error", "invalid_token"),) if token_sent else ()
    return Deny(401, "unauthorized", "Missing, invalid or expired access token", _challenge(realm, *params), route)


def _dpop_challenge(realm: str | None, algorithms: tuple[str, ...], *params: tuple[str, str]) -> str:
    return "DPoP " + _challenge(realm, *params, ("algs", " ".join(algorithms)))[len("Bearer "):]


def unauthorized_dpop(realm: str | None, algorithms: tuple[str, ...], *, token_sent: bool,
                      bearer: bool, route: Route | None = None) -> Deny:
    """401 for a missing or unusable token where DPoP is accepted (RFC 9449 section 7.1): the ``DPoP`` challenge,
    after the ``Bearer`` one when ``bearer`` tokens are accepted too (``dpop: allowed``)."""
    params = (("error", "invalid_token"),) if token_sent else ()
    dpop = ("WWW-Authenticate", _dpop_challenge(realm, algorithms, *params))
    message = "Missing, invalid or expired access token"
    if bearer:
        return Deny(401, "unauthorized", message, _challenge(realm, *params), route, (dpop,))
    return Deny(401, "unauthorized", message, dpop[1], route)


def invalid_dpop_proof(realm: str | None, algorithms: tuple[str, ...], route: Route | None = None, *,
                       nonce: str | None = None) -> Deny:
    """401 for a DPoP proof that failed a check (``nonce`` None) or lacks a valid server nonce (``DPoP-Nonce``).
    The body is every 401's (contract section 8); the challenge says which."""
    message = "Missing, invalid or expired access token"
    if nonce is None:
        return Deny(401, "unauthorized", message,
                    _dpop_challenge(realm, algorithms, ("error", "invalid_dpop_proof")), route)
    return Deny(401, "unauthorized", message,
                _dpop_challenge(realm, algorithms, ("error", "use_dpop_nonce"),
                                ("error_description", "Resource server requires nonce in DPoP proof")),
                route, (("DPoP-Nonce", nonce),))


def forbidden(required: tuple[str, ...], realm: str | None = None, route: Route | None = None) -> Deny:
    return Deny(403, "forbidden", "The token does not contain the required scope",
                _challenge(realm, ("error", "insufficient_scope"), ("scope", " ".join(required))), route)


def not_found() -> Deny:
    return Deny(404, "not_found", "No route matches the request")


def server_error(route: Route | None = None) -> Deny:
    return Deny(502, "server_error", "Problem encountered authorizing the HTTP request", None, route)


def bad_gateway(route: Route | None = None) -> Deny:
    return Deny(502, "bad_gateway", "The upstream API could not be reached", None, route)


def gateway_timeout(route: Route | None = None) -> Deny:
    return Deny(504, "gateway_timeout", "The upstream API did not answer in time", None, route)
