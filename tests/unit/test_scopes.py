"""``core.scopes.granted_scopes``: what a token's claims grant, from ``scope`` (a space-separated string) and ``scp``
(an array or a string), anything malformed granting nothing; the usual claims (``scope`` alone) through a memo of
the strings read before, which must give the same sets."""

from __future__ import annotations

from typing import Any

import pytest

from phantom_token.core.scopes import granted_scopes


@pytest.mark.parametrize(("claims", "expected"), [
    ({}, set()),
    ({"scope": "read write"}, {"read", "write"}),
    ({"scope": "  read \t write\nread "}, {"read", "write"}),
    ({"scope": ""}, set()),
    ({"scope": 1}, set()),
    ({"scope": ["read"]}, set()),  # scope is a string (RFC 8693 section 4.2); an array there grants nothing
    ({"scp": ["read", 2, "write"]}, {"read", "write"}),
    ({"scp": "read write"}, {"read", "write"}),
    ({"scope": "read", "scp": ["write"]}, {"read", "write"}),
    ({"scope": "read", "scp": None}, {"read"}),
    ({"scope": "x" * 2000}, {"x" * 2000}),  # too long to be remembered: read each time
])
def test_granted_scopes(claims: dict[str, Any], expected: set[str]) -> None:
    for _ in range(2):  # the second time from the memo, where it applies
        assert granted_scopes(claims) == frozenset(expected)


def test_a_scope_string_read_before_gives_the_same_set() -> None:
    first = granted_scopes({"scope": "orders:read orders:write"})
    again = granted_scopes({"scope": "orders:read orders:write", "sub": "other"})
    assert again is first
    assert first == frozenset({"orders:read", "orders:write"})
    assert granted_scopes({"scope": "orders:read"}) == frozenset({"orders:read"})
