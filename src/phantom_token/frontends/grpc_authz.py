"""The Envoy gRPC ext_authz front door: ``envoy.service.auth.v3.Authorization/Check`` (``authz --grpc-listen``).

Envoy (and what is built on it: Istio, Contour, Emissary, Gloo) asks over gRPC instead of HTTP; the question and the
answer are the HTTP decision service's (``frontends.decisions``), in protobuf:

- The request: ``attributes.request.http``: ``method``; ``path`` (the request target with its query string);
  ``host`` (``:authority``); the headers, from ``header_map`` when Envoy sends it (``encode_raw_headers: true``:
  values as raw bytes), else from ``headers``. Names are lower case there; pseudo-headers (``:path``...) and
  names with ``_`` are ignored, as ``serve`` ignores them. Either way Envoy has already joined a repeated header's
  values with commas, so two ``Authorization`` headers arrive as one value that is no ``b64token``: 401
  ``invalid_token`` and no introspection (where the HTTP front doors, which see both, answer 400).
- The client certificate (RFC 8705 certificate-bound tokens): ``attributes.source.certificate``, the URL-encoded
  PEM Envoy sends with ``include_peer_certificate: true``, as ``RequestInfo.client_cert_sha256``; or a plugin's
  ``client_cert_header`` among the headers (every peer answered here is trusted). A certificate that is not a PEM
  certificate counts as none (a bound token is then refused).
- Allowed: status OK and an ``OkHttpResponse`` that sets ``authorization: Bearer <jwt>`` (overwriting the
  client's, never appending), sets the route's ``claims_to_headers`` values the same way and removes the client's
  copies of those that have no value (also for a preflight the route lets through), and removes ``dpop`` (a
  proof bound to the opaque token means nothing upstream);
  ``dynamic_metadata`` holds ``route`` (the route's name) and ``token_fingerprint`` (``core.bearer.fingerprint``)
  for Envoy's access log (``%DYNAMIC_METADATA(envoy.filters.http.ext_authz:token_fingerprint)%``). A route
  without the plugin (or a preflight): OK, nothing changed.
- Denied: a ``DeniedHttpResponse`` with the status, ``WWW-Authenticate``, JSON body and ``Cache-Control:
  no-store`` that ``decision_response`` renders for the HTTP front doors, and ``status.code`` saying the same in
  gRPC terms (``GRPC_CODES``: 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 502 UNAVAILABLE...).

Invariants:
- Only a peer (the gRPC connection's socket address, not ``attributes.source``, which the peer writes) inside
  ``settings.trusted_proxies`` gets a decision; any other gets 403 PERMISSION_DENIED, as on every endpoint.
- The path and host are normalised exactly as ``serve`` normalises its own (``phantom_token.http.uri``); a path
  that is not origin-form, an invalid path or host, no ``http`` attributes, or a header block larger than
  ``max_header_bytes``: 400 (431 for the size) INVALID_ARGUMENT, never a guess.
- No rule of the pattern lives here: the engine decides (``try_authorize`` first, so a cache hit awaits nothing),
  ``check_response`` only translates; both translations are pure functions, tested without sockets.
- No raw token is logged or put in metadata (only its fingerprint); header values are never logged. An unexpected
  error is a 502 logged by type.
- With the access log on (``settings.access_log``; ``frontends.access_log``) every check writes one line, front door
  ``grpc``: the original request's method and path when they could be read, the route, the decision's status and
  outcome, the token's fingerprint (computed per check: a gRPC call has no connection memo), the durations and
  the request id (the ``x-request-id`` Envoy sends when valid, else a new one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from phantom_token.config.material import ServerPems
from phantom_token.config.settings import Settings
from phantom_token.core.bearer import BearerToken, DPoPToken, extract, fingerprint
from phantom_token.core.claim_headers import header_names, python_value
from phantom_token.core.client_cert import InvalidCertificateHeader, pem_thumbprint
from phantom_token.core.dpop import request_origin
from phantom_token.core.request import RequestInfo, TokenMemo
from phantom_token.core.verdict import Allow, Deny, Verdict, server_error
from phantom_token.frontends import Authorizer, Observe, authorize
from phantom_token.frontends import access_log as access
from phantom_token.frontends.decisions import (
    BadDecisionRequest,
    decision_response,
    is_trusted,
    normal_form,
    untrusted_peer,
)
from phantom_token.http.uri import normalise_host, normalise_path
from phantom_token.memo import remember

logger: Final = logging.getLogger("phantom_token.grpc")

SERVICE: Final = "envoy.service.auth.v3.Authorization"
GRPC_CODES: Final = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED,
                     404: code_pb2.NOT_FOUND, 431: code_pb2.INVALID_ARGUMENT, 502: code_pb2.UNAVAILABLE,
                     504: code_pb2.DEADLINE_EXCEEDED}
REMOVED_WHEN_ALLOWED: Final = ("dpop",)  # request headers that must not reach the API once the token is swapped
_OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

CheckRequest = Any  # envoy.service.auth.v3.CheckRequest (xds-protos ships no type stubs)
CheckResponse = Any


class HeadersTooLarge(Exception):
    """The header block is larger than ``max_header_bytes``."""


def headers_too_large() -> Deny:
    return Deny(431, "invalid_request", "The request headers are larger than the decision service accepts")


def _headers(http: Any, max_bytes: int) -> dict[str, list[str]]:
    """Lower-case name -> values in order; pseudo-headers and names with ``_`` left out (as ``serve`` does)."""
    pairs: list[tuple[str, str]]
    if http.header_map.headers:
        pairs = [(h.key, h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in http.header_map.headers]
    else:
        pairs = list(http.headers.items())
    size = 0
    headers: dict[str, list[str]] = {}
    for name, value in pairs:
        size += len(name) + len(value) + 4  # as a header line: ': ' and CRLF
        if size > max_bytes:
            raise HeadersTooLarge
        lname = name.lower()
        if lname[:1] == ":" or "_" in lname or not lname:
            continue
        headers.setdefault(lname, []).append(value)
    return headers


_PATHS: Final[dict[str, str]] = {}  # paths as Envoy sent them (never a query string) -> normal form
_HOSTS: Final[dict[str, str]] = {}  # hosts as sent -> normal form
_CERTIFICATES: Final[dict[str, str]] = {}  # source.certificate as sent -> its thumbprint ("": not a certificate)


_BAD_TARGET: Final = "The check request has an invalid {name} ({reason})"


def request_info(check: CheckRequest, max_header_bytes: int, public_base_url: str | None = None,
                 reads_headers: bool = False) -> RequestInfo:
    """The request Envoy asks about. Raises ``BadDecisionRequest`` (400) or ``HeadersTooLarge`` (431). With a
    ``DPoP`` header, its ``origin`` is Envoy's ``scheme`` and ``host`` attributes (or ``public_base_url``).
    ``reads_headers``: some plugin reads a ``client_cert_header`` (believed: only trusted peers are asked)."""
    if not check.HasField("attributes") or not check.attributes.request.HasField("http"):
        raise BadDecisionRequest("The check request has no attributes.request.http")
    http = check.attributes.request.http
    if not http.method:
        raise BadDecisionRequest("The check request has no method")
    target = http.path
    if not target.startswith("/"):
        raise BadDecisionRequest("The check request's path is not an origin-form request target")
    path = normal_form(_PATHS, target.partition("?")[0] or "/", normalise_path, _BAD_TARGET, "path")
    if not http.host:
        raise BadDecisionRequest("The check request has no host")
    host = normal_form(_HOSTS, http.host, normalise_host, _BAD_TARGET, "host")
    headers = _headers(http, max_header_bytes)
    info = RequestInfo(http.method.upper(), host, path, headers)
    if "dpop" in headers:
        info.origin = request_origin(public_base_url=public_base_url, scheme=(http.scheme or "http").lower(),
                                     host=http.host)
    source = check.attributes.source.certificate
    if source or reads_headers:  # the certificate facts ride on a memo of this check's own
        memo = info.memo = TokenMemo()
        memo.trusted_peer = True
        memo.client_cert_sha256 = _certificate(source) if source else None
    return info


def _certificate(url_encoded_pem: str) -> str | None:
    """The thumbprint of Envoy's ``source.certificate`` (remembered: one Envoy sends few distinct ones), or None."""
    known = _CERTIFICATES.get(url_encoded_pem)
    if known is None:
        try:
            known = pem_thumbprint(url_encoded_pem)
        except InvalidCertificateHeader:
            known = ""
        remember(_CERTIFICATES, url_encoded_pem, known, 256)
    return known or None


