"""The ``phantom-token`` plugin's ``config`` block: each option declared once, and the rules between them.

Internal to ``phantom_token.config``. ``PLUGIN_OPTIONS`` declares every option (kind, bounds, documentation);
the defaults are ``PluginConfig``'s. ``parse_plugin_config`` reads one block into a ``PluginConfig``.

Invariants:
- The rules that tie options together live here: ``introspection_endpoint`` is required unless ``issuer`` is set;
  ``signed`` needs ``issuer``; ``client_secret`` is required by the ``client_secret_*`` methods; the key and
  certificate files belong to exactly one method each and are required by it.
- No file is opened here: each file the block names is recorded as a ``Need`` in the context (with the number of
  problems so far, so that a bad file is reported where its option is read), and ``config.material`` reads them
  all in one step after parsing. A bad file is still a configuration problem, never a failure at a request.
- A block with any problem gives None, never a half-valid ``PluginConfig``; problems are recorded in the order the
  options are read below (the order ``phantom-token check`` prints them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from phantom_token.config.fields import Block, Context, url_parts
from phantom_token.config.material import KeyFile, Need, TlsFiles
from phantom_token.config.options import Option, OptionTable
from phantom_token.config.settings import (
    CLIENT_AUTH_METHODS,
    CLIENT_CERT_HEADERS,
    DPOP_MODES,
    RESPONSE_MODES,
    PluginConfig,
)
from phantom_token.config.shaping import TOKEN_EXCHANGE_OPTIONS, shaping_options

__all__ = ["PLUGIN_OPTIONS", "parse_plugin_config"]

_URL = "`http://` or `https://` URL"
_KEY = "readable PEM private key"

PLUGIN_OPTIONS = OptionTable(
    PluginConfig,
    "",
    (
        Option("introspection_endpoint", "text", "the introspection endpoint",
               shown_type=_URL, shown_default="required unless `issuer` is set"),
        Option("client_id", "text", "the gateway's introspection client", non_empty=True, shown_default="required"),
        Option("client_secret", "text", "its secret; use a vault reference rather than the file", non_empty=True,
               shown_default="required for `client_secret_basic`/`_post`"),
        Option("token_cache_seconds", "integer",
               "longest time an answer is cached (also capped by `max-age` and the JWT's `exp`)", low=0),
        Option("scope", "custom", "every listed scope is required; none: no scope check",
               shown_type="string (space-separated) or list of strings"),
        Option("verify_ssl", "flag", "`false` skips TLS certificate checks for introspection (development only)"),
        Option("realm", "text", "adds `realm=\"…\"` to `WWW-Authenticate` challenges",
               shown_type="printable ASCII without `\"` or `\\`"),
        Option("run_on_preflight", "flag", "`OPTIONS` requests pass without a token unless true"),
        Option("max_token_length", "integer", "longer tokens get 401 without introspection", low=1, high=65536),
        Option("introspection_timeout_seconds", "number", "the introspection call's timeout"),
        Option("negative_cache_seconds", "integer",
               "how long an inactive answer is remembered (in memory and Redis, in its own bound); 0: not at all. "
               "Errors are never cached", low=0, high=3600),
        Option("introspection_response", "text",
               "what the AS answers: Curity's JWT, RFC 7662 JSON, RFC 9701 signed JWT "
               "([authorization servers](authorization-servers/README.md))", choices=RESPONSE_MODES),
        Option("issuer", "text", "the AS's issuer: discovery of omitted endpoints; required for `signed`",
               non_empty=True, shown_type="http(s) URL"),
        Option("jwks_uri", "text", "the AS's JWKS (`signed`)", non_empty=True, shown_type="http(s) URL",
               shown_default="discovered"),
        Option("audience", "text", "the token's `aud` must contain it", non_empty=True),
        Option("issuer_allowed", "custom", "the token's `iss` must be one of them",
               shown_type="string or list of strings"),
        Option("clock_skew_seconds", "integer", "tolerance for `nbf` and a signed answer's `iat`", low=0, high=3600),
        Option("honor_cache_control", "flag", "`false`: ignore the answer's `Cache-Control`"),
        Option("client_auth_method", "text", "how the gateway authenticates to the AS", choices=CLIENT_AUTH_METHODS),
        Option("client_private_key_file", "text", "signs the RFC 7523 client assertion", non_empty=True,
               shown_type=_KEY, shown_default="required for `private_key_jwt`"),
        Option("client_private_key_id", "text",
               "the assertion's `kid`; set it only to the `kid` the AS registered the key under (an AS that "
               "registered one refuses any other; without a `kid` it tries the client's keys)", non_empty=True,
               shown_default="none: no `kid`"),
        Option("client_assertion_audience", "text", "the assertion's `aud`", non_empty=True,
               shown_type="http(s) URL", shown_default="`issuer`, else the endpoint"),
        Option("client_cert_file", "text", "the TLS client certificate (RFC 8705)", non_empty=True,
               shown_type="readable PEM certificate", shown_default="required for `tls_client_auth`"),
        Option("client_key_file", "text", "the TLS client certificate's private key", non_empty=True,
               shown_type=_KEY, shown_default="required for `tls_client_auth`"),
        Option("ca_file", "text", "trust store for every call to the AS", non_empty=True,
               shown_type="readable PEM CA bundle", shown_default="system store"),
        Option("authorization_servers", "custom",
               "several authorization servers: each item takes the server options (`introspection_endpoint` or "
               "`issuer`, `jwks_uri`, `client_*`, `introspection_response`, `ca_file`, `verify_ssl`, "
               "`introspection_timeout_seconds`) and `token_prefix`; those options then appear only in the items "
               "([several servers](authorization-servers/several.md))",
               shown_type="list of mappings", shown_default="one: the options above"),
        Option("token_prefix", "text",
               "(an `authorization_servers` item) tokens starting with it are asked of this server alone; no two "
               "prefixes may overlap", non_empty=True, shown_default="none: asked in order"),
        Option("jwt_issuers", "custom",
               "JWT access tokens verified here, never introspected: items `issuer` (required), `jwks_uri` "
               "(default: discovered), `audience` (default: `audience` above; one is required), `algorithms` "
               "(default: `RS256`, `PS256`, `ES256`, `EdDSA`; asymmetric only)",
               shown_type="list of mappings", shown_default="none"),
        Option("claims_to_headers", "custom",
               "request headers made from the token's claims (`X-User-Id: sub`, `X-Tenant: org.id`); client copies "
               "are always removed ([shaping](shaping.md))", shown_type="mapping: header name → claim path"),
        Option("token_exchange", "section", "", table=TOKEN_EXCHANGE_OPTIONS),
        Option("dpop", "text",
               "DPoP (RFC 9449, [sender-constrained tokens](sender-constrained.md)): `allowed` takes unbound tokens as "
               "`Bearer` and DPoP-bound ones (`cnf.jkt`) as `DPoP` with a valid proof; `required` takes only "
               "DPoP-bound tokens with valid proofs", choices=DPOP_MODES),
        Option("dpop_signing_alg_values", "custom", "the algorithms a DPoP proof may be signed with",
               shown_type="string (space-separated) or list of ES256…ES512, RS256…PS512, EdDSA",
               shown_default="`ES256 ES384 ES512 PS256 RS256 EdDSA`"),
        Option("dpop_proof_lifetime_seconds", "integer",
               "how old a DPoP proof (its `iat`) may be, plus `clock_skew_seconds`; its `jti` is remembered as long",
               low=1, high=3600),
        Option("dpop_nonce", "flag",
               "require server nonces in DPoP proofs (401 `use_dpop_nonce` with a `DPoP-Nonce` header), keyed by "
               "`phantom_token.dpop_nonce_secret`"),
        Option("forward_dpop_proof", "flag", "`true`: the `DPoP` header goes upstream too (else it is removed)"),
        Option("client_cert_header", "text",
               "where a proxy in `trusted_proxies` passes the client certificate of certificate-bound tokens "
               "(RFC 8705): RFC 9440's `Client-Cert` or Envoy's `X-Forwarded-Client-Cert` (`Hash=`/`Cert=`); "
               "ignored from anyone else, and not forwarded by `serve` ([certificate-bound](certificate-bound.md))",
               choices=CLIENT_CERT_HEADERS, shown_default="none: the TLS client certificate `serve` received"),
    ),
)  # fmt: skip
_SECRET_METHODS = frozenset(method for method in CLIENT_AUTH_METHODS if method.startswith("client_secret_"))
_REALM = re.compile(r"[\x20-\x7e]*")


def parse_plugin_config(ctx: Context, where: str, raw: Mapping[Any, Any]) -> PluginConfig | None:
    """One plugin's ``config`` mapping; None (with the problems recorded) when anything in it is wrong."""
    if raw.get("authorization_servers") is not None or raw.get("jwt_issuers") is not None:
        from phantom_token.config.servers import parse_servers  # several servers, JWT issuers: their own module

        return parse_servers(ctx, where, raw)
    block = Block(ctx, where, raw, PLUGIN_OPTIONS.names, prefix="config.")
    if block.present("token_prefix"):
        block.problem("token_prefix", "is only used in an authorization_servers item")
    return parse_block(block)


