"""Kong routes and plugin entities, one at a time: their fields, matching conditions and nested plugins.

Internal to ``phantom_token.config``. ``parse_route`` reads one route (nested in a service or top-level) into a
``RouteDef``; ``parse_plugins`` reads plugin entities into ``PluginDef``s, their ``config`` through
``plugin_options``. Linking them (which service a top-level route names, which plugin applies) is ``kong.py``'s.

Invariants:
- A route sets at least one of paths, methods, hosts, headers; its regexes (``~`` paths, ``~*`` header values)
  compile here, so matching never meets a bad one. In a '1.1'/'2.1' file a path outside Kong's plain characters is
  a regex, as Kong 3 reads such files.
- Only the ``phantom-token`` plugin exists; a disabled plugin is validated, then carries no config.
- Fields Kong honours that this gateway does not are refused, or accepted with a warning on the
  ``phantom_token.config`` logger; none is silently dropped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from dataclasses import fields as dataclasses_fields
from typing import Any, TypeVar

from phantom_token.config.fields import Block, Context, type_name
from phantom_token.config.plugin_options import parse_plugin_config
from phantom_token.config.settings import HeaderCondition, PluginConfig, Route, Upstream

__all__ = ["PLUGIN_NAME", "PluginDef", "RouteDef", "ServiceDef", "only_one", "parse_plugins", "parse_route"]

log = logging.getLogger("phantom_token.config")

PLUGIN_NAME = "phantom-token"
T = TypeVar("T")
_ROUTE_DEFAULTS = {f.name: f.default for f in dataclasses_fields(Route)}  # Kong's defaults, written in Route


@dataclass
class ServiceDef:
    """A service while the file is read: what routes and plugins need of it."""

    label: str  # for messages: "service 'name'" or "service #2"
    name: str  # Route.service
    ref_names: frozenset[str]  # what top-level routes and plugins may call it: name and id
    upstream: Upstream | None
    enabled: bool
    plugin: PluginDef | None = None


@dataclass
class PluginDef:
    """A phantom-token plugin entity; a top-level one keeps the service or route it names until ``kong`` links it."""

    where: str
    config: PluginConfig | None  # None: invalid (a problem is recorded) or disabled
    enabled: bool
    service_ref: str | None = None
    route_ref: str | None = None


@dataclass
class RouteDef:
    """A route while the file is read; ``kong`` attaches the plugin that applies to it."""

    where: str
    route: Route
    service: ServiceDef | None
    plugin: PluginDef | None = None
    ref_names: frozenset[str] = field(default_factory=frozenset)


# -------------------------------------------------------------------------------------------------- routes

_ROUTE_FIELDS = frozenset(
    {
        "name", "id", "paths", "methods", "hosts", "headers", "strip_path", "preserve_host", "protocols",
        "https_redirect_status_code", "regex_priority", "path_handling", "request_buffering",
        "response_buffering", "tags", "snis", "sources", "destinations", "plugins",
    }
)  # fmt: skip
_KONG_PROTOCOLS = frozenset({"http", "https", "grpc", "grpcs", "tcp", "tls", "udp", "tls_passthrough", "ws", "wss"})
_REDIRECT_CODES = frozenset({426, 301, 302, 307, 308})
_METHOD = re.compile(r"[A-Z]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_HOST = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*(\.\*)?|\[[0-9a-f:.]+\]")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9.\-_~/%]*")  # Kong 2: a path with other characters is a regex


def parse_route(
    ctx: Context,
    raw: object,
    where_prefix: str,
    index: int,
    service: ServiceDef | None,
    version: str,
    *,
    nested: bool,
) -> RouteDef | None:
    if not isinstance(raw, dict):
        ctx.problem(f"{where_prefix}route #{index + 1}", "", f"expected a mapping, got {type_name(raw)}")
        return None
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else None
    where = f"{where_prefix}route '{name}'" if name else f"{where_prefix}route #{index + 1}"
    known = _ROUTE_FIELDS if nested else _ROUTE_FIELDS | {"service"}
    block = Block(ctx, where, raw, known)
    block.text("name")
    block.accept("id")
    block.accept("tags", "snis", "sources", "destinations", many=True)
    block.accept("request_buffering", "response_buffering", kind=bool)
    _check_protocols(block)
    code = block.integer("https_redirect_status_code", 426, 0)
    if code not in _REDIRECT_CODES:
        block.problem("https_redirect_status_code", "must be one of 426, 301, 302, 307, 308")
    handling = block.text("path_handling")
    if handling not in (None, "v0", "v1"):
        block.problem("path_handling", "must be v0 or v1")
    elif handling == "v1":
        block.problem("path_handling", "only v0 (Kong's default) is supported")
    for key in ("snis", "sources", "destinations"):
        if block.data.get(key):
            log.warning("%s: %s: %s is ignored: phantom-token serves plain HTTP routes", ctx.source, where, key)
    paths = _paths(block, version)
    methods = _methods(block)
    hosts = _hosts(block)
    headers = _headers(block)
    if not any(block.data.get(key) for key in ("paths", "methods", "hosts", "headers")):
        block.ctx.problem(where, "", "must set at least one of paths, methods, hosts, headers")
    service_name = service.name if service else ""
    route = Route(
        name=name or f"{service_name}/#{index + 1}",  # '/' cannot appear in a Kong name: no clash
        service=service_name,
        upstream=service.upstream if service else None,
        paths=tuple(paths),
        methods=frozenset(methods),
        hosts=tuple(hosts),
        headers=tuple(headers),
        strip_path=block.flag("strip_path", _route_default("strip_path", bool)),
        preserve_host=block.flag("preserve_host", _route_default("preserve_host", bool)),
        regex_priority=block.integer("regex_priority", _route_default("regex_priority", int), -(2**31), 2**31 - 1),
    )
    definition = RouteDef(
        where, route, service, ref_names=frozenset(n for n in (name, raw.get("id")) if isinstance(n, str))
    )
    for plugin in parse_plugins(ctx, block.items("plugins"), where, nested=True):
        definition.plugin = only_one(ctx, definition.plugin, plugin)
    return definition


def _route_default(name: str, kind: type[T]) -> T:
    value = _ROUTE_DEFAULTS[name]
    assert isinstance(value, kind)
    return value


def _check_protocols(block: Block) -> None:
    protocols = block.texts("protocols")
    if protocols is None:
        return
    for i, protocol in enumerate(protocols):
        if protocol not in _KONG_PROTOCOLS:
            block.problem(f"protocols[{i}]", "is not a Kong protocol")
    if protocols and "http" not in protocols:
        log.warning(
            "%s: %s: protocols does not include http; phantom-token routes plain HTTP requests to it anyway",
            block.ctx.source,
            block.where,
        )


def _paths(block: Block, version: str) -> list[str]:
    paths = block.texts("paths") or []
    out = []
    for i, path in enumerate(paths):
        name = f"paths[{i}]"
        if path.startswith("~"):
            regex = path[1:]
        elif version != "3.0" and not _PLAIN_PATH.fullmatch(path):
            regex = path  # Kong 3 reads a 1.1/2.1 file's regex paths as if they had the '~'
        else:
            if not path.startswith("/"):
                block.problem(name, "must start with '/' (or '~' for a regex)")
            out.append(path)
            continue
        regex = re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", regex)  # PCRE named groups in Python's syntax
        try:
            re.compile(regex)
        except re.error as exc:
            block.problem(name, f"invalid regex: {exc.msg}")
            continue
        out.append("~" + regex)
    return out


def _methods(block: Block) -> list[str]:
    methods = block.texts("methods") or []
    for i, method in enumerate(methods):
        if not _METHOD.fullmatch(method):
            block.problem(f"methods[{i}]", "must be an upper-case HTTP method name")
    return methods


def _hosts(block: Block) -> list[str]:
    hosts = block.texts("hosts") or []
    out = []
    for i, host in enumerate(hosts):
        lowered = host.lower()
        if ":" in lowered and not lowered.startswith("["):
            block.problem(f"hosts[{i}]", "a port in hosts is not supported")
        elif not _HOST.fullmatch(lowered) or (lowered.startswith("*") and lowered.endswith("*")):
            block.problem(f"hosts[{i}]", "must be a host name with at most one '*' label, first or last")
        else:
            out.append(lowered)
    return out


def _headers(block: Block) -> list[HeaderCondition]:
    headers = block.mapping("headers")
    if headers is None:
        return []
    out = []
    for raw_name, values in headers.items():
        name = str(raw_name).lower()
        field = f"headers.{raw_name}"
        if not isinstance(raw_name, str) or not _HEADER_NAME.fullmatch(name):
            block.ctx.problem(block.where, field, "is not a valid header name")
            continue
        if name == "host":
            block.ctx.problem(block.where, field, "use hosts to match the Host header")
            continue
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            block.ctx.problem(block.where, field, "expected a non-empty list of strings")
            continue
        literals: set[str] = set()
        patterns: list[re.Pattern[str]] = []
        for i, value in enumerate(values):
            if not value.startswith("~*"):
                literals.add(value.lower())
                continue
            try:
                patterns.append(re.compile(value[2:], re.IGNORECASE))
            except re.error as exc:
                block.ctx.problem(block.where, f"{field}[{i}]", f"invalid regex: {exc.msg}")
        out.append(HeaderCondition(name, frozenset(literals), tuple(patterns)))
    return out


# ------------------------------------------------------------------------------------------------- plugins

_PLUGIN_FIELDS = frozenset({"name", "id", "config", "enabled", "protocols", "tags", "instance_name", "ordering"})


def parse_plugins(ctx: Context, raws: list[Any], owner: str, *, nested: bool) -> list[PluginDef]:
    out = []
    for i, raw in enumerate(raws):
        plugin = _parse_plugin(ctx, raw, owner, i, nested=nested)
        if plugin is not None:
            out.append(plugin)
    return out


def _parse_plugin(ctx: Context, raw: object, owner: str, index: int, *, nested: bool) -> PluginDef | None:
    prefix = f"{owner} / " if owner else ""
    if not isinstance(raw, dict):
        ctx.problem(f"{prefix}plugin #{index + 1}", "", f"expected a mapping, got {type_name(raw)}")
        return None
    name = raw.get("name")
    where = f"{prefix}plugin '{name}'" if isinstance(name, str) and name else f"{prefix}plugin #{index + 1}"
    known = _PLUGIN_FIELDS if nested else _PLUGIN_FIELDS | {"service", "route"}
    unsupported = {"consumer": "consumer-scoped plugins are not supported by phantom-token"}
    block = Block(ctx, where, raw, known, unsupported=unsupported)
    plugin_name = block.text("name", required=True)
    if plugin_name != PLUGIN_NAME:
        if plugin_name is not None:
            why = f"unknown plugin '{plugin_name}': phantom-token runs only the {PLUGIN_NAME} plugin"
            block.problem("name", why)
        return None
    block.accept("id", "instance_name")
    block.accept("tags", many=True)
    block.accept("ordering", kind=dict)
    block.texts("protocols")
    enabled = block.flag("enabled", True)
    config_raw = block.mapping("config", required=True)
    config = parse_plugin_config(ctx, where, config_raw) if config_raw is not None else None
    plugin = PluginDef(where, config if enabled else None, enabled)
    if not nested:
        plugin.service_ref = _ref_name(raw.get("service"))
        plugin.route_ref = _ref_name(raw.get("route"))
    return plugin


def _ref_name(ref: object) -> str | None:
    if isinstance(ref, dict):
        ref = ref.get("name") or ref.get("id")
    return ref if isinstance(ref, str) else None


def only_one(ctx: Context, current: PluginDef | None, new: PluginDef) -> PluginDef:
    """``new`` takes the entity's plugin slot; a problem when ``current`` already had it."""
    if current is not None:
        ctx.problem(new.where, "name", f"{PLUGIN_NAME} is configured twice here (Kong allows one per entity)")
    return new
