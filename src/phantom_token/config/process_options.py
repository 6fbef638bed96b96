"""The process-wide ``phantom_token:`` section, with its ``cache`` and ``jwt`` subsections: each option once.

Internal to ``phantom_token.config``. ``SECTION_OPTIONS`` (with ``CACHE_OPTIONS`` and ``JWT_OPTIONS`` nested in
it) declares every option; the defaults are those of ``Settings``, ``CacheSettings`` and ``JwtSettings``.
``parse_section`` reads the section into ``Settings``, given the routes already parsed.

Invariants:
- ``jwt.issuer`` is required exactly when some route mints JWTs (``introspection_response`` json or signed), which
  is why the routes are parsed first.
- ``cache.encryption_key`` only applies with ``cache.redis_url`` and has at least ``MIN_ENCRYPTION_KEY_CHARS``
  characters; neither it nor ``redis_url`` (which may carry a password) nor ``admin_token`` ever appears in a
  message.
- The key files named in ``jwt`` are not opened here: each is recorded as a ``Need`` (``config.material`` reads
  them after parsing, and reports a bad one where its option is read).
- Problems are recorded in the order the options are read below (the order ``phantom-token check`` prints them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any
from urllib.parse import urlsplit

from phantom_token.config.fields import Block, Context, url_parts
from phantom_token.config.material import KeyFile, Need
from phantom_token.config.options import Option, OptionTable
from phantom_token.config.settings import (
    CLIENT_CERTIFICATE_MODES,
    DEFAULT_TRUSTED_PROXIES,
    LISTEN_OFF,
    MIN_ENCRYPTION_KEY_CHARS,
    CacheSettings,
    GrpcTlsSettings,
    JwtSettings,
    Route,
    Settings,
    TlsSettings,
)

__all__ = ["CACHE_OPTIONS", "GRPC_TLS_OPTIONS", "JWT_OPTIONS", "LOG_FORMATS", "LOG_LEVELS", "SECTION_OPTIONS",
           "TLS_OPTIONS", "parse_section"]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
_KEY = "readable PEM private key"

CACHE_OPTIONS = OptionTable(
    CacheSettings,
    "cache.",
    (
        Option("max_entries", "integer",
               "entries in the in-memory token cache (CLOCK eviction: not used lately goes first)", low=1),
        Option("negative_max_entries", "integer",
               "inactive-token entries in memory, bounded apart so junk tokens cannot evict good ones", low=1),
        Option("redis_url", "text",
               "a shared Redis/Valkey behind the in-memory cache ([scaling](scaling.md)); a vault reference is fine",
               non_empty=True, shown_type=", ".join(f"`{scheme}://`" for scheme in _REDIS_SCHEMES) + " URL",
               shown_default="off"),
        Option("key_prefix", "text", "prefix of every Redis key and of the events channel"),
        Option("encryption_key", "text",
               "encrypts entries in Redis (AES-256-GCM, key from HKDF-SHA256); use a vault reference",
               non_empty=True, shown_type=f"string ≥ {MIN_ENCRYPTION_KEY_CHARS} characters", shown_default="off"),
        Option("redis_timeout_seconds", "number", "per Redis command; a slower Redis is treated as down"),
    ),
)  # fmt: skip

JWT_OPTIONS = OptionTable(
    JwtSettings,
    "jwt.",
    (
        Option("issuer", "text", "`iss` of the JWTs the gateway mints", non_empty=True,
               shown_default="required when a route uses `json`/`signed`"),
        Option("key_file", "text", "signs minted JWTs", non_empty=True,
               shown_type=f"{_KEY} (EC P-256/384/521, RSA ≥ 2048, Ed25519)",
               shown_default="generated at start, with a warning"),
        Option("alg", "text", "must fit the key", non_empty=True, shown_type="ES256, ES384, ES512, RS256…PS512, EdDSA",
               shown_default="from the key"),
        Option("kid", "text", "`kid` of minted JWTs", non_empty=True, shown_default="RFC 7638 thumbprint"),
        Option("previous_key_file", "text", "a retired key, still published in the JWKS (never signs)", non_empty=True,
               shown_type=_KEY),
        Option("previous_kid", "text", "the retired key's `kid`", non_empty=True),
        Option("max_lifetime_seconds", "integer",
               "a minted JWT lives at most this long (and never past the token's `exp`)", low=1, high=86400),
    ),
)  # fmt: skip

GRPC_TLS_OPTIONS = OptionTable(
    GrpcTlsSettings,
    "grpc_tls.",
    (
        Option("cert_file", "text", "TLS on the gRPC listener: its certificate chain (with `key_file`)", non_empty=True,
               shown_type="PEM certificate", shown_default="off (plaintext, h2c)"),
        Option("key_file", "text", "the certificate's private key", non_empty=True, shown_type="PEM private key",
               shown_default="required with `cert_file`"),
        Option("client_ca_file", "text", "set: every gRPC client must present a certificate these CAs signed (mTLS)",
               non_empty=True, shown_type="PEM CA bundle", shown_default="client certificates not asked"),
    ),
)  # fmt: skip

TLS_OPTIONS = OptionTable(
    TlsSettings,
    "tls.",
    (
        Option("cert_file", "text", "TLS on the `serve`/`authz` listener (ALPN `http/1.1`): its certificate chain "
               "(with `key_file`)", non_empty=True, shown_type="PEM certificate", shown_default="off (plain HTTP)"),
        Option("key_file", "text", "the certificate's private key", non_empty=True, shown_type="PEM private key",
               shown_default="required with `cert_file`"),
        Option("client_ca_file", "text", "the CAs whose client certificates are accepted", non_empty=True,
               shown_type="PEM CA bundle", shown_default="required unless `client_certificate` is `none`"),
        Option("client_certificate", "text",
               "ask TLS clients for a certificate (RFC 8705 certificate-bound tokens): `optional` accepts "
               "connections without one; `required` answers their requests 400 (as nginx's "
               "`ssl_verify_client on`); a certificate the CAs did not sign fails the handshake",
               choices=CLIENT_CERTIFICATE_MODES),
    ),
)  # fmt: skip

SECTION_OPTIONS = OptionTable(
    Settings,
    "",
    (
        Option("listen", "text", "where `serve`/`authz` listen (`--listen` overrides); `'off'`: `authz` answers "
               "on its `grpc_listen` only", shown_type="`HOST:PORT` (IPv6 as `[::1]:3000`) or `'off'`"),
        Option("admin_listen", "text", "the admin listener", shown_type="`HOST:PORT`", shown_default="off"),
        Option("admin_token", "text", "bearer token every admin request needs", non_empty=True),
        Option("workers", "integer", "processes sharing the port", low=1, high=1024),
        Option("log_format", "text", "how log lines are written: plain text or one JSON object each",
               choices=LOG_FORMATS),
        Option("log_level", "text", "any case", choices=LOG_LEVELS),
        Option("access_log", "flag",
               "one line per request on the `phantom_token.access` logger (`--access-log` turns it on): route, "
               "method, path without the query, status, outcome, token fingerprint, durations, request id; off by "
               "default, as it costs on the hot path"),
        Option("cache", "section", "", table=CACHE_OPTIONS),
        Option("trusted_proxies", "custom",
               "the gateways `authz` answers (every endpoint; anyone else gets 403), and the proxies whose "
               "`client_cert_header` `serve` believes; `[]` trusts nobody. Host bits are ignored (`10.1.2.3/8` is "
               "`10.0.0.0/8`)", shown_type="list of IPs or CIDRs"),
        Option("upstream_timeout_seconds", "number", "how long the upstream may take to answer"),
        Option("upstream_connect_timeout_seconds", "number", "how long connecting to the upstream may take"),
        Option("max_header_bytes", "integer", "largest request head accepted", low=1024, high=16 * 1024 * 1024),
        Option("max_body_bytes", "integer",
               "largest request body `serve` accepts; 0: no limit. A larger `Content-Length` is answered 413 before "
               "anything goes upstream; a chunked body that grows past it is cut off with 413 (or, once the "
               "upstream's answer has begun, by closing the connection)", low=0),
        Option("send_timeout_seconds", "number",
               "a client that reads nothing of a response for this long is disconnected (nginx's `send_timeout`)"),
        Option("jwt", "section", "", table=JWT_OPTIONS),
        Option("grpc_listen", "text",
               "`authz`'s Envoy gRPC ext_authz listener (`--grpc-listen` overrides); next to the HTTP one",
               shown_type="`HOST:PORT`", shown_default="off"),
        Option("grpc_tls", "section", "", table=GRPC_TLS_OPTIONS),
        Option("public_base_url", "text",
               "`scheme://host[:port]` clients use to reach the gateway: the URL a DPoP proof's `htu` must name "
               "([sender-constrained tokens](sender-constrained.md))", shown_type="http(s) URL without a path",
               shown_default="the listener's scheme and `Host` (`X-Forwarded-Proto`/`-Host` from `trusted_proxies`)"),
        Option("dpop_nonce_secret", "text",
               "keys the stateless DPoP nonces (HMAC); every replica must have the same; use a vault reference",
               non_empty=True, shown_type=f"string ≥ {MIN_ENCRYPTION_KEY_CHARS} characters",
               shown_default="generated at start, with a warning (required with `workers` > 1 or `redis_url`)"),
        Option("tls", "section", "", table=TLS_OPTIONS),
    ),
    not_options=("routes", "source"),
)  # fmt: skip
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")


def parse_section(ctx: Context, raw: Mapping[Any, Any], routes: tuple[Route, ...]) -> Settings:
    """The ``phantom_token:`` mapping (``{}`` when the file has none) and the routes, as ``Settings``."""
    opts = SECTION_OPTIONS
    block = Block(ctx, "phantom_token", raw, opts.names)
    listen = _listen(block, "listen", LISTEN_OFF) or str(opts.default("listen"))
    admin_listen = _listen(block, "admin_listen")
    log_format = opts.word(block, "log_format")
    if log_format not in LOG_FORMATS:
        block.problem("log_format", "must be " + " or ".join(LOG_FORMATS))
    log_level = opts.word(block, "log_level").lower()
    if log_level not in LOG_LEVELS:
        block.problem("log_level", "must be one of " + ", ".join(LOG_LEVELS))
    return Settings(
        routes=routes,
        source=ctx.source,
        listen=listen,
        admin_listen=admin_listen,
        admin_token=opts.text(block, "admin_token"),
        workers=opts.integer(block, "workers"),
        log_format=log_format,
        log_level=log_level,
        access_log=opts.flag(block, "access_log"),
        cache=_cache(block),
        trusted_proxies=_trusted_proxies(block),
        upstream_timeout_seconds=opts.number(block, "upstream_timeout_seconds"),
        upstream_connect_timeout_seconds=opts.number(block, "upstream_connect_timeout_seconds"),
        max_header_bytes=opts.integer(block, "max_header_bytes"),
        max_body_bytes=opts.integer(block, "max_body_bytes"),
        send_timeout_seconds=opts.number(block, "send_timeout_seconds"),
        jwt=_jwt(block, routes),
        grpc_listen=_listen(block, "grpc_listen"),
        grpc_tls=_grpc_tls(block),
        public_base_url=_public_base_url(block),
        dpop_nonce_secret=_dpop_nonce_secret(block, routes),
        tls=_tls(block),
    )


def _public_base_url(block: Block) -> str | None:
    value = SECTION_OPTIONS.text(block, "public_base_url")
    if value is None:
        return None
    parts = url_parts(block, "public_base_url", value, http=True)
    if parts is None:
        return None
    if parts.username is not None:
        block.problem("public_base_url", "must be an http:// or https:// URL with a host")
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        block.problem("public_base_url", "must be scheme://host[:port] only (no path, query or fragment)")
        return None
    return value.rstrip("/")


def _dpop_nonce_secret(block: Block, routes: tuple[Route, ...]) -> str | None:
    """Required when a route asks for DPoP nonces and several processes answer (``workers`` > 1, or a shared
    Redis: replicas); a single process without it generates one at start, with a warning."""
    secret = SECTION_OPTIONS.text(block, "dpop_nonce_secret")
    nonces = any(route.plugin is not None and route.plugin.dpop_nonce for route in routes)
    cache = block.data.get("cache")
    replicated = block.data.get("workers") not in (None, 1) or (isinstance(cache, dict) and "redis_url" in cache)
    if secret is None and nonces and replicated:
        block.problem("dpop_nonce_secret",
                      "is required when a route sets dpop_nonce and several processes answer (workers or redis_url)")
    if secret is not None and len(secret) < MIN_ENCRYPTION_KEY_CHARS:
        block.problem("dpop_nonce_secret",
                      f"must be at least {MIN_ENCRYPTION_KEY_CHARS} characters (e.g. from openssl rand -base64 32)")
    return secret


def _listen(block: Block, key: str, off: str | None = None) -> str | None:
    value = block.text(key)
    if value is None or value == off:
        return value
    found = _LISTEN.fullmatch(value)
    if found is None or int(found["port"]) > 65535:
        block.problem(key, "must be HOST:PORT (an IPv6 host in brackets: [::1]:3000)")
        return None
    host = found["host"]
    if host.startswith("["):
        try:
            ip_address(host[1:-1])
        except ValueError:
            block.problem(key, "has an invalid IPv6 address")
            return None
    return value


def _grpc_tls(block: Block) -> GrpcTlsSettings:
    """``phantom_token.grpc_tls``: the certificate and its key are named together; the files are recorded as a
    ``Need`` (``config.material`` reads them, as ``check`` and start-up do for every key and TLS file)."""
    raw = block.mapping("grpc_tls")
    if raw is None:
        return GrpcTlsSettings()
    opts = GRPC_TLS_OPTIONS
    tls = Block(block.ctx, block.where, raw, opts.names, prefix="grpc_tls.")
    cert_file, key_file = opts.text(tls, "cert_file"), opts.text(tls, "key_file")
    client_ca_file = opts.text(tls, "client_ca_file")
    if cert_file is not None and key_file is None:
        tls.problem("key_file", "is required with cert_file")
    if key_file is not None and cert_file is None:
        tls.problem("cert_file", "is required with key_file")
    if client_ca_file is not None and cert_file is None:
        tls.problem("client_ca_file", "needs cert_file and key_file (client certificates are asked over TLS)")
    settings = GrpcTlsSettings(cert_file=cert_file, key_file=key_file, client_ca_file=client_ca_file)
    if cert_file is not None and key_file is not None:
        tls.ctx.needs.append(Need(tls.where, "grpc_tls.", "cert_file", settings, len(tls.ctx.problems)))
    return settings


def _tls(block: Block) -> TlsSettings:
    """``phantom_token.tls``: as ``grpc_tls``, plus whether client certificates are asked (which needs their CAs)."""
    raw = block.mapping("tls")
    if raw is None:
        return TlsSettings()
    opts = TLS_OPTIONS
    tls = Block(block.ctx, block.where, raw, opts.names, prefix="tls.")
    cert_file, key_file = opts.text(tls, "cert_file"), opts.text(tls, "key_file")
    client_ca_file = opts.text(tls, "client_ca_file")
    mode = opts.word(tls, "client_certificate")
    if cert_file is None:
        tls.problem("cert_file", "is required in tls (the listener's certificate)")
    if key_file is None:
        tls.problem("key_file", "is required in tls (the certificate's private key)")
    if mode not in CLIENT_CERTIFICATE_MODES:
        tls.problem("client_certificate", "must be none, optional or required")
    elif mode != "none" and client_ca_file is None:
        tls.problem("client_ca_file", f"is required when client_certificate is {mode}")
    elif mode == "none" and client_ca_file is not None:
        tls.problem("client_ca_file", "is only used when client_certificate is optional or required")
    settings = TlsSettings(cert_file=cert_file, key_file=key_file, client_ca_file=client_ca_file,
                           client_certificate=mode)
    if cert_file is not None and key_file is not None:
        tls.ctx.needs.append(Need(tls.where, "tls.", "cert_file", settings, len(tls.ctx.problems)))
    return settings


def _redis_url_problem(url: str) -> str | None:
    """What is wrong with a Sentinel or Cluster URL's shape (docs/scaling.md), never quoting it (a password)."""
    parts = urlsplit(url)
    hosts = [item for item in parts.netloc.rpartition("@")[2].split(",") if item]
    path = [piece for piece in parts.path.split("/") if piece]
    if any(not item.rpartition(":")[2].isdigit() for item in hosts if ":" in item and not item.endswith("]")):
        return "a node's port is not a number"
    if parts.scheme.endswith("+sentinel") and (not hosts or not path or len(path) > 2):
        return "a Sentinel URL is redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]"
    if parts.scheme.endswith("+cluster") and (not hosts or path not in ([], ["0"]) or parts.query):
        return "a Cluster URL is redis+cluster://[[user]:password@]host:port[,host:port...] (no database, no options)"
    return None


