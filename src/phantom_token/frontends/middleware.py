"""ASGI middleware: the phantom token pattern inside a Python API (Starlette, FastAPI, any ASGI 3 app).

    app = PhantomTokenMiddleware(app, introspection_endpoint=..., client_id=..., client_secret=..., scope="read")
    app = PhantomTokenMiddleware.from_config(app, "phantom-token.yml")

The keyword options are the plugin's ``config`` block (README), validated by the same loader as a file: a
mistake raises ``ConfigError`` when the middleware is built, never a 500 per request. With options, one route
covers every path; with a file, its routes apply and a request no route matches is answered 404.

Invariants:
- Pure ASGI: this module imports no framework. HTTP and WebSocket scopes are both decided (a WebSocket handshake
  is a GET with the same headers); a denied WebSocket gets the section 8 response through the
  ``websocket.http.response`` extension when the server offers it, else a close before accept (code 1008, which
  servers answer with HTTP 403). Other scopes pass through.
- The route's ``claims_to_headers`` (allowed or preflight): the app sees those headers only with the engine's
  values, every client copy removed.
- Allowed: the app sees exactly one ``Authorization: Bearer <jwt>`` (the opaque token is gone) and the JWT's claims
- Allowed: the app sees exactly one ``Authorization: Bearer <jwt>`` (the opaque token is gone; the ``DPoP`` proof
  too, unless the route sets ``forward_dpop_proof``) and the JWT's claims
  in ``scope["state"]["phantom_token_claims"]`` (Starlette: ``request.state.phantom_token_claims``). These are the
  claims the authorization server returned, NOT signature-verified here (the introspection channel is
  authenticated; verify the JWT yourself, or use the plugin's signed-response modes, when that is not enough).
  A route without the plugin (or a preflight) passes with its own headers, with ``phantom_token_claims`` None.
- Routes match the normalised path and host (``phantom_token.http.uri``, as in ``serve``), and the app receives the
  path that matched (``path``/``raw_path`` rewritten when normalising changed them); a path or Host ``serve`` would
  refuse is answered 400 ``invalid_request`` "Malformed HTTP request" without calling the app.
- Denied: the contract's section 8 response (JSON, challenge); the app is not called.
- Lifespan: ``lifespan.startup`` opens the HTTP client and cache (before the app's own startup), and they close
  after the app's shutdown completes. A server that sends no lifespan events gets them opened on first use.
- Certificate-bound tokens (RFC 8705): the client certificate is the first of the ASGI TLS extension's
  ``client_cert_chain`` (``scope["extensions"]["tls"]``, when the server terminates TLS and offers it), or a
  plugin's ``client_cert_header`` when ``scope["client"]`` is in ``trusted_proxies``.
- The engine decides; no rule of the pattern is implemented here. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from phantom_token.config.material import Material
from phantom_token.config.settings import Settings
from phantom_token.core.claim_headers import header_names
from phantom_token.core.client_cert import InvalidCertificateHeader, pem_thumbprint
from phantom_token.core.dpop import request_origin
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.verdict import Allow, Deny, Verdict
from phantom_token.frontends import authorize
from phantom_token.frontends.decisions import Network, is_trusted
from phantom_token.gateway import Gateway
from phantom_token.http.uri import InvalidTarget, normalise_host, normalise_path
from phantom_token.jose import MalformedToken as MalformedJwt
from phantom_token.jose import decode_unverified as read_claims

if TYPE_CHECKING:
    from phantom_token.config.loader import Configuration

log = logging.getLogger("phantom_token.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLAIMS_KEY = "phantom_token_claims"
_MALFORMED = Deny(400, "invalid_request", "Malformed HTTP request")
_SAFE = "/!$&'()*+,;=:@~-._"  # what quote() keeps of a decoded path: RFC 3986 pchar and '/'


def settings_from_options(plugin_options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings with one route for every path whose plugin ``config`` is ``plugin_options`` (validated as a file
    would be; raises ``ConfigError``)."""
    return configuration_from_options(plugin_options, environ).settings