def _header(name: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE)


def _sendable(value: str) -> bool:
    return "\r" not in value and "\n" not in value and "\0" not in value


def check_response(verdict: Verdict, request: RequestInfo | None = None) -> CheckResponse:
    """The ``CheckResponse`` for ``verdict``; ``request`` (what was asked) names the token in the metadata and
    the headers to remove."""
    if isinstance(verdict, Allow):
        authorization = verdict.authorization
        shaped = verdict.headers is not None  # the route sets claims_to_headers
        if authorization is None:
            if shaped:  # a preflight on a route with claims_to_headers: still no client copy of those reaches it
                return _claims_only(verdict, request)
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                                   ok_response=external_auth_pb2.OkHttpResponse())
        if not _sendable(authorization):  # a JWT with CR or LF: the authorization server's fault
            return check_response(server_error(verdict.route))
        headers = request.headers if request is not None else {}
        ok = external_auth_pb2.OkHttpResponse(
            headers=[_header("authorization", authorization)],
            headers_to_remove=[name for name in REMOVED_WHEN_ALLOWED
                               if name in headers and not _forwarded(name, verdict)])
        if shaped:
            _add_claim_headers(ok, verdict, headers)
        metadata = struct_pb2.Struct()
        metadata.update(_metadata(verdict, headers))
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok,
                                               dynamic_metadata=metadata)
    status, headers_out, body = decision_response(verdict)
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=status),
        headers=[_header(name.lower(), value) for name, value in headers_out], body=body.decode())
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=GRPC_CODES.get(status, code_pb2.UNKNOWN), message=verdict.code),
        denied_response=denied)