def parse_block(block: Block) -> PluginConfig | None:
    """The ``PluginConfig`` of one block (a plugin's, or a server's of ``authorization_servers``), or None."""
    opts, ctx = PLUGIN_OPTIONS, block.ctx
    before = len(ctx.problems)
    endpoint = opts.text(block, "introspection_endpoint", required=not block.present("issuer"))
    if endpoint is not None:
        check_http_url(block, "introspection_endpoint", endpoint)
    client_id = opts.text(block, "client_id", required=True)
    method = opts.word(block, "client_auth_method")
    client_secret = opts.text(block, "client_secret", required=method in _SECRET_METHODS)
    realm = opts.text(block, "realm")
    if realm is not None and (not _REALM.fullmatch(realm) or '"' in realm or "\\" in realm):
        block.problem("realm", "must be printable ASCII without '\"' or '\\'")
    token_cache_seconds = opts.integer(block, "token_cache_seconds")
    scope = _scope(block)
    verify_ssl = opts.flag(block, "verify_ssl")
    config = PluginConfig(
        introspection_endpoint=endpoint or "",
        client_id=client_id or "",
        client_secret=client_secret or "",
        token_cache_seconds=token_cache_seconds,
        scope=scope,
        verify_ssl=verify_ssl,
        realm=realm,
        run_on_preflight=opts.flag(block, "run_on_preflight"),
        max_token_length=opts.integer(block, "max_token_length"),
        introspection_timeout_seconds=opts.number(block, "introspection_timeout_seconds"),
        negative_cache_seconds=opts.integer(block, "negative_cache_seconds"),
        token_prefix=opts.text(block, "token_prefix"),
        **_standards_options(block, method, verify_ssl),
        **shaping_options(block, block.present("issuer")),
        **_dpop_options(block),
        client_cert_header=_client_cert_header(block),
    )
    return config if len(ctx.problems) == before else None


