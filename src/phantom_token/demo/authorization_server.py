"""A Curity-style demo authorization server: client credentials tokens, introspection, a JWKS.

Endpoints (all under the server's own base URL, which is its ``issuer``):

- ``POST /oauth/token``: RFC 6749 section 4.4 client credentials grant. The client authenticates with HTTP Basic
  (id and secret form-urlencoded first, RFC 6749 section 2.3.1) or with ``client_id``/``client_secret`` form
  fields. A requested ``scope`` must be a subset of the client's scopes (none requested: all of them). The token is
  opaque: 32 random bytes, base64url.
- ``POST /oauth/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange`` (RFC 8693), for
  clients allowed to exchange (``exchange``; the default introspection client is): ``subject_token`` must be an
  active token of this server with ``subject_token_type`` ``...:access_token``; ``requested_token_type`` ``...:jwt``
  (default) or ``...:access_token``. The issued token is a JWT signed by this server for the subject token's
  ``sub``, ``client_id`` and scope (narrowed to a requested ``scope``, which must be a subset: else
  ``invalid_scope``), ``aud`` the requested ``audience`` and/or ``resource``, expiring with the subject token (at
  most ``exchange_lifetime`` seconds). An inactive subject token: 400 ``invalid_request``.
- ``POST /oauth/introspect``: RFC 7662. The introspecting client authenticates the same way (401 JSON when it
  fails) and must be allowed to introspect. With ``Accept: application/jwt`` an active token gets 200
  ``application/jwt``, a JWT signed by this server (iss, sub, aud when configured, client_id, scope, iat, exp =
  the token's expiry, jti) and ``Cache-Control: max-age=<seconds left>``; an inactive or unknown token gets 204
  (what Curity does). Otherwise the answer is RFC 7662 JSON.
- ``GET /.well-known/jwks.json``: the public key; ``GET /.well-known/oauth-authorization-server``: RFC 8414
  metadata.

Test controls, only when built with ``test_controls=True`` (``--test-controls``):

- ``GET /stats``: ``{"introspection": {"total": n, "by_token": {fingerprint: n}}, "token_requests": n,
  "exchanges": {"total": n, "by_token": {fingerprint of the subject token: n}}}``, where
  a fingerprint is the full SHA-256 hex digest of the token (``fingerprint()``); never the raw token.
- ``POST /controls`` with a JSON object, every member optional, applied in this order:
  ``reset`` (true: zero the stats and clear delay and failure), ``delay_ms`` (int, sleep before every
  introspection answer), ``failure`` (``null``/``"none"``, ``"status"`` with ``failure_status`` (default 500),
  ``"garbage"`` (200 ``application/jwt`` with a body that is not a JWT) or ``"hang"`` (never answer)),
  ``exchange_failure`` (``null``/``"none"``, ``"invalid_target"`` (400 with that error), ``"status"`` (500),
  ``"garbage"`` (200 with a body that is not JSON) or ``"hang"``: how token exchanges are answered),
  ``failure_every`` (int N: only every Nth introspection call fails that way, e.g. 10 for 10 % of them; 0 or 1:
  every call),
  ``presign`` (bool: while true, a token issued (or registered) gets its JWT signed once, when it is issued, and
  every ``application/jwt`` answer for it is that JWT, with a fresh ``Cache-Control``; so an introspection costs
  this server no signature. bench/run.py turns it on for the tokens of its 0 ms cache-miss row, so that this
  server, which shares the machine's cores with the gateway, stays out of the gateway's way; JSON answers and
  tokens issued while it is off are signed per answer, as before),
  ``revoke`` (a token value), ``register`` (``{"token": value, "scope": "...", "expires_in": s, "client_id": ...,
  "sub": ..., "jkt": ..., "x5t#S256": ...}``: makes exactly that value a valid token, for tests of odd characters;
  ``jkt`` binds it to a DPoP key (RFC 9449) and ``x5t#S256`` to a client certificate thumbprint (RFC 8705): its
  answers then carry them in ``cnf``). Answers the current controls as JSON.

Invariants: tokens are stored under their SHA-256 digest only; no raw token is ever logged (logs carry the first
8 hex characters of the SHA-256) or returned except to the client it was issued to; expired tokens are inactive
and are purged as new ones are issued, so memory stays bounded by the issuance rate times the lifetime.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import yaml

from phantom_token.http.messages import Request, Response
from phantom_token.jose import SigningKey, jwks

log = logging.getLogger("phantom_token.demo.authorization_server")

DEFAULT_TOKEN_LIFETIME = 300
JSON_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


def fingerprint(token: str) -> str:
    """The full SHA-256 hex digest of a token: the key under which tokens and stats are kept."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def short_fingerprint(token: str) -> str:
    """What logs show of a token: the first 8 hex characters of its SHA-256."""
    return fingerprint(token)[:8]


