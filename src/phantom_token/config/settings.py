"""Frozen, typed settings: what the rest of the program sees of the configuration file.

Invariants: every value here has been validated; secrets are already resolved from vault references;
nothing in here is mutable after start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

DEFAULT_LISTEN = "127.0.0.1:3000"


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """The ``phantom-token`` plugin's ``config`` block, as in the Lua original plus this project's options."""

    introspection_endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    token_cache_seconds: int = 300
    scope: tuple[str, ...] = ()  # every listed scope is required; empty: no scope check
    verify_ssl: bool = True
    realm: str | None = None
    run_on_preflight: bool = False
    max_token_length: int = 4096
    introspection_timeout_seconds: float = 5.0
    negative_cache_seconds: int = 5  # how long an inactive answer is remembered; 0: not at all

    @property
    def cache_namespace(self) -> bytes:
        """What namespaces cache keys: the same token at two endpoints or clients is two entries."""
        return f"{self.introspection_endpoint}\x00{self.client_id}\x00".encode()


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    """A Kong route ``headers`` condition: any of ``literals`` (case-insensitive) or ``patterns`` matches."""

    name: str  # lower case
    literals: frozenset[str] = frozenset()  # lower-cased literal values
    patterns: tuple[re.Pattern[str], ...] = ()  # from '~*regex' values, compiled case-insensitive


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a service's requests go: parsed from the service ``url`` (or protocol/host/port/path)."""

    scheme: str  # 'http' or 'https'
    host: str
    port: int
    path: str = "/"  # base path, always starts with '/'


@dataclass(frozen=True, slots=True)
class Route:
    """One Kong route with the plugin that applies to it (route plugin overrides the service plugin)."""

    name: str
    service: str
    upstream: Upstream | None  # None only when the file is used by `authz`, which proxies nothing
    paths: tuple[str, ...] = ()  # prefixes; a path starting with '~' is a regex (Kong 3 syntax)
    methods: frozenset[str] = frozenset()  # upper case; empty: any
    hosts: tuple[str, ...] = ()  # lower case; '*.example.com' / 'example.*' wildcards; empty: any
    headers: tuple[HeaderCondition, ...] = ()
    strip_path: bool = True
    preserve_host: bool = False
    plugin: PluginConfig | None = None  # None: proxied without authentication
    regex_priority: int = 0  # Kong: orders this route's regex paths against other regex paths (higher first)


DEFAULT_KEY_PREFIX = "phantom-token:"
MIN_ENCRYPTION_KEY_CHARS = 32


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """``phantom_token.cache``: the in-process L1 bounds and the optional shared Redis L2 (docs/scaling.md)."""

    max_entries: int = 100_000
    negative_max_entries: int = 10_000  # inactive tokens, bounded apart so junk cannot evict good entries
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    key_prefix: str = DEFAULT_KEY_PREFIX
    encryption_key: str | None = field(default=None, repr=False)  # AES-256-GCM key material (>= 32 chars)
    redis_timeout_seconds: float = 0.25  # per Redis command; a slower Redis is treated as down


@dataclass(frozen=True, slots=True)
class Settings:
    """The process-wide ``phantom_token:`` section plus the parsed routes."""

    routes: tuple[Route, ...]
    source: str = "<memory>"  # the file the settings came from, for messages
    listen: str = DEFAULT_LISTEN
    admin_listen: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    workers: int = 1
    log_format: str = "text"  # 'text' or 'json'
    log_level: str = "info"
    cache: CacheSettings = CacheSettings()
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    upstream_timeout_seconds: float = 60.0
    upstream_connect_timeout_seconds: float = 5.0
    max_header_bytes: int = 65536
