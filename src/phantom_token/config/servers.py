"""A plugin block with ``authorization_servers`` or ``jwt_issuers``: several servers on one route, and JWT issuers.

Internal to ``phantom_token.config`` (``plugin_options.parse_plugin_config`` hands such a block here).

Each ``authorization_servers`` item is read as a plugin block of its own made of the route's options (those that are
not server options: ``scope``, ``token_cache_seconds``, ``audience``...) and the item's server options, so every
rule of ``plugin_options`` holds for each server, and each server is a ``PluginConfig`` the introspector uses as it
is. The plugin's own ``PluginConfig`` is the first server's, with the list in ``authorization_servers``.

Invariants:
- A server option appears either at the top (one server) or in every item (several), never both: a file that mixes
  them is refused rather than guessed at.
- Problems name their place: ``config.authorization_servers[1].client_id``, ``config.jwt_issuers[0].audience``; a
  route option with a problem is reported once, not once per server.
- No two ``token_prefix`` values overlap (one a prefix of the other, or equal): each token has at most one owner;
  no server (endpoint or issuer, and client) is listed twice.
- A ``jwt_issuers`` item has an audience (its own or the plugin's ``audience``): a JWT meant for another API of the
  same issuer must not pass. Its algorithms are within ``jose.SUPPORTED_ALGORITHMS`` (never ``none`` nor HMAC).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from phantom_token.config.fields import Block, Context, type_name
from phantom_token.config.plugin_options import PLUGIN_OPTIONS, check_http_url, parse_block
from phantom_token.config.settings import DEFAULT_JWT_ALGORITHMS, JwtIssuer, PluginConfig
from phantom_token.jose import SUPPORTED_ALGORITHMS

__all__ = ["SERVER_OPTIONS", "parse_servers"]

SERVER_OPTIONS = frozenset({
    "introspection_endpoint", "issuer", "jwks_uri", "client_id", "client_secret", "client_auth_method",
    "client_private_key_file", "client_private_key_id", "client_assertion_audience", "client_cert_file",
    "client_key_file", "introspection_response", "ca_file", "verify_ssl", "introspection_timeout_seconds",
    "token_prefix",
})
"""The options an ``authorization_servers`` item takes: what tells one server from another."""
_LISTS = ("authorization_servers", "jwt_issuers")
_JWT_FIELDS = frozenset({"issuer", "jwks_uri", "audience", "algorithms"})
_PREFIX = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a bearer token (RFC 6750 b64token) may start with


class _ServerBlock(Block):
    """A server's block: its server options are named by the item's place, the route's by ``config.``; the route's
    problems are reported by the first server's block only (every server reads the same route options)."""

    def __init__(self, ctx: Context, where: str, data: Mapping[Any, Any], prefix: str, *, first: bool) -> None:
        super().__init__(ctx, where, data, PLUGIN_OPTIONS.names, prefix=prefix)
        self._first = first

    def name(self, key: str) -> str:
        return self.prefix + key if key in SERVER_OPTIONS else "config." + key

    def problem(self, key: str, why: str) -> None:
        if self._first or key in SERVER_OPTIONS:
            super().problem(key, why)


def parse_servers(ctx: Context, where: str, raw: Mapping[Any, Any]) -> PluginConfig | None:
    """A plugin block with ``authorization_servers`` and/or ``jwt_issuers``; None when anything in it is wrong."""
    before = len(ctx.problems)
    top = Block(ctx, where, raw, PLUGIN_OPTIONS.names, prefix="config.")  # reports the unknown fields, once
    known = {k: v for k, v in raw.items() if isinstance(k, str) and k in PLUGIN_OPTIONS.names and k not in _LISTS}
    items = raw.get("authorization_servers")
    servers: list[PluginConfig] = []
    if items is None:
        if top.present("token_prefix"):
            top.problem("token_prefix", "is only used in an authorization_servers item")
        plugin = parse_block(_ServerBlock(ctx, where, known, "config.", first=True))
        if plugin is not None:
            servers.append(plugin)
    else:
        for key in sorted(SERVER_OPTIONS):
            if top.present(key):
                top.problem(key, "is set in each authorization_servers item when that list is used")
        route = {k: v for k, v in known.items() if k not in SERVER_OPTIONS}
        servers = _servers(top, route, items)
    issuers = _jwt_issuers(top, servers[0].audience if servers else top.data.get("audience"))
    if issuers and top.present("token_exchange"):  # a verified JWT goes upstream as it is: nothing to exchange
        top.problem("token_exchange", "cannot be used with jwt_issuers (their JWTs are forwarded as they are)")
    if len(ctx.problems) != before or not servers:
        return None
    return dataclasses.replace(servers[0], authorization_servers=tuple(servers), jwt_issuers=issuers)