@dataclass(frozen=True, slots=True)
class Client:
    """A registered OAuth client. ``introspect``: may call the introspection endpoint."""

    client_id: str
    secret: str = field(repr=False)
    scopes: frozenset[str] = frozenset()
    introspect: bool = False
    exchange: bool = False  # may use the token exchange grant (RFC 8693)


DEFAULT_CLIENTS = (
    Client("demo-client", "demo-secret", frozenset({"read", "write"})),
    Client("introspection-client", "demo-introspection-secret", introspect=True, exchange=True),
)
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
EXCHANGE_FAILURES = frozenset({"none", "invalid_target", "status", "garbage", "hang"})


@dataclass(frozen=True, slots=True)
class IssuedToken:
    client_id: str
    subject: str
    scopes: tuple[str, ...]
    issued_at: int
    expires_at: int
    jkt: str | None = None  # DPoP binding (cnf.jkt)
    x5t_s256: str | None = None  # the client certificate the token is bound to (RFC 8705 cnf), if any
    jwt: str | None = None  # signed when issued (the ``presign`` control): every JWT answer is this one


@dataclass(slots=True)
class Controls:
    """Test knobs; see the module docstring."""

    delay_ms: int = 0
    failure: str = "none"  # none | status | garbage | hang
    failure_status: int = 500
    exchange_failure: str = "none"  # none | invalid_target | status | garbage | hang
    failure_every: int = 0  # N > 1: only every Nth introspection call fails
    calls: int = 0  # introspection calls that reached the controls (counts for failure_every)
    presign: bool = False  # tokens issued now get their JWT signed once, at issue (IssuedToken.jwt)

    def as_json(self) -> dict[str, Any]:
        return {"delay_ms": self.delay_ms, "failure": self.failure, "failure_status": self.failure_status,
                "exchange_failure": self.exchange_failure, "failure_every": self.failure_every,
                "presign": self.presign}

    def fails_now(self) -> bool:
        self.calls += 1
        return self.failure != "none" and (self.failure_every <= 1 or self.calls % self.failure_every == 0)


