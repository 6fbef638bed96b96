"""The ``IssuerKeys`` port's adapter: the JWKS of each ``jwt_issuers`` item, found, fetched and cached.

The JWKS is the item's ``jwks_uri``, else the one its issuer's metadata names (RFC 8414, then OpenID Connect
discovery: ``introspection.discovery``; the metadata's ``issuer`` must equal the configured one). Each JWKS is a
``JwksCache`` (the one ``signed`` mode uses): kept an hour, and fetched again for an unknown ``kid`` at most once per
``min_refresh_interval`` seconds (30), whatever the traffic.

Invariants: every fetch goes through the introspector's ``fetch`` (its HTTP client, the plugin's trust store and
timeout; failures are ``IntrospectionUnavailable``); a discovered ``jwks_uri`` is kept once found (a failure to
discover is retried on the next token, not remembered).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from phantom_token.config.settings import JwtIssuer, PluginConfig
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.introspection.discovery import MetadataError, metadata_urls, read_metadata
from phantom_token.introspection.jwks import JwksCache, JwkSet

Fetch = Callable[[str, PluginConfig], Awaitable[bytes]]
"""GET a URL the way the plugin reaches its authorization server; the body of a 200, else IntrospectionUnavailable."""


class HttpIssuerKeys:
    def __init__(self, fetch: Fetch, *, clock: Callable[[], float] = time.monotonic,
                 min_refresh_interval: float = 30.0) -> None:
        self._fetch = fetch
        self._clock = clock
        self._min_interval = min_refresh_interval
        self._jwks_uris: dict[str, str] = {}  # issuer -> discovered jwks_uri
        self._caches: dict[str, JwksCache] = {}  # jwks_uri -> its cache

    async def keys(self, issuer: JwtIssuer, plugin: PluginConfig) -> JwkSet:
        return await (await self._cache(issuer, plugin)).keys()

    async def refresh(self, issuer: JwtIssuer, plugin: PluginConfig) -> JwkSet | None:
        return await (await self._cache(issuer, plugin)).refresh()

    async def _cache(self, issuer: JwtIssuer, plugin: PluginConfig) -> JwksCache:
        uri = issuer.jwks_uri or self._jwks_uris.get(issuer.issuer) or await self._discover(issuer, plugin)
        cache = self._caches.get(uri)
        if cache is None:
            cache = self._caches[uri] = JwksCache(uri, lambda: self._fetch(uri, plugin), clock=self._clock,
                                                  min_refresh_interval=self._min_interval)
        return cache

    async def _discover(self, issuer: JwtIssuer, plugin: PluginConfig) -> str:
        tried: list[str] = []
        for url in metadata_urls(issuer.issuer):
            try:
                metadata = read_metadata(await self._fetch(url, plugin), issuer.issuer)
            except IntrospectionUnavailable as exc:
                tried.append(str(exc))
                continue
            except MetadataError as exc:
                raise IntrospectionUnavailable(f"discovery for JWT issuer {issuer.issuer}: {url}: {exc}") from exc
            if metadata.jwks_uri is None:
                raise IntrospectionUnavailable(f"the metadata of JWT issuer {issuer.issuer} has no jwks_uri")
            self._jwks_uris[issuer.issuer] = metadata.jwks_uri
            return metadata.jwks_uri
        raise IntrospectionUnavailable(f"discovery for JWT issuer {issuer.issuer} failed: {'; '.join(tried)}")