def _cache(block: Block) -> CacheSettings:
    raw = block.mapping("cache")
    if raw is None:
        return CacheSettings()
    opts = CACHE_OPTIONS
    cache = Block(block.ctx, block.where, raw, opts.names, prefix="cache.")
    redis_url = opts.text(cache, "redis_url")
    if redis_url is not None and urlsplit(redis_url).scheme not in _REDIS_SCHEMES:
        schemes = ", ".join(f"{scheme}://" for scheme in _REDIS_SCHEMES)
        cache.problem("redis_url", f"must be a URL with one of the schemes {schemes}")
    elif redis_url is not None:
        problem = _redis_url_problem(redis_url)
        if problem is not None:
            cache.problem("redis_url", problem)
    encryption_key = opts.text(cache, "encryption_key")
    if encryption_key is not None and len(encryption_key) < MIN_ENCRYPTION_KEY_CHARS:
        why = f"must be at least {MIN_ENCRYPTION_KEY_CHARS} characters (e.g. from openssl rand -base64 32)"
        cache.problem("encryption_key", why)
    if encryption_key is not None and redis_url is None:
        cache.problem("encryption_key", "only applies to the shared store: set redis_url too")
    return CacheSettings(
        max_entries=opts.integer(cache, "max_entries"),
        negative_max_entries=opts.integer(cache, "negative_max_entries"),
        redis_url=redis_url,
        key_prefix=opts.word(cache, "key_prefix"),
        encryption_key=encryption_key,
        redis_timeout_seconds=opts.number(cache, "redis_timeout_seconds"),
    )