def _add_claim_headers(ok: Any, allow: Allow, headers: dict[str, list[str]]) -> None:
    """``claims_to_headers``: the values (overwriting the client's copies), and every client copy of a configured
    name that has no value for this token removed."""
    sent = set()
    for name, value in allow.headers or ():
        ok.headers.append(_header(name.lower(), python_value(value)))
        sent.add(name.lower())
    plugin = allow.route.plugin
    configured = header_names(plugin.claims_to_headers) if plugin is not None else frozenset()
    ok.headers_to_remove.extend(sorted(name for name in configured - sent if name in headers))


def _claims_only(allow: Allow, request: RequestInfo | None) -> CheckResponse:
    ok = external_auth_pb2.OkHttpResponse()
    _add_claim_headers(ok, allow, request.headers if request is not None else {})
    return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)
def _forwarded(name: str, allow: Allow) -> bool:
    """Whether the route keeps ``name`` (``forward_dpop_proof``)."""
    plugin = allow.route.plugin
    return name == "dpop" and plugin is not None and plugin.forward_dpop_proof


def _metadata(allow: Allow, headers: dict[str, list[str]]) -> dict[str, str]:
    metadata = {"route": allow.route.name}
    plugin = allow.route.plugin
    if plugin is not None:
        token = extract(headers.get("authorization"), plugin.max_token_length)
        if isinstance(token, BearerToken | DPoPToken):
            metadata["token_fingerprint"] = fingerprint(token.value)
    return metadata