class BadRequest(Exception):
    """A client error that becomes an RFC 6749 section 5.2 error response."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description

    def response(self) -> Response:
        headers = list(JSON_HEADERS)
        if self.status == 401:
            headers.append(("WWW-Authenticate", 'Basic realm="demo", charset="UTF-8"'))
        body = {"error": self.error, "error_description": self.description}
        return Response(self.status, headers, json.dumps(body).encode())


def _json(status: int, value: Any, headers: Iterable[tuple[str, str]] = JSON_HEADERS) -> Response:
    return Response(status, list(headers), json.dumps(value).encode())


def _form(request: Request) -> dict[str, str]:
    """The urlencoded body; a repeated parameter is an error (RFC 6749 section 3.1)."""
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BadRequest(400, "invalid_request", "expected an application/x-www-form-urlencoded body")
    try:
        pairs = parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(400, "invalid_request", "the body is not valid form data") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise BadRequest(400, "invalid_request", f"repeated parameter {name}")
        form[name] = value
    return form


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """(client_id, secret) from HTTP Basic, each form-urldecoded (RFC 6749 section 2.3.1)."""
    header = request.header("authorization")
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise BadRequest(401, "invalid_client", "unsupported authentication scheme")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest(401, "invalid_client", "malformed Basic credentials") from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise BadRequest(401, "invalid_client", "malformed Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)


def _accepts_jwt(request: Request) -> bool:
    """True when ``application/jwt`` is an acceptable media type (q > 0) in any Accept header."""
    for value in request.headers.get("accept", ()):
        for item in value.split(","):
            media, *params = (part.strip() for part in item.split(";"))
            if media.lower() != "application/jwt":
                continue
            quality = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
            try:
                if float(quality) > 0:
                    return True
            except ValueError:
                continue
    return False


class DemoAuthorizationServer:
    """The demo authorization server as a ``Handler``: ``await server(request) -> Response``.

    ``clock`` returns seconds since the epoch (injectable for tests); every state change is synchronous, so the
    handler is safe under asyncio concurrency without locks.
    """

    def __init__(
        self,
        issuer: str,
        *,
        clients: Iterable[Client] = DEFAULT_CLIENTS,
        signing_key: SigningKey | None = None,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
        audience: str | None = None,
        test_controls: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.clients = {client.client_id: client for client in clients}
        self.signing_key = signing_key or SigningKey.generate("ES256")
        self.token_lifetime = token_lifetime
        self.audience = audience
        self.test_controls = test_controls
        self.controls = Controls()
        self._clock = clock
        self._tokens: dict[str, IssuedToken] = {}  # fingerprint -> token
        self._purged_at = -1
        self._introspections: Counter[str] = Counter()
        self._introspection_total = 0
        self._token_requests = 0
        self._exchanges: Counter[str] = Counter()
        self._exchange_total = 0
        self.exchange_lifetime = token_lifetime
        self._routes: dict[tuple[str, str], Callable[[Request], Any]] = {
            ("POST", "/oauth/token"): self._token_endpoint,
            ("POST", "/oauth/introspect"): self._introspection_endpoint,
            ("GET", "/.well-known/jwks.json"): self._jwks_endpoint,
            ("GET", "/.well-known/oauth-authorization-server"): self._metadata_endpoint,
        }
        if test_controls:
            self._routes[("GET", "/stats")] = self._stats_endpoint
            self._routes[("POST", "/controls")] = self._controls_endpoint

    async def __call__(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        endpoint = self._routes.get((method, request.path))
        if endpoint is None:
            if any(path == request.path for _, path in self._routes):
                return _json(405, {"error": "method_not_allowed"})
            return _json(404, {"error": "not_found"})
        try:
            response: Response = await endpoint(request)
        except BadRequest as exc:
            return exc.response()
        if request.method == "HEAD":
            response.body = b""
        return response

    # --- tokens ---------------------------------------------------------------------------------------------

    def issue(
        self,
        client_id: str,
        scopes: Iterable[str],
        *,
        value: str | None = None,
        lifetime: int | None = None,
        subject: str | None = None,
        jkt: str | None = None,
        x5t_s256: str | None = None,
    ) -> str:
        """Register a token (a fresh random one unless ``value`` is given) and return its value."""
        now = int(self._clock())
        self._purge_expired(now)
        token = value if value is not None else secrets.token_urlsafe(32)
        ttl = self.token_lifetime if lifetime is None else lifetime
        scope_list = tuple(dict.fromkeys(scopes))
        issued = IssuedToken(client_id, subject or client_id, scope_list, now, now + ttl, jkt, x5t_s256)
        if self.controls.presign:
            issued = replace(issued, jwt=self.signing_key.sign(self._claims(issued)))
        self._tokens[fingerprint(token)] = issued
        log.info("issued token %s to %s, scope %r, %ds", short_fingerprint(token), client_id, scope_list, ttl)
        return token

    def revoke(self, token: str) -> bool:
        """Forget a token; True when it existed."""
        log.info("revoked token %s", short_fingerprint(token))
        return self._tokens.pop(fingerprint(token), None) is not None

    def lookup(self, token: str) -> IssuedToken | None:
        """The token if it is active now, else None."""
        issued = self._tokens.get(fingerprint(token))
        if issued is None or issued.expires_at <= self._clock():
            return None
        return issued

    def _purge_expired(self, now: int) -> None:
        if now == self._purged_at:  # one scan per second at most, so issuing many tokens stays O(1) per token
            return
        self._purged_at = now
        expired = [key for key, tok in self._tokens.items() if tok.expires_at <= now]
        if len(expired) * 4 >= len(self._tokens) > 0 or len(self._tokens) > 10_000:
            for key in expired:
                del self._tokens[key]

    def _authenticate(self, request: Request, form: Mapping[str, str]) -> Client:
        basic = _basic_credentials(request)
        posted = form.get("client_id"), form.get("client_secret")
        if basic is not None and posted[1] is not None:
            raise BadRequest(400, "invalid_request", "use only one client authentication method")
        client_id, secret = basic if basic is not None else posted
        if client_id is None or secret is None:
            raise BadRequest(401, "invalid_client", "client authentication is required")
        client = self.clients.get(client_id)
        # compare even when the client is unknown, so timing does not say which ids exist
        expected = client.secret if client is not None else secrets.token_hex(16)
        if not hmac.compare_digest(secret.encode(), expected.encode()) or client is None:
            log.warning("client authentication failed for %r", client_id)
            raise BadRequest(401, "invalid_client", "client authentication failed")
        return client

    async def _token_endpoint(self, request: Request) -> Response:
        self._token_requests += 1
        form = _form(request)
        client = self._authenticate(request, form)
        if form.get("grant_type") == TOKEN_EXCHANGE:
            return await self._exchange(client, form)
        if form.get("grant_type") != "client_credentials":
            raise BadRequest(400, "unsupported_grant_type", "only client_credentials and token exchange are supported")
        requested = form.get("scope")
        scopes = sorted(client.scopes) if requested is None else requested.split()
        if not set(scopes) <= client.scopes:
            raise BadRequest(400, "invalid_scope", "the requested scope exceeds what the client may have")
        token = self.issue(client.client_id, scopes)
        body = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_lifetime,
            "scope": " ".join(scopes),
        }
        return _json(200, body, [*JSON_HEADERS, ("Pragma", "no-cache")])

    # --- token exchange (RFC 8693) ---------------------------------------------------------------------------

    async def _exchange(self, client: Client, form: Mapping[str, str]) -> Response:
        self._exchange_total += 1
        subject = form.get("subject_token")
        if subject:
            self._exchanges[fingerprint(subject)] += 1
        if not client.exchange:
            raise BadRequest(400, "unauthorized_client", "this client may not exchange tokens")
        failure = self.controls.exchange_failure
        if self.controls.delay_ms > 0:
            await asyncio.sleep(self.controls.delay_ms / 1000)
        if failure == "hang":
            await asyncio.Event().wait()
        if failure == "invalid_target":
            raise BadRequest(400, "invalid_target", "the requested audience or resource is not known (test control)")
        if failure == "status":
            return _json(500, {"error": "server_error", "error_description": "test control"})
        if failure == "garbage":
            return Response(200, [("Content-Type", "application/json")], b"<html>this is not JSON</html>")
        if not subject or form.get("subject_token_type") != TYPE_ACCESS_TOKEN:
            raise BadRequest(400, "invalid_request", "subject_token and an access_token subject_token_type are needed")
        requested_type = form.get("requested_token_type") or TYPE_JWT
        if requested_type not in (TYPE_JWT, TYPE_ACCESS_TOKEN):
            raise BadRequest(400, "invalid_request", "requested_token_type must be a JWT or an access token")
        issued = self.lookup(subject)
        if issued is None:
            raise BadRequest(400, "invalid_request", "the subject_token is not active")
        scopes = issued.scopes
        if form.get("scope") is not None:
            wanted = tuple(dict.fromkeys(form["scope"].split()))
            if not set(wanted) <= set(scopes):
                raise BadRequest(400, "invalid_scope", "the requested scope exceeds the subject token's")
            scopes = wanted
        now = int(self._clock())
        expires_at = min(issued.expires_at, now + self.exchange_lifetime)
        audiences = [value for value in (form.get("audience"), form.get("resource")) if value]
        claims: dict[str, Any] = {"iss": self.issuer, "sub": issued.subject}
        if audiences:
            claims["aud"] = audiences[0] if len(audiences) == 1 else audiences
        claims.update(client_id=issued.client_id, scope=" ".join(scopes), iat=now, exp=expires_at,
                      jti=secrets.token_urlsafe(16), token_use="exchanged")
        log.info("exchanged %s for %s", short_fingerprint(subject), audiences)
        body = {"access_token": self.signing_key.sign(claims), "issued_token_type": requested_type,
                "token_type": "N_A" if requested_type == TYPE_JWT else "Bearer", "expires_in": expires_at - now,
                "scope": " ".join(scopes)}
        return _json(200, body, [*JSON_HEADERS, ("Pragma", "no-cache")])

    # --- introspection --------------------------------------------------------------------------------------

    async def _introspection_endpoint(self, request: Request) -> Response:
        self._introspection_total += 1
        form = _form(request)
        token = form.get("token")
        if token is not None:
            self._introspections[fingerprint(token)] += 1
        client = self._authenticate(request, form)
        if not client.introspect:
            raise BadRequest(403, "unauthorized_client", "this client may not introspect tokens")
        if token is None or token == "":
            raise BadRequest(400, "invalid_request", "the token parameter is required")
        failure = await self._apply_controls()
        if failure is not None:
            return failure
        issued = self.lookup(token)
        log.info("introspected %s: %s", short_fingerprint(token), "active" if issued else "inactive")
        if _accepts_jwt(request):
            return self._jwt_answer(issued)
        return self._json_answer(issued)

    async def _apply_controls(self) -> Response | None:
        controls = self.controls
        if controls.delay_ms > 0:
            await asyncio.sleep(controls.delay_ms / 1000)
        if not controls.fails_now():
            return None
        if controls.failure == "hang":
            await asyncio.Event().wait()  # until the connection or the server goes away
        if controls.failure == "status":
            return _json(controls.failure_status, {"error": "server_error", "error_description": "test control"})
        if controls.failure == "garbage":
            return Response(200, [("Content-Type", "application/jwt")], b"<html>this is not a JWT</html>")
        return None

    def _claims(self, issued: IssuedToken) -> dict[str, Any]:
        claims: dict[str, Any] = {"iss": self.issuer, "sub": issued.subject}
        if self.audience is not None:
            claims["aud"] = self.audience
        claims.update(
            client_id=issued.client_id,
            scope=" ".join(issued.scopes),
            iat=issued.issued_at,
            exp=issued.expires_at,
            jti=secrets.token_urlsafe(16),
        )
        cnf: dict[str, str] = {}
        if issued.jkt is not None:
            cnf["jkt"] = issued.jkt
        if issued.x5t_s256 is not None:
            cnf["x5t#S256"] = issued.x5t_s256
        if cnf:
            claims["cnf"] = cnf
        return claims

    def _max_age(self, issued: IssuedToken) -> str:
        return f"max-age={max(0, int(issued.expires_at - self._clock()))}"

    def _jwt_answer(self, issued: IssuedToken | None) -> Response:
        if issued is None:
            return Response(204, [("Cache-Control", "no-store")])
        jwt = issued.jwt if issued.jwt is not None else self.signing_key.sign(self._claims(issued))
        headers = [("Content-Type", "application/jwt"), ("Cache-Control", self._max_age(issued))]
        return Response(200, headers, jwt.encode("ascii"))

    def _json_answer(self, issued: IssuedToken | None) -> Response:
        if issued is None:
            return _json(200, {"active": False})
        body = {"active": True, "token_type": "bearer", **self._claims(issued)}
        headers = [("Content-Type", "application/json"), ("Cache-Control", self._max_age(issued))]
        return _json(200, body, headers)

    # --- discovery ------------------------------------------------------------------------------------------

    async def _jwks_endpoint(self, request: Request) -> Response:
        headers = [("Content-Type", "application/jwk-set+json"), ("Cache-Control", "max-age=300")]
        return _json(200, jwks([self.signing_key]), headers)

    async def _metadata_endpoint(self, request: Request) -> Response:
        return _json(
            200,
            {
                "issuer": self.issuer,
                "token_endpoint": f"{self.issuer}/oauth/token",
                "introspection_endpoint": f"{self.issuer}/oauth/introspect",
                "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
                "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": sorted({s for c in self.clients.values() for s in c.scopes}),
            },
            [("Content-Type", "application/json")],
        )

    # --- test controls --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "introspection": {"total": self._introspection_total, "by_token": dict(self._introspections)},
            "token_requests": self._token_requests,
            "exchanges": {"total": self._exchange_total, "by_token": dict(self._exchanges)},
        }

    async def _stats_endpoint(self, request: Request) -> Response:
        return _json(200, self.stats())

    async def _controls_endpoint(self, request: Request) -> Response:
        try:
            changes = json.loads(request.body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(400, "invalid_request", "the body is not JSON") from exc
        if not isinstance(changes, dict):
            raise BadRequest(400, "invalid_request", "the body is not a JSON object")
        result: dict[str, Any] = {}
        try:
            self._apply_changes(changes, result)
        except (TypeError, ValueError, KeyError) as exc:
            raise BadRequest(400, "invalid_request", f"bad control: {exc}") from exc
        return _json(200, {**self.controls.as_json(), **result})

    def _apply_changes(self, changes: Mapping[str, Any], result: dict[str, Any]) -> None:
        known = {"reset", "delay_ms", "failure", "failure_status", "exchange_failure", "failure_every", "presign",
                 "revoke", "register"}
        if unknown := set(changes) - known:
            raise ValueError(f"unknown controls {sorted(unknown)}")
        if changes.get("reset"):
            self.controls = Controls()
            self._introspections.clear()
            self._introspection_total = self._token_requests = self._exchange_total = 0
            self._exchanges.clear()
        if "delay_ms" in changes:
            self.controls.delay_ms = max(0, int(changes["delay_ms"]))
        if "failure" in changes:
            failure = changes["failure"] or "none"
            if failure not in {"none", "status", "garbage", "hang"}:
                raise ValueError(f"unknown failure mode {failure!r}")
            self.controls.failure = failure
        if "exchange_failure" in changes:
            exchange_failure = changes["exchange_failure"] or "none"
            if exchange_failure not in EXCHANGE_FAILURES:
                raise ValueError(f"unknown exchange failure mode {exchange_failure!r}")
            self.controls.exchange_failure = exchange_failure
        if "failure_status" in changes:
            self.controls.failure_status = int(changes["failure_status"])
        if "failure_every" in changes:
            self.controls.failure_every = max(0, int(changes["failure_every"]))
            self.controls.calls = 0
        if "presign" in changes:
            if not isinstance(changes["presign"], bool):
                raise ValueError("presign must be true or false")
            self.controls.presign = changes["presign"]
        if "revoke" in changes:
            result["revoked"] = self.revoke(str(changes["revoke"]))
        if "register" in changes:
            spec = changes["register"]
            if not isinstance(spec, dict) or not isinstance(spec.get("token"), str):
                raise ValueError("register needs an object with a string 'token'")
            self.issue(
                str(spec.get("client_id", "demo-client")),
                str(spec.get("scope", "read write")).split(),
                value=spec["token"],
                lifetime=int(spec["expires_in"]) if "expires_in" in spec else None,
                subject=spec.get("sub"),
                jkt=spec.get("jkt"),
                x5t_s256=str(spec["x5t#S256"]) if "x5t#S256" in spec else None,
            )
            result["registered"] = short_fingerprint(spec["token"])


def load_clients(path: str | Path) -> list[Client]:
    """Clients from a YAML/JSON file: a list of ``{client_id, client_secret, scope?, introspect?}``."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("clients")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of clients")
    clients = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not {"client_id", "client_secret"} <= set(item):
            raise ValueError(f"{path}: client #{index} needs client_id and client_secret")
        scope = item.get("scope", "")
        scopes = scope.split() if isinstance(scope, str) else [str(s) for s in scope]
        clients.append(
            Client(str(item["client_id"]), str(item["client_secret"]), frozenset(scopes), bool(item.get("introspect")),
                   bool(item.get("exchange")))
        )
    return clients


