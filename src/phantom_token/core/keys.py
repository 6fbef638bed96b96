"""Cache keys, format v3: ``sha256(token) + tag``, ``tag`` = the first 16 bytes of ``sha256(VERSION + namespace)``;
never the token itself.

Hashing the token with SHA-256 makes a key derivable from the token's SHA-256 alone, so an operator can purge a
token knowing only its hash (``POST /cache/purge``, ``phantom-token purge``). The namespace
(``PluginConfig.cache_namespace``) is the introspection endpoint, the client and the claim checks, so two routes share
an entry only when they would get the same answer.

The namespace is folded into a 16-byte ``tag`` once per plugin (``namespace_tag``, which the engine remembers), with the
key-format version in front (``VERSION``), so the per-request step is one concatenation: no second hash (v2 hashed
``prefix + digest`` with BLAKE2s, about 2 600 instructions compiled per token change; docs/performance.md "A cheaper
key: format v3"). The key holds the token's whole SHA-256 and the whole tag, 48 bytes, so:

- two tokens of one namespace share a key only if their SHA-256 collide, and two namespaces never share a key (their
  tags differ: they are distinct inputs to SHA-256 truncated to 128 bits; a collision there is a 2^64 search over
  namespaces an operator writes, not anything a client sends);
- a v3 key (48 bytes) never equals a v1 or v2 key (32 bytes): replicas of two versions sharing a Redis never read
  each other's entries (they miss and introspect once);
- the memory table's identity of an entry is the key's first 128 bits XOR the tag (``identity``): within a namespace
  two tokens share it only on a 128-bit collision of SHA-256; across namespaces the tags' difference is public, so
  matching a *given* token of another namespace is a 128-bit preimage and any two tokens of two namespaces a 2^64
  birthday search, the same margins as v2's 128-bit identity (docs/security.md, "Cache keys").

Compared with v2, a key in Redis now shows the token's SHA-256 (v2 showed a hash of it). That is the value the purge
takes and DPoP's ``ath`` carries: not a secret, and the token cannot be found from it.

Versions: a change of format changes ``VERSION``. ``v2_key`` and ``legacy_key`` derive the v2 and v1 keys of a token
so that a purge during a rolling upgrade reaches entries written by older replicas too (``cache/purge.py``;
docs/scaling.md "Upgrading: the cache-key format").

Invariants: the engine (on every request) and the purge derive keys here and nowhere else, so they always agree;
pure functions, no I/O. Compiled with the engine (``phantom_token/compiled.py``): it calls them per request.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final

from phantom_token._native import read_i64_le
from phantom_token.config.settings import PluginConfig

if TYPE_CHECKING:
    from mypy_extensions import i64

VERSION = b"phantom-token cache key v3\x00"  # folded into every tag: a new format, new keys
V2_VERSION = b"phantom-token cache key v2\x00"
TAG_BYTES: Final = 16
KEY_BYTES: Final = 32 + TAG_BYTES  # a v3 key: the token's SHA-256, then the namespace's tag


_SHA256: Final = hashlib.sha256  # read as a C static when compiled, not looked up in hashlib per request


def token_digest(token: str) -> bytes:
    """SHA-256 of the token (its hex form is what ``POST /cache/purge`` accepts as ``token_sha256``)."""
    return _SHA256(token.encode("ascii")).digest()


def ascii_digest(data: bytes) -> bytes:
    """``token_digest`` of the token whose ASCII bytes are ``data`` (``BearerToken.data``: already encoded by the
    syntax check, so not encoded a second time)."""
    return _SHA256(data).digest()


def namespace_tag(namespace: bytes) -> bytes:
    """The 16-byte tag that stands for a namespace (and the format version) in its keys; computed once per plugin."""
    return hashlib.sha256(VERSION + namespace).digest()[:TAG_BYTES]


def tagged_key(tag: bytes, digest: bytes) -> bytes:
    """The cache key of a token whose SHA-256 is ``digest``, under the namespace whose ``namespace_tag`` is ``tag``
    (the per-request step: one concatenation; the tag goes last)."""
    return digest + tag


def identity(key: bytes) -> tuple[i64, i64]:
    """A v3 key's 128 bits for the memory table (``cache/memory.py``): the digest's first 128 bits XOR the tag, so
    both the token and the namespace are in them. Only for ``KEY_BYTES``-long keys."""
    return read_i64_le(key, 0) ^ read_i64_le(key, 32), read_i64_le(key, 8) ^ read_i64_le(key, 40)


def namespaced_key(namespace: bytes, digest: bytes) -> bytes:
    """The cache key of a token whose SHA-256 is ``digest``, under one endpoint/client namespace."""
    return tagged_key(namespace_tag(namespace), digest)


def v2_key(namespace: bytes, digest: bytes) -> bytes:
    """The key format v2 gave the same token: ``blake2s(sha256(V2_VERSION + namespace) + digest)``. Only the purge
    uses it, so entries written by replicas not yet upgraded are removed too."""
    return hashlib.blake2s(hashlib.sha256(V2_VERSION + namespace).digest() + digest).digest()


def legacy_key(namespace: bytes, digest: bytes) -> bytes:
    """The key format v1 gave the same token: ``sha256(namespace + digest)``. Only the purge uses it."""
    return hashlib.sha256(namespace + digest).digest()


def cache_key(plugin: PluginConfig, token: str) -> bytes:
    """The key of a token's entry under a plugin's namespace: derived from its SHA-256, never the token itself."""
    return namespaced_key(plugin.cache_namespace, token_digest(token))


__all__ = ["KEY_BYTES", "TAG_BYTES", "V2_VERSION", "VERSION", "ascii_digest", "cache_key", "identity", "legacy_key",
           "namespace_tag", "namespaced_key", "tagged_key", "token_digest", "v2_key"]
