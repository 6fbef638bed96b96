"""The introspection adapter: sends the RFC 7662 request over the pooled HTTP client, and owns every other call to
the authorization server (metadata discovery, its JWKS) and the material to authenticate to it.

Foreign errors (connect, timeout, TLS, protocol, oversized body) become ``IntrospectionUnavailable`` here, at
the boundary, so the engine sees one vocabulary. Reading the answers is pure and lives in ``rfc7662`` (Curity JWT,
RFC 7662 JSON), ``rfc9701`` (signed), ``discovery`` (RFC 8414) and ``client_auth`` (how the gateway authenticates).

Client keys and SSL contexts come from the ``Material`` loaded with the configuration (``config.material``): no
file is read here for a plugin the material covers. A plugin it does not cover (an introspector built in code
without material) has its files read on first use, once, and an unusable file makes that call unavailable.

Lifespan: ``start`` (called once by the composition root) makes sure every plugin has its keys and SSL context
and fetches the metadata of every issuer whose endpoints are to be discovered; a failure there stops start-up
with a clear message (``MetadataError``), because a gateway that cannot know its endpoint can answer nothing
but 502.
Afterwards metadata is refreshed every ``metadata_refresh_seconds`` on use; a failed refresh keeps the last good
metadata (with a warning).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote

from phantom_token import tracing
from phantom_token.config.material import (
    KeyFile,
    Material,
    TlsFiles,
    assertion_key_file,
    signing_key,
    ssl_context,
    tls_files,
)
from phantom_token.config.settings import PluginConfig
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import IntrospectionResult
from phantom_token.http.client import ClientError, ClientResponse, MiB, RequestTimeout
from phantom_token.introspection.client_auth import ClientAuthentication, client_authentication
from phantom_token.introspection.discovery import MetadataError, ServerMetadata, metadata_urls, read_metadata
from phantom_token.introspection.jwks import JwksCache, JwkSet
from phantom_token.introspection.rfc7662 import (
    ACCEPT_JSON,
    ACCEPT_JWT,
    build_authenticated_request,
    check_status,
    read_json_response,
    read_jwt_answer,
    status_kind,
)
from phantom_token.introspection.rfc9701 import ACCEPT_SIGNED, UnknownSigningKey, read_signed_response
from phantom_token.jose import SigningKey

log = logging.getLogger("phantom_token.introspection")

MAX_RESPONSE_BYTES = 1 << 20
# What ``quote(value, safe="")`` leaves as it is (RFC 3986 unreserved): a token of only these is its own encoding.
# Told by one translate that maps every other byte to "!" (itself not unreserved) and one search for it, rather
# than a regular expression (a call by name and its matcher, per miss).
_UNRESERVED: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-"
_RESERVED: Final = 0x21  # "!"
_ONLY_UNRESERVED: Final = bytes(c if c in _UNRESERVED else _RESERVED for c in range(256))
ACCEPT = {"jwt": ACCEPT_JWT, "json": ACCEPT_JSON, "signed": ACCEPT_SIGNED}


def needs_discovery(plugin: PluginConfig) -> bool:
    """True when an endpoint this plugin needs is to come from the issuer's metadata."""
    if plugin.issuer is None:
        return False
    exchange = plugin.token_exchange
    return (not plugin.introspection_endpoint or (plugin.introspection_response == "signed" and not plugin.jwks_uri)
            or (exchange is not None and exchange.token_endpoint is None))


@dataclass(slots=True)
class _Discovered:
    metadata: ServerMetadata
    fetched_at: float


class _Prepared:
    """The introspection request of one plugin and endpoint whose client authentication is the same on every call
    (every method but ``private_key_jwt``): built once by ``build_authenticated_request`` with an empty token, so a
    call only percent-encodes its token into the body (docs/performance.md, "Cache misses")."""

    __slots__ = ("body_tail", "endpoint", "headers", "plugin")

    def __init__(self, plugin: PluginConfig, endpoint: str) -> None:
        auth = client_authentication(plugin, endpoint=endpoint, key=None, now=0.0, jti="")
        template = build_authenticated_request("", ACCEPT[plugin.introspection_response], auth.headers, auth.params)
        if not template.body.startswith(b"token="):  # the form's first field is the token: the tail is the rest
            raise AssertionError("the introspection request's body must begin with the token")
        self.plugin = plugin
        self.endpoint = endpoint
        self.headers = template.headers
        self.body_tail = template.body[len(b"token="):]

    def request(self, token: str) -> tuple[list[tuple[str, str]], bytes]:
        """The headers (shared: not to be changed) and the body of the request for ``token``."""
        # quote() (interpreted, a few thousand instructions) only when the token has a character it would encode:
        # an opaque token is usually all unreserved characters (base64url), which quote() leaves as they are.
        try:
            encoded = token.encode("ascii")
        except UnicodeEncodeError:
            encoded = b"!"  # not ASCII: quote() below
        if _RESERVED in encoded.translate(_ONLY_UNRESERVED):
            encoded = quote(token, safe="").encode("ascii")
        return self.headers, b"token=" + encoded + self.body_tail


