"""The decision service front door (``phantom-token authz``): contract section 10.

A gateway (nginx ``auth_request``, Traefik ForwardAuth, Caddy ``forward_auth``, Envoy ``ext_authz``) asks
"may this request pass?"; the answer is the engine's ``Verdict``, rendered for the gateway. Each integration has
its endpoint, and each endpoint reads exactly the headers its gateway sets, never another gateway's (a client's
copy of those passes through the other gateways untouched):

- ``/authz/nginx`` (nginx ``auth_request``, ingress-nginx): the method from ``X-Original-Method``, the URI from
  exactly one of ``X-Original-URI`` (nginx's ``$request_uri``) and ``X-Original-URL`` (ingress-nginx, absolute);
  the host from an absolute URI's authority, else ``X-Forwarded-Host`` (the shipped nginx examples set it with
  ``proxy_set_header``, which replaces a client's copy), else the decision request's Host.
- ``/authz/forwarded`` (Traefik ForwardAuth, Caddy ``forward_auth``): ``X-Forwarded-Method``, ``X-Forwarded-Uri``,
  ``X-Forwarded-Host`` (else the decision request's Host). Every ``X-Original-*`` is ignored.
- ``/authz`` (kept for existing set-ups): whichever of the two sets carries a URI; a request carrying both an
  ``X-Original-URI``/``-URL`` and an ``X-Forwarded-Uri`` is refused, since one of them came from the client.
- ``/authz/envoy/<original path>``: the path after the prefix is the original path; the method and the Host are the
  request's own (Envoy's ``ext_authz`` ``http_service`` sends them unchanged, with no body).
- Allowed: 200, ``Authorization: Bearer <jwt>`` (absent for a route without the plugin), the route's
  ``claims_to_headers`` values (and ``X-Envoy-Auth-Headers-To-Remove`` naming those it has none for), then
  ``X-Accel-Expires``
  and ``Cache-Control: private, max-age=<seconds>``, in that order (nginx 1.22 honours ``X-Accel-Expires`` only
  when it comes before ``Cache-Control``). Denied: the section 8 status, body and challenge, ``Cache-Control:
  no-store``.

Invariants:
- Every endpoint answers only a socket peer inside ``settings.trusted_proxies`` (default: loopback, 127.0.0.0/8 and
  ::1; an empty list trusts nobody); any other peer gets 403 ``forbidden`` whatever it asks.
- The original path and host are normalised exactly as ``serve`` normalises its own (``phantom_token.http.uri``),
  so a route matches the same requests behind every gateway. A missing URI, two values of one of these headers, a
  URI that is neither a path nor an http(s) URL, an invalid path or host, or both header sets on ``/authz``: 400
  ``invalid_request`` naming what is wrong: the gateway is misconfigured (or the client forged a header), and
  guessing would authorize the wrong thing.
- No rule of the pattern lives here: the engine decides, this module only translates. The request body is never
  read into memory (it is discarded), and header values are never logged.
- The hot path (``try_authorize`` answers: a cache hit or a cheap denial) runs in protocol callbacks only: no task.
- With the access log on (``settings.access_log``; ``frontends.access_log``) every answer writes one line: the
  original request's method and path when they could be read (else the decision request's), the route, the status
  and outcome of the decision, the token's fingerprint and the request id (the decision request's
  ``X-Request-Id`` when valid, else a new one; nothing is forwarded). Off, it costs one boolean test per request.
- Certificate-bound tokens (RFC 8705): the calling gateway passes its client's certificate in the plugin's
  ``client_cert_header``, believed because every peer answered here is trusted (``RequestInfo.trusted_peer``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Final

from phantom_token import tracing
from phantom_token.config.settings import Settings
from phantom_token.core.dpop import request_origin
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.verdict import Allow, Deny, Verdict, server_error
from phantom_token.frontends import Authorizer, Observe, authorize_timed, listener_limits
from phantom_token.frontends import access_log as access
from phantom_token.frontends.tls import requiring_certificate
from phantom_token.http.connection import RequestHandler, ServerConnection, ServerLimits
from phantom_token.http.request_head import RequestHead
from phantom_token.http.responses import encode_headers, status_line
from phantom_token.http.server import HttpServer, start_server
from phantom_token.http.uri import InvalidTarget, normalise_host, normalise_path, split_absolute
from phantom_token.memo import remember

logger: Final = logging.getLogger("phantom_token.http")

AUTHZ_PATH: Final = "/authz"
NGINX_PATH: Final = "/authz/nginx"
FORWARDED_PATH: Final = "/authz/forwarded"
ENVOY_PREFIX: Final = "/authz/envoy"

Network = IPv4Network | IPv6Network

PAUSE_DECISION: Final = 8  # waiting for the engine: no more of this connection is read until the answer is written

_NO_STORE: Final = ("Cache-Control", "no-store")
MAX_RENDERED: Final = 10_000  # rendered allow answers kept (one per token seen in the last second or so)


class BadDecisionRequest(Exception):
    """The gateway sent a decision request we cannot interpret: answered 400, never guessed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def deny(self) -> Deny:
        return Deny(400, "invalid_request", self.message)


