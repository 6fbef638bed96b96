"""Revocation: remove one token's entries from every cache, given the token or only its SHA-256.

A token has one entry per introspection namespace (endpoint + client_id) it was seen under (on a route with several
servers or JWT issuers: one per server, and the route's outcome); the key of each is
``namespaced_key(namespace, sha256(token))``, so the token's SHA-256 is enough and the raw token is not needed.
The keys of formats v2 (``v2_key``) and v1 (``legacy_key``) are purged too: during a rolling upgrade replicas of a
previous version still write entries under them to the shared store, and a v2 replica drops its memory copy when it
is told the v2 key (docs/scaling.md "Upgrading: the cache-key format"); two more DELs each.

Invariants: the raw token is hashed on arrival and never kept, logged or echoed (reports carry its fingerprint,
the first 8 hex digits of its SHA-256); a purge tries every namespace of the configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from phantom_token.config.settings import Route
from phantom_token.core.keys import legacy_key, namespaced_key, v2_key
from phantom_token.core.ports import TokenCache

log = logging.getLogger("phantom_token.cache")


@dataclass(frozen=True, slots=True)
class PurgeReport:
    fingerprint: str
    memory: int  # entries removed from this process's memory
    shared: int  # entries removed from the shared store
    notified: int | None  # processes told to drop their copies (None: no shared store)
    complete: bool  # False: a shared store is configured but was unreachable, other processes were not told

    def document(self) -> dict[str, object]:
        return {"fingerprint": self.fingerprint, "removed": {"memory": self.memory, "shared": self.shared},
                "notified": self.notified, "complete": self.complete}


def namespaces(routes: Iterable[Route]) -> tuple[bytes, ...]:
    """Every distinct cache namespace of the configuration, in a stable order: each plugin's, and with several
    servers or JWT issuers each server's too (``PluginConfig.authorization_servers``)."""
    plugins = [r.plugin for r in routes if r.plugin is not None]
    return tuple(dict.fromkeys(
        namespace for plugin in plugins
        for namespace in (plugin.cache_namespace, *(server.cache_namespace for server in plugin.authorization_servers))
    ))


def purge_keys(cache_namespaces: Iterable[bytes], digest: bytes) -> tuple[bytes, ...]:
    """The keys a purge removes for the token whose SHA-256 is ``digest``: in every namespace, the key the engine
    derives (format v3) and the ones formats v2 and v1 derived."""
    return tuple(key for namespace in cache_namespaces
                 for key in (namespaced_key(namespace, digest), v2_key(namespace, digest),
                             legacy_key(namespace, digest)))


class Purger:
    def __init__(self, cache: TokenCache, cache_namespaces: tuple[bytes, ...]) -> None:
        self._cache = cache
        self._namespaces = cache_namespaces

    async def purge(self, digest: bytes) -> PurgeReport:
        """Remove the token whose SHA-256 is ``digest`` (32 bytes) everywhere."""
        memory = shared = 0
        notified: int | None = None
        complete = True
        for key in purge_keys(self._namespaces, digest):
            result = await self._cache.purge(key)
            memory += result.local
            shared += result.shared
            complete = complete and result.complete
            if result.notified is not None:
                notified = max(notified or 0, result.notified)
        report = PurgeReport(digest.hex()[:8], memory, shared, notified, complete)
        log.info("cache purge: token=%s memory=%d shared=%d notified=%s complete=%s",
                 report.fingerprint, memory, shared, notified, complete)
        return report
