"""Where ``phantom-token purge`` finds the admin listener, from its address alone (the command against a real
listener: tests/integration/test_purge_command.py)."""

from __future__ import annotations

from phantom_token.admin_client import admin_url_from


def test_wildcard_admin_binds_are_reached_on_loopback() -> None:
    assert admin_url_from("0.0.0.0:9901") == "http://127.0.0.1:9901"
    assert admin_url_from("[::]:9901") == "http://[::1]:9901"
    assert admin_url_from("10.0.0.5:9901") == "http://10.0.0.5:9901"
