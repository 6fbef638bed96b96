"""The Kong-format configuration file: what loads, every default, and every problem reported."""

from __future__ import annotations

import logging
import textwrap
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml

from phantom_token.config.errors import ConfigError, ConfigProblem
from phantom_token.config.loader import format_problems, load_settings, parse_settings, resolve_config_path
from phantom_token.config.settings import CacheSettings, PluginConfig, Route, Settings, Upstream

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"
SECRET = "s3cr3t-Value-that-must-never-show"
ENV = {"INTROSPECTION_SECRET": SECRET}


def parse(text: str, *, environ: dict[str, str] | None = None, require_upstream: bool = True) -> Settings:
    document = yaml.safe_load(textwrap.dedent(text))
    return parse_settings(document, source="test.yml", environ=ENV if environ is None else environ,
                          require_upstream=require_upstream)  # fmt: skip


def problems(text: str, **kwargs: Any) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse(text, **kwargs)
    return caught.value.problems


def where_field_why(text: str, **kwargs: Any) -> list[tuple[str, str, str]]:
    return [(p.where, p.field, p.why) for p in problems(text, **kwargs)]


def one_route(settings: Settings) -> Route:
    assert len(settings.routes) == 1
    return settings.routes[0]


def plugin_of(route: Route) -> PluginConfig:
    assert route.plugin is not None
    return route.plugin


MINIMAL = """
_format_version: '3.0'
services:
- name: api
  url: http://127.0.0.1:3001
  routes:
  - name: r1
    paths: [/api]
  plugins:
  - name: phantom-token
    config:
      introspection_endpoint: https://login.example.com/introspect
      client_id: gateway
      client_secret: '{vault://env/INTROSPECTION_SECRET}'
"""


def with_config(extra: str) -> str:
    """MINIMAL with more lines in the plugin's config block."""
    return MINIMAL + textwrap.indent(textwrap.dedent(extra), " " * 6)


# ------------------------------------------------------------------------------------ files that must load


def test_contract_example_loads_with_its_secret_from_the_environment() -> None:
    settings = load_settings(FIXTURES / "contract-example.yml", environ=ENV)
    route = one_route(settings)
    assert route.name == "business-api-route"
    assert route.service == "business-api"
    assert route.upstream == Upstream("http", "127.0.0.1", 3001, "/")
    assert route.paths == ("/api",)
    assert route.headers[0].name == "authorization"
    plugin = plugin_of(route)
    assert plugin.client_secret == SECRET
    assert plugin.token_cache_seconds == 900
    assert plugin.scope == ("read", "write")
    assert settings.listen == "127.0.0.1:3000"
    assert settings.source.endswith("contract-example.yml")


def test_contract_example_without_the_secret_names_the_field_and_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(FIXTURES / "contract-example.yml", environ={})
    [problem] = caught.value.problems
    assert problem.where == "service 'business-api' / plugin 'phantom-token'"
    assert problem.field == "config.client_secret"
    assert "INTROSPECTION_SECRET" in problem.why


@pytest.mark.parametrize("name", ["kong-lua-readme-plain.yml", "lua-readme-plain.yml"])
def test_lua_readme_example_loads_unchanged(name: str) -> None:
    route = one_route(load_settings(FIXTURES / name, environ={}))
    assert route.name == "myapi-route"
    assert route.upstream == Upstream("https", "api-internal.example.com", 3000, "/")
    plugin = plugin_of(route)
    assert plugin.introspection_endpoint == "https://login.example.com/oauth/v2/oauth-introspect"
    assert plugin.client_id == "introspection-client"
    assert plugin.client_secret == "Password1"
    assert plugin.token_cache_seconds == 900


@pytest.mark.parametrize("name", ["kong-lua-readme-bypass.yml", "lua-readme-bypass.yml"])
def test_lua_readme_bypass_example_loads_unchanged(name: str) -> None:
    bypass, guarded = load_settings(FIXTURES / name, environ={}).routes
    assert bypass.name == "bypass"
    assert bypass.plugin is None
    assert len(bypass.headers[0].patterns) == 1
    assert guarded.name == "phantom-token"
    assert plugin_of(guarded).client_id == "introspection-client"


# ---------------------------------------------------------------------------------------------- defaults


