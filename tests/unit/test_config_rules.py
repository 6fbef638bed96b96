"""Configuration rules the split of the loader showed no test exercised: one case each, with the exact problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import load_settings, parse_settings

SERVICE = "service 'api'"
PLUGIN = f"{SERVICE} / plugin 'phantom-token'"
ROUTE = f"{SERVICE} / route 'r'"
CONFIG = "services.0.plugins.0.config."
BASE: dict[str, Any] = {
    "_format_version": "3.0",
    "services": [{
        "name": "api",
        "url": "http://127.0.0.1:3001",
        "routes": [{"name": "r", "paths": ["/api"]}],
        "plugins": [{"name": "phantom-token", "config": {
            "introspection_endpoint": "https://as.test/introspect", "client_id": "gw", "client_secret": "s"}}],
    }],
}  # fmt: skip


def problems(doc: object, *, require_upstream: bool = True) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(doc, source="f.yml", environ={}, require_upstream=require_upstream)
    return [(p.where, p.field, p.why) for p in caught.value.problems]


def changed(path: str, value: object) -> dict[str, Any]:
    """BASE with the field at ``path`` (dotted; digits index lists) set to ``value``."""
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    here: Any = doc
    for key in parents:
        here = here[int(key)] if key.isdigit() else here[key]
    here[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("services.0.url", "http://h:99999", (SERVICE, "url", "is not a valid URL")),
        ("services.0.routes.0", 7, (f"{SERVICE} / route #1", "", "expected a mapping, got an integer")),
        ("services.0.routes.0.path_handling", "v9", (ROUTE, "path_handling", "must be v0 or v1")),
        ("services.0.routes.0.headers", {"x-a": []}, (ROUTE, "headers.x-a", "expected a non-empty list of strings")),
        ("services.0.routes.0.headers", {"x-a": [1]}, (ROUTE, "headers.x-a", "expected a non-empty list of strings")),
        ("services.0.plugins.0", None, (f"{SERVICE} / plugin #1", "", "expected a mapping, got null")),
        (CONFIG + "issuer", "https://as.test/#top", (PLUGIN, "config.issuer", "must not have a fragment")),
        (CONFIG + "scope", 1.5, (PLUGIN, "config.scope", "expected a string, got a number")),
        (CONFIG + "realm", ["r"], (PLUGIN, "config.realm", "expected a string, got a list")),
        (CONFIG + "client_id", {"a": 1}, (PLUGIN, "config.client_id", "expected a string, got a mapping")),
        (CONFIG + "3", "x", (PLUGIN, "config", "field names must be strings, not an integer")),
        ("phantom_token", {"listen": "[1:2:3]:3000"}, ("phantom_token", "listen", "has an invalid IPv6 address")),
    ],
)  # fmt: skip
def test_one_rule_one_problem(path: str, value: object, expected: tuple[str, str, str]) -> None:
    assert problems(changed(path, value)) == [expected]


def test_a_top_level_route_needs_its_service_only_when_upstreams_are() -> None:
    doc = changed("routes", [{"name": "t", "paths": ["/t"]}])
    assert problems(doc) == [("route 't'", "service", "is required (the name of the service this belongs to)")]
    settings = parse_settings(doc, source="f.yml", environ={}, require_upstream=False)
    assert [(route.name, route.service, route.upstream) for route in settings.routes][-1] == ("t", "", None)


def test_a_top_level_plugin_names_its_service_by_name_or_id() -> None:
    doc = changed("services.0.id", "svc-1")
    plugin = {"name": "phantom-token", "config": {"client_id": "other", "client_secret": "s", "issuer": "https://as.test"}}
    doc["services"][0]["plugins"] = []
    doc["plugins"] = [{**plugin, "service": {"id": "svc-1"}}]
    route_plugin = parse_settings(doc, source="f.yml", environ={}).routes[0].plugin
    assert route_plugin is not None
    assert route_plugin.client_id == "other"
    doc["plugins"] = [{**plugin, "service": "nope"}]
    assert problems(doc) == [("plugin 'phantom-token'", "service", "names no service in this file")]


def test_duplicate_keys_in_an_otherwise_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(
        "_format_version: '3.0'\n_format_version: '3.0'\nservices:\n- name: api\n  url: http://127.0.0.1:3001\n"
        "  routes:\n  - {name: r, paths: [/api]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}: line 2: _format_version: duplicate key (YAML would keep only the last one)"
    ]


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_bytes(b"_format_version: '3.0'\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert [str(p) for p in caught.value.problems] == [f"{path}: the file is not UTF-8 text"]