def _servers(top: Block, route: dict[str, Any], items: object) -> list[PluginConfig]:
    ctx, where = top.ctx, top.where
    if not isinstance(items, list) or not items:
        top.problem("authorization_servers", f"expected a non-empty list of mappings, got {type_name(items)}")
        return []
    servers: list[PluginConfig] = []
    owners: list[tuple[str, int]] = []  # (token_prefix, item)
    seen: dict[bytes, int] = {}  # cache namespace (endpoint or issuer, client) -> item
    for i, item in enumerate(items):
        place = f"config.authorization_servers[{i}]"
        if not isinstance(item, dict):
            ctx.problem(where, place, f"expected a mapping, got {type_name(item)}")
            continue
        for key in item:
            if key not in SERVER_OPTIONS:
                why = "is a route option: set it beside authorization_servers" \
                    if key in PLUGIN_OPTIONS.names else "unknown field"
                ctx.problem(where, f"{place}.{key}", why)
        data = {**route, **{k: v for k, v in item.items() if k in SERVER_OPTIONS}}
        server = parse_block(_ServerBlock(ctx, where, data, place + ".", first=i == 0))
        if server is None:
            continue
        same = seen.setdefault(server.cache_namespace, i)
        if same != i:
            ctx.problem(where, place, f"is the same server and client as authorization_servers[{same}]")
        prefix = server.token_prefix
        if prefix is not None:
            if not _PREFIX.fullmatch(prefix):
                ctx.problem(where, f"{place}.token_prefix", "must be visible ASCII characters (no spaces)")
            for other, j in owners:
                if prefix.startswith(other) or other.startswith(prefix):
                    ctx.problem(where, f"{place}.token_prefix",
                                f"overlaps the token_prefix of authorization_servers[{j}]: a token would have two "
                                "owners")
                    break
            owners.append((prefix, i))
        servers.append(server)
    return servers


def _jwt_issuers(top: Block, plugin_audience: object) -> tuple[JwtIssuer, ...]:
    """The ``jwt_issuers`` items; an item without ``audience`` gets the plugin's."""
    raw = top.data.get("jwt_issuers")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        top.problem("jwt_issuers", f"expected a non-empty list of mappings, got {type_name(raw)}")
        return ()
    issuers: list[JwtIssuer] = []
    for i, item in enumerate(raw):
        place = f"config.jwt_issuers[{i}]"
        if not isinstance(item, dict):
            top.ctx.problem(top.where, place, f"expected a mapping, got {type_name(item)}")
            continue
        block = Block(top.ctx, top.where, item, _JWT_FIELDS, prefix=place + ".")
        issuer = block.text("issuer", required=True, non_empty=True)
        jwks_uri = block.text("jwks_uri", non_empty=True)
        for key, url in (("issuer", issuer), ("jwks_uri", jwks_uri)):
            if url is not None:
                check_http_url(block, key, url)
        audience = block.text("audience", non_empty=True)
        if audience is None and not plugin_audience:
            block.problem("audience", "is required unless the plugin sets audience (a JWT meant for another API "
                                      "of the same issuer must not pass)")
        algorithms = _algorithms(block)
        if issuer is not None and any(known.issuer == issuer for known in issuers):
            block.problem("issuer", "is listed twice")
        elif issuer is not None:
            fallback = plugin_audience if isinstance(plugin_audience, str) else None
            issuers.append(JwtIssuer(issuer, jwks_uri, audience or fallback, algorithms))
    return tuple(issuers)


def _algorithms(block: Block) -> tuple[str, ...]:
    raw = block.data.get("algorithms")
    if raw is None:
        return DEFAULT_JWT_ALGORITHMS
    names = block.texts("algorithms") if isinstance(raw, list) else [block.text("algorithms") or ""]
    if not names:
        block.problem("algorithms", "must name at least one algorithm")
        return DEFAULT_JWT_ALGORITHMS
    for name in names:
        if name not in SUPPORTED_ALGORITHMS:
            block.problem("algorithms", f"must be among {', '.join(sorted(SUPPORTED_ALGORITHMS))} (asymmetric "
                                        "only: never none nor HMAC)")
            break
    return tuple(dict.fromkeys(names))