def test_plugin_defaults() -> None:
    plugin = plugin_of(one_route(parse(MINIMAL)))
    assert plugin == PluginConfig(
        introspection_endpoint="https://login.example.com/introspect",
        client_id="gateway",
        client_secret=SECRET,
        token_cache_seconds=300,
        scope=(),
        verify_ssl=True,
        realm=None,
        run_on_preflight=False,
        max_token_length=4096,
        introspection_timeout_seconds=5.0,
    )


def test_route_defaults() -> None:
    route = one_route(parse(MINIMAL))
    assert route.strip_path is True
    assert route.preserve_host is False
    assert route.methods == frozenset()
    assert route.hosts == ()
    assert route.headers == ()
    assert route.regex_priority == 0


def test_process_defaults() -> None:
    settings = parse(MINIMAL)
    assert settings.source == "test.yml"
    assert settings.listen == "127.0.0.1:3000"
    assert settings.admin_listen is None
    assert settings.admin_token is None
    assert settings.workers == 1
    assert settings.log_format == "text"
    assert settings.log_level == "info"
    assert settings.cache == CacheSettings(max_entries=100_000)
    assert settings.trusted_proxies == (ip_network("127.0.0.0/8"), ip_network("::1/128"))
    assert settings.upstream_timeout_seconds == 60.0
    assert settings.upstream_connect_timeout_seconds == 5.0
    assert settings.max_header_bytes == 65536


def test_every_plugin_option() -> None:
    plugin = plugin_of(
        one_route(
            parse(
                with_config("""
                token_cache_seconds: 0
                scope: read  write read
                verify_ssl: false
                realm: example
                run_on_preflight: true
                max_token_length: 65536
                introspection_timeout_seconds: 2
                """)
            )
        )
    )
    assert plugin.token_cache_seconds == 0
    assert plugin.scope == ("read", "write")
    assert plugin.verify_ssl is False
    assert plugin.realm == "example"
    assert plugin.run_on_preflight is True
    assert plugin.max_token_length == 65536
    assert plugin.introspection_timeout_seconds == 2.0


def test_scope_may_be_a_list() -> None:
    plugin = plugin_of(one_route(parse(with_config("scope: [read, 'write admin']\n"))))
    assert plugin.scope == ("read", "write", "admin")


def test_every_process_option() -> None:
    settings = parse(
        MINIMAL
        + """
phantom_token:
  listen: '[::1]:8080'
  admin_listen: 127.0.0.1:9000
  admin_token: '{vault://env/introspection-secret}'
  workers: 4
  log_format: json
  log_level: DEBUG
  cache: {max_entries: 10}
  trusted_proxies: [10.0.0.0/8, 192.168.1.1, 'fd00::/8']
  upstream_timeout_seconds: 30
  upstream_connect_timeout_seconds: 0.5
  max_header_bytes: 32768
"""
    )
    assert settings.listen == "[::1]:8080"
    assert settings.admin_listen == "127.0.0.1:9000"
    assert settings.admin_token == SECRET  # Kong's rule: upper case, '-' -> '_'
    assert settings.workers == 4
    assert settings.log_format == "json"
    assert settings.log_level == "debug"
    assert settings.cache.max_entries == 10
    assert settings.trusted_proxies == (ip_network("10.0.0.0/8"), ip_network("192.168.1.1/32"), ip_network("fd00::/8"))
    assert settings.upstream_timeout_seconds == 30.0
    assert settings.upstream_connect_timeout_seconds == 0.5
    assert settings.max_header_bytes == 32768


def test_empty_trusted_proxies_trusts_nobody() -> None:
    assert parse(MINIMAL + "phantom_token:\n  trusted_proxies: []\n").trusted_proxies == ()


def test_every_route_option_and_accepted_kong_fields() -> None:
    route = one_route(
        parse("""
        _format_version: '3.0'
        services:
        - name: api
          id: 0b0b4a52-7c0e-4f43-8f55-6c1bd3b3a1a8
          url: https://backend.internal/v1
          connect_timeout: 1000
          read_timeout: 2000
          write_timeout: 3000
          retries: 0
          tags: [team-a]
          enabled: true
          routes:
          - name: r1
            id: 5e1a1c52-7c0e-4f43-8f55-6c1bd3b3a1a8
            paths: [/api, '~/users/\\d+$']
            methods: [GET, POST]
            hosts: [API.example.com, '*.example.org']
            headers:
              x-version: ['2', '~*^v2']
            strip_path: false
            preserve_host: true
            protocols: [http, https]
            https_redirect_status_code: 308
            regex_priority: 5
            path_handling: v0
            request_buffering: false
            response_buffering: true
            tags: [public]
        """)
    )
    assert route.upstream == Upstream("https", "backend.internal", 443, "/v1")
    assert route.paths == ("/api", r"~/users/\d+$")
    assert route.methods == frozenset({"GET", "POST"})
    assert route.hosts == ("api.example.com", "*.example.org")
    [condition] = route.headers
    assert condition.name == "x-version"
    assert condition.literals == frozenset({"2"})
    assert condition.patterns[0].search("V2-beta")
    assert route.strip_path is False
    assert route.preserve_host is True
    assert route.regex_priority == 5
    assert route.plugin is None


