"""Route matching, Kong precedence and the strip_path join."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from phantom_token.config.loader import load_settings
from phantom_token.config.settings import HeaderCondition, Route, Upstream
from phantom_token.core.routes import Router, matched_length, upstream_path

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"
JWT = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
OPAQUE = "Bearer _0XBPWQQ_8a4f2c1e-7d3b-4e1a-9f00-1234567890ab"

NO_HEADERS: Mapping[str, Sequence[str]] = {}


def route(name: str, **fields: object) -> Route:
    upstream = fields.pop("upstream", Upstream("http", "127.0.0.1", 3001, "/"))
    return Route(name=name, service="svc", upstream=upstream, **fields)  # type: ignore[arg-type]


def picks(routes: Sequence[Route], path: str = "/", **request: object) -> str | None:
    method = str(request.get("method", "GET"))
    host = str(request.get("host", "api.example.com"))
    headers = request.get("headers", NO_HEADERS)
    found = Router(routes).match(method, host, path, headers)  # type: ignore[arg-type]
    return None if found is None else found.name


def header(name: str, *values: str) -> HeaderCondition:
    literals = frozenset(v.lower() for v in values if not v.startswith("~*"))
    patterns = tuple(re.compile(v[2:], re.IGNORECASE) for v in values if v.startswith("~*"))
    return HeaderCondition(name, literals, patterns)


# ------------------------------------------------------------------------------------------------- paths


def test_plain_path_is_a_string_prefix_as_in_kong() -> None:
    routes = [route("api", paths=("/api",))]
    assert picks(routes, "/api") == "api"
    assert picks(routes, "/api/orders") == "api"
    assert picks(routes, "/apiv2") == "api"  # Kong's prefix is not segment-aware
    assert picks(routes, "/other") is None
    assert picks(routes, "/API") is None  # case-sensitive


def test_longest_prefix_wins_whatever_the_order() -> None:
    routes = [route("short", paths=("/api",)), route("long", paths=("/api/orders",))]
    assert picks(routes, "/api/orders/1") == "long"
    assert picks(routes, "/api/users") == "short"
    assert picks(list(reversed(routes)), "/api/orders/1") == "long"


def test_longest_prefix_across_paths_of_several_routes() -> None:
    routes = [route("a", paths=("/x", "/api/orders")), route("b", paths=("/api",))]
    assert picks(routes, "/api/orders") == "a"
    assert picks(routes, "/api/other") == "b"


def test_regex_path_is_anchored_at_the_start() -> None:
    routes = [route("regex", paths=(r"~/users/\d+",))]
    assert picks(routes, "/users/42") == "regex"
    assert picks(routes, "/users/42/profile") == "regex"
    assert picks(routes, "/v1/users/42") is None
    assert picks(routes, "/users/me") is None


def test_regex_paths_come_before_plain_prefixes() -> None:
    routes = [route("plain", paths=("/users/42",)), route("regex", paths=(r"~/users/\d+",))]
    assert picks(routes, "/users/42") == "regex"


def test_regex_priority_orders_regex_paths() -> None:
    low = route("low", paths=(r"~/a/.*",))
    high = route("high", paths=(r"~/a/b",), regex_priority=10)
    assert picks([low, high], "/a/b") == "high"
    assert picks([high, low], "/a/c") == "low"


def test_configuration_order_breaks_ties() -> None:
    routes = [route("first", paths=("/api",)), route("second", paths=("/api",))]
    assert picks(routes, "/api") == "first"


def test_route_without_paths_matches_any_path() -> None:
    assert picks([route("any", methods=frozenset({"GET"}))], "/whatever") == "any"


# ----------------------------------------------------------------------------------------------- methods


def test_methods() -> None:
    routes = [route("reads", paths=("/api",), methods=frozenset({"GET", "HEAD"}))]
    assert picks(routes, "/api", method="GET") == "reads"
    assert picks(routes, "/api", method="HEAD") == "reads"
    assert picks(routes, "/api", method="POST") is None


def test_more_conditions_win_over_a_longer_prefix() -> None:
    routes = [
        route("long", paths=("/api/orders",)),
        route("get", paths=("/api",), methods=frozenset({"GET"})),
    ]
    assert picks(routes, "/api/orders", method="GET") == "get"
    assert picks(routes, "/api/orders", method="POST") == "long"


# ------------------------------------------------------------------------------------------------- hosts


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", "plain"),
        ("API.Example.COM", "plain"),
        ("a.example.com", "suffix"),
        ("a.b.example.com", "suffix"),
        ("example.com", "prefix"),  # example.* matches it, *.example.com does not
        ("notexample.com", None),
        (".example.com", None),
        ("example.org", "prefix"),
        ("example.co.uk", "prefix"),
        ("example.", None),
        ("other.org", None),
    ],
)
def test_hosts_plain_and_wildcards(host: str, expected: str | None) -> None:
    routes = [
        route("suffix", hosts=("*.example.com",)),
        route("prefix", hosts=("example.*",)),
        route("plain", hosts=("api.example.com",)),
    ]
    assert picks(routes, "/", host=host) == expected


def test_plain_hosts_win_over_wildcards_with_the_same_conditions() -> None:
    routes = [
        route("wild", hosts=("*.example.com",), paths=("/api/long",)),
        route("plain", hosts=("a.example.com",), paths=("/api",)),
    ]
    assert picks(routes, "/api/long", host="a.example.com") == "plain"


# ----------------------------------------------------------------------------------------------- headers


def test_header_literal_is_case_insensitive_and_any_value_may_match() -> None:
    routes = [route("v2", paths=("/api",), headers=(header("x-version", "2", "Two"),))]
    assert picks(routes, "/api", headers={"x-version": ["2"]}) == "v2"
    assert picks(routes, "/api", headers={"x-version": ["TWO"]}) == "v2"
    assert picks(routes, "/api", headers={"x-version": ["1", "two"]}) == "v2"
    assert picks(routes, "/api", headers={"x-version": ["3"]}) is None
    assert picks(routes, "/api", headers={}) is None


def test_header_regex_searches_case_insensitively() -> None:
    routes = [route("json", headers=(header("accept", "~*json"),))]
    assert picks(routes, headers={"accept": ["application/JSON; q=1"]}) == "json"
    assert picks(routes, headers={"accept": ["text/html"]}) is None


def test_every_header_condition_must_match() -> None:
    routes = [route("both", headers=(header("a", "1"), header("b", "2")))]
    assert picks(routes, headers={"a": ["1"], "b": ["2"]}) == "both"
    assert picks(routes, headers={"a": ["1"]}) is None


def test_more_header_conditions_first() -> None:
    routes = [
        route("one", paths=("/api",), headers=(header("a", "1"),)),
        route("two", paths=("/api",), headers=(header("a", "1"), header("b", "2"))),
    ]
    assert picks(routes, "/api", headers={"a": ["1"], "b": ["2"]}) == "two"
    assert picks(routes, "/api", headers={"a": ["1"]}) == "one"


# ------------------------------------------------------------------------------- the examples in the docs


def test_contract_bypass_regex_separates_jwts_from_opaque_tokens() -> None:
    """The header route of CONTRACT section 3 takes a JWT; anything else falls to the plugin route."""
    jwt_route = route(
        "bypass",
        paths=("/api",),
        headers=(header("authorization", r"~*^bearer\s+[A-Za-z0-9-_]+\.[A-Za-z0-9-_]+\.[A-Za-z0-9-_]*$"),),
    )
    plugin_route = route("phantom-token", paths=("/api",))
    routes = [jwt_route, plugin_route]
    assert picks(routes, "/api/x", headers={"authorization": [JWT]}) == "bypass"
    assert picks(routes, "/api/x", headers={"authorization": [OPAQUE]}) == "phantom-token"
    assert picks(routes, "/api/x") == "phantom-token"


def test_lua_readme_bypass_example() -> None:
    """The README's regex leaves its dots unescaped, so it matches any 'Bearer' and two more characters.

    Kong does the same with it; only a request without a bearer token reaches the plugin route.
    """
    settings = load_settings(FIXTURES / "kong-lua-readme-bypass.yml")
    router = Router(settings.routes)

    def chosen(*authorization: str) -> Route:
        found = router.match("GET", "api.example.com", "/api/x", {"authorization": list(authorization)})
        assert found is not None
        return found

    assert chosen(JWT).name == "bypass"
    assert chosen(JWT).plugin is None
    assert chosen(OPAQUE).name == "bypass"  # the README's regex, taken literally
    assert chosen().name == "phantom-token"
    assert chosen().plugin is not None
    assert chosen("Basic dXNlcjpwYXNz").name == "phantom-token"


# ------------------------------------------------------------------------------------------- strip_path


def served(upstream_base: str, route_path: str, request: str, *, strip: bool = True) -> str:
    r = route("r", paths=(route_path,), strip_path=strip, upstream=Upstream("http", "h", 80, upstream_base))
    return upstream_path(r, request)


@pytest.mark.parametrize(
    ("base", "route_path", "request_path", "expected"),
    [
        ("/v1", "/api", "/api/x", "/v1/x"),
        ("/v1", "/api", "/api", "/v1"),
        ("/v1", "/api", "/api/", "/v1/"),
        ("/v1", "/api", "/apix", "/v1/x"),
        ("/v1/", "/api", "/api/x", "/v1/x"),
        ("/v1/", "/api", "/api", "/v1/"),
        ("/v1", "/api/", "/api/", "/v1/"),
        ("/v1", "/api/", "/api/x", "/v1/x"),
        ("/", "/api", "/api/x", "/x"),
        ("/", "/api", "/api", "/"),
        ("/", "/api", "/api/", "/"),
        ("/", "/", "/x/y", "/x/y"),
        ("/", r"~/users/\d+", "/users/42/profile", "/profile"),
        ("/v1", r"~/users/\d+", "/users/42", "/v1"),
    ],
)
def test_strip_path_joins_like_kong_v0(base: str, route_path: str, request_path: str, expected: str) -> None:
    assert served(base, route_path, request_path) == expected


@pytest.mark.parametrize(
    ("base", "request_path", "expected"),
    [
        ("/v1", "/api/x", "/v1/api/x"),
        ("/v1/", "/api/x", "/v1/api/x"),
        ("/", "/api/x", "/api/x"),
        ("/v1", "/api", "/v1/api"),
    ],
)
def test_without_strip_path_the_whole_path_is_appended(base: str, request_path: str, expected: str) -> None:
    assert served(base, "/api", request_path, strip=False) == expected


def test_strip_uses_the_path_the_router_chose() -> None:
    r = route("r", paths=("/a", "/a/b", r"~/a/b/\d+"), upstream=Upstream("http", "h", 80, "/"))
    assert matched_length(r, "/a/b/7/x") == len("/a/b/7")
    assert matched_length(r, "/a/b/x") == len("/a/b")
    assert matched_length(r, "/a/x") == len("/a")
    assert upstream_path(r, "/a/b/x") == "/x"


def test_route_without_paths_strips_nothing() -> None:
    r = route("r", methods=frozenset({"GET"}), upstream=Upstream("http", "h", 80, "/v1"))
    assert upstream_path(r, "/x") == "/v1/x"


def test_no_upstream_means_base_slash() -> None:
    assert upstream_path(route("r", paths=("/api",), upstream=None), "/api/x") == "/x"


@pytest.mark.parametrize(("strip", "paths", "base", "path"), [
    (True, ("/api",), "/base", "/api/x"), (True, ("/api",), "/base", "/api"), (True, ("/api",), "/", "/api/x/"),
    (True, ("/api", "/api/v2"), "/b/", "/api/v2/y"), (False, ("/api",), "/base", "/api/x"),
])
def test_upstream_path_is_kong_strip_path(strip: bool, paths: tuple[str, ...], base: str, path: str) -> None:
    route = Route("r", "s", Upstream("http", "h", 80, base), paths=paths, strip_path=strip)
    expected = {("/api/x", "/base", True): "/base/x", ("/api", "/base", True): "/base", ("/api/x/", "/", True): "/x/",
                ("/api/v2/y", "/b/", True): "/b/y", ("/api/x", "/base", False): "/base/api/x"}
    assert upstream_path(route, path) == expected[(path, base, strip)]
