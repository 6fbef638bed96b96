"""The option declarations (config/options.py and its tables): docs, defaults, bounds, the auth-method list.

Every table is checked the same way, so a bound or default declared once is enforced and documented as declared.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from phantom_token.config import docs
from phantom_token.config.errors import ConfigError
from phantom_token.config.kong import SERVICE_FIELDS
from phantom_token.config.kong_routes import PLUGIN_FIELDS, ROUTE_FIELDS
from phantom_token.config.loader import parse_settings
from phantom_token.config.options import Option, OptionTable, kong_field
from phantom_token.config.plugin_options import PLUGIN_OPTIONS
from phantom_token.config.process_options import CACHE_OPTIONS, GRPC_TLS_OPTIONS, JWT_OPTIONS, SECTION_OPTIONS
from phantom_token.config.settings import (
    CLIENT_AUTH_METHODS,
    CacheSettings,
    GrpcTlsSettings,
    JwtSettings,
    PluginConfig,
    Route,
    Settings,
)
from phantom_token.introspection import client_auth

CONFIGURATION_MD = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PLUGIN = {"introspection_endpoint": "https://as.test/introspect", "client_id": "gw", "client_secret": "s"}


def document(plugin: dict[str, Any] | None = None, section: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [{
            "name": "api",
            "url": "http://127.0.0.1:3001",
            "routes": [{"name": "r", "paths": ["/api"]}],
            "plugins": [{"name": "phantom-token", "config": {**PLUGIN, **(plugin or {})}}],
        }],
        "phantom_token": section or {},
    }  # fmt: skip


def problems(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(doc, source="f.yml", environ={})
    return [(p.where, p.field, p.why) for p in caught.value.problems]


# ------------------------------------------------------------------------------------------ the documentation


def test_configuration_md_tables_are_the_generated_ones() -> None:
    text = CONFIGURATION_MD.read_text(encoding="utf-8")
    assert docs.generate(text) == text, "run: python -m phantom_token.config.docs"


def test_docs_command_checks_then_regenerates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = CONFIGURATION_MD.read_text(encoding="utf-8")
    row = "| `token_cache_seconds` | int ≥ 0 | 300 |"
    assert row in good
    stale = tmp_path / "configuration.md"
    stale.write_text(good.replace(row, "| `token_cache_seconds` | int ≥ 0 | 301 |"), encoding="utf-8")
    assert docs.main([str(stale), "--check"]) == 1
    assert "301" in stale.read_text(encoding="utf-8")  # --check changes nothing
    assert docs.main([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == good
    assert docs.main([str(stale), "--check"]) == 0
    assert "differ" in capsys.readouterr().err


def test_generate_refuses_a_file_without_its_markers() -> None:
    with pytest.raises(ValueError, match="marker"):
        docs.generate("# Configuration reference\n")


def test_every_option_appears_in_the_documentation_with_its_settings_default() -> None:
    text = CONFIGURATION_MD.read_text(encoding="utf-8")
    assert f"| `cache.max_entries` | int ≥ 1 | {CacheSettings().max_entries} |" in text
    assert f"| `jwt.max_lifetime_seconds` | int 1..86400 | {JwtSettings().max_lifetime_seconds} |" in text
    for table in (PLUGIN_OPTIONS, SECTION_OPTIONS):
        for names, _, _ in table.rows():
            assert f"| `{names[0]}` |" in text


# ----------------------------------------------------------------------------------- declarations and settings


@pytest.mark.parametrize(
    ("table", "settings", "not_options"),
    [
        (PLUGIN_OPTIONS, PluginConfig, set()),
        (SECTION_OPTIONS, Settings, {"routes", "source"}),
        (CACHE_OPTIONS, CacheSettings, set()),
        (JWT_OPTIONS, JwtSettings, set()),
        (GRPC_TLS_OPTIONS, GrpcTlsSettings, set()),
    ],
)
def test_a_table_declares_exactly_its_dataclass_fields_with_their_defaults(
    table: OptionTable, settings: type, not_options: set[str]
) -> None:
    fields = {f.name: f.default for f in dataclasses.fields(settings)}
    assert table.names == set(fields) - not_options
    assert table.defaults == {name: fields[name] for name in table.names}


def test_a_table_that_drifts_from_its_dataclass_is_refused_at_import() -> None:
    options = CACHE_OPTIONS.options
    with pytest.raises(RuntimeError, match="undeclared \\['redis_url'\\]"):
        OptionTable(CacheSettings, "cache.", [o for o in options if o.name != "redis_url"])
    with pytest.raises(RuntimeError, match="not fields \\['colour'\\]"):
        OptionTable(CacheSettings, "cache.", [*options, Option("colour", "text", "")])


def test_an_empty_file_section_gives_the_dataclass_defaults() -> None:
    settings = parse_settings(document(), source="f.yml", environ={})
    plugin = settings.routes[0].plugin
    assert plugin == PluginConfig(PLUGIN["introspection_endpoint"], PLUGIN["client_id"], PLUGIN["client_secret"])
    assert settings == Settings(routes=settings.routes, source="f.yml")


def test_a_blank_string_option_with_a_default_gets_the_default() -> None:
    settings = parse_settings(document({"introspection_response": ""}, {"log_format": "", "log_level": "",
                                        "cache": {"key_prefix": ""}}), source="f.yml", environ={})  # fmt: skip
    plugin = settings.routes[0].plugin
    assert plugin is not None
    assert plugin.introspection_response == PluginConfig("e", "c", "s").introspection_response
    assert (settings.log_format, settings.log_level) == (Settings(()).log_format, Settings(()).log_level)
    assert settings.cache.key_prefix == CacheSettings().key_prefix


# --------------------------------------------------------------------------------------- bounds, from the tables


def _place(name: str, value: object, plugin: bool) -> tuple[dict[str, Any], str, str]:
    """A document with the option set, the WHERE and FIELD a problem about it names."""
    where = "service 'api' / plugin 'phantom-token'"
    if plugin:
        return document({name: value}), where, f"config.{name}"
    if "." in name:
        section, key = name.split(".")
        return document(section={section: {key: value}}), "phantom_token", name
    return document(section={name: value}), "phantom_token", name


def _ranged() -> list[tuple[str, Option, bool]]:
    out = [(names[0], option, True) for names, option, _ in PLUGIN_OPTIONS.rows()]
    out += [(names[0], option, False) for names, option, _ in SECTION_OPTIONS.rows()]
    return [row for row in out if row[1].kind in ("integer", "number", "flag")]


@pytest.mark.parametrize(("name", "option", "plugin"), _ranged(), ids=[row[0] for row in _ranged()])
def test_every_declared_bound_and_type_is_enforced(name: str, option: Option, plugin: bool) -> None:
    if option.kind == "flag":
        bad: list[tuple[object, str]] = [("yes", "expected true or false, got a string")]
    elif option.kind == "number":
        bad = [(0, "must be a number greater than 0"), (True, "expected a number, got a boolean")]
    else:
        assert option.low is not None
        why = f"must be at least {option.low}" if option.high is None else f"must be from {option.low} to {option.high}"
        bad = [(option.low - 1, why), (1.5, "expected an integer, got a number")]
        if option.high is not None:
            bad.append((option.high + 1, why))
    for value, why in bad:
        doc, where, field = _place(name, value, plugin)
        assert problems(doc) == [(where, field, why)], value
    low = option.low if option.kind == "integer" else True if option.kind == "flag" else 0.5
    parse_settings(_place(name, low, plugin)[0], source="f.yml", environ={})  # the bound itself is accepted


@pytest.mark.parametrize("table", [PLUGIN_OPTIONS, SECTION_OPTIONS, CACHE_OPTIONS, JWT_OPTIONS, GRPC_TLS_OPTIONS])
def test_a_field_no_table_declares_is_unknown(table: OptionTable) -> None:
    name = {PLUGIN_OPTIONS: "introspection_url", SECTION_OPTIONS: "listen_port"}.get(table, "ttl")
    doc, where, field = _place(table.prefix + name, 1, table is PLUGIN_OPTIONS)
    assert problems(doc) == [(where, field, "unknown field")]


def test_grpc_tls_files_come_together() -> None:
    assert problems(document(section={"grpc_tls": {"cert_file": "c.pem"}})) == [
        ("phantom_token", "grpc_tls.key_file", "is required with cert_file")]
    assert problems(document(section={"grpc_tls": {"key_file": "k.pem", "client_ca_file": "ca.pem"}})) == [
        ("phantom_token", "grpc_tls.cert_file", "is required with key_file"),
        ("phantom_token", "grpc_tls.client_ca_file",
         "needs cert_file and key_file (client certificates are asked over TLS)")]
    section = {"grpc_listen": "127.0.0.1:9001", "grpc_tls": {"cert_file": "c", "key_file": "k", "client_ca_file": "a"}}
    assert problems(document(section=section)) == [  # named together: read (config.material)
        ("phantom_token", f"grpc_tls.{name}", "cannot read the file: No such file or directory")
        for name in ("cert_file", "key_file", "client_ca_file")]
    settings = parse_settings(document(section={"grpc_listen": "127.0.0.1:9001"}), source="f.yml", environ={})
    assert settings.grpc_listen == "127.0.0.1:9001"
    assert settings.grpc_tls == GrpcTlsSettings()
    assert problems(document(section={"grpc_listen": "nowhere"})) == [
        ("phantom_token", "grpc_listen", "must be HOST:PORT (an IPv6 host in brackets: [::1]:3000)")]


# ------------------------------------------------------------------------------ client authentication methods


def test_client_auth_methods_are_one_list() -> None:
    assert frozenset(CLIENT_AUTH_METHODS) == client_auth.METHODS
    assert PLUGIN_OPTIONS.by_name["client_auth_method"].choices == CLIENT_AUTH_METHODS
    assert PluginConfig("e", "c", "s").client_auth_method in CLIENT_AUTH_METHODS
    where = "service 'api' / plugin 'phantom-token'"
    why = "must be one of " + ", ".join(CLIENT_AUTH_METHODS)
    found = problems(document({"client_auth_method": "client_secret_jwt"}))
    assert found == [(where, "config.client_auth_method", why)]


# ------------------------------------------------------------------------------------ Kong's entities, declared


def _kong_ranged() -> list[tuple[str, str, Option]]:
    out = []
    for entity, table in (("service", SERVICE_FIELDS), ("route", ROUTE_FIELDS), ("plugin", PLUGIN_FIELDS)):
        for names, option, _ in table.rows():
            out += [(entity, name, option) for name in names if option.kind in ("integer", "flag")]
    return out


def _kong_place(entity: str, name: str, value: object) -> tuple[dict[str, Any], str]:
    doc = document()
    service = doc["services"][0]
    target = {"service": service, "route": service["routes"][0], "plugin": service["plugins"][0]}[entity]
    if name == "port":  # instead of url
        del service["url"]
        service["host"] = "127.0.0.1"
    target[name] = value
    return doc, {"service": "service 'api'", "route": "service 'api' / route 'r'", "plugin": PLUGIN_WHERE}[entity]


PLUGIN_WHERE = "service 'api' / plugin 'phantom-token'"


@pytest.mark.parametrize(("entity", "name", "option"), _kong_ranged(), ids=[f"{r[0]}.{r[1]}" for r in _kong_ranged()])
def test_every_declared_kong_bound_and_default_holds(entity: str, name: str, option: Option) -> None:
    if option.kind == "flag":
        bad: list[tuple[object, str]] = [("yes", "expected true or false, got a string")]
    else:
        assert option.low is not None
        why = f"must be at least {option.low}" if option.high is None else f"must be from {option.low} to {option.high}"
        bad = [(option.low - 1, why), (True, "expected an integer, got a boolean")]
        if option.high is not None:
            bad.append((option.high + 1, why))
    for value, why in bad:
        doc, where = _kong_place(entity, name, value)
        assert problems(doc) == [(where, name, why)], value
    if option.has_default:  # the declared default is a valid value
        parse_settings(_kong_place(entity, name, option.default)[0], source="f.yml", environ={})


def test_route_defaults_are_the_route_dataclass_defaults() -> None:
    route = parse_settings(document(), source="f.yml", environ={}).routes[0]
    for name in ("strip_path", "preserve_host", "regex_priority"):
        assert ROUTE_FIELDS.default(name) == getattr(route, name)
    assert route == dataclasses.replace(Route(route.name, route.service, route.upstream, paths=route.paths),
                                        plugin=route.plugin)  # fmt: skip


def test_a_name_declared_twice_is_refused() -> None:
    with pytest.raises(RuntimeError, match="declared twice"):
        OptionTable(None, "", [kong_field("id", "custom", ""), kong_field("tags", "custom", "", also=("id",))])
    with pytest.raises(RuntimeError, match="the dataclass field's"):
        OptionTable(JwtSettings, "jwt.", [*JWT_OPTIONS.options[:-1], kong_field("max_lifetime_seconds", "integer",
                                                                                   "", default=60, low=1)])


# ---------------------------------------------------------------------------------------------- no value echoed

SECRET = "S3CRET-value-0123456789abcdef0123456789abcdef"


def _every_declared_key() -> list[tuple[str, str]]:
    out = [("plugin config", names[0]) for names, _, _ in PLUGIN_OPTIONS.rows()]
    out += [("phantom_token", names[0]) for names, _, _ in SECTION_OPTIONS.rows()]
    for entity, table in (("service", SERVICE_FIELDS), ("route", ROUTE_FIELDS), ("plugin", PLUGIN_FIELDS)):
        # A service's, route's or plugin's name is how messages say where a problem is: it is not a secret.
        out += [(entity, name) for names, _, _ in table.rows() for name in names if name != "name"]
    return out


@pytest.mark.parametrize(("where", "name"), _every_declared_key(), ids=[f"{w}:{n}" for w, n in _every_declared_key()])
def test_no_declared_field_echoes_its_value(where: str, name: str) -> None:
    env = {"VALUE": SECRET}
    messages = []
    for value in (SECRET, [SECRET], {"k": SECRET}, "{vault://env/VALUE}", "{vault://env/VALUE/key}"):
        if where == "plugin config":
            doc = document({name: value})
        elif where == "phantom_token":
            section, _, key = name.rpartition(".")
            doc = document(section={section: {key: value}} if section else {name: value})
        else:
            doc, _ = _kong_place(where, name, value)
        try:
            parse_settings(doc, source="f.yml", environ=env)
        except ConfigError as err:
            messages += [str(err), *(str(problem) for problem in err.problems)]
    assert messages  # some of these values are refused, so there are messages to look at
    assert [message for message in messages if SECRET in message] == []


def test_the_listener_s_tls_and_the_client_certificate_modes() -> None:
    assert problems(document(section={"tls": {"cert_file": "c.pem"}})) == [
        ("phantom_token", "tls.key_file", "is required in tls (the certificate's private key)")]
    unreadable = [("phantom_token", f"tls.{name}", "cannot read the file: No such file or directory")
                  for name in ("cert_file", "key_file")]
    assert problems(document(section={"tls": {"cert_file": "c", "key_file": "k", "client_certificate": "on"}})) == [
        ("phantom_token", "tls.client_certificate", "must be none, optional or required"), *unreadable]
    required = {"tls": {"cert_file": "c", "key_file": "k", "client_certificate": "required"}}
    assert problems(document(section=required)) == [
        ("phantom_token", "tls.client_ca_file", "is required when client_certificate is required"), *unreadable]
    assert problems(document(section={"tls": {"cert_file": "c", "key_file": "k", "client_ca_file": "a"}})) == [
        ("phantom_token", "tls.client_ca_file", "is only used when client_certificate is optional or required"),
        *unreadable, ("phantom_token", "tls.client_ca_file", "cannot read the file: No such file or directory")]


def test_client_cert_header_is_one_of_the_two_in_any_case() -> None:
    settings = parse_settings(document({"client_cert_header": "x-forwarded-client-cert"}), source="f", environ={})
    plugin = settings.routes[0].plugin
    assert plugin is not None
    assert plugin.client_cert_header == "X-Forwarded-Client-Cert"
    assert problems(document({"client_cert_header": "ssl-client-cert"})) == [
        ("service 'api' / plugin 'phantom-token'", "config.client_cert_header",
         "must be Client-Cert or X-Forwarded-Client-Cert")]