def test_service_protocol_host_port_path() -> None:
    text = """
    _format_version: '3.0'
    services:
    - name: a
      protocol: https
      host: Backend
      routes: [{name: ra, paths: [/a]}]
    - name: b
      host: backend
      port: 8080
      path: /base
      routes: [{name: rb, paths: [/b]}]
    """
    a, b = parse(text).routes
    assert a.upstream == Upstream("https", "backend", 80, "/")  # Kong's port default is 80, as here
    assert b.upstream == Upstream("http", "backend", 8080, "/base")


def test_format_2_regex_paths_are_recognised_without_tilde() -> None:
    text = MINIMAL.replace("'3.0'", "'2.1'").replace("[/api]", "['/users/\\d+', /plain-path_1.x~%20]")
    assert one_route(parse(text)).paths == (r"~/users/\d+", "/plain-path_1.x~%20")


def test_pcre_named_groups_are_translated() -> None:
    text = MINIMAL.replace("[/api]", "['~/users/(?<id>\\d+)']")
    assert one_route(parse(text)).paths == (r"~/users/(?P<id>\d+)",)


def test_unquoted_format_version_number_is_accepted() -> None:
    assert parse(MINIMAL.replace("'3.0'", "2.1")).routes


def test_service_without_routes_is_fine() -> None:
    settings = parse("_format_version: '3.0'\nservices:\n- name: api\n  url: http://127.0.0.1:3001\n")
    assert settings.routes == ()


def test_authz_does_not_need_an_upstream() -> None:
    text = MINIMAL.replace("  url: http://127.0.0.1:3001\n", "")
    assert one_route(parse(text, require_upstream=False)).upstream is None
    assert ("service 'api'", "url") in [(w, f) for w, f, _ in where_field_why(text)]


def test_routes_without_names_get_unique_names() -> None:
    text = """
    _format_version: '3.0'
    services:
    - name: api
      url: http://h
      routes: [{paths: [/a]}, {paths: [/b]}]
    """
    assert [r.name for r in parse(text).routes] == ["api/#1", "api/#2"]


def test_vault_reference_to_a_json_key() -> None:
    text = MINIMAL.replace("INTROSPECTION_SECRET}", "secrets/introspection}")
    plugin = plugin_of(one_route(parse(text, environ={"SECRETS": '{"introspection": "from-json"}'})))
    assert plugin.client_secret == "from-json"


def test_resolve_config_path_order() -> None:
    assert resolve_config_path("cli.yml", {"PHANTOM_TOKEN_CONFIG": "env.yml"}) == "cli.yml"
    assert resolve_config_path(None, {"PHANTOM_TOKEN_CONFIG": "env.yml"}) == "env.yml"
    assert resolve_config_path(None, {}) == "phantom-token.yml"
    assert resolve_config_path(None, {"PHANTOM_TOKEN_CONFIG": ""}) == "phantom-token.yml"


# ------------------------------------------------------------------------------------- plugin placement

PLACEMENT = """
_format_version: '3.0'
services:
- name: api
  url: http://h
  routes:
  - name: inherits
    paths: [/a]
  - name: overrides
    paths: [/b]
    plugins:
    - name: phantom-token
      config: {introspection_endpoint: 'http://as/route', client_id: route-client, client_secret: x}
  - name: disabled-override
    paths: [/c]
    plugins:
    - name: phantom-token
      enabled: false
      config: {introspection_endpoint: 'http://as/off', client_id: off-client, client_secret: x}
  plugins:
  - name: phantom-token
    config: {introspection_endpoint: 'http://as/service', client_id: service-client, client_secret: x}
- name: open
  url: http://h
  routes:
  - name: unauthenticated
    paths: [/open]
"""


