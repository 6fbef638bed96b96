"""Read the Kong declarative configuration file into frozen ``Settings``.

The file is Kong's declarative format (``_format_version`` '1.1', '2.1' or '3.0'; ``services`` with nested or
top-level ``routes`` and ``plugins``) plus this project's own ``phantom_token:`` section. The reference of
every field is ``docs/configuration.md``.

Invariants:
- Every problem in the file is collected, then all are raised together as one ``ConfigError``; a returned
  ``Settings`` is fully valid and nothing downstream re-checks it.
- No value read from the file or the environment ever appears in a message: problems name files, services,
  routes, plugins, fields, types and environment variable names, never a value (a secret could be any value).
- ``{vault://env/NAME}`` references are resolved here, so no reference survives into ``Settings``.
- Warnings (fields Kong honours that this gateway ignores) go to the ``phantom_token.config`` logger.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from phantom_token.config.errors import ConfigError, ConfigProblem
from phantom_token.config.settings import (
    DEFAULT_LISTEN,
    DEFAULT_TRUSTED_PROXIES,
    MIN_ENCRYPTION_KEY_CHARS,
    CacheSettings,
    HeaderCondition,
    JwtSettings,
    PluginConfig,
    Route,
    Settings,
    Upstream,
)

__all__ = ["DEFAULT_CONFIG_FILE", "format_problems", "load_settings", "parse_settings", "resolve_config_path"]

log = logging.getLogger("phantom_token.config")

DEFAULT_CONFIG_FILE = "phantom-token.yml"
CONFIG_ENV = "PHANTOM_TOKEN_CONFIG"
PLUGIN_NAME = "phantom-token"
FORMAT_VERSIONS = frozenset({"1.1", "2.1", "3.0"})
LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- entry points


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> str:
    """Which file to read: ``-c/--config``, else ``$PHANTOM_TOKEN_CONFIG``, else ``phantom-token.yml``."""
    return cli_value or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE


def load_settings(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    require_upstream: bool = True,
) -> Settings:
    """Read, parse and validate one file; raise ``ConfigError`` listing every problem found."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError([ConfigProblem(source, "", "", f"cannot read the file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(source, "", "", "the file is not UTF-8 text")]) from exc
    document, duplicates = _parse_yaml(source, text)
    problems = [
        ConfigProblem(source, f"line {line}", key, "duplicate key (YAML would keep only the last one)")
        for key, line in duplicates
    ]
    try:
        settings = parse_settings(document, source=source, environ=environ, require_upstream=require_upstream)
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def parse_settings(
    document: object,
    *,
    source: str,
    environ: Mapping[str, str] | None = None,
    require_upstream: bool = True,
) -> Settings:
    """Validate an already-parsed YAML document (see ``load_settings``); ``source`` names it in messages.

    ``require_upstream=False`` (the ``authz`` and ``check`` commands) makes a service's upstream optional.
    """
    ctx = _Context(source, os.environ if environ is None else environ, require_upstream)
    settings = _parse_document(ctx, document)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    assert settings is not None  # every path that returns None records a problem
    return settings


def format_problems(err: ConfigError) -> str:
    """One line per problem, ``file: where: field: why``, as ``phantom-token check`` prints them."""
    return "\n".join(str(problem) for problem in err.problems)


# ------------------------------------------------------------------------------------------------------ YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also noting keys repeated in one mapping (PyYAML silently keeps the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            loader.duplicates.append((str(key), key_node.start_mark.line + 1))
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(source: str, text: str) -> tuple[object, list[tuple[str, int]]]:
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        why = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
        raise ConfigError([ConfigProblem(source, where, "", why)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(source, "", "", f"invalid YAML: {type(exc).__name__}")]) from None
    finally:
        loader.dispose()


# ------------------------------------------------------------------------------------- typed field readers


class _Context:
    """What every reader needs: where problems go, the environment for vault references, the mode."""

    def __init__(self, source: str, environ: Mapping[str, str], require_upstream: bool) -> None:
        self.source = source
        self.environ = environ
        self.require_upstream = require_upstream
        self.problems: list[ConfigProblem] = []

    def problem(self, where: str, field: str, why: str) -> None:
        self.problems.append(ConfigProblem(self.source, where, field, why))


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "a " + type(value).__name__


