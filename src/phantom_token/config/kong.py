"""The Kong document: services and their upstreams, references between entities, and which plugin applies.

Internal to ``phantom_token.config``. ``parse_document`` reads the whole parsed YAML document: the top level,
each service with its nested routes and plugins (``kong_routes``), top-level routes and plugins linked to what
they name, then the ``phantom_token:`` section (``process_options``).

Invariants:
- Precedence, as in Kong: a route's plugin, else its service's, else a global (top-level, unscoped) one; at most
  one phantom-token plugin per route, service or global scope. A disabled service's routes are not routed at all.
- A top-level route or plugin names its service or route by name or id, as a string or ``{name: ...}``; a name
  that matches nothing is a problem. Service and route names are unique in the file.
- ``_format_version`` is required ('1.1', '2.1' or '3.0'); a bare list of services is read as a '2.1' file.
- Kong entities phantom-token does not implement (consumers, upstreams, certificates, ...) are refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from phantom_token.config.fields import Block, Context, entity, type_name, url_parts
from phantom_token.config.kong_routes import (
    PluginDef,
    RouteDef,
    ServiceDef,
    only_one,
    parse_plugins,
    parse_route,
)
from phantom_token.config.options import OptionTable, kong_field
from phantom_token.config.process_options import parse_section
from phantom_token.config.settings import Route, Settings, Upstream

__all__ = ["FORMAT_VERSIONS", "SERVICE_FIELDS", "parse_document"]

FORMAT_VERSIONS = frozenset({"1.1", "2.1", "3.0"})


# ------------------------------------------------------------------------------------------ the document

_TOP_LEVEL = frozenset(
    {"_format_version", "_transform", "_workspace", "services", "routes", "plugins", "phantom_token"}
)
_KONG_ENTITIES = ("consumers", "upstreams", "targets", "certificates", "ca_certificates", "snis", "vaults")
_UNSUPPORTED_TOP = {key: f"Kong {key} are not supported by phantom-token" for key in _KONG_ENTITIES}


def parse_document(ctx: Context, document: object) -> Settings | None:
    """The whole document as ``Settings`` (unusable if ``ctx`` has problems); None when it is not a document."""
    if document is None:
        ctx.problem("", "", "the file is empty")
        return None
    if isinstance(document, list):
        # The snippet form of the Lua plugin's README: a bare list of services.
        document = {"_format_version": "2.1", "services": document}
    if not isinstance(document, dict):
        ctx.problem("", "", f"expected a mapping with _format_version and services, got {type_name(document)}")
        return None
    top = Block(ctx, "", document, _TOP_LEVEL, unsupported=_UNSUPPORTED_TOP)
    version = _format_version(top)
    top.accept("_transform", kind=bool)
    top.accept("_workspace")
    known: list[ServiceDef] = []
    routes: list[RouteDef] = []
    for i, raw in enumerate(top.items("services")):
        parsed = _parse_service(ctx, raw, i, version)
        if parsed is not None:
            known.append(parsed[0])
            routes += parsed[1]
    routes += _top_level_routes(ctx, top.items("routes"), known, version)
    global_plugin = _top_level_plugins(ctx, top.items("plugins"), known, routes)
    _check_unique(ctx, [(s.label, s.name) for s in known if not s.name.startswith("#")], "service")
    _check_unique(ctx, [(r.where, r.route.name) for r in routes], "route")
    final = tuple(_finish_route(r, global_plugin) for r in routes if r.service is None or r.service.enabled)
    section = top.mapping("phantom_token")
    return parse_section(ctx, section or {}, final)


def _format_version(top: Block) -> str:
    raw = top.data.get("_format_version")
    if isinstance(raw, float):  # unquoted 2.1 in YAML is a number
        raw = str(raw)
    if raw is None:
        top.problem("_format_version", "is required (Kong declarative format: '1.1', '2.1' or '3.0')")
        return "3.0"
    if not isinstance(raw, str) or raw not in FORMAT_VERSIONS:
        top.problem("_format_version", "must be '1.1', '2.1' or '3.0'")
        return "3.0"
    return raw


def _check_unique(ctx: Context, named: list[tuple[str, str]], kind: str) -> None:
    first: dict[str, str] = {}
    for where, name in named:
        if name in first:
            ctx.problem(where, "name", f"duplicate {kind} name (also used by {first[name]})")
        else:
            first[name] = where


def _finish_route(definition: RouteDef, global_plugin: PluginDef | None) -> Route:
    """Attach the plugin that applies: the route's own, else its service's, else a global one."""
    for plugin in (definition.plugin, definition.service.plugin if definition.service else None, global_plugin):
        if plugin is not None and plugin.enabled and plugin.config is not None:
            return replace(definition.route, plugin=plugin.config)
    return definition.route


# ------------------------------------------------------------------------------------------------ services

_PROTOCOLS = ("http", "https")
_KONG_PORT = 80  # Kong's default port, whatever the protocol
_TIMEOUT_MAX = 2**31 - 2  # Kong's largest timeout (milliseconds)
SERVICE_FIELDS = OptionTable(
    None,
    "",
    (
        kong_field("name", "text", "the service's name; unique", shown_default="`#N` (position)"),
        kong_field("url", "custom", "upstream base URL; the port defaults to 80/443 by scheme; no query, fragment or "
                   "credentials", shown_type="`http://` or `https://` URL"),
        kong_field("protocol", "text", "instead of `url` (not together with it)", default="http", choices=_PROTOCOLS),
        kong_field("host", "text", "instead of `url`; required when `protocol`/`port`/`path` is used", non_empty=True),
        kong_field("port", "integer", "instead of `url`", default=_KONG_PORT, low=1, high=65535,
                   shown_default=f"**{_KONG_PORT}**, even for https (Kong's default)"),
        kong_field("path", "text", "instead of `url`: the base path requests are joined to", default="/",
                   shown_type="string starting with `/`"),
        kong_field("enabled", "flag", "`false`: the service's routes are not routed at all (404)", default=True),
        kong_field("routes", "custom", "see below", shown_type="list", also=("plugins",)),
        kong_field("id", "custom", "accepted and ignored", also=("tags",)),
        kong_field("connect_timeout", "integer", "validated, **not used yet**: the process-wide "
                   "`upstream_connect_timeout_seconds` / `upstream_timeout_seconds` apply",
                   also=("read_timeout", "write_timeout"), default=60_000, low=1, high=_TIMEOUT_MAX,
                   shown_type=f"int ms, 1..{_TIMEOUT_MAX}"),
        kong_field("retries", "integer", "validated, not used (the gateway does not retry)", default=5, low=0,
                   high=32767),
    ),
    header="field",
)  # fmt: skip
_UNSUPPORTED_SERVICE = {
    key: f"Kong's service {key} is not supported by phantom-token"
    for key in ("tls_verify", "tls_verify_depth", "ca_certificates", "client_certificate")
}


def _parse_service(ctx: Context, raw: object, index: int, version: str) -> tuple[ServiceDef, list[RouteDef]] | None:
    """A service and its nested routes (their plugins attached; the service's own plugin on the service)."""
    found = entity(ctx, raw, "service", index)
    if found is None:
        return None
    data, name, label = found
    fields = SERVICE_FIELDS
    block = Block(ctx, label, data, fields.names, unsupported=_UNSUPPORTED_SERVICE)
    block.text("name")
    block.accept("id")
    block.accept("tags", many=True)
    for key in ("connect_timeout", "read_timeout", "write_timeout"):  # milliseconds; not used yet
        fields.integer(block, key)
    fields.integer(block, "retries")
    enabled = fields.flag(block, "enabled")
    upstream = _parse_upstream(block)
    refs = {n for n in (name, data.get("id")) if isinstance(n, str) and n}
    service = ServiceDef(label, name or f"#{index + 1}", frozenset(refs), upstream, enabled)
    routes = []
    for i, item in enumerate(block.items("routes")):
        route = parse_route(ctx, item, f"{label} / ", i, service, version, nested=True)
        if route is not None:
            routes.append(route)
    for plugin in parse_plugins(ctx, block.items("plugins"), label, nested=True):
        service.plugin = only_one(ctx, service.plugin, plugin)
    return service, routes


def _parse_upstream(block: Block) -> Upstream | None:
    parts = [key for key in ("protocol", "host", "port", "path") if block.present(key)]
    url = block.text("url")
    if url is not None and parts:
        block.problem("url", f"set either url or {'/'.join(parts)}, not both")
        return None
    if url is not None:
        return _upstream_from_url(block, url)
    if not parts:
        if block.ctx.require_upstream:
            block.problem("url", "is required (the upstream API's base URL, e.g. http://127.0.0.1:3001)")
        return None
    fields = SERVICE_FIELDS
    protocol = fields.word(block, "protocol")
    if protocol not in _PROTOCOLS:
        block.problem("protocol", "must be " + " or ".join(_PROTOCOLS))
    host = fields.text(block, "host", required=True)
    port = fields.integer(block, "port")  # Kong's default is 80 whatever the protocol
    path = fields.word(block, "path")
    if not path.startswith("/"):
        block.problem("path", "must start with '/'")
    return Upstream(protocol, host.lower(), port, path) if host else None


def _upstream_from_url(block: Block, url: str) -> Upstream | None:
    parts = url_parts(block, "url", url, http=True)
    if parts is None or parts.hostname is None:  # (url_parts made sure of a host)
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        block.problem("url", "must not have a query, a fragment or credentials")
        return None
    default = 443 if parts.scheme == "https" else 80
    return Upstream(parts.scheme, parts.hostname, parts.port or default, parts.path or "/")


# ---------------------------------------------------------------------- top-level routes and plugins: references


def _top_level_routes(ctx: Context, raws: list[Any], services: list[ServiceDef], version: str) -> list[RouteDef]:
    out = []
    for i, raw in enumerate(raws):
        service = None
        if isinstance(raw, dict):
            name = raw.get("name")
            where = f"route '{name}'" if isinstance(name, str) and name else f"route #{i + 1}"
            service = _find(ctx, raw.get("service"), services, where, "service")
        definition = parse_route(ctx, raw, "", i, service, version, nested=False)
        if definition is not None:
            out.append(definition)
    return out


def _find(ctx: Context, ref: object, services: list[ServiceDef], where: str, field: str) -> ServiceDef | None:
    """The service a top-level entity names with ``service: NAME`` or ``service: {name: NAME}`` (or id)."""
    if isinstance(ref, dict):
        ref = ref.get("name") or ref.get("id")
    if ref is None:
        if ctx.require_upstream:
            ctx.problem(where, field, "is required (the name of the service this belongs to)")
        return None
    for service in services:
        if isinstance(ref, str) and ref in service.ref_names:
            return service
    ctx.problem(where, field, "names no service in this file")
    return None


def _top_level_plugins(
    ctx: Context, raws: list[Any], services: list[ServiceDef], routes: list[RouteDef]
) -> PluginDef | None:
    """Attach top-level plugins to the route or service they name; return the global one, if any."""
    global_plugin: PluginDef | None = None
    for plugin in parse_plugins(ctx, raws, "", nested=False):
        if plugin.route_ref is not None:
            target = next((r for r in routes if plugin.route_ref in r.ref_names), None)
            if target is None:
                ctx.problem(plugin.where, "route", "names no route in this file")
            else:
                target.plugin = only_one(ctx, target.plugin, plugin)
        elif plugin.service_ref is not None:
            service = next((s for s in services if plugin.service_ref in s.ref_names), None)
            if service is None:
                ctx.problem(plugin.where, "service", "names no service in this file")
            else:
                service.plugin = only_one(ctx, service.plugin, plugin)
        else:
            global_plugin = only_one(ctx, global_plugin, plugin)
    return global_plugin