def configuration_from_options(plugin_options: Mapping[str, Any],
                               environ: Mapping[str, str] | None = None) -> Configuration:
    """``settings_from_options``'s settings, with the key and TLS files they name loaded."""
    from phantom_token.config.loader import parse_configuration

    document = {
        "_format_version": "2.1",
        "services": [{
            "name": "asgi-app",
            "routes": [{"name": "asgi-app", "paths": ["/"]}],
            "plugins": [{"name": "phantom-token", "config": dict(plugin_options)}],
        }],
    }
    return parse_configuration(document, source="<PhantomTokenMiddleware>", environ=environ, require_upstream=False)


class PhantomTokenMiddleware:
    """Swap the opaque bearer token for the JWT before the wrapped ASGI app sees the request."""

    def __init__(self, app: ASGIApp, **plugin_options: Any) -> None:
        loaded = configuration_from_options(plugin_options)
        self._setup(app, loaded.settings, loaded.material)

    @classmethod
    def from_config(cls, app: ASGIApp, path: str | os.PathLike[str]) -> PhantomTokenMiddleware:
        """The middleware for the routes of a Kong-format file (services need no ``url``)."""
        from phantom_token.config.loader import load_configuration

        loaded = load_configuration(path, require_upstream=False)
        return cls.from_settings(app, loaded.settings, loaded.material)

    @classmethod
    def from_settings(
        cls, app: ASGIApp, settings: Settings, material: Material | None = None
    ) -> PhantomTokenMiddleware:
        """The middleware for ``settings``; the key and TLS files they name are loaded now unless ``material`` is
        given (``config.loader.load_configuration`` gives both)."""
        middleware = cls.__new__(cls)
        middleware._setup(app, settings, material)
        return middleware

    def _setup(self, app: ASGIApp, settings: Settings, material: Material | None = None) -> None:
        self.app = app
        self.gateway = Gateway(settings, material)
        self.engine = self.gateway.engine
        self.is_open = False
        # Whose certificate headers are believed: only asked when some plugin reads one (``client_cert_header``).
        self._trusted_proxies = settings.trusted_proxies if any(
            route.plugin is not None and route.plugin.client_cert_header is not None for route in settings.routes
        ) else ()
        self._opening: asyncio.Lock | None = None

    # -- lifespan ------------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the HTTP client and cache (idempotent)."""
        if self.is_open:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if not self.is_open:
                await self.gateway.open()
                self.is_open = True

    async def close(self) -> None:
        if self.is_open:
            self.is_open = False
            await self.gateway.close()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_opening() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.open()
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.close()
            await send(message)

        await self.app(scope, receive_opening, send_closing)

    # -- requests ------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        try:
            info = request_info(scope, self._trusted_proxies, self.gateway.settings.public_base_url)
        except InvalidTarget as exc:
            log.info("refused a request: %s", exc.reason)
            await _send_deny(_MALFORMED, scope, send)
            return
        verdict = self.engine.try_authorize(info)
        if verdict is None:
            verdict = await self._authorize(info)
        if isinstance(verdict, Deny):
            await _send_deny(verdict, scope, send)
            return
        await self.app(allowed_scope(scope, verdict, info.path), receive, send)

    async def _authorize(self, info: RequestInfo) -> Verdict:
        if not self.is_open:
            await self.open()
        return await authorize(self.engine, info)