def untrusted_peer() -> Deny:
    return Deny(403, "forbidden", "The decision service answers trusted proxies only")


def is_trusted(peer_ip: str, networks: Sequence[Network]) -> bool:
    """Whether the socket peer ``peer_ip`` may ask (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        address: IPv4Address | IPv6Address = ip_address(peer_ip.partition("%")[0])
    except ValueError:
        return False  # not an IP peer (a Unix socket): nothing to trust
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _single(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadDecisionRequest(f"The decision request has more than one {name} header")
    return values[0].strip()


def normal_form(memo: dict[str, str], value: str, normalise: Callable[[str], str], problem: str, name: str) -> str:
    """``normalise(value)``, remembered in ``memo``: gateways ask about the same few paths and hosts over and over,
    and a lookup is cheaper than the scan. Bounded (a full memo starts over); nothing is stored for an invalid
    value, which is a ``BadDecisionRequest`` saying ``problem`` (a constant template of ``{name}`` and
    ``{reason}``, filled only then: a hit costs one lookup)."""
    normal = memo.get(value)
    if normal is None:
        try:
            normal = remember(memo, value, normalise(value), 1024)
        except InvalidTarget as exc:
            raise BadDecisionRequest(problem.format(name=name, reason=exc.reason)) from exc
    return normal


_BAD_PATH: Final = "The {name} of the decision request has an invalid path ({reason})"
_BAD_HOST: Final = "The {name} of the decision request is not a valid host ({reason})"


_NORMAL_PATHS: Final[dict[str, str]] = {}  # original paths (never a query string) -> normal form
_NORMAL_HOSTS: Final[dict[str, str]] = {}  # forwarded hosts -> normal form


def _split_uri(uri: str, name: str) -> tuple[str, str | None]:
    """(normalised path, host or None) of an origin-form (``/p?q``) or absolute-form (``https://h/p?q``) URI;
    raises ``BadDecisionRequest`` for anything else."""
    host = None
    if uri.startswith("/"):
        path = uri
    else:
        try:
            _, host, path = split_absolute(uri)
        except InvalidTarget as exc:
            raise BadDecisionRequest(f"The {name} of the decision request is not a path or a valid http(s) URL "
                                     f"({exc.reason})") from exc
    path = normal_form(_NORMAL_PATHS, path.partition("?")[0] or "/", normalise_path, _BAD_PATH, name)
    return path, host


def _original(method: str, host: str, headers: dict[str, list[str]], uri_name: str, uri: str, method_name: str,
              host_name: str) -> RequestInfo:
    path, uri_host = _split_uri(uri, uri_name)
    original_method = _single(headers, method_name) or method
    if uri_host is None:
        forwarded_host = _single(headers, host_name)
        uri_host = (normal_form(_NORMAL_HOSTS, forwarded_host, normalise_host, _BAD_HOST, host_name)
                    if forwarded_host else host)
    return RequestInfo(original_method.upper(), uri_host, path, headers)


def _from_nginx(method: str, host: str, headers: dict[str, list[str]]) -> RequestInfo:
    uri, url = _single(headers, "x-original-uri"), _single(headers, "x-original-url")
    if uri and url:
        raise BadDecisionRequest("The decision request has both X-Original-URI and X-Original-URL")
    if not uri and not url:
        raise BadDecisionRequest("The decision request has no X-Original-URI or X-Original-URL header")
    name, value = ("X-Original-URI", uri) if uri else ("X-Original-URL", url)
    assert value is not None
    return _original(method, host, headers, name, value, "x-original-method", "x-forwarded-host")


def _from_forwarded(method: str, host: str, headers: dict[str, list[str]]) -> RequestInfo:
    uri = _single(headers, "x-forwarded-uri")
    if not uri:
        raise BadDecisionRequest("The decision request has no X-Forwarded-Uri header")
    return _original(method, host, headers, "X-Forwarded-Uri", uri, "x-forwarded-method", "x-forwarded-host")


def original_request(method: str, path: str, host: str, headers: dict[str, list[str]]) -> RequestInfo | None:
    """The request a trusted gateway asks about, or None when ``path`` is not a decision endpoint.

    ``method``/``path``/``host`` are the decision request's own (normalised by the server). Raises
    ``BadDecisionRequest`` when the headers of the endpoint's integration are missing, repeated or broken.
    """
    if path == NGINX_PATH:
        return _from_nginx(method, host, headers)
    if path == FORWARDED_PATH:
        return _from_forwarded(method, host, headers)
    if path == AUTHZ_PATH:
        nginx = "x-original-uri" in headers or "x-original-url" in headers
        if "x-forwarded-uri" in headers:
            if nginx:
                raise BadDecisionRequest("The decision request has both X-Original-URI/-URL and X-Forwarded-Uri: "
                                         "use /authz/nginx or /authz/forwarded")
            return _from_forwarded(method, host, headers)
        return _from_nginx(method, host, headers)
    if path.startswith(ENVOY_PREFIX) and (len(path) == len(ENVOY_PREFIX) or path[len(ENVOY_PREFIX)] == "/"):
        return RequestInfo(method, host, path[len(ENVOY_PREFIX):] or "/", headers)
    return None


def original_origin(path: str, raw_host: str, headers: dict[str, list[str]], public_base_url: str | None) -> str:
    """``scheme://authority`` of the original request, which a DPoP proof's ``htu`` names (``core.dpop``):
    ``public_base_url`` when set; else the scheme and authority of an absolute ``X-Original-URL`` (nginx's
    endpoints); else ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (every peer here is a trusted proxy) over
    ``http`` and the decision request's own ``Host`` (Envoy's, which is the original one)."""
    if public_base_url is None and path in (NGINX_PATH, AUTHZ_PATH) and "x-forwarded-uri" not in headers:
        url = _single(headers, "x-original-url")
        if url and "://" in url:
            scheme, _, rest = url.partition("://")
            end = len(rest)
            for mark in "/?#":
                at = rest.find(mark)
                if 0 <= at < end:
                    end = at
            return f"{scheme.lower()}://{rest[:end]}"
    return request_origin(public_base_url=public_base_url, scheme="http", host=raw_host,
                          forwarded_proto=headers.get("x-forwarded-proto"),
                          forwarded_host=headers.get("x-forwarded-host"), trusted=True)


def _not_a_decision_endpoint() -> Deny:
    return Deny(404, "not_found",
                "The decision service answers on /authz/nginx, /authz/forwarded, /authz and /authz/envoy/<path>")


def decision_response(verdict: Verdict) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of the answer to the gateway for ``verdict``."""
    if isinstance(verdict, Deny):
        headers = verdict.headers()
        headers.append(_NO_STORE)
        return verdict.status, headers, verdict.body()
    seconds = max(math.floor(verdict.expires_in), 0)
    allowed = [("Authorization", verdict.authorization)] if verdict.authorization is not None else []
    plugin = verdict.route.plugin
    if verdict.headers is not None and plugin is not None:
        allowed += claim_answer_headers(verdict.headers, plugin.claims_to_headers)
    # X-Accel-Expires first: nginx 1.22 ignores it after a Cache-Control that says 'private'.
    allowed.append(("X-Accel-Expires", str(seconds)))
    allowed.append(("Cache-Control", f"private, max-age={seconds}"))
    return 200, allowed, b""