def test_route_plugin_overrides_the_service_plugin_for_that_route_only() -> None:
    routes = {r.name: r for r in parse(PLACEMENT).routes}
    assert plugin_of(routes["inherits"]).client_id == "service-client"
    assert plugin_of(routes["overrides"]).client_id == "route-client"
    assert plugin_of(routes["disabled-override"]).client_id == "service-client"  # a disabled plugin is ignored
    assert routes["unauthenticated"].plugin is None


def test_top_level_routes_and_plugins() -> None:
    text = """
    _format_version: '3.0'
    services:
    - {name: api, url: 'http://h'}
    - {name: other, url: 'http://h2'}
    routes:
    - {name: r1, service: api, paths: [/r1]}
    - {name: r2, service: {name: other}, paths: [/r2]}
    - {name: r3, service: other, paths: [/r3]}
    plugins:
    - name: phantom-token
      service: api
      config: {introspection_endpoint: 'http://as', client_id: svc, client_secret: x}
    - name: phantom-token
      route: r3
      config: {introspection_endpoint: 'http://as', client_id: rt, client_secret: x}
    """
    r1, r2, r3 = parse(text).routes
    assert (r1.service, plugin_of(r1).client_id) == ("api", "svc")
    assert (r2.service, r2.plugin) == ("other", None)
    assert plugin_of(r3).client_id == "rt"
    assert r2.upstream == Upstream("http", "h2", 80, "/")


def test_global_plugin_applies_where_nothing_more_specific_does() -> None:
    text = (
        PLACEMENT
        + """
plugins:
- name: phantom-token
  config: {introspection_endpoint: 'http://as', client_id: global, client_secret: x}
"""
    )
    routes = {r.name: r for r in parse(text).routes}
    assert plugin_of(routes["unauthenticated"]).client_id == "global"
    assert plugin_of(routes["inherits"]).client_id == "service-client"


def test_disabled_service_routes_nothing() -> None:
    assert parse(MINIMAL.replace("  url:", "  enabled: false\n  url:")).routes == ()


# -------------------------------------------------------------------------------------------- problems

PLUGIN = "service 'api' / plugin 'phantom-token'"
ROUTE = "service 'api' / route 'r1'"


@pytest.mark.parametrize(
    ("extra", "field", "why"),
    [
        ("colour: red\n", "config.colour", "unknown field"),
        ("token_cache_seconds: true\n", "config.token_cache_seconds", "expected an integer, got a boolean"),
        ("token_cache_seconds: '300'\n", "config.token_cache_seconds", "expected an integer, got a string"),
        ("token_cache_seconds: -1\n", "config.token_cache_seconds", "must be at least 0"),
        ("token_cache_seconds: 1.5\n", "config.token_cache_seconds", "expected an integer, got a number"),
        ("verify_ssl: 'false'\n", "config.verify_ssl", "expected true or false, got a string"),
        ("verify_ssl: 0\n", "config.verify_ssl", "expected true or false, got an integer"),
        ("run_on_preflight: 1\n", "config.run_on_preflight", "expected true or false, got an integer"),
        ("max_token_length: 0\n", "config.max_token_length", "must be from 1 to 65536"),
        ("max_token_length: 65537\n", "config.max_token_length", "must be from 1 to 65536"),
        ("introspection_timeout_seconds: 0\n", "config.introspection_timeout_seconds", "greater than 0"),
        ("introspection_timeout_seconds: .nan\n", "config.introspection_timeout_seconds", "greater than 0"),
        ("scope: 3\n", "config.scope", "expected a string, got an integer"),
        ("scope: [read, 3]\n", "config.scope[1]", "expected a string, got an integer"),
        ("realm: 'a\"b'\n", "config.realm", "without"),
    ],
)
def test_plugin_config_problems(extra: str, field: str, why: str) -> None:
    [(where, got_field, got_why)] = where_field_why(with_config(extra))
    assert (where, got_field) == (PLUGIN, field)
    assert why in got_why


