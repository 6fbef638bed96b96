"""The plugin options that shape what each API receives (issue 16): ``claims_to_headers`` and ``token_exchange``.

Internal to ``phantom_token.config``; ``plugin_options`` declares the options and calls ``shaping_options``.

Rules:
- ``claims_to_headers`` is a mapping of header name to claim path. Names are RFC 9110 tokens, without ``_``, not a
  header the gateway sets, frames the message with or reads (``bad_header_name``), and not
  repeated in another case; paths are dot-separated claim names.
- ``token_exchange`` is a mapping; ``token_endpoint`` may be omitted only when the plugin has an ``issuer`` (it is
  then discovered from the issuer's metadata at start-up); ``resource`` must be an absolute URI without a fragment
  (RFC 8693 section 2.1); ``requested_token_type`` a URI (``urn:`` or http(s)).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from phantom_token.config.fields import Block, url_parts
from phantom_token.config.options import Option, OptionTable
from phantom_token.config.settings import TokenExchange

__all__ = ["RESERVED", "TOKEN_EXCHANGE_OPTIONS", "bad_claim_path", "bad_header_name", "shaping_options"]

_TOKEN: Final = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+")
RESERVED: Final = frozenset({
    # the gateway's own, or the client's credentials
    "authorization", "proxy-authorization", "host", "cookie", "dpop",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "forwarded",
    # hop-by-hop (RFC 9110 7.6.1) and framing
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "content-length", "expect",
    # what the decision service's answer itself carries
    "cache-control", "x-accel-expires", "www-authenticate", "content-type", "set-cookie",
})


def bad_header_name(name: str) -> str | None:
    """Why ``name`` cannot be a ``claims_to_headers`` header (for a configuration problem), or None."""
    if not _TOKEN.fullmatch(name):
        return "is not a valid header name (an RFC 9110 token)"
    lname = name.lower()
    if lname in RESERVED or lname.startswith(("x-original-", "x-envoy-", "x-forwarded-")) or lname.startswith(":"):
        return "is a header the gateway sets, frames the message with, or reads; choose another name"
    return None


def bad_claim_path(path: str) -> str | None:
    """Why ``path`` is not a claim path (dot-separated, non-empty member names), or None."""
    if not path or any(not part for part in path.split(".")):
        return "must be one or more claim names separated by dots (e.g. sub, org.id)"
    return None


TOKEN_EXCHANGE_OPTIONS = OptionTable(
    TokenExchange,
    "token_exchange.",
    (
        Option("audience", "text", "the `audience` parameter: the logical name of the upstream", non_empty=True),
        Option("resource", "text", "the `resource` parameter: the upstream's URI", non_empty=True,
               shown_type="absolute URI"),
        Option("scope", "text", "the `scope` parameter (space-separated)", non_empty=True),
        Option("requested_token_type", "text", "the `requested_token_type` parameter", non_empty=True,
               shown_type="URI"),
        Option("token_endpoint", "text", "where to exchange", non_empty=True, shown_type="http(s) URL",
               shown_default="the `issuer`'s metadata"),
    ),
)  # fmt: skip


def shaping_options(block: Block, has_issuer: bool) -> dict[str, Any]:
    """``claims_to_headers`` and ``token_exchange`` of one plugin block, as ``PluginConfig`` keyword arguments."""
    return {"claims_to_headers": _claims_to_headers(block), "token_exchange": _token_exchange(block, has_issuer)}


def _claims_to_headers(block: Block) -> tuple[tuple[str, str], ...]:
    raw = block.mapping("claims_to_headers")
    if raw is None:
        return ()
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, path in raw.items():
        key = f"claims_to_headers.{name}"
        if not isinstance(name, str):
            block.problem("claims_to_headers", "header names must be strings")
            continue
        why = bad_header_name(name)
        if why is None and name.lower() in seen:
            why = "is listed twice (header names are case-insensitive)"
        if why is not None:
            block.problem(key, why)
            continue
        seen.add(name.lower())
        if not isinstance(path, str) or bad_claim_path(path) is not None:
            block.problem(key, "must be a claim path: one or more claim names separated by dots (e.g. sub, org.id)")
            continue
        pairs.append((name, path))
    return tuple(pairs)


def _token_exchange(block: Block, has_issuer: bool) -> TokenExchange | None:
    raw = block.mapping("token_exchange")
    if raw is None:
        return None
    opts = TOKEN_EXCHANGE_OPTIONS
    inner = _Section(block, "token_exchange", raw, opts.names)
    endpoint = opts.text(inner, "token_endpoint")
    if endpoint is not None:
        _check_url(inner, "token_endpoint", endpoint, ("http", "https"))
    elif not has_issuer:
        inner.problem("token_endpoint", "is required unless the plugin's issuer is set (to discover it)")
    resource = opts.text(inner, "resource")
    if resource is not None:
        _check_url(inner, "resource", resource, None)
    token_type = opts.word(inner, "requested_token_type")
    if ":" not in token_type or " " in token_type:
        inner.problem("requested_token_type", "must be a URI (e.g. urn:ietf:params:oauth:token-type:jwt)")
    return TokenExchange(audience=opts.text(inner, "audience"), resource=resource, scope=opts.text(inner, "scope"),
                         requested_token_type=token_type, token_endpoint=endpoint)


class _Section(Block):
    """A mapping inside the plugin block: its problems go through the block's (which names them, and reports a
    route option once even when every server of ``authorization_servers`` reads it)."""

    def __init__(self, parent: Block, key: str, data: Mapping[Any, Any], known: frozenset[str]) -> None:
        self._parent, self._key = parent, key
        super().__init__(parent.ctx, parent.where, data, known, prefix=parent.name(key) + ".")

    def problem(self, key: str, why: str) -> None:
        self._parent.problem(f"{self._key}.{key}", why)


def _check_url(block: Block, key: str, url: str, schemes: tuple[str, ...] | None) -> None:
    parts = url_parts(block, key, url)
    if parts is None:
        return
    if not parts.scheme or (schemes is not None and (parts.scheme not in schemes or not parts.hostname)):
        block.problem(key, "must be an http:// or https:// URL with a host" if schemes else "must be an absolute URI")
    elif parts.fragment or "#" in url:
        block.problem(key, "must not have a fragment")
