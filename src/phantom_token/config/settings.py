"""Frozen, typed settings: what the rest of the program sees of the configuration file.

Invariants: every value here has been validated; secrets are already resolved from vault references;
nothing in here is mutable after start-up. Every option's default is written here and nowhere else: the option
tables (``config/plugin_options.py``, ``config/process_options.py``) read them from these fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

DEFAULT_LISTEN = "127.0.0.1:3000"
LISTEN_OFF = "off"  # `listen`: no HTTP listener (`authz` with only its gRPC listener)
# The plugin's `introspection_response`: Curity's JWT, RFC 7662 JSON, RFC 9701 signed JWT.
RESPONSE_MODES: tuple[str, ...] = ("jwt", "json", "signed")
# The plugin's `client_auth_method` (introspection/client_auth.py implements each): the one list of them.
CLIENT_AUTH_METHODS: tuple[str, ...] = (
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "tls_client_auth",
)
# The plugin's `dpop` (RFC 9449): `allowed` (bearer tokens as Bearer, DPoP-bound ones as DPoP) or `required`.
DPOP_MODES: tuple[str, ...] = ("allowed", "required")
DPOP_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "ES512", "PS256", "RS256", "EdDSA")
# The plugin's `client_cert_header`: where a trusted proxy puts the client certificate (RFC 9440; Envoy's XFCC).
CLIENT_CERT_HEADERS: tuple[str, ...] = ("Client-Cert", "X-Forwarded-Client-Cert")
# `phantom_token.tls.client_certificate`: whether `serve` asks TLS clients for a certificate.
CLIENT_CERTIFICATE_MODES: tuple[str, ...] = ("none", "optional", "required")
# Who may tell `authz` the original request (X-Original-*/X-Forwarded-*) when the file does not say: loopback.
# A `jwt_issuers` item's `algorithms` when it names none: asymmetric only (phantom_token.jose refuses none and HMAC).
DEFAULT_JWT_ALGORITHMS: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
# RFC 8693 token types: what the gateway asks for by default, and what it says the client's token is.
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
DEFAULT_TRUSTED_PROXIES: tuple[IPv4Network | IPv6Network, ...] = (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))


@dataclass(frozen=True, slots=True)
class JwtIssuer:
    """A ``jwt_issuers`` item: JWT access tokens this issuer signs are verified here, never introspected."""

    issuer: str  # the token's `iss`, exactly
    jwks_uri: str | None = None  # None: from the issuer's metadata (RFC 8414 / OpenID Connect discovery)
    audience: str | None = None  # the token's `aud` must contain it (None: the plugin's `audience`, then required)
    algorithms: tuple[str, ...] = DEFAULT_JWT_ALGORITHMS


@dataclass(frozen=True, slots=True)
class TokenExchange:
    """The plugin's ``token_exchange`` block: after a successful introspection the client's token is exchanged
    (RFC 8693) for one meant for this upstream, and that one is forwarded (``introspection.exchange``)."""

    audience: str | None = None
    resource: str | None = None  # an absolute URI (RFC 8693 section 2.1)
    scope: str | None = None
    requested_token_type: str = TOKEN_TYPE_JWT
    token_endpoint: str | None = None  # None: the issuer's metadata's token_endpoint


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
    # Standards-based authorization servers (docs/authorization-servers/):
    introspection_response: str = "jwt"  # one of RESPONSE_MODES
    issuer: str | None = None  # the AS issuer: discovery (RFC 8414) and the `iss` of signed responses
    jwks_uri: str | None = None  # the AS's JWKS (signed mode); discovered from `issuer` when omitted
    audience: str | None = None  # the token's `aud` must contain it
    issuer_allowed: tuple[str, ...] = ()  # the token's `iss` must be one of them; empty: any
    clock_skew_seconds: int = 60
    honor_cache_control: bool = True  # false: ignore the answer's Cache-Control (servers that always say no-store)
    client_auth_method: str = "client_secret_basic"  # one of CLIENT_AUTH_METHODS
    client_private_key_file: str | None = None  # private_key_jwt (RFC 7523)
    client_private_key_id: str | None = None  # the assertion header's `kid`; unset: no `kid` is sent
    client_assertion_audience: str | None = None  # default: `issuer`, else the introspection endpoint
    client_cert_file: str | None = None  # tls_client_auth (RFC 8705)
    client_key_file: str | None = None
    ca_file: str | None = None  # trust store for the AS (default: the system's)
    # Several authorization servers and JWT issuers (docs/authorization-servers/several.md). A plugin with either
    # has its servers here, one PluginConfig each (the route's options with that server's; the first is this
    # plugin's own); () for a plugin of one server and no JWT issuers (the common case: nothing changes).
    authorization_servers: tuple[PluginConfig, ...] = ()
    token_prefix: str | None = None  # in a server of `authorization_servers`: the tokens it alone is asked about
    jwt_issuers: tuple[JwtIssuer, ...] = ()
    # What each API receives (issue 16): claims as request headers ((Header-Name, claim.path), in order) and RFC 8693
    # token exchange. Both change what is cached for a token, so both join the cache namespace when set.
    claims_to_headers: tuple[tuple[str, str], ...] = ()
    token_exchange: TokenExchange | None = None
    # DPoP (RFC 9449; core/dpop.py, docs/sender-constrained.md):
    dpop: str = "allowed"  # one of DPOP_MODES
    dpop_signing_alg_values: tuple[str, ...] = DPOP_ALGORITHMS
    dpop_proof_lifetime_seconds: int = 300
    dpop_nonce: bool = False  # require server nonces (phantom_token.dpop_nonce_secret keys them)
    forward_dpop_proof: bool = False  # false: the DPoP header is removed before the request goes upstream
    client_cert_header: str | None = None  # one of CLIENT_CERT_HEADERS, read from trusted proxies only (RFC 8705)

    @property
    def mints_jwt(self) -> bool:
        """True when the gateway signs the JWT that goes upstream (the AS answers claims, not a JWT)."""
        return self.introspection_response != "jwt" or any(s.mints_jwt for s in self.authorization_servers)

    @property
    def endpoint_label(self) -> str:
        """The introspection endpoint for log lines (a discovered one is named by its issuer)."""
        return self.introspection_endpoint or f"<discovered from {self.issuer}>"

    @property
    def cache_namespace(self) -> bytes:
        """What namespaces cache keys: the same token at two endpoints or clients is two entries.

        Options that change the cached answer (mode, audience, issuers, claims_to_headers, token_exchange) join the
        namespace when set, so two routes that share an endpoint and client but check different claims (or shape
        the request differently) never share an entry.
        """
        if self.authorization_servers:
            return self._routed_namespace()
        base = f"{self.introspection_endpoint or self.issuer}\x00{self.client_id}\x00"
        if self.mints_jwt or self.audience is not None or self.issuer_allowed:
            base += f"{self.introspection_response}\x00{self.audience}\x00{' '.join(self.issuer_allowed)}\x00"
        if self.claims_to_headers:
            base += "headers\x00" + "\x01".join(f"{name.lower()}={path}" for name, path in self.claims_to_headers)
        exchange = self.token_exchange
        if exchange is not None:
            base += (f"exchange\x00{exchange.audience}\x01{exchange.resource}\x01{exchange.scope}\x01"
                     f"{exchange.requested_token_type}\x01{exchange.token_endpoint}\x00")
        return base.encode()

    def _routed_namespace(self) -> bytes:
        """A plugin with several servers or JWT issuers caches each token's outcome (whichever server answered, or
        the JWT's verification) under its own namespace, beside each server's answers under that server's."""
        parts = [b"servers\x00"]
        for server in self.authorization_servers:
            parts.append(server.cache_namespace + f"{server.token_prefix}\x00".encode())
        for jwt in self.jwt_issuers:
            parts.append(f"jwt\x00{jwt.issuer}\x00{jwt.jwks_uri}\x00{jwt.audience}\x00{' '.join(jwt.algorithms)}"
                         f"\x00{self.audience}\x00{' '.join(self.issuer_allowed)}\x00".encode())
        return b"".join(parts)


