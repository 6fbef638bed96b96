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
from typing import Any

from phantom_token.config.fields import Block, Context, entity
from phantom_token.config.options import OptionTable, kong_field
from phantom_token.config.plugin_options import parse_plugin_config
from phantom_token.config.settings import HeaderCondition, PluginConfig, Route, Upstream

__all__ = [
    "PLUGIN_FIELDS",
    "PLUGIN_NAME",
    "ROUTE_FIELDS",
    "PluginDef",
    "RouteDef",
    "ServiceDef",
    "only_one",
    "parse_plugins",
    "parse_route",
]

log = logging.getLogger("phantom_token.config")

PLUGIN_NAME = "phantom-token"
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

_REDIRECT_CODES = (426, 301, 302, 307, 308)  # Kong's default first
ROUTE_FIELDS = OptionTable(
    None,
    "",
    (
        kong_field("name", "text", "unique across the file", shown_default="`SERVICE/#N`"),
        kong_field("paths", "custom",
                   "a plain path is a **string** prefix of the raw request path (as in Kong, `/api` also matches "
                   "`/apiv2`; case-sensitive). A path starting with `~` is a regex matched at the start of the path "
                   "(`~/users/\\d+`). In a `'1.1'`/`'2.1'` file, a path with characters outside `A-Za-z0-9.-_~/%` is "
                   "a regex without the `~`, as Kong 3 reads such files. PCRE named groups `(?<name>…)` are accepted.",
                   shown_type="list of strings", shown_default="any path"),
        kong_field("methods", "custom", "the request method is one of them", shown_type="list of upper-case names",
                   shown_default="any method"),
        kong_field("hosts", "custom",
                   "the Host header (without port, case-insensitive) equals one, or matches `*.example.com` (one or "
                   "more labels in front) or `example.*` (one or more labels after). A port in a host is refused.",
                   shown_type="list", shown_default="any host"),
        kong_field("headers", "custom",
                   "the request must have each header, and one of its values must equal a literal "
                   "(case-insensitively) or be found by a regex: a value starting with `~*` is a case-insensitive "
                   "regex (`re.search`). `host` is refused (use `hosts`). Kong treats `~*` as a regex only when it is "
                   "the list's single value; here every `~*` value is one.",
                   shown_type="mapping name → list of values"),
        kong_field("strip_path", "flag",
                   "remove the matched path from the request before joining it to the service path",
                   default=_ROUTE_DEFAULTS["strip_path"]),
        kong_field("preserve_host", "flag", "send the client's Host header upstream instead of the service's host",
                   default=_ROUTE_DEFAULTS["preserve_host"]),
        kong_field("regex_priority", "integer", "orders regex paths against each other (higher first)",
                   default=_ROUTE_DEFAULTS["regex_priority"], low=-(2**31), high=2**31 - 1),
        kong_field("path_handling", "text", "`v1` is refused (only Kong's default `v0` join is implemented)",
                   default="v0", shown_type="`v0`"),
        kong_field("plugins", "custom", "a route plugin replaces the service's for this route only",
                   shown_type="list"),
        kong_field("protocols", "custom",
                   "accepted; a warning is logged when it does not include `http` (the route is still matched)",
                   shown_type="list of Kong protocols"),
        kong_field("https_redirect_status_code", "integer", "accepted and ignored", default=_REDIRECT_CODES[0], low=0,
                   shown_type=", ".join(str(code) for code in _REDIRECT_CODES)),
        kong_field("request_buffering", "flag", "accepted and ignored (bodies always stream)",
                   also=("response_buffering",)),
        kong_field("snis", "custom", "accepted and ignored (they do not apply to plain HTTP routes); a warning is "
                   "logged when set", shown_type="list", also=("sources", "destinations")),
        kong_field("id", "custom", "accepted and ignored", also=("tags",)),
    ),
    header="field",
)  # fmt: skip
_KONG_PROTOCOLS = frozenset({"http", "https", "grpc", "grpcs", "tcp", "tls", "udp", "tls_passthrough", "ws", "wss"})
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
    """One route (``nested``: inside a service, else top-level with ``service:``), its own plugin attached."""
    found = entity(ctx, raw, f"{where_prefix}route", index)
    if found is None:
        return None
    data, name, where = found
    fields = ROUTE_FIELDS
    known = fields.names if nested else fields.names | {"service"}
    block = Block(ctx, where, data, known)
    block.text("name")
    block.accept("id")
    block.accept("tags", "snis", "sources", "destinations", many=True)
    block.accept("request_buffering", "response_buffering", kind=bool)
    _check_protocols(block)
    code = fields.integer(block, "https_redirect_status_code")
    if code not in _REDIRECT_CODES:
        block.problem("https_redirect_status_code", "must be one of " + ", ".join(map(str, _REDIRECT_CODES)))
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
        strip_path=fields.flag(block, "strip_path"),
        preserve_host=fields.flag(block, "preserve_host"),
        regex_priority=fields.integer(block, "regex_priority"),
    )
    definition = RouteDef(
        where, route, service, ref_names=frozenset(n for n in (name, data.get("id")) if isinstance(n, str))
    )
    for plugin in parse_plugins(ctx, block.items("plugins"), where, nested=True):
        definition.plugin = only_one(ctx, definition.plugin, plugin)
    return definition


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

PLUGIN_FIELDS = OptionTable(
    None,
    "",
    (
        kong_field("name", "custom", "", shown_type=f"`{PLUGIN_NAME}`", shown_default="required"),
        kong_field("config", "custom", "below", shown_type="mapping", shown_default="required"),
        kong_field("enabled", "flag", "`false`: the plugin is validated, then ignored (a disabled route plugin does "
                   "not hide the service's)", default=True),
        kong_field("service", "custom", "top-level plugins only: where it applies", also=("route",),
                   shown_type="name, `{name: …}` or id"),
        kong_field("protocols", "custom", "accepted and ignored", also=("tags", "instance_name", "id", "ordering")),
    ),
    header="field",
)  # fmt: skip
_TOP_LEVEL_ONLY = frozenset({"service", "route"})


def parse_plugins(ctx: Context, raws: list[Any], owner: str, *, nested: bool) -> list[PluginDef]:
    out = []
    for i, raw in enumerate(raws):
        plugin = _parse_plugin(ctx, raw, owner, i, nested=nested)
        if plugin is not None:
            out.append(plugin)
    return out


def _parse_plugin(ctx: Context, raw: object, owner: str, index: int, *, nested: bool) -> PluginDef | None:
    found = entity(ctx, raw, f"{owner} / plugin" if owner else "plugin", index)
    if found is None:
        return None
    data, _, where = found
    known = PLUGIN_FIELDS.names - _TOP_LEVEL_ONLY if nested else PLUGIN_FIELDS.names
    unsupported = {"consumer": "consumer-scoped plugins are not supported by phantom-token"}
    block = Block(ctx, where, data, known, unsupported=unsupported)
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
    enabled = PLUGIN_FIELDS.flag(block, "enabled")
    config_raw = block.mapping("config", required=True)
    config = parse_plugin_config(ctx, where, config_raw) if config_raw is not None else None
    plugin = PluginDef(where, config if enabled else None, enabled)
    if not nested:
        plugin.service_ref = _ref_name(data.get("service"))
        plugin.route_ref = _ref_name(data.get("route"))
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