def peer_ip(peer: str) -> str:
    """The IP of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``); "" for any other kind."""
    kind, _, address = peer.partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0]
    if kind == "ipv6":
        return address.rpartition(":")[0].strip("[]").replace("%25", "%")
    return ""


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """``Authorization/Check``: one decision per call, on the engine every front door shares."""

    def __init__(self, engine: Authorizer, settings: Settings, observe: Observe | None) -> None:
        self._engine = engine
        self._try_authorize: Callable[[RequestInfo], Verdict | None] = engine.try_authorize
        self._trusted_proxies = settings.trusted_proxies
        self._max_header_bytes = settings.max_header_bytes
        self._public_base_url = settings.public_base_url
        self._reads_headers = any(route.plugin is not None and route.plugin.client_cert_header is not None
                                  for route in settings.routes)
        self._observe = observe
        self._access = settings.access_log
        self._trust: dict[str, bool] = {}  # peer IP -> trusted; Envoys are few (bounded as the HTTP listener's)

    def _trusts(self, peer: str) -> bool:
        address = peer.rpartition(":")[0]  # without the port, which changes with every connection
        trusted = self._trust.get(address)
        if trusted is None:
            trusted = remember(self._trust, address, is_trusted(peer_ip(peer), self._trusted_proxies), 4097)
        return trusted

    async def Check(self, check: CheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> CheckResponse:
        info: RequestInfo | None = None
        started = time.perf_counter() if self._access else 0.0
        waited = 0.0
        try:
            verdict: Verdict
            if not self._trusts(context.peer()):
                verdict = untrusted_peer()
            else:
                try:
                    info = request_info(check, self._max_header_bytes, self._public_base_url, self._reads_headers)
                except BadDecisionRequest as exc:
                    verdict = exc.deny()
                except HeadersTooLarge:
                    verdict = headers_too_large()
                else:
                    found = self._try_authorize(info)
                    if found is None:
                        asked = time.perf_counter()
                        found = await authorize(self._engine, info)
                        waited = time.perf_counter() - asked
                    verdict = found
            response = check_response(verdict, info)
        except Exception as exc:  # a protobuf or translation fault: still an answer, and a fail-closed one
            logger.error("gRPC check failed: %s", type(exc).__name__)
            verdict = server_error()
            response = check_response(verdict)
        if self._observe is not None:
            if isinstance(verdict, Allow):
                self._observe(200, "allowed", verdict.route.name)
            else:
                self._observe(verdict.status, verdict.code, verdict.route.name if verdict.route is not None else None)
        if self._access:
            _log(verdict, info, started, waited)
        return response


def _log(verdict: Verdict, info: RequestInfo | None, started: float, waited: float) -> None:
    """The access log line of one check (the access log is on)."""
    route = verdict.route
    headers = info.headers if info is not None else {}
    token = access.NO_VALUE
    if route is not None and route.plugin is not None:
        found = extract(headers.get("authorization"), route.plugin.max_token_length)
        if isinstance(found, BearerToken):
            token = fingerprint(found.value)
    status, outcome = (200, "allowed") if isinstance(verdict, Allow) else (verdict.status, verdict.code)
    access.write(access.fields(
        "grpc", route.name if route is not None else None, info.method if info is not None else "",
        info.path if info is not None else "", status, outcome, token, (time.perf_counter() - started) * 1000.0,
        waited * 1000.0, None, access.request_id(headers)[0]))


def server_credentials(tls: ServerPems | None) -> grpc.ServerCredentials | None:
    """The listener's TLS (None: plaintext HTTP/2); with client CAs, client certificates are required."""
    if tls is None:
        return None
    return grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca,
                                       require_client_auth=tls.client_ca is not None)


class GrpcServer:
    """A running gRPC listener, stopped like the HTTP ones (``close`` then ``wait_closed``): health turns
    NOT_SERVING, no new call is accepted, and calls in flight finish (within ``grace`` seconds)."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, port: int,
                 grace: float) -> None:
        self._server = server
        self._health = health_servicer
        self.port = port
        self._grace = grace
        self._stopping: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._grace)

    async def wait_closed(self) -> None:
        if self._stopping is not None:
            await self._stopping


async def start_grpc(engine: Authorizer, settings: Settings, host: str, port: int, *, reuse_port: bool = False,
                     observe: Observe | None = None, grace: float = 30.0, tls: ServerPems | None = None
                     ) -> GrpcServer:
    """Listen on ``host:port`` (``port`` 0: any) with the ext_authz and health services, with ``tls`` (the
    ``Material`` of ``phantom_token.grpc_tls``) when given. Raises ``OSError`` when the address cannot be bound."""
    credentials = server_credentials(tls)
    options = [("grpc.so_reuseport", 1 if reuse_port else 0),
               # a check carries headers and no body (with_request_body off): a message this large is an attack
               ("grpc.max_receive_message_length", max(4 * settings.max_header_bytes, 1 << 20))]
    server = grpc.aio.server(options=options)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AuthorizationService(engine, settings, observe), server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError as exc:  # grpc's way of saying the port is taken
        raise OSError(f"cannot bind the gRPC listener to {address}") from exc
    await server.start()
    return GrpcServer(server, health_servicer, bound, grace)


__all__ = ["GRPC_CODES", "SERVICE", "AuthorizationService", "GrpcServer", "HeadersTooLarge", "check_response",
           "peer_ip", "request_info", "start_grpc"]