def introspection_servers(plugin: PluginConfig) -> tuple[PluginConfig, ...]:
    """The servers a plugin introspects at: its ``authorization_servers``, or the plugin itself."""
    return plugin.authorization_servers or (plugin,)


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
class JwtSettings:
    """``phantom_token.jwt``: how the gateway signs the JWTs it mints (``json`` and ``signed`` modes; RFC 9068)."""

    issuer: str | None = None  # `iss` of minted JWTs; required when a route mints
    key_file: str | None = None  # PEM private key; None: generated at start (replicas do not share it)
    alg: str | None = None  # default from the key: ES256 (P-256), RS256, EdDSA
    kid: str | None = None  # default: the key's RFC 7638 thumbprint
    previous_key_file: str | None = None  # rotation: still published in the JWKS, never signs
    previous_kid: str | None = None
    max_lifetime_seconds: int = 3600  # a minted JWT also never outlives the token's own exp


@dataclass(frozen=True, slots=True)
class GrpcTlsSettings:
    """``phantom_token.grpc_tls``: TLS on the gRPC ext_authz listener (off unless ``cert_file`` is set)."""

    cert_file: str | None = None  # PEM certificate chain the listener presents
    key_file: str | None = None  # its PEM private key
    client_ca_file: str | None = None  # set: every client must present a certificate signed by these CAs


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """``phantom_token.tls``: TLS on the ``serve``/``authz`` HTTP listener (off unless ``cert_file`` is set)."""

    cert_file: str | None = None  # PEM certificate chain the listener presents
    key_file: str | None = None  # its PEM private key
    client_ca_file: str | None = None  # the CAs that sign the client certificates asked for
    client_certificate: str = "none"  # one of CLIENT_CERTIFICATE_MODES


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
    access_log: bool = False  # one line per request on the phantom_token.access logger (costs on the hot path)
    cache: CacheSettings = CacheSettings()
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = DEFAULT_TRUSTED_PROXIES  # (): trust nobody
    upstream_timeout_seconds: float = 60.0
    upstream_connect_timeout_seconds: float = 5.0
    max_header_bytes: int = 65536
    max_body_bytes: int = 0  # largest request body accepted (413 beyond it); 0: no limit
    send_timeout_seconds: float = 60.0  # a client that reads none of a response for this long is disconnected
    jwt: JwtSettings = JwtSettings()
    grpc_listen: str | None = None  # `authz`'s Envoy gRPC ext_authz listener; None: off
    grpc_tls: GrpcTlsSettings = GrpcTlsSettings()
    public_base_url: str | None = None  # scheme://authority clients use (DPoP htu); None: the listener and Host
    dpop_nonce_secret: str | None = field(default=None, repr=False)  # keys DPoP nonces; replicas share it
    tls: TlsSettings = TlsSettings()