def _client_cert_header(block: Block) -> str | None:
    """``client_cert_header``, in its canonical spelling (header names are case-insensitive)."""
    value = PLUGIN_OPTIONS.text(block, "client_cert_header")
    if value is None:
        return None
    for name in CLIENT_CERT_HEADERS:
        if value.lower() == name.lower():
            return name
    block.problem("client_cert_header", "must be " + _or(CLIENT_CERT_HEADERS))
    return None


def check_http_url(block: Block, key: str, url: str) -> None:
    parts = url_parts(block, key, url, http=True)
    if parts is not None and parts.fragment:
        block.problem(key, "must not have a fragment")


def _scope(block: Block) -> tuple[str, ...]:
    raw = block.data.get("scope")
    if isinstance(raw, list):
        items = block.texts("scope") or []
        words = [word for item in items for word in item.split()]
    else:
        words = (block.text("scope") or "").split()
    return tuple(dict.fromkeys(words))  # in order, without repeats


# ------------------------------------------------------------- standards-based authorization servers (issue 3)


def _standards_options(block: Block, method: str, verify_ssl: bool) -> dict[str, Any]:
    """The plugin options for RFC 7662 / RFC 9701 servers: mode, discovery, claim checks, client authentication."""
    opts = PLUGIN_OPTIONS
    mode = opts.word(block, "introspection_response")
    if mode not in RESPONSE_MODES:
        block.problem("introspection_response", "must be " + _or(RESPONSE_MODES))
    urls = {key: opts.text(block, key) for key in ("issuer", "jwks_uri", "client_assertion_audience")}
    for key, value in urls.items():
        if value is not None:
            check_http_url(block, key, value)
    issuer = urls["issuer"]
    if mode == "signed" and issuer is None:
        block.problem("issuer", "is required when introspection_response is signed (the answer's iss must equal it)")
    if method not in CLIENT_AUTH_METHODS:
        block.problem("client_auth_method", "must be one of " + ", ".join(CLIENT_AUTH_METHODS))
    return {
        "introspection_response": mode,
        "issuer": issuer,
        "jwks_uri": urls["jwks_uri"],
        "audience": opts.text(block, "audience"),
        "issuer_allowed": _issuer_allowed(block),
        "clock_skew_seconds": opts.integer(block, "clock_skew_seconds"),
        "honor_cache_control": opts.flag(block, "honor_cache_control"),
        "client_auth_method": method,
        **_private_key(block, method),
        "client_assertion_audience": urls["client_assertion_audience"],
        **_tls_files(block, method, verify_ssl),
    }