@pytest.mark.parametrize(
    ("old", "new", "field", "why"),
    [
        ("      introspection_endpoint: https://login.example.com/introspect\n", "", "config.introspection_endpoint",
         "is required"),
        ("      client_id: gateway\n", "", "config.client_id", "is required"),
        ("      client_id: gateway\n", "      client_id: ' '\n", "config.client_id", "must not be empty"),
        ("      client_secret: '{vault://env/INTROSPECTION_SECRET}'\n", "", "config.client_secret", "is required"),
        ("https://login.example.com/introspect", "ftp://login.example.com", "config.introspection_endpoint",
         "http:// or https://"),
        ("https://login.example.com/introspect", "/introspect", "config.introspection_endpoint",
         "http:// or https://"),
        ("https://login.example.com/introspect", "http://h:99999/x", "config.introspection_endpoint",
         "not a valid URL"),
        ("{vault://env/INTROSPECTION_SECRET}", "{vault://env/NOPE}", "config.client_secret",
         "environment variable NOPE (vault reference) is not set"),
        ("{vault://env/INTROSPECTION_SECRET}", "{vault://aws/x}", "config.client_secret", "only the env vault"),
        ("{vault://env/INTROSPECTION_SECRET}", "{vault://env}", "config.client_secret", "malformed vault reference"),
    ],
)  # fmt: skip
def test_required_and_invalid_plugin_fields(old: str, new: str, field: str, why: str) -> None:
    assert old in MINIMAL
    [(where, got_field, got_why)] = where_field_why(MINIMAL.replace(old, new))
    assert (where, got_field) == (PLUGIN, field)
    assert why in got_why


def test_missing_config_block() -> None:
    text = MINIMAL.split("    config:")[0]
    assert where_field_why(text) == [(PLUGIN, "config", "is required")]


def test_unknown_plugin_is_an_error() -> None:
    text = MINIMAL + "  - name: cors\n    config: {origins: ['*']}\n"
    [(where, field, why)] = where_field_why(text)
    assert (where, field) == ("service 'api' / plugin 'cors'", "name")
    assert "unknown plugin 'cors'" in why


def test_plugin_twice_on_one_service() -> None:
    second = (
        "  - name: phantom-token\n    config: {introspection_endpoint: 'http://as', client_id: c, client_secret: x}\n"
    )
    found = where_field_why(MINIMAL + second)
    assert found == [(PLUGIN, "name", "phantom-token is configured twice here (Kong allows one per entity)")]


@pytest.mark.parametrize(
    ("old", "new", "where", "field", "why"),
    [
        ("    paths: [/api]\n", "    paths: [/api]\n    colour: red\n", ROUTE, "colour", "unknown field"),
        ("    paths: [/api]\n", "    paths: [api]\n", ROUTE, "paths[0]", "must start with '/'"),
        ("    paths: [/api]\n", "    paths: ['~/a(']\n", ROUTE, "paths[0]", "invalid regex"),
        ("    paths: [/api]\n", "    paths: /api\n", ROUTE, "paths", "expected a list of strings, got a string"),
        ("    paths: [/api]\n", "    paths: [/api, 3]\n", ROUTE, "paths[1]", "expected a string"),
        ("    paths: [/api]\n", "    methods: [get]\n", ROUTE, "methods[0]", "upper-case"),
        ("    paths: [/api]\n", "    hosts: ['a.*.com']\n", ROUTE, "hosts[0]", "at most one '*'"),
        ("    paths: [/api]\n", "    hosts: ['*.a.*']\n", ROUTE, "hosts[0]", "at most one '*'"),
        ("    paths: [/api]\n", "    hosts: ['a.com:8080']\n", ROUTE, "hosts[0]", "port"),
        ("    paths: [/api]\n", "    headers: {host: [a]}\n", ROUTE, "headers.host", "use hosts"),
        ("    paths: [/api]\n", "    headers: {'bad name': [a]}\n", ROUTE, "headers.bad name", "header name"),
        ("    paths: [/api]\n", "    headers: {x-a: []}\n", ROUTE, "headers.x-a", "non-empty list"),
        ("    paths: [/api]\n", "    headers: {x-a: ['~*(']}\n", ROUTE, "headers.x-a[0]", "invalid regex"),
        ("    paths: [/api]\n", "    tags: []\n", ROUTE, "", "at least one of paths, methods, hosts, headers"),
        ("    paths: [/api]\n", "    paths: [/a]\n    strip_path: 'no'\n", ROUTE, "strip_path", "true or false"),
        ("    paths: [/api]\n", "    paths: [/a]\n    path_handling: v1\n", ROUTE, "path_handling", "only v0"),
        ("    paths: [/api]\n", "    paths: [/a]\n    protocols: [smtp]\n", ROUTE, "protocols[0]",
         "not a Kong protocol"),
        ("    paths: [/api]\n", "    paths: [/a]\n    https_redirect_status_code: 200\n", ROUTE,
         "https_redirect_status_code", "one of"),
        ("    paths: [/api]\n", "    paths: [/a]\n    regex_priority: x\n", ROUTE, "regex_priority", "integer"),
        ("  url: http://127.0.0.1:3001\n", "  url: http://127.0.0.1:3001\n  tls_verify: false\n", "service 'api'",
         "tls_verify", "not supported"),
        ("  url: http://127.0.0.1:3001\n", "  url: http://h/?q=1\n", "service 'api'", "url", "query"),
        ("  url: http://127.0.0.1:3001\n", "  url: http://h\n  port: 80\n", "service 'api'", "url", "not both"),
        ("  url: http://127.0.0.1:3001\n", "  host: h\n  protocol: grpc\n", "service 'api'", "protocol",
         "http or https"),
        ("  url: http://127.0.0.1:3001\n", "  host: h\n  path: base\n", "service 'api'", "path", "start with '/'"),
        ("  url: http://127.0.0.1:3001\n", "  url: http://h\n  retries: -1\n", "service 'api'", "retries",
         "from 0 to 32767"),
        ("_format_version: '3.0'\n", "", "", "_format_version", "is required"),
        ("_format_version: '3.0'\n", "_format_version: '4.0'\n", "", "_format_version", "'1.1', '2.1' or '3.0'"),
        ("_format_version: '3.0'\n", "_format_version: '3.0'\nconsumers: []\n", "", "consumers", "not supported"),
        ("_format_version: '3.0'\n", "_format_version: '3.0'\nextra: 1\n", "", "extra", "unknown field"),
    ],
)  # fmt: skip
def test_route_service_and_document_problems(old: str, new: str, where: str, field: str, why: str) -> None:
    assert old in MINIMAL
    found = where_field_why(MINIMAL.replace(old, new, 1))
    assert len(found) == 1, found
    assert found[0][:2] == (where, field)
    assert why in found[0][2]