class _Block:
    """The fields of one YAML mapping. Each reader records a problem and returns a fallback instead of raising.

    A field set to null counts as absent (Kong does the same). Unknown fields are reported on construction;
    ``unsupported`` maps field names Kong knows but this gateway refuses to the reason given.
    """

    def __init__(
        self,
        ctx: _Context,
        where: str,
        data: Mapping[Any, Any],
        known: frozenset[str],
        *,
        prefix: str = "",
        unsupported: Mapping[str, str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.where = where
        self.data = data
        self.prefix = prefix
        for key in data:
            if not isinstance(key, str):
                self.ctx.problem(where, prefix.rstrip("."), f"field names must be strings, not {_type_name(key)}")
            elif unsupported and key in unsupported:
                self.problem(key, unsupported[key])
            elif key not in known:
                self.problem(key, "unknown field")

    def name(self, key: str) -> str:
        return self.prefix + key

    def problem(self, key: str, why: str) -> None:
        self.ctx.problem(self.where, self.name(key), why)

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _typed(self, key: str, kind: type[T] | tuple[type, ...], expected: str, required: bool) -> T | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.problem(key, "is required")
            return None
        if isinstance(value, bool) and kind is not bool:
            self.problem(key, f"expected {expected}, got a boolean")
            return None
        if not isinstance(value, kind):
            self.problem(key, f"expected {expected}, got {_type_name(value)}")
            return None
        return value  # type: ignore[return-value]

    def text(self, key: str, *, required: bool = False, non_empty: bool = False) -> str | None:
        """A string; a ``{vault://env/...}`` reference is replaced by what it refers to."""
        value = self._typed(key, str, "a string", required)
        if value is None:
            return None
        value = _resolve_reference(self, key, value)
        if value is not None and non_empty and not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._typed(key, bool, "true or false", False)
        return default if value is None else value

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self._typed(key, int, "an integer", False)
        if value is None:
            return default
        if value < low or (high is not None and value > high):
            self.problem(key, f"must be at least {low}" if high is None else f"must be from {low} to {high}")
            return default
        return value

    def number(self, key: str, default: float, *, above: float = 0.0) -> float:
        value = self._typed(key, (int, float), "a number", False)
        if value is None:
            return default
        number = float(value)
        if not math.isfinite(number) or number <= above:
            self.problem(key, f"must be a number greater than {above:g}")
            return default
        return number

    def mapping(self, key: str, *, required: bool = False) -> Mapping[Any, Any] | None:
        return self._typed(key, dict, "a mapping", required)

    def items(self, key: str) -> list[Any]:
        value = self._typed(key, list, "a list", False)
        return [] if value is None else value

    def texts(self, key: str) -> list[str] | None:
        """A list of strings (no references); None when absent or when any item is not a string."""
        value = self._typed(key, list, "a list of strings", False)
        if value is None:
            return None
        bad = [i for i, item in enumerate(value) if not isinstance(item, str)]
        for i in bad:
            self.problem(f"{key}[{i}]", f"expected a string, got {_type_name(value[i])}")
        return None if bad else list(value)

    def accept(self, *keys: str, kind: type | tuple[type, ...] = str, many: bool = False) -> None:
        """Type-check fields that are valid Kong but change nothing here (ids, tags, buffering...)."""
        for key in keys:
            if many:
                self.texts(key)
            else:
                expected = "true or false" if kind is bool else "an integer" if kind is int else "a string"
                self._typed(key, kind, expected, False)


# ------------------------------------------------------------------------------------------ vault references

_REFERENCE = re.compile(r"\{vault://(?P<vault>[^/}]*)/(?P<name>[^/}]+)(?:/(?P<key>[^}]+))?\}")


def _resolve_reference(block: _Block, key: str, value: str) -> str | None:
    """Kong's env vault: ``{vault://env/NAME}`` or ``{vault://env/NAME/json_key}``, the whole value only.

    As in Kong, NAME is upper-cased and '-' becomes '_'; with a json_key the variable holds a JSON object.
    """
    if not value.startswith("{vault://"):
        return value
    found = _REFERENCE.fullmatch(value)
    if found is None:
        block.problem(key, "malformed vault reference (expected {vault://env/NAME} or {vault://env/NAME/key})")
        return None
    if found["vault"] != "env":
        block.problem(key, "only the env vault is supported ({vault://env/NAME})")
        return None
    variable = found["name"].upper().replace("-", "_")
    raw = block.ctx.environ.get(variable)
    if raw is None:
        block.problem(key, f"environment variable {variable} (vault reference) is not set")
        return None
    if found["key"] is None:
        return raw
    try:
        document = json.loads(raw)
    except ValueError:
        block.problem(key, f"environment variable {variable} (vault reference) does not hold a JSON object")
        return None
    if not isinstance(document, dict):
        block.problem(key, f"environment variable {variable} (vault reference) does not hold a JSON object")
        return None
    item = document.get(found["key"])
    if not isinstance(item, str):
        missing = "has no" if item is None else "has a non-string"
        block.problem(key, f"the JSON in environment variable {variable} {missing} key '{found['key']}'")
        return None
    return item


# ------------------------------------------------------------------------------------------ the document

_TOP_LEVEL = frozenset(
    {"_format_version", "_transform", "_workspace", "services", "routes", "plugins", "phantom_token"}
)
_KONG_ENTITIES = ("consumers", "upstreams", "targets", "certificates", "ca_certificates", "snis", "vaults")
_UNSUPPORTED_TOP = {key: f"Kong {key} are not supported by phantom-token" for key in _KONG_ENTITIES}


@dataclass
class _Service:
    label: str  # for messages: "service 'name'" or "service #2"
    name: str  # Route.service
    ref_names: frozenset[str]  # what top-level routes and plugins may call it: name and id
    upstream: Upstream | None
    enabled: bool
    plugin: _Plugin | None = None


@dataclass
class _Plugin:
    where: str
    config: PluginConfig | None  # None: invalid (a problem is recorded) or disabled
    enabled: bool
    service_ref: str | None = None
    route_ref: str | None = None


@dataclass
class _RouteDef:
    where: str
    route: Route
    service: _Service | None
    plugin: _Plugin | None = None
    ref_names: frozenset[str] = field(default_factory=frozenset)


def _parse_document(ctx: _Context, document: object) -> Settings | None:
    if document is None:
        ctx.problem("", "", "the file is empty")
        return None
    if isinstance(document, list):
        # The snippet form of the Lua plugin's README: a bare list of services.
        document = {"_format_version": "2.1", "services": document}
    if not isinstance(document, dict):
        ctx.problem("", "", f"expected a mapping with _format_version and services, got {_type_name(document)}")
        return None
    top = _Block(ctx, "", document, _TOP_LEVEL, unsupported=_UNSUPPORTED_TOP)
    version = _format_version(top)
    top.accept("_transform", kind=bool)
    top.accept("_workspace")
    known: list[_Service] = []
    routes: list[_RouteDef] = []
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
    return _parse_section(ctx, section or {}, final)


def _format_version(top: _Block) -> str:
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


def _check_unique(ctx: _Context, named: list[tuple[str, str]], kind: str) -> None:
    first: dict[str, str] = {}
    for where, name in named:
        if name in first:
            ctx.problem(where, "name", f"duplicate {kind} name (also used by {first[name]})")
        else:
            first[name] = where


def _finish_route(definition: _RouteDef, global_plugin: _Plugin | None) -> Route:
    """Attach the plugin that applies: the route's own, else its service's, else a global one."""
    for plugin in (definition.plugin, definition.service.plugin if definition.service else None, global_plugin):
        if plugin is not None and plugin.enabled and plugin.config is not None:
            return replace(definition.route, plugin=plugin.config)
    return definition.route


# ------------------------------------------------------------------------------------------------ services

_SERVICE_FIELDS = frozenset(
    {
        "name", "id", "url", "protocol", "host", "port", "path", "connect_timeout", "read_timeout",
        "write_timeout", "retries", "tags", "enabled", "routes", "plugins",
    }
)  # fmt: skip
_UNSUPPORTED_SERVICE = {
    key: f"Kong's service {key} is not supported by phantom-token"
    for key in ("tls_verify", "tls_verify_depth", "ca_certificates", "client_certificate")
}
_TIMEOUT_MAX = 2**31 - 2


def _parse_service(ctx: _Context, raw: object, index: int, version: str) -> tuple[_Service, list[_RouteDef]] | None:
    """A service and its nested routes (their plugins attached; the service's own plugin on the service)."""
    if not isinstance(raw, dict):
        ctx.problem(f"service #{index + 1}", "", f"expected a mapping, got {_type_name(raw)}")
        return None
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else None
    label = f"service '{name}'" if name else f"service #{index + 1}"
    block = _Block(ctx, label, raw, _SERVICE_FIELDS, unsupported=_UNSUPPORTED_SERVICE)
    block.text("name")
    block.accept("id")
    block.accept("tags", many=True)
    for key in ("connect_timeout", "read_timeout", "write_timeout"):  # milliseconds; not used yet
        block.integer(key, 60_000, 1, _TIMEOUT_MAX)
    block.integer("retries", 5, 0, 32767)
    enabled = block.flag("enabled", True)
    upstream = _parse_upstream(block)
    refs = {n for n in (name, raw.get("id")) if isinstance(n, str) and n}
    service = _Service(label, name or f"#{index + 1}", frozenset(refs), upstream, enabled)
    routes = []
    for i, item in enumerate(block.items("routes")):
        route = _parse_route(ctx, item, f"{label} / ", i, service, version, nested=True)
        if route is not None:
            routes.append(route)
    for plugin in _parse_plugins(ctx, block.items("plugins"), label, nested=True):
        service.plugin = _only_one(ctx, service.plugin, plugin)
    return service, routes


def _parse_upstream(block: _Block) -> Upstream | None:
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
    protocol = block.text("protocol") or "http"
    if protocol not in ("http", "https"):
        block.problem("protocol", "must be http or https")
    host = block.text("host", required=True, non_empty=True)
    port = block.integer("port", 80, 1, 65535)  # Kong's default is 80 whatever the protocol
    path = block.text("path") or "/"
    if not path.startswith("/"):
        block.problem("path", "must start with '/'")
    return Upstream(protocol, host.lower(), port, path) if host else None


def _upstream_from_url(block: _Block, url: str) -> Upstream | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        block.problem("url", "is not a valid URL")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        block.problem("url", "must be an http:// or https:// URL with a host")
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        block.problem("url", "must not have a query, a fragment or credentials")
        return None
    default = 443 if parts.scheme == "https" else 80
    return Upstream(parts.scheme, parts.hostname, port or default, parts.path or "/")


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


def _parse_route(
    ctx: _Context,
    raw: object,
    where_prefix: str,
    index: int,
    service: _Service | None,
    version: str,
    *,
    nested: bool,
) -> _RouteDef | None:
    if not isinstance(raw, dict):
        ctx.problem(f"{where_prefix}route #{index + 1}", "", f"expected a mapping, got {_type_name(raw)}")
        return None
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else None
    where = f"{where_prefix}route '{name}'" if name else f"{where_prefix}route #{index + 1}"
    known = _ROUTE_FIELDS if nested else _ROUTE_FIELDS | {"service"}
    block = _Block(ctx, where, raw, known)
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
        strip_path=block.flag("strip_path", True),
        preserve_host=block.flag("preserve_host", False),
        regex_priority=block.integer("regex_priority", 0, -(2**31), 2**31 - 1),
    )
    definition = _RouteDef(
        where, route, service, ref_names=frozenset(n for n in (name, raw.get("id")) if isinstance(n, str))
    )
    for plugin in _parse_plugins(ctx, block.items("plugins"), where, nested=True):
        definition.plugin = _only_one(ctx, definition.plugin, plugin)
    return definition


def _check_protocols(block: _Block) -> None:
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


def _paths(block: _Block, version: str) -> list[str]:
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


def _methods(block: _Block) -> list[str]:
    methods = block.texts("methods") or []
    for i, method in enumerate(methods):
        if not _METHOD.fullmatch(method):
            block.problem(f"methods[{i}]", "must be an upper-case HTTP method name")
    return methods


def _hosts(block: _Block) -> list[str]:
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


def _headers(block: _Block) -> list[HeaderCondition]:
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


def _top_level_routes(ctx: _Context, raws: list[Any], services: list[_Service], version: str) -> list[_RouteDef]:
    out = []
    for i, raw in enumerate(raws):
        service = None
        if isinstance(raw, dict):
            name = raw.get("name")
            where = f"route '{name}'" if isinstance(name, str) and name else f"route #{i + 1}"
            service = _find(ctx, raw.get("service"), services, where, "service")
        definition = _parse_route(ctx, raw, "", i, service, version, nested=False)
        if definition is not None:
            out.append(definition)
    return out


def _find(ctx: _Context, ref: object, services: list[_Service], where: str, field: str) -> _Service | None:
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


# ------------------------------------------------------------------------------------------------- plugins

_PLUGIN_FIELDS = frozenset({"name", "id", "config", "enabled", "protocols", "tags", "instance_name", "ordering"})
_PLUGIN_CONFIG_FIELDS = frozenset(
    {
        "introspection_endpoint", "client_id", "client_secret", "token_cache_seconds", "scope", "verify_ssl",
        "realm", "run_on_preflight", "max_token_length", "introspection_timeout_seconds", "negative_cache_seconds",
        "introspection_response", "issuer", "jwks_uri", "audience", "issuer_allowed", "clock_skew_seconds",
        "honor_cache_control", "client_auth_method", "client_private_key_file", "client_private_key_id",
        "client_assertion_audience", "client_cert_file", "client_key_file", "ca_file",
    }
)  # fmt: skip
_REALM = re.compile(r"[\x20-\x7e]*")


def _parse_plugins(ctx: _Context, raws: list[Any], owner: str, *, nested: bool) -> list[_Plugin]:
    out = []
    for i, raw in enumerate(raws):
        plugin = _parse_plugin(ctx, raw, owner, i, nested=nested)
        if plugin is not None:
            out.append(plugin)
    return out


def _parse_plugin(ctx: _Context, raw: object, owner: str, index: int, *, nested: bool) -> _Plugin | None:
    prefix = f"{owner} / " if owner else ""
    if not isinstance(raw, dict):
        ctx.problem(f"{prefix}plugin #{index + 1}", "", f"expected a mapping, got {_type_name(raw)}")
        return None
    name = raw.get("name")
    where = f"{prefix}plugin '{name}'" if isinstance(name, str) and name else f"{prefix}plugin #{index + 1}"
    known = _PLUGIN_FIELDS if nested else _PLUGIN_FIELDS | {"service", "route"}
    unsupported = {"consumer": "consumer-scoped plugins are not supported by phantom-token"}
    block = _Block(ctx, where, raw, known, unsupported=unsupported)
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
    config = _parse_plugin_config(ctx, where, config_raw) if config_raw is not None else None
    plugin = _Plugin(where, config if enabled else None, enabled)
    if not nested:
        plugin.service_ref = _ref_name(raw.get("service"))
        plugin.route_ref = _ref_name(raw.get("route"))
    return plugin


def _ref_name(ref: object) -> str | None:
    if isinstance(ref, dict):
        ref = ref.get("name") or ref.get("id")
    return ref if isinstance(ref, str) else None


def _parse_plugin_config(ctx: _Context, where: str, raw: Mapping[Any, Any]) -> PluginConfig | None:
    block = _Block(ctx, where, raw, _PLUGIN_CONFIG_FIELDS, prefix="config.")
    before = len(ctx.problems)
    endpoint = block.text("introspection_endpoint", required=not block.present("issuer"))
    if endpoint is not None:
        _check_http_url(block, "introspection_endpoint", endpoint)
    client_id = block.text("client_id", required=True, non_empty=True)
    method = block.text("client_auth_method") or "client_secret_basic"
    client_secret = block.text("client_secret", required=method in _SECRET_METHODS, non_empty=True)
    realm = block.text("realm")
    if realm is not None and (not _REALM.fullmatch(realm) or '"' in realm or "\\" in realm):
        block.problem("realm", "must be printable ASCII without '\"' or '\\'")
    config = PluginConfig(
        introspection_endpoint=endpoint or "",
        client_id=client_id or "",
        client_secret=client_secret or "",
        token_cache_seconds=block.integer("token_cache_seconds", 300, 0),
        scope=_scope(block),
        verify_ssl=block.flag("verify_ssl", True),
        realm=realm,
        run_on_preflight=block.flag("run_on_preflight", False),
        max_token_length=block.integer("max_token_length", 4096, 1, 65536),
        introspection_timeout_seconds=block.number("introspection_timeout_seconds", 5.0),
        negative_cache_seconds=block.integer("negative_cache_seconds", 5, 0, 3600),
        **_standards_options(block, method),
    )
    return config if len(ctx.problems) == before else None


def _check_http_url(block: _Block, key: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        block.problem(key, "is not a valid URL")
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        block.problem(key, "must be an http:// or https:// URL with a host")
    elif parts.fragment:
        block.problem(key, "must not have a fragment")


def _scope(block: _Block) -> tuple[str, ...]:
    raw = block.data.get("scope")
    if isinstance(raw, list):
        items = block.texts("scope") or []
        words = [word for item in items for word in item.split()]
    else:
        words = (block.text("scope") or "").split()
    return tuple(dict.fromkeys(words))  # in order, without repeats


def _only_one(ctx: _Context, current: _Plugin | None, new: _Plugin) -> _Plugin:
    if current is not None:
        ctx.problem(new.where, "name", f"{PLUGIN_NAME} is configured twice here (Kong allows one per entity)")
    return new


def _top_level_plugins(
    ctx: _Context, raws: list[Any], services: list[_Service], routes: list[_RouteDef]
) -> _Plugin | None:
    """Attach top-level plugins to the route or service they name; return the global one, if any."""
    global_plugin: _Plugin | None = None
    for plugin in _parse_plugins(ctx, raws, "", nested=False):
        if plugin.route_ref is not None:
            target = next((r for r in routes if plugin.route_ref in r.ref_names), None)
            if target is None:
                ctx.problem(plugin.where, "route", "names no route in this file")
            else:
                target.plugin = _only_one(ctx, target.plugin, plugin)
        elif plugin.service_ref is not None:
            service = next((s for s in services if plugin.service_ref in s.ref_names), None)
            if service is None:
                ctx.problem(plugin.where, "service", "names no service in this file")
            else:
                service.plugin = _only_one(ctx, service.plugin, plugin)
        else:
            global_plugin = _only_one(ctx, global_plugin, plugin)
    return global_plugin


# --------------------------------------------------------------------------------------- phantom_token section

_SECTION_FIELDS = frozenset(
    {
        "listen", "admin_listen", "admin_token", "workers", "log_format", "log_level", "cache",
        "trusted_proxies", "upstream_timeout_seconds", "upstream_connect_timeout_seconds", "max_header_bytes",
        "max_body_bytes", "send_timeout_seconds", "jwt",
    }
)  # fmt: skip
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")


def _parse_section(ctx: _Context, raw: Mapping[Any, Any], routes: tuple[Route, ...]) -> Settings:
    block = _Block(ctx, "phantom_token", raw, _SECTION_FIELDS)
    listen = _listen(block, "listen") or DEFAULT_LISTEN
    admin_listen = _listen(block, "admin_listen")
    log_format = block.text("log_format") or "text"
    if log_format not in ("text", "json"):
        block.problem("log_format", "must be text or json")
    log_level = (block.text("log_level") or "info").lower()
    if log_level not in LOG_LEVELS:
        block.problem("log_level", "must be one of debug, info, warning, error, critical")
    return Settings(
        routes=routes,
        source=ctx.source,
        listen=listen,
        admin_listen=admin_listen,
        admin_token=block.text("admin_token", non_empty=True),
        workers=block.integer("workers", 1, 1, 1024),
        log_format=log_format,
        log_level=log_level,
        cache=_cache(block),
        trusted_proxies=_trusted_proxies(block),
        upstream_timeout_seconds=block.number("upstream_timeout_seconds", 60.0),
        upstream_connect_timeout_seconds=block.number("upstream_connect_timeout_seconds", 5.0),
        max_header_bytes=block.integer("max_header_bytes", 65536, 1024, 16 * 1024 * 1024),
        max_body_bytes=block.integer("max_body_bytes", 0, 0),
        send_timeout_seconds=block.number("send_timeout_seconds", 60.0),
        jwt=_jwt(block, routes),
    )


def _listen(block: _Block, key: str) -> str | None:
    value = block.text(key)
    if value is None:
        return None
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


def _cache(block: _Block) -> CacheSettings:
    raw = block.mapping("cache")
    if raw is None:
        return CacheSettings()
    cache = _Block(block.ctx, block.where, raw, _CACHE_FIELDS, prefix="cache.")
    default = CacheSettings()
    redis_url = cache.text("redis_url", non_empty=True)
    if redis_url is not None and urlsplit(redis_url).scheme not in _REDIS_SCHEMES:
        schemes = ", ".join(f"{scheme}://" for scheme in _REDIS_SCHEMES)
        cache.problem("redis_url", f"must be a URL with one of the schemes {schemes}")
    encryption_key = cache.text("encryption_key", non_empty=True)
    if encryption_key is not None and len(encryption_key) < MIN_ENCRYPTION_KEY_CHARS:
        why = f"must be at least {MIN_ENCRYPTION_KEY_CHARS} characters (e.g. from openssl rand -base64 32)"
        cache.problem("encryption_key", why)
    if encryption_key is not None and redis_url is None:
        cache.problem("encryption_key", "only applies to the shared store: set redis_url too")
    return CacheSettings(
        max_entries=cache.integer("max_entries", default.max_entries, 1),
        negative_max_entries=cache.integer("negative_max_entries", default.negative_max_entries, 1),
        redis_url=redis_url,
        key_prefix=cache.text("key_prefix") or default.key_prefix,
        encryption_key=encryption_key,
        redis_timeout_seconds=cache.number("redis_timeout_seconds", default.redis_timeout_seconds),
    )


_CACHE_FIELDS = frozenset(
    {"max_entries", "negative_max_entries", "redis_url", "key_prefix", "encryption_key", "redis_timeout_seconds"}
)
_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


def _trusted_proxies(block: _Block) -> tuple[IPv4Network | IPv6Network, ...]:
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


# ------------------------------------------------------------- standards-based authorization servers (issue 3)

RESPONSE_MODES = ("jwt", "json", "signed")
_CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth")
_SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
_JWT_FIELDS = frozenset(
    {"issuer", "key_file", "alg", "kid", "previous_key_file", "previous_kid", "max_lifetime_seconds"}
)


def _standards_options(block: _Block, method: str) -> dict[str, Any]:
    """The plugin options for RFC 7662 / RFC 9701 servers: mode, discovery, claim checks, client authentication."""
    mode = block.text("introspection_response") or "jwt"
    if mode not in RESPONSE_MODES:
        block.problem("introspection_response", "must be jwt, json or signed")
    urls = {key: block.text(key, non_empty=True) for key in ("issuer", "jwks_uri", "client_assertion_audience")}
    for key, value in urls.items():
        if value is not None:
            _check_http_url(block, key, value)
    issuer = urls["issuer"]
    if mode == "signed" and issuer is None:
        block.problem("issuer", "is required when introspection_response is signed (the answer's iss must equal it)")
    if method not in _CLIENT_AUTH_METHODS:
        block.problem("client_auth_method", "must be one of " + ", ".join(_CLIENT_AUTH_METHODS))
    return {
        "introspection_response": mode,
        "issuer": issuer,
        "jwks_uri": urls["jwks_uri"],
        "audience": block.text("audience", non_empty=True),
        "issuer_allowed": _issuer_allowed(block),
        "clock_skew_seconds": block.integer("clock_skew_seconds", 60, 0, 3600),
        "honor_cache_control": block.flag("honor_cache_control", True),
        "client_auth_method": method,
        "client_private_key_file": _private_key_file(block, method),
        "client_private_key_id": block.text("client_private_key_id", non_empty=True),
        "client_assertion_audience": urls["client_assertion_audience"],
        **_tls_files(block, method),
    }


def _issuer_allowed(block: _Block) -> tuple[str, ...]:
    if isinstance(block.data.get("issuer_allowed"), list):
        return tuple(block.texts("issuer_allowed") or ())
    one = block.text("issuer_allowed", non_empty=True)
    return (one,) if one is not None else ()


def _only_for(block: _Block, key: str, method: str, wanted: str) -> str | None:
    value = block.text(key, non_empty=True)
    if value is not None and method != wanted:
        block.problem(key, f"is only used with client_auth_method {wanted}")
    if value is None and method == wanted:
        block.problem(key, f"is required with client_auth_method {wanted}")
    return value


def _private_key_file(block: _Block, method: str) -> str | None:
    path = _only_for(block, "client_private_key_file", method, "private_key_jwt")
    if path is not None and method == "private_key_jwt":
        why = _unusable_private_key(path, None)
        if why is not None:
            block.problem("client_private_key_file", why)
    return path


def _unusable_private_key(path: str, alg: str | None) -> str | None:
    from phantom_token.jose import JoseError, SigningKey

    try:
        SigningKey.from_pem_file(path, alg)
    except OSError as exc:
        return f"cannot read the file: {exc.strerror}"
    except JoseError:
        return "is not a PEM private key (EC P-256/384/521, RSA >= 2048 bits or Ed25519) that fits the algorithm"
    return None


def _tls_files(block: _Block, method: str) -> dict[str, str | None]:
    cert = _only_for(block, "client_cert_file", method, "tls_client_auth")
    key = _only_for(block, "client_key_file", method, "tls_client_auth")
    ca_file = block.text("ca_file", non_empty=True)
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            block.problem("ca_file", f"is not a readable PEM file of CA certificates ({type(exc).__name__})")
    if cert is not None and key is not None and method == "tls_client_auth":
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            why = f"with client_key_file, is not a readable PEM certificate and matching key ({type(exc).__name__})"
            block.problem("client_cert_file", why)
    return {"client_cert_file": cert, "client_key_file": key, "ca_file": ca_file}


def _jwt(block: _Block, routes: tuple[Route, ...]) -> JwtSettings:
    """``phantom_token.jwt``: the keys the gateway signs minted JWTs with; ``issuer`` is required if a route mints."""
    mints = any(route.plugin is not None and route.plugin.mints_jwt for route in routes)
    raw = block.mapping("jwt")
    if raw is None:
        if mints:
            block.problem("jwt.issuer", "is required when a route sets introspection_response json or signed")
        return JwtSettings()
    jwt = _Block(block.ctx, block.where, raw, _JWT_FIELDS, prefix="jwt.")
    issuer = jwt.text("issuer", required=mints, non_empty=True)
    from phantom_token.jose import SUPPORTED_ALGORITHMS

    alg = jwt.text("alg", non_empty=True)
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        jwt.problem("alg", "must be one of " + ", ".join(sorted(SUPPORTED_ALGORITHMS)))
        alg = None
    files = {}
    for key, key_alg in (("key_file", alg), ("previous_key_file", None)):
        path = files[key] = jwt.text(key, non_empty=True)
        why = _unusable_private_key(path, key_alg) if path is not None else None
        if why is not None:
            jwt.problem(key, why)
    return JwtSettings(
        issuer=issuer,
        key_file=files["key_file"],
        alg=alg,
        kid=jwt.text("kid", non_empty=True),
        previous_key_file=files["previous_key_file"],
        previous_kid=jwt.text("previous_kid", non_empty=True),
        max_lifetime_seconds=jwt.integer("max_lifetime_seconds", 3600, 1, 86400),
    )