def request_info(scope: Scope, trusted_proxies: Sequence[Network] = (),
                 public_base_url: str | None = None) -> RequestInfo:
    """The engine's view of an ASGI HTTP scope: lower-case header names -> every value, the normalised path and
    host (``phantom_token.http.uri``, as ``serve`` matches them), the TLS client certificate, and whether the client
    is one of ``trusted_proxies``; raises ``InvalidTarget`` for a path or Host that ``serve`` would refuse with 400.
    With a ``DPoP`` header, ``origin`` (for the proof's ``htu``) is ``public_base_url``, else the scope's ``scheme``
    (the ASGI server's, which applies its own proxy-header rules) and the ``Host``."""
    headers: dict[str, list[str]] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        values = headers.get(name)
        if values is None:
            headers[name] = [value]
        else:
            values.append(value)
    raw_path = scope.get("raw_path")
    # Without raw_path the server gave only the decoded path: encoded again, its '%' cannot pass for an escape
    path = raw_path.decode("latin-1").partition("?")[0] if raw_path else quote(scope.get("path", "/"), safe=_SAFE)
    hosts = headers.get("host")
    if hosts:
        if len(hosts) > 1:
            raise InvalidTarget("more than one Host header")
        host = normalise_host(hosts[0])
    else:
        server = scope.get("server")
        host = str(server[0]).lower() if server else ""
    info = RequestInfo(scope.get("method", "GET"), host, normalise_path(path), headers)  # a WebSocket: its GET
    if "dpop" in headers:
        scheme = str(scope.get("scheme") or "http")
        scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        server = scope.get("server")
        authority = hosts[0] if hosts else (f"{server[0]}:{server[1]}" if server else "")
        info.origin = request_origin(public_base_url=public_base_url, scheme=scheme, host=authority)
    certificate = client_certificate(scope)
    client = scope.get("client")
    trusted = bool(trusted_proxies) and client is not None and is_trusted(str(client[0]), trusted_proxies)
    if certificate is not None or trusted:  # the certificate facts ride on a memo of this request's own
        memo = info.memo = TokenMemo()
        memo.client_cert_sha256, memo.trusted_peer = certificate, trusted
    return info


def client_certificate(scope: Scope) -> str | None:
    """The RFC 8705 thumbprint of the client certificate of the ASGI TLS extension, or None."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    chain = tls.get("client_cert_chain") if isinstance(tls, Mapping) else None
    if not chain or not isinstance(chain[0], str):
        return None
    try:
        return pem_thumbprint(chain[0])
    except InvalidCertificateHeader:
        return None


def allowed_scope(scope: Scope, allow: Allow, path: str | None = None) -> Scope:
    """The scope the app sees: the JWT instead of the client's Authorization, its claims in the state, and
    ``path``, the normalised path the route matched (``RequestInfo.path``), instead of the one received when they
    differ (so the app routes on exactly what was authorized)."""
    state = dict(scope.get("state") or {})
    new_scope = dict(scope)
    new_scope["state"] = state
    raw_path = scope.get("raw_path")
    received = raw_path.decode("latin-1").partition("?")[0] if raw_path else None
    if path is not None and path != received:
        new_scope["raw_path"] = path.encode("latin-1")
        new_scope["path"] = unquote(path, encoding="latin-1")
    plugin = allow.route.plugin
    if allow.headers is not None and plugin is not None:  # claims_to_headers: no client copy reaches the app
        shaped = header_names(plugin.claims_to_headers)
        new_scope["headers"] = [(name, value) for name, value in scope.get("headers", ())
                                if name.decode("latin-1").lower() not in shaped]
        new_scope["headers"] += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                 for name, value in allow.headers]
    if allow.authorization is None:
        state[CLAIMS_KEY] = None
        return new_scope
    removed = (b"authorization",) if plugin is not None and plugin.forward_dpop_proof else (b"authorization", b"dpop")
    new_scope["headers"] = [(name, value) for name, value in new_scope.get("headers", ())
                            if name.lower() not in removed]
    new_scope["headers"].append((b"authorization", allow.authorization.encode("latin-1")))
    state[CLAIMS_KEY] = _claims(allow)
    return new_scope


def _claims(allow: Allow) -> dict[str, object] | None:
    if allow.claims is not None:
        return allow.claims
    scheme, _, jwt = (allow.authorization or "").partition(" ")
    try:
        return read_claims(jwt)[1] if scheme == "Bearer" else None
    except MalformedJwt:
        return None  # the engine only lets a well-formed JWT through; this is a belt for a minted header


async def _send_deny(deny: Deny, scope: Scope, send: Send) -> None:
    body = deny.body()
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in deny.headers()]
    headers.append((b"content-length", str(len(body)).encode()))
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": deny.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
    elif "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": deny.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers HTTP 403


__all__ = [
    "CLAIMS_KEY",
    "PhantomTokenMiddleware",
    "allowed_scope",
    "configuration_from_options",
    "request_info",
    "settings_from_options",
]