def _dpop_options(block: Block) -> dict[str, Any]:
    """The DPoP options (RFC 9449): mode, algorithms (within what ``phantom_token.jose`` verifies), proof lifetime,
    nonces, and whether the proof goes upstream."""
    from phantom_token.jose import SUPPORTED_ALGORITHMS

    opts = PLUGIN_OPTIONS
    mode = opts.word(block, "dpop")
    if mode not in DPOP_MODES:
        block.problem("dpop", "must be " + _or(DPOP_MODES))
    algorithms: tuple[str, ...] = opts.default("dpop_signing_alg_values")  # type: ignore[assignment]
    if "dpop_signing_alg_values" in block.data:
        raw = block.data.get("dpop_signing_alg_values")
        items = block.texts("dpop_signing_alg_values") if isinstance(raw, list) else [block.text(
            "dpop_signing_alg_values") or ""]
        words = tuple(dict.fromkeys(word for item in items or () for word in item.split()))
        unknown = [word for word in words if word not in SUPPORTED_ALGORITHMS]
        if unknown or not words:
            block.problem("dpop_signing_alg_values", "must list algorithms among " + ", ".join(
                sorted(SUPPORTED_ALGORITHMS)) + " (never none or HMAC)")
        else:
            algorithms = words
    return {
        "dpop": mode,
        "dpop_signing_alg_values": algorithms,
        "dpop_proof_lifetime_seconds": opts.integer(block, "dpop_proof_lifetime_seconds"),
        "dpop_nonce": opts.flag(block, "dpop_nonce"),
        "forward_dpop_proof": opts.flag(block, "forward_dpop_proof"),
    }


def _or(choices: tuple[str, ...]) -> str:
    """'a, b or c'."""
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _issuer_allowed(block: Block) -> tuple[str, ...]:
    if isinstance(block.data.get("issuer_allowed"), list):
        return tuple(block.texts("issuer_allowed") or ())
    one = block.text("issuer_allowed", non_empty=True)
    return (one,) if one is not None else ()


def _only_for(block: Block, key: str, method: str, wanted: str) -> str | None:
    value = PLUGIN_OPTIONS.text(block, key)
    if value is not None and method != wanted:
        block.problem(key, f"is only used with client_auth_method {wanted}")
    if value is None and method == wanted:
        block.problem(key, f"is required with client_auth_method {wanted}")
    return value


def _private_key(block: Block, method: str) -> dict[str, str | None]:
    """``client_private_key_file`` (a ``Need`` with ``private_key_jwt``) and ``client_private_key_id``."""
    path = _only_for(block, "client_private_key_file", method, "private_key_jwt")
    at = len(block.ctx.problems)
    kid = PLUGIN_OPTIONS.text(block, "client_private_key_id")
    if path is not None and method == "private_key_jwt":
        block.ctx.needs.append(Need(block.where, block.prefix, "client_private_key_file", KeyFile(path, None, kid), at))
    return {"client_private_key_file": path, "client_private_key_id": kid}


def _tls_files(block: Block, method: str, verify_ssl: bool) -> dict[str, str | None]:
    """The TLS files, and the ``Need`` of the plugin's SSL context (every plugin has one: the system store)."""
    cert = _only_for(block, "client_cert_file", method, "tls_client_auth")
    key = _only_for(block, "client_key_file", method, "tls_client_auth")
    ca_file = PLUGIN_OPTIONS.text(block, "ca_file")
    presented = cert is not None and key is not None and method == "tls_client_auth"
    files = TlsFiles(verify_ssl, ca_file, cert if presented else None, key if presented else None)
    block.ctx.needs.append(Need(block.where, block.prefix, "ca_file", files, len(block.ctx.problems)))
    return {"client_cert_file": cert, "client_key_file": key, "ca_file": ca_file}