def _trusted_proxies(block: Block) -> tuple[IPv4Network | IPv6Network, ...]:
    items = block.texts("trusted_proxies")
    if items is None:
        return DEFAULT_TRUSTED_PROXIES
    out = []
    for i, item in enumerate(items):
        try:
            out.append(ip_network(item.strip(), strict=False))
        except ValueError:
            block.problem(f"trusted_proxies[{i}]", "must be an IP address or a CIDR block")
    return tuple(out)


def _jwt(block: Block, routes: tuple[Route, ...]) -> JwtSettings:
    """``phantom_token.jwt``: the keys the gateway signs minted JWTs with; ``issuer`` is required if a route mints."""
    mints = any(route.plugin is not None and route.plugin.mints_jwt for route in routes)
    raw = block.mapping("jwt")
    if raw is None:
        if mints:
            block.problem("jwt.issuer", "is required when a route sets introspection_response json or signed")
        return JwtSettings()
    opts = JWT_OPTIONS
    jwt = Block(block.ctx, block.where, raw, opts.names, prefix="jwt.")
    issuer = opts.text(jwt, "issuer", required=mints)
    from phantom_token.jose import SUPPORTED_ALGORITHMS

    alg = opts.text(jwt, "alg")
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        jwt.problem("alg", "must be one of " + ", ".join(sorted(SUPPORTED_ALGORITHMS)))
        alg = None
    key_file, at = opts.text(jwt, "key_file"), len(jwt.ctx.problems)
    previous_key_file, previous_at = opts.text(jwt, "previous_key_file"), len(jwt.ctx.problems)
    kid, previous_kid = opts.text(jwt, "kid"), opts.text(jwt, "previous_kid")
    if key_file is not None:
        jwt.ctx.needs.append(Need(jwt.where, "jwt.", "key_file", KeyFile(key_file, alg, kid), at))
    if previous_key_file is not None:
        previous = KeyFile(previous_key_file, None, previous_kid)
        jwt.ctx.needs.append(Need(jwt.where, "jwt.", "previous_key_file", previous, previous_at))
    return JwtSettings(
        issuer=issuer,
        key_file=key_file,
        alg=alg,
        kid=kid,
        previous_key_file=previous_key_file,
        previous_kid=previous_kid,
        max_lifetime_seconds=opts.integer(jwt, "max_lifetime_seconds"),
    )