@pytest.mark.parametrize(
    ("section", "field", "why"),
    [
        ("listen: localhost", "listen", "HOST:PORT"),
        ("listen: '::1:3000'", "listen", "HOST:PORT"),
        ("listen: '[zz]:3000'", "listen", "IPv6"),
        ("listen: 'h:70000'", "listen", "HOST:PORT"),
        ("admin_listen: 9000", "admin_listen", "expected a string"),
        ("workers: 0", "workers", "from 1 to 1024"),
        ("log_format: xml", "log_format", "text or json"),
        ("log_level: loud", "log_level", "debug, info"),
        ("cache: {max_entries: 0}", "cache.max_entries", "at least 1"),
        ("cache: {size: 1}", "cache.size", "unknown field"),
        ("trusted_proxies: [nope]", "trusted_proxies[0]", "IP address or a CIDR"),
        ("trusted_proxies: 10.0.0.0/8", "trusted_proxies", "expected a list"),
        ("upstream_timeout_seconds: -1", "upstream_timeout_seconds", "greater than 0"),
        ("upstream_connect_timeout_seconds: false", "upstream_connect_timeout_seconds", "got a boolean"),
        ("max_header_bytes: 10", "max_header_bytes", "from 1024"),
        ("colour: red", "colour", "unknown field"),
        ("admin_token: '{vault://env/ADMIN}'", "admin_token", "ADMIN (vault reference) is not set"),
    ],
)
def test_phantom_token_section_problems(section: str, field: str, why: str) -> None:
    [(where, got_field, got_why)] = where_field_why(MINIMAL + "phantom_token:\n  " + section + "\n")
    assert (where, got_field) == ("phantom_token", field)
    assert why in got_why


def test_duplicate_route_names() -> None:
    text = MINIMAL.replace("    paths: [/api]\n", "    paths: [/api]\n  - name: r1\n    paths: [/b]\n")
    [(where, field, why)] = where_field_why(text)
    assert (where, field) == (ROUTE, "name")
    assert "duplicate route name" in why