class Requester(Protocol):
    """What the introspector needs of an HTTP client: ``phantom_token.http.client.HttpClient``, or a test's fake
    (the compiled ``HttpClient`` cannot be subclassed by interpreted code)."""

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes = b"", *,
                      timeout: float, ssl: ssl.SSLContext | None = None,  # noqa: ASYNC109
                      max_body: int = MiB, repeatable: bool = False) -> ClientResponse: ...


class HttpIntrospector:
    def __init__(self, client: Requester, *, material: Material | None = None,
                 clock: Callable[[], float] = time.time, metadata_refresh_seconds: float = 3600.0) -> None:
        self._client = client
        self._clock = clock
        self._refresh_after = metadata_refresh_seconds
        self._material = material or Material()  # looked up for client assertion keys and SSL contexts only
        self._contexts: dict[TlsFiles, ssl.SSLContext] = {}  # what the material did not cover, read on first use
        self._assertion_keys: dict[KeyFile, SigningKey] = {}
        self._discovered: dict[str, _Discovered] = {}
        self._discovery_locks: dict[str, asyncio.Lock] = {}
        self._jwks: dict[str, JwksCache] = {}
        self._prepared_requests: dict[int, _Prepared] = {}  # by plugin identity (plugins are built once)

    async def start(self, plugins: Iterable[PluginConfig]) -> None:
        """Check every plugin has its key and SSL context, discover endpoints; raises ``MetadataError`` naming what
        failed (``IntrospectionUnavailable`` when a file the material did not cover is unusable)."""
        for plugin in plugins:
            self._context(plugin)
            if plugin.client_auth_method == "private_key_jwt":
                self._assertion_key(plugin)
            if needs_discovery(plugin):
                known = self._discovered.get(plugin.issuer or "")
                self._check_discovered(plugin, known.metadata if known else await self._discover(plugin))

    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        # the configured endpoint without a coroutine (per miss); discovered metadata otherwise
        endpoint = plugin.introspection_endpoint or await self._introspection_endpoint(plugin)
        active = tracing.ACTIVE
        if active is not None:  # in a span, its traceparent on the request (phantom_token.tracing)
            return await active.introspection(endpoint, lambda extra: self._introspect(token, plugin, endpoint, extra))
        # ``_introspect`` without extra headers, written out: its coroutine and ``_request``'s are two generators
        # made, resumed and freed per miss (compiled, each await level costs on every resumption)
        headers, body = self._introspection_request(token, plugin, endpoint, [])
        context = self._context(plugin) if endpoint.startswith("https:") else None
        try:
            # repeatable: introspection asks, it changes nothing at the AS (RFC 7662 section 2), so a request that a
            # reused connection failed unanswered may go again (HttpClient.request)
            response = await self._client.request(
                "POST", endpoint, headers, body,
                timeout=plugin.introspection_timeout_seconds, ssl=context, max_body=MAX_RESPONSE_BYTES,
                repeatable=True,
            )
        except (ClientError, OSError, ssl.SSLError) as exc:
            raise unavailable(exc) from exc
        if plugin.introspection_response == "signed":
            return await self._read_signed(response, plugin)
        return read_answer(response, plugin)

    async def _introspect(self, token: str, plugin: PluginConfig, endpoint: str,
                          extra_headers: list[tuple[str, str]]) -> IntrospectionResult:
        headers, body = self._introspection_request(token, plugin, endpoint, extra_headers)
        response = await self._request("POST", endpoint, headers, body, plugin, repeatable=True)
        if plugin.introspection_response == "signed":
            return await self._read_signed(response, plugin)
        return read_answer(response, plugin)

    def _introspection_request(self, token: str, plugin: PluginConfig, endpoint: str,
                               extra_headers: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bytes]:
        if plugin.client_auth_method == "private_key_jwt":  # a fresh assertion (its own jti) on every call
            auth = client_authentication(plugin, endpoint=endpoint, key=self._assertion_key(plugin),
                                         now=self._clock(), jti=secrets.token_urlsafe(18))
            request = build_authenticated_request(token, ACCEPT[plugin.introspection_response], auth.headers,
                                                  auth.params)
            headers, body = request.headers, request.body
        else:
            headers, body = self._prepared(plugin, endpoint).request(token)
        if extra_headers:
            headers = headers + extra_headers
        return headers, body

    def _prepared(self, plugin: PluginConfig, endpoint: str) -> _Prepared:
        known = self._prepared_requests.get(id(plugin))
        if known is None or known.plugin is not plugin or known.endpoint != endpoint:
            if len(self._prepared_requests) >= 4096:  # plugins of reloads past: start over, stay bounded
                self._prepared_requests.clear()
            known = self._prepared_requests[id(plugin)] = _Prepared(plugin, endpoint)
        return known

    # --- signed answers ------------------------------------------------------------------------------------

    async def _read_signed(self, response: ClientResponse, plugin: PluginConfig) -> IntrospectionResult:
        check_status(response.status)
        jwks = await self._jwks_cache(plugin)

        def read(keys: JwkSet) -> IntrospectionResult:
            return read_signed_response(
                response.status, response.headers, response.body, keys=keys, issuer=plugin.issuer or "",
                client_id=plugin.client_id, now=self._clock(), clock_skew_seconds=plugin.clock_skew_seconds,
            )

        try:
            return read(await jwks.keys())
        except UnknownSigningKey as exc:
            fresh = await jwks.refresh()
            if fresh is None:
                raise UnknownSigningKey(f"{exc}; the JWKS was fetched too recently to fetch it again") from None
            return read(fresh)

    async def _jwks_cache(self, plugin: PluginConfig) -> JwksCache:
        uri = plugin.jwks_uri or (await self._metadata(plugin)).jwks_uri
        if uri is None:
            raise IntrospectionUnavailable("the issuer's metadata has no jwks_uri")
        cache = self._jwks.get(uri)
        if cache is None:
            cache = self._jwks[uri] = JwksCache(uri, lambda: self._get(uri, plugin))
        return cache

    # --- discovery -----------------------------------------------------------------------------------------

    async def _introspection_endpoint(self, plugin: PluginConfig) -> str:
        if plugin.introspection_endpoint:
            return plugin.introspection_endpoint
        endpoint = (await self._metadata(plugin)).introspection_endpoint
        if endpoint is None:
            raise IntrospectionUnavailable("the issuer's metadata has no introspection_endpoint")
        return endpoint

    async def _metadata(self, plugin: PluginConfig) -> ServerMetadata:
        """The issuer's metadata, refreshed when older than ``metadata_refresh_seconds`` (failures keep the last)."""
        issuer = plugin.issuer or ""
        known = self._discovered.get(issuer)
        if known is not None and self._clock() - known.fetched_at < self._refresh_after:
            return known.metadata
        lock = self._discovery_locks.setdefault(issuer, asyncio.Lock())
        async with lock:
            known = self._discovered.get(issuer)
            if known is not None and self._clock() - known.fetched_at < self._refresh_after:
                return known.metadata
            try:
                metadata = await self._discover(plugin)
                self._check_discovered(plugin, metadata)
            except MetadataError as exc:
                if known is None:
                    raise IntrospectionUnavailable(str(exc), "discovery") from exc
                log.warning("metadata refresh failed, keeping the last good metadata: %s", exc)
                known.fetched_at = self._clock()  # retry after another period, not on every request
                return known.metadata
            return metadata

    async def _discover(self, plugin: PluginConfig) -> ServerMetadata:
        issuer = plugin.issuer or ""
        tried = []
        for url in metadata_urls(issuer):
            try:
                response = await self._request("GET", url, [("Accept", "application/json")], b"", plugin)
            except IntrospectionUnavailable as exc:
                raise MetadataError(f"discovery for issuer {issuer} failed: {url}: {exc}") from exc
            if response.status == 200:
                try:
                    return read_metadata(response.body, issuer)
                except MetadataError as exc:
                    raise MetadataError(f"discovery for issuer {issuer} failed: {url}: {exc}") from exc
            tried.append(f"{url} answered HTTP {response.status}")
        raise MetadataError(f"discovery for issuer {issuer} failed: {'; '.join(tried)}")

    def _check_discovered(self, plugin: PluginConfig, metadata: ServerMetadata) -> None:
        issuer = plugin.issuer or ""
        if not plugin.introspection_endpoint and metadata.introspection_endpoint is None:
            raise MetadataError(f"the metadata of issuer {issuer} has no introspection_endpoint")
        if plugin.introspection_response == "signed" and not plugin.jwks_uri and metadata.jwks_uri is None:
            raise MetadataError(f"the metadata of issuer {issuer} has no jwks_uri")
        exchange = plugin.token_exchange
        if exchange is not None and exchange.token_endpoint is None and metadata.token_endpoint is None:
            raise MetadataError(f"the metadata of issuer {issuer} has no token_endpoint (token_exchange)")
        self._discovered[issuer] = _Discovered(metadata, self._clock())

    # --- for the token exchanger (introspection.exchange), which shares this adapter's material and transport --

    async def token_endpoint(self, plugin: PluginConfig) -> str:
        """``token_exchange.token_endpoint``, else the issuer's (discovered) ``token_endpoint``."""
        exchange = plugin.token_exchange
        if exchange is not None and exchange.token_endpoint is not None:
            return exchange.token_endpoint
        endpoint = (await self._metadata(plugin)).token_endpoint
        if endpoint is None:
            raise IntrospectionUnavailable("the issuer's metadata has no token_endpoint")
        return endpoint

    def client_authentication(self, plugin: PluginConfig, endpoint: str) -> ClientAuthentication:
        """The plugin's client authentication for a call to ``endpoint``."""
        return client_authentication(plugin, endpoint=endpoint, key=self._assertion_key(plugin), now=self._clock(),
                                     jti=secrets.token_urlsafe(18))

    async def post(self, url: str, headers: list[tuple[str, str]], body: bytes, plugin: PluginConfig
                   ) -> ClientResponse:
        """A POST to the authorization server with the plugin's TLS settings and timeout."""
        return await self._request("POST", url, headers, body, plugin)

    # --- authentication material and transport ------------------------------------------------------------

    def _assertion_key(self, plugin: PluginConfig) -> SigningKey | None:
        wanted = assertion_key_file(plugin)
        if wanted is None:
            return None
        key = self._material.keys.get(wanted) or self._assertion_keys.get(wanted)
        if key is None:  # not in the material: read once, now
            try:
                key = signing_key(wanted)
            except ValueError as exc:
                raise IntrospectionUnavailable(f"cannot load client_private_key_file: {exc}", "config") from exc
            self._assertion_keys[wanted] = key
        return key

    def _context(self, plugin: PluginConfig) -> ssl.SSLContext:
        files = tls_files(plugin)
        context = self._material.contexts.get(files) or self._contexts.get(files)
        if context is None:  # not in the material: read once, now
            try:
                context = ssl_context(files)
            except ValueError as exc:
                raise IntrospectionUnavailable(f"cannot load the TLS files: {exc}", "config") from exc
            self._contexts[files] = context
        return context

    async def fetch(self, url: str, plugin: PluginConfig) -> bytes:
        """GET ``url`` as the plugin reaches its authorization server (``introspection.issuer_keys`` uses it)."""
        return await self._get(url, plugin)

    async def _get(self, url: str, plugin: PluginConfig) -> bytes:
        response = await self._request("GET", url, [("Accept", "application/json")], b"", plugin)
        if response.status != 200:
            raise IntrospectionUnavailable(f"{url} answered HTTP {response.status}", status_kind(response.status))
        return response.body

    async def _request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
                       plugin: PluginConfig, *, repeatable: bool = False) -> ClientResponse:
        context = self._context(plugin) if url.startswith("https:") else None
        try:
            return await self._client.request(
                method, url, headers, body,
                timeout=plugin.introspection_timeout_seconds, ssl=context, max_body=MAX_RESPONSE_BYTES,
                repeatable=repeatable,
            )
        except (ClientError, OSError, ssl.SSLError) as exc:
            raise unavailable(exc) from exc


def unavailable(exc: Exception) -> IntrospectionUnavailable:
    """What a failed call to the AS is to the engine: a connection or protocol failure is "down", no answer in time
    "timeout"; the reason names the failure, never a header value."""
    kind = "timeout" if isinstance(exc, RequestTimeout) else "down"
    return IntrospectionUnavailable(f"{type(exc).__name__}: {exc}", kind)


def read_answer(response: ClientResponse, plugin: PluginConfig) -> IntrospectionResult:
    """The answer to an introspection in ``json`` or ``jwt`` mode (``signed`` needs the JWKS: ``_read_signed``)."""
    if plugin.introspection_response == "json":
        return read_json_response(response.status, response.headers, response.body)
    return read_jwt_answer(response.status, response.values("cache-control"), response.body)
