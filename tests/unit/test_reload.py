"""What a SIGHUP reload accepts and refuses (``phantom_token.reload``), without a process: files in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from phantom_token.config.loader import Configuration
from phantom_token.reload import ConfigSource, check_reload, refused

BASE: dict[str, Any] = {
    "_format_version": "2.1",
    "services": [{
        "name": "api", "url": "http://127.0.0.1:9",
        "routes": [{"name": "api-route", "paths": ["/api"]}],
        "plugins": [{"name": "phantom-token", "config": {
            "introspection_endpoint": "http://127.0.0.1:9/introspect", "client_id": "c", "client_secret": "s"}}],
    }],
}


def write(path: Path, document: dict[str, Any]) -> ConfigSource:
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return ConfigSource(str(path))


def running(tmp_path: Path) -> tuple[ConfigSource, Configuration]:
    source = write(tmp_path / "gateway.yml", BASE)
    return source, source.load()


def test_a_new_scope_is_accepted(tmp_path: Path) -> None:
    source, loaded = running(tmp_path)
    changed = yaml.safe_load(yaml.safe_dump(BASE))
    changed["services"][0]["plugins"][0]["config"]["scope"] = ["write"]
    write(tmp_path / "gateway.yml", changed)
    checked = check_reload(source, loaded.settings, has_minter=False)
    assert isinstance(checked, Configuration)
    plugin = checked.settings.routes[0].plugin
    assert plugin is not None
    assert plugin.scope == ("write",)


def test_a_file_that_fails_check_is_refused_with_its_first_problem(tmp_path: Path) -> None:
    source, loaded = running(tmp_path)
    (tmp_path / "gateway.yml").write_text("services: [unclosed\n", encoding="utf-8")
    reason = check_reload(source, loaded.settings, has_minter=False)
    assert isinstance(reason, str)
    assert reason.startswith(str(tmp_path / "gateway.yml"))
    assert "YAML" in reason


def test_several_problems_are_one_line(tmp_path: Path) -> None:
    source, loaded = running(tmp_path)
    broken = yaml.safe_load(yaml.safe_dump(BASE))
    broken["services"][0]["plugins"][0]["config"] = {"token_cache_seconds": "x", "client_id": 3}
    write(tmp_path / "gateway.yml", broken)
    reason = check_reload(source, loaded.settings, has_minter=False)
    assert isinstance(reason, str)
    assert "more problems" in reason
    assert "\n" not in reason


def test_process_options_need_a_restart(tmp_path: Path) -> None:
    source, loaded = running(tmp_path)
    write(tmp_path / "gateway.yml", {**BASE, "phantom_token": {"listen": "127.0.0.1:4000", "workers": 2}})
    reason = check_reload(source, loaded.settings, has_minter=False)
    assert isinstance(reason, str)
    assert "phantom_token.listen" in reason
    assert "phantom_token.workers" in reason
    assert "restart" in reason


def test_the_command_line_access_log_stays_on(tmp_path: Path) -> None:
    write(tmp_path / "gateway.yml", BASE)
    source = ConfigSource(str(tmp_path / "gateway.yml"), access_log=True)
    loaded = source.load()
    assert loaded.settings.access_log
    assert isinstance(check_reload(source, loaded.settings, has_minter=False), Configuration)


def test_a_first_minting_route_without_a_key_needs_a_restart(tmp_path: Path) -> None:
    source, loaded = running(tmp_path)
    minting = yaml.safe_load(yaml.safe_dump(BASE))
    minting["services"][0]["plugins"][0]["config"]["introspection_response"] = "json"
    minting["phantom_token"] = {"jwt": {"issuer": "https://gateway.example"}}
    write(tmp_path / "gateway.yml", minting)
    reason = check_reload(source, loaded.settings, has_minter=False)
    assert isinstance(reason, str)
    assert "mints JWTs" in reason


def test_the_refusal_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="phantom_token"):
        refused("a.yml: first\nsecond")
    assert len(caplog.records) == 1
    assert "\n" not in caplog.records[0].getMessage()
    assert "running configuration keeps serving" in caplog.records[0].getMessage()


def test_a_first_route_with_dpop_nonces_needs_a_restart(tmp_path: Path) -> None:
    source, loaded = running(tmp_path)
    nonces = yaml.safe_load(yaml.safe_dump(BASE))
    nonces["services"][0]["plugins"][0]["config"]["dpop_nonce"] = True
    write(tmp_path / "gateway.yml", nonces)
    reason = check_reload(source, loaded.settings, has_minter=False)
    assert isinstance(reason, str)
    assert "dpop_nonce" in reason, reason