def test_top_level_references_to_nothing() -> None:
    text = (
        MINIMAL
        + """
routes:
- {name: r9, service: missing, paths: [/x]}
plugins:
- name: phantom-token
  route: nowhere
  config: {introspection_endpoint: 'http://as', client_id: c, client_secret: x}
"""
    )
    found = where_field_why(text)
    assert ("route 'r9'", "service", "names no service in this file") in found
    assert ("plugin 'phantom-token'", "route", "names no route in this file") in found


def test_vault_json_problems_do_not_show_the_value() -> None:
    text = MINIMAL.replace("INTROSPECTION_SECRET}", "SECRETS/introspection}")
    for raw in (SECRET, f'["{SECRET}"]', f'{{"other": "{SECRET}"}}'):
        [problem] = problems(text, environ={"SECRETS": raw})
        assert problem.field == "config.client_secret"
        assert "SECRETS" in problem.why
        assert SECRET not in str(problem)


def test_several_problems_are_reported_together() -> None:
    text = """
    _format_version: '3.0'
    services:
    - name: api
      url: nowhere
      routes:
      - name: r1
        paths: [api]
        strip_path: 1
      plugins:
      - name: phantom-token
        config:
          client_id: 7
          verify_ssl: yes please
    phantom_token:
      workers: 0
    """
    found = {(w, f) for w, f, _ in where_field_why(text)}
    assert found == {
        ("service 'api'", "url"),
        (ROUTE, "paths[0]"),
        (ROUTE, "strip_path"),
        (PLUGIN, "config.introspection_endpoint"),
        (PLUGIN, "config.client_id"),
        (PLUGIN, "config.client_secret"),
        (PLUGIN, "config.verify_ssl"),
        ("phantom_token", "workers"),
    }


def test_a_secret_never_appears_in_errors_or_in_settings_repr() -> None:
    text = (
        with_config("token_cache_seconds: nope\n")
        + "phantom_token:\n  admin_token: '{vault://env/INTROSPECTION_SECRET}'\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.problems)
    inline = (
        MINIMAL.replace("'{vault://env/INTROSPECTION_SECRET}'", SECRET) + f"phantom_token:\n  admin_token: {SECRET}\n"
    )
    settings = parse(inline)
    assert plugin_of(one_route(settings)).client_secret == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    # a secret put by mistake where another type belongs is not echoed either
    wrong = MINIMAL.replace("client_id: gateway", f"client_id: [{SECRET}]").replace(
        "url: http://127.0.0.1:3001", f"url: {SECRET}"
    )
    with pytest.raises(ConfigError) as caught:
        parse(wrong)
    assert SECRET not in format_problems(caught.value)


# -------------------------------------------------------------------------------------------- the file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phantom-token.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_yaml_syntax_error_is_one_problem_with_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "_format_version: '3.0'\nservices:\n- name: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    [problem] = caught.value.problems
    assert problem.file == str(path)
    assert problem.where.startswith("line ")
    assert "invalid YAML" in problem.why


def test_duplicate_yaml_keys_are_reported_with_other_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL.replace("      client_id: gateway\n", "      client_id: a\n      client_id: b\n") + "x: 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=ENV)
    found = [(p.where, p.field, p.why) for p in caught.value.problems]
    assert found[0][:2] == ("line 14", "client_id")
    assert "duplicate key" in found[0][2]
    assert ("", "x", "unknown field") in found


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "  routes:\n",
        "  routes:\n  - &base {name: r0, paths: [/zero], strip_path: true}\n  - <<: *base\n    name: r2\n",
    )
    names = [r.name for r in load_settings(write(tmp_path, text), environ=ENV).routes]
    assert names == ["r0", "r2", "r1"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "the file is empty"),
        ("just a string\n", "expected a mapping"),
        ("- 1\n", "expected a mapping, got an integer"),
    ],
)
def test_documents_that_are_not_configurations(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert why in str(caught.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "missing.yml")
    assert "cannot read the file" in format_problems(caught.value)


def test_format_problems_is_one_line_per_problem() -> None:
    err = ConfigError(
        [ConfigProblem("f.yml", "service 'a'", "url", "is required"), ConfigProblem("f.yml", "", "", "x")]
    )
    assert format_problems(err) == "f.yml: service 'a': url: is required\nf.yml: x"


def test_protocols_without_http_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="phantom_token.config"):
        parse(MINIMAL.replace("    paths: [/api]\n", "    paths: [/api]\n    protocols: [https]\n"))
    assert "protocols does not include http" in caplog.text
