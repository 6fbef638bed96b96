"""Cache keys: ``sha256(namespace + sha256(token))``, never the token itself.

Hashing the token first makes a key derivable from the token's SHA-256 alone, so an operator can purge a token
knowing only its hash (``POST /cache/purge``, ``cache.purge``). The namespace (``PluginConfig.cache_namespace``)
is the introspection endpoint, the client and the claim checks, so two routes share an entry only when they would
get the same answer.

Invariants: the engine (on every request) and the purge derive keys here and nowhere else, so they always agree;
pure functions, no I/O. Compiled with the engine (``phantom_token/compiled.py``): it calls them per request.
"""

from __future__ import annotations

import hashlib

from phantom_token.config.settings import PluginConfig


def token_digest(token: str) -> bytes:
    """SHA-256 of the token (its hex form is what ``POST /cache/purge`` accepts as ``token_sha256``)."""
    return hashlib.sha256(token.encode("ascii")).digest()


def namespaced_key(namespace: bytes, digest: bytes) -> bytes:
    """The cache key of a token whose SHA-256 is ``digest``, under one endpoint/client namespace."""
    return hashlib.sha256(namespace + digest).digest()


def cache_key(plugin: PluginConfig, token: str) -> bytes:
    """SHA-256 of the token's SHA-256, namespaced by introspection endpoint and client: never the token itself."""
    return namespaced_key(plugin.cache_namespace, token_digest(token))


__all__ = ["cache_key", "namespaced_key", "token_digest"]