def main(argv: list[str] | None = None) -> int:
    """``python -m phantom_token.demo.authorization_server --listen HOST:PORT [--clients FILE] [--test-controls]``."""
    from phantom_token.demo._runner import parse_listen, run_handler

    parser = argparse.ArgumentParser(prog="python -m phantom_token.demo.authorization_server", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--clients", help="YAML/JSON list of {client_id, client_secret, scope, introspect}")
    parser.add_argument("--issuer", help="default: http://HOST:PORT")
    parser.add_argument("--audience", help="the aud claim of issued JWTs (default: none)")
    parser.add_argument("--token-lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME, help="seconds")
    parser.add_argument("--signing-key", help="PEM private key file (default: a fresh ES256 key)")
    parser.add_argument("--test-controls", action="store_true", help="enable GET /stats and POST /controls")
    args = parser.parse_args(argv)
    host, port = parse_listen(parser, args.listen)
    server = DemoAuthorizationServer(
        args.issuer or f"http://{host}:{port}",
        clients=load_clients(args.clients) if args.clients else DEFAULT_CLIENTS,
        signing_key=SigningKey.from_pem_file(args.signing_key) if args.signing_key else None,
        token_lifetime=args.token_lifetime,
        audience=args.audience,
        test_controls=args.test_controls,
    )
    return run_handler(server, host, port)


if __name__ == "__main__":
    raise SystemExit(main())
