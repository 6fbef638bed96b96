"""Cache keys, format v2: ``blake2s(prefix + sha256(token))``, ``prefix = sha256(VERSION + namespace)``; never the
token itself.

Hashing the token with SHA-256 first makes a key derivable from the token's SHA-256 alone, so an operator can purge a
token knowing only its hash (``POST /cache/purge``, ``phantom-token purge``). The namespace
(``PluginConfig.cache_namespace``) is the introspection endpoint, the client and the claim checks, so two routes share
an entry only when they would get the same answer.

The namespace is folded into a 32-byte ``prefix`` once per plugin (``key_prefix``, which the engine remembers), with
the key-format version in front (``VERSION``), so the per-request step hashes exactly 64 bytes: one BLAKE2s
compression, cheaper than SHA-256 of ``namespace + digest`` (the v1 format: two or more SHA-256 blocks for a usual
namespace, and OpenSSL's per-call set-up; docs/performance.md "Cheaper cache keys" has the instruction counts). The
input is fixed-length (32 + 32 bytes), so ``prefix + digest`` is an unambiguous encoding of the pair. BLAKE2's own
key and personalisation parameters were measured too and cost more (a second compression for the key block, the
keyword arguments' parsing) without adding anything here: the prefix is not a secret, it separates namespaces and
versions.

Per request, the engine derives keys with ``prefixed_state``/``key_from`` rather than ``prefixed_key``: the same bytes
(a hash is a function of the whole input, however it is fed), but the prefix is absorbed once per plugin into a
BLAKE2s object, and each key is a ``copy()`` of it, ``update(digest)``, ``digest()``: that skips the constructor's
argument parsing and parameter-block set-up (about 3 400 -> 2 600 instructions compiled, 380 -> 220 ns).

Versions: a change of format changes ``VERSION``; replicas of two versions sharing a Redis then never read each
other's entries (they miss and introspect once). ``legacy_key`` derives the v1 key (``sha256(namespace + digest)``)
so that a purge during a rolling upgrade reaches entries written by v1 replicas too (``cache/purge.py``;
docs/scaling.md "Upgrading: the cache-key format").

Invariants: the engine (on every request) and the purge derive keys here and nowhere else, so they always agree;
pure functions, no I/O. Compiled with the engine (``phantom_token/compiled.py``): it calls them per request.
"""

from __future__ import annotations

import hashlib
from typing import Final

from phantom_token.config.settings import PluginConfig

VERSION = b"phantom-token cache key v2\x00"  # folded into every prefix: a new format, new keys


_SHA256: Final = hashlib.sha256  # read as a C static when compiled, not looked up in hashlib per request


def token_digest(token: str) -> bytes:
    """SHA-256 of the token (its hex form is what ``POST /cache/purge`` accepts as ``token_sha256``)."""
    return _SHA256(token.encode("ascii")).digest()


def ascii_digest(data: bytes) -> bytes:
    """``token_digest`` of the token whose ASCII bytes are ``data`` (``BearerToken.data``: already encoded by the
    syntax check, so not encoded a second time)."""
    return _SHA256(data).digest()


def key_prefix(namespace: bytes) -> bytes:
    """The 32 bytes that stand for a namespace (and the format version) in its keys; computed once per plugin."""
    return hashlib.sha256(VERSION + namespace).digest()


def prefixed_key(prefix: bytes, digest: bytes) -> bytes:
    """The cache key of a token whose SHA-256 is ``digest``, under the namespace whose ``key_prefix`` is ``prefix``
    (the per-request step: 64 bytes, one BLAKE2s block)."""
    return hashlib.blake2s(prefix + digest).digest()


def prefixed_state(prefix: bytes) -> hashlib.blake2s:
    """A BLAKE2s that has absorbed ``prefix`` (a ``key_prefix``), for ``key_from``; made once per plugin, never
    updated after (``key_from`` works on copies)."""
    return hashlib.blake2s(prefix)


def key_from(state: hashlib.blake2s, digest: bytes) -> bytes:
    """``prefixed_key(prefix, digest)`` for the ``prefixed_state(prefix)`` ``state``: byte for byte the same key."""
    hasher = state.copy()
    hasher.update(digest)
    return hasher.digest()


def namespaced_key(namespace: bytes, digest: bytes) -> bytes:
    """The cache key of a token whose SHA-256 is ``digest``, under one endpoint/client namespace."""
    return prefixed_key(key_prefix(namespace), digest)


def legacy_key(namespace: bytes, digest: bytes) -> bytes:
    """The key format v1 gave the same token: ``sha256(namespace + digest)``. Only the purge uses it, so entries
    written by replicas not yet upgraded are removed too."""
    return hashlib.sha256(namespace + digest).digest()


def cache_key(plugin: PluginConfig, token: str) -> bytes:
    """The key of a token's entry under a plugin's namespace: derived from its SHA-256, never the token itself."""
    return namespaced_key(plugin.cache_namespace, token_digest(token))


__all__ = ["VERSION", "ascii_digest", "cache_key", "key_from", "key_prefix", "legacy_key", "namespaced_key",
           "prefixed_key", "prefixed_state", "token_digest"]