def claim_answer_headers(headers: tuple[tuple[str, str], ...], configured: tuple[tuple[str, str], ...]
                         ) -> list[tuple[str, str]]:
    """The ``claims_to_headers`` lines of an allow answer: the values, then (when some configured header has no
    value for this token) ``X-Envoy-Auth-Headers-To-Remove`` naming those, so that Envoy's HTTP ext_authz removes
    the client's copies too (nginx, Traefik and Caddy replace or drop them themselves: docs/shaping.md)."""
    lines = list(headers)
    sent = {name.lower() for name, _ in headers}
    missing = [name.lower() for name, _ in configured if name.lower() not in sent]
    if missing:
        lines.append(("X-Envoy-Auth-Headers-To-Remove", ", ".join(missing)))
    return lines


_ALLOW_STATUS: Final = b"HTTP/1.1 200 OK\r\n"
# Whole seconds -> the lines that follow Authorization in an allow answer without claims headers. A few hundred
# distinct values at most (``token_cache_seconds``); bounded all the same.
_EXPIRY_LINES: Final[dict[int, bytes]] = {}


def allow_payload(authorization: str | None, seconds: int) -> bytes | None:
    """The keep-alive 200 that ``decision_response`` and ``encode_headers`` render for an ``Allow`` without claims
    headers (byte for byte: tested), built from two pieces instead: the Authorization line (per token) and the
    expiry lines (per value of ``seconds``, remembered). None, as ``encode_headers``'s ValueError, for a value with
    CR or LF or outside ISO-8859-1: it would split the answer or cannot be sent."""
    expiry = _EXPIRY_LINES.get(seconds)
    if expiry is None:
        expiry = remember(_EXPIRY_LINES, seconds, (
            f"X-Accel-Expires: {seconds}\r\nCache-Control: private, max-age={seconds}\r\n"
            "Content-Length: 0\r\n\r\n").encode("ascii"), 4096)
    if authorization is None:
        return _ALLOW_STATUS + expiry
    if "\r" in authorization or "\n" in authorization:
        return None
    try:
        value = authorization.encode("latin-1")
    except UnicodeEncodeError:
        return None
    return b"".join((_ALLOW_STATUS, b"Authorization: ", value, b"\r\n", expiry))


class _Shared:
    def __init__(self, engine: Authorizer, settings: Settings, observe: Observe | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine = engine
        # Bound once: ``Authorizer`` is a protocol, so compiled code would look the method up by name per request.
        self.try_authorize: Callable[[RequestInfo], Verdict | None] = engine.try_authorize
        self.trusted_proxies: tuple[Network, ...] = settings.trusted_proxies
        self.observe = observe
        self.access_log = settings.access_log
        self.public_base_url = settings.public_base_url
        self.tracing = tracing.ACTIVE  # None unless OTEL_* turned tracing on in this process
        self.record = self.access_log or self.tracing is not None  # what a request keeps for either
        self._trust: dict[str, bool] = {}
        # authorization header value -> (whole seconds left, the rendered keep-alive 200, the claims headers it
        # carries: the cache entry's own tuple, compared by identity): the hot path renders an answer once a second
        # per token instead of once per request. Holds what the engine's cache holds.
        self._allowed: dict[str | None, tuple[int, bytes, tuple[tuple[str, str], ...] | None]] = {}

    def trusts(self, peer_ip: str) -> bool:
        trusted = self._trust.get(peer_ip)
        if trusted is None:  # peers are few in practice; never more than 4 097 (as it always was)
            trusted = remember(self._trust, peer_ip, is_trusted(peer_ip, self.trusted_proxies), 4097)
        return trusted

    def allow_response(self, allow: Allow) -> bytes | None:
        """The complete keep-alive 200 for ``allow``; None when its header value cannot be sent (CR or LF)."""
        seconds = max(math.floor(allow.expires_in), 0)
        known = self._allowed.get(allow.authorization)
        if known is not None and known[0] == seconds and known[2] is allow.headers:
            return known[1]
        if allow.headers is None:  # no claims_to_headers (the usual route): rendered without the general machinery
            payload = allow_payload(allow.authorization, seconds)
            if payload is None:
                return None
        else:
            _, headers, _ = decision_response(allow)
            try:
                payload = b"".join((status_line(200), encode_headers(headers), b"Content-Length: 0\r\n\r\n"))
            except ValueError:
                return None
        if allow.authorization is not None or allow.headers is None:  # a preflight's depends on its route: not kept
            remember(self._allowed, allow.authorization, (seconds, payload, allow.headers), MAX_RENDERED)
        return payload


class DecisionHandler(RequestHandler):
    """One connection from a gateway. The request body, if any, is read and discarded."""

    def __init__(self, conn: ServerConnection, shared: _Shared) -> None:
        self.conn = conn
        self._shared = shared
        self._engine = shared.engine
        self._try_authorize = shared.try_authorize
        self._trusted = shared.trusts(conn.client_ip)
        self._task: asyncio.Task[None] | None = None
        self._memo = TokenMemo()  # a gateway's connection carries many clients' tokens; a repeat still saves work
        self._envoy_dpop = False  # the active request came from Envoy with a DPoP proof
        # Only a trusted peer's requests reach the engine: a certificate header it forwards is believed. The TLS
        # certificate of the connection, if any, is the gateway's own: never the client's (left None).
        self._memo.trusted_peer = True
        self._access = shared.record
        self._span: Any = None  # the active request's span (tracing on only)
        # The access log's record of the active request (kept only when it or tracing is on).
        self._log_info: RequestInfo | None = None
        self._t_start = 0.0
        self._t_introspection = 0.0

    def handle_request(self, head: RequestHead) -> None:
        if self._access:
            self._log_info = None
            self._t_start = time.perf_counter()
            self._t_introspection = 0.0
            tracer = self._shared.tracing
            if tracer is not None:
                self._span = tracer.start_request("authz", head)
        if not self._trusted:
            self._reply(head, untrusted_peer())
            return
        try:
            info = original_request(head.method, head.path, head.host, head.headers)
        except BadDecisionRequest as exc:
            self._reply(head, exc.deny())
            return
        if info is None:
            self._reply(head, _not_a_decision_endpoint())
            return
        info.memo = self._memo
        if "dpop" in info.headers:
            info.origin = original_origin(head.path, head.raw_host, head.headers, self._shared.public_base_url)
            self._envoy_dpop = head.path.startswith(ENVOY_PREFIX)  # reset by _reply
        if self._access:
            self._log_info = info
        verdict = self._try_authorize(info)
        if verdict is None:
            self.conn.pause_reading(PAUSE_DECISION)
            self._task = self._shared.loop.create_task(self._authorize(head, info))
            return
        self._reply(head, verdict)

    def handle_body(self, data: bytes) -> None:
        pass  # gateways send no body (nginx: proxy_pass_request_body off); anything sent is discarded

    def handle_body_end(self) -> None:
        pass

    def handle_abort(self) -> bool:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        return False

    async def _authorize(self, head: RequestHead, info: RequestInfo) -> None:
        tracer = self._shared.tracing
        if tracer is not None and self._span is not None:  # the engine's asynchronous path under the request's span
            tracer.attach(self._span)
        verdict, self._t_introspection = await authorize_timed(self._engine, info)
        self._task = None
        conn = self.conn
        if conn.active is head and not conn.responded and not conn.closed:
            conn.resume_reading(PAUSE_DECISION)
            self._reply(head, verdict)

    def _reply(self, head: RequestHead, verdict: Verdict) -> None:
        observe = self._shared.observe
        if self._envoy_dpop:
            self._envoy_dpop = False
            if isinstance(verdict, Allow):
                self._reply_envoy_dpop(head, verdict)
                return
        if isinstance(verdict, Allow) and head.keep_alive and not head.http10:
            payload = self._shared.allow_response(verdict)
            if payload is not None:
                if observe is not None:
                    observe(200, "allowed", verdict.route.name)
                if self._access:
                    self._log(head, 200, "allowed", verdict.route.name)
                conn = self.conn
                keep_alive = conn.should_keep_alive(head) and conn.can_drain(head)
                conn.write(payload if keep_alive else payload[:-2] + b"Connection: close\r\n\r\n")
                conn.finish_response(keep_alive)
                return
            verdict = server_error(verdict.route)
        status, headers, body = decision_response(verdict)
        try:
            self.conn.send_response(status, headers, body)
        except ValueError:  # a JWT with CR or LF would split the response: the authorization server's fault
            verdict = server_error(verdict.route)
            status, headers, body = decision_response(verdict)
            self.conn.send_response(status, headers, body)
        if observe is not None:
            observe(status, "allowed" if isinstance(verdict, Allow) else verdict.code,
                    verdict.route.name if verdict.route is not None else None)
        if self._access:
            route = verdict.route
            self._log(head, status, "allowed" if isinstance(verdict, Allow) else verdict.code,
                      route.name if route is not None else None)

    def _reply_envoy_dpop(self, head: RequestHead, allow: Allow) -> None:
        """An allowed request with a DPoP proof, to Envoy: the proof is removed on the way upstream unless the
        route forwards it (Envoy's ``x-envoy-auth-headers-to-remove``; nginx's example removes it itself)."""
        status, headers, body = decision_response(allow)
        plugin = allow.route.plugin
        if allow.authorization is not None and plugin is not None and not plugin.forward_dpop_proof:
            headers.append(("x-envoy-auth-headers-to-remove", "dpop"))
        observe = self._shared.observe
        if observe is not None:
            observe(status, "allowed", allow.route.name)
        try:
            self.conn.send_response(status, headers, body)
        except ValueError:
            status, headers, body = decision_response(server_error(allow.route))
            self.conn.send_response(status, headers, body)
        if self._access:
            self._log(head, status, "allowed" if status == 200 else "server_error", allow.route.name)

    def handle_refused(self, status: int) -> None:
        observe = self._shared.observe
        if observe is not None:
            observe(status, "refused", None)
        if self._access:
            self._log(None, status, "refused", None)

    def _log(self, head: RequestHead | None, status: int, outcome: str, route: str | None) -> None:
        """Write the access log line of the request just answered and end its span (whichever is on)."""
        info, self._log_info = self._log_info, None
        start, self._t_start = self._t_start, 0.0
        if head is None:
            method, path, headers = "", "", {}
        elif info is not None:
            method, path, headers = info.method, info.path, head.headers
        else:
            method, path, headers = head.method, head.path, head.headers
        span, tracer = self._span, self._shared.tracing
        if span is not None and tracer is not None:
            self._span = None
            token = access.token_fingerprint(self._memo, headers) if info is not None else access.NO_VALUE
            tracer.end_request(span, status, outcome, route, token if token != access.NO_VALUE else None)
        if not self._shared.access_log:
            return
        request_id = access.request_id(headers)[0]
        token = access.token_fingerprint(self._memo, headers) if info is not None else access.NO_VALUE
        access.write(access.fields("authz", route, method, path, status, outcome, token,
                                   (time.perf_counter() - start) * 1000.0 if start else 0.0,
                                   self._t_introspection * 1000.0, None, request_id))


async def start_decisions(engine: Authorizer, settings: Settings, host: str, port: int, *, reuse_port: bool = False,
                          observe: Observe | None = None, limits: ServerLimits | None = None,
                          tls: ssl.SSLContext | None = None) -> HttpServer:
    """Listen on ``host:port`` (over TLS with ``tls``) and answer decision requests (contract section 10). The TLS
    client certificate, if any, is the calling gateway's, never taken for its client's (a client's certificate
    comes in the plugin's ``client_cert_header``); ``required`` still refuses a gateway without one."""
    shared = _Shared(engine, settings, observe)
    make = requiring_certificate(lambda conn: DecisionHandler(conn, shared),
                                 tls is not None and settings.tls.client_certificate == "required", observe)
    return await start_server(make, host, port, limits=limits or listener_limits(settings), reuse_port=reuse_port,
                              tls=tls)


__all__ = [
    "AUTHZ_PATH",
    "ENVOY_PREFIX",
    "FORWARDED_PATH",
    "NGINX_PATH",
    "BadDecisionRequest",
    "DecisionHandler",
    "allow_payload",
    "decision_response",
    "is_trusted",
    "normal_form",
    "original_origin",
    "original_request",
    "start_decisions",
]
