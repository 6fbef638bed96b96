"""Path and host normalisation (phantom_token.http.uri): the spellings routes are matched on, and what is refused."""

from __future__ import annotations

import pytest

from phantom_token.config.settings import Route, Upstream
from phantom_token.core.routes import Router, upstream_path
from phantom_token.http.uri import InvalidTarget, normalise_host, normalise_path, plain_path_end, split_absolute

PATH_CASES = [
    ("/", "/"),
    ("/api/orders", "/api/orders"),
    ("/api/orders/", "/api/orders/"),
    ("/public/../admin/x", "/admin/x"),
    ("/public/%2e%2e/admin/x", "/admin/x"),
    ("/public/%2E%2E/admin/x", "/admin/x"),
    ("/public/.%2e/admin/x", "/admin/x"),
    ("/public/./x", "/public/x"),
    ("/public/.", "/public/"),
    ("/public/..", "/"),
    ("/a/b/..", "/a/"),
    ("/..", "/"),
    ("/../admin", "/admin"),
    ("//admin//x", "/admin/x"),
    ("//", "/"),
    ("/%61dmin", "/admin"),
    ("/%7Euser/%2D%5F", "/~user/-_"),
    ("/a%3bb/%3a", "/a%3Bb/%3A"),
    ("/a%20b", "/a%20b"),
    ("/%25", "/%25"),
    ("/a;b/../c", "/c"),
    ("/admin;x", "/admin;x"),
    ("/Admin", "/Admin"),
]


@pytest.mark.parametrize(("path", "normal"), PATH_CASES)
def test_paths_are_normalised(path: str, normal: str) -> None:
    assert normalise_path(path) == normal
    assert normalise_path(normal) == normal  # the normal form is a fixed point


REFUSED_PATHS = [
    "/public/..%2fadmin/x",
    "/public/..%2Fadmin/x",
    "/public%2f..%2fadmin",
    "/a%5cb",
    "/a%5Cb",
    "/a\\b",
    "/public\\..\\admin",
    "/a%00b",
    "/a#frag",
    "/a%",
    "/a%2",
    "/a%zz",
    "/a%%41",
    "/public/..;/admin",
    "/public/..;x/admin",
    "/public/.;/admin",
    "/public/..%3b/admin",
    "/public/..%3B/admin",
    "/public/%2e%2e;/admin",
]


@pytest.mark.parametrize("path", REFUSED_PATHS)
def test_ambiguous_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidTarget) as caught:
        normalise_path(path)
    assert path not in caught.value.reason  # the reason is a fixed text, never the bytes received


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("", ""),
        ("api.example.com", "api.example.com"),
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("api.example.com:8080", "api.example.com"),
        ("api.example.com.:80", "api.example.com"),
        ("api.example.com:", "api.example.com"),
        ("127.0.0.1:3000", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[::1]:443", "[::1]"),
        ("[::1]:", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        ("my_host", "my_host"),
    ],
)
def test_hosts_are_normalised(value: str, host: str) -> None:
    assert normalise_host(value) == host


@pytest.mark.parametrize(
    "value",
    ["a@b", "user@api.example.com", "[x]", "[::1", "[::1]x", "[fe80::1%25eth0]", "api..example.com",
     ".api.example.com", "api.example.com..", ".", ":80", "api.example.com:99999", "api.example.com:123456",
     "api.example.com:8o", "a b", "a,b", "a/b", "a\\b", "a%2eb", "h\x00", "é.example"],
)
def test_invalid_hosts_are_refused(value: str) -> None:
    with pytest.raises(InvalidTarget):
        normalise_host(value)


def _route(name: str, paths: tuple[str, ...] = (), hosts: tuple[str, ...] = ()) -> Route:
    return Route(name, "svc", Upstream("http", "127.0.0.1", 1, "/"), paths=paths, hosts=hosts)


ROUTER = Router((_route("public", ("/public",)), _route("admin", ("/admin",)),
                 _route("admin-host", hosts=("admin.example.com",)), _route("catch-all", ("/",))))


@pytest.mark.parametrize(
    ("host", "path", "route"),
    [
        ("h", "/public/../admin/x", "admin"),
        ("h", "/public/%2e%2e/admin/x", "admin"),
        ("h", "//admin/x", "admin"),
        ("h", "/%61dmin/x", "admin"),
        ("h", "/public/x", "public"),
        ("admin.example.com.", "/x", "admin-host"),
        ("ADMIN.example.com:8080", "/x", "admin-host"),
        ("admin.example.com", "/x", "admin-host"),
    ],
)
def test_routes_match_the_normal_form_and_forward_exactly_it(host: str, path: str, route: str) -> None:
    normal = normalise_path(path)
    matched = ROUTER.match("GET", normalise_host(host), normal, {})
    assert matched is not None
    assert matched.name == route
    # what goes upstream is made from the path that matched: with strip_path off it is exactly that path
    assert upstream_path(Route(route, "svc", Upstream("http", "h", 1, "/"), paths=matched.paths,
                               strip_path=False), normal) == normal


@pytest.mark.parametrize(
    ("target", "end"),
    [(b"/", 1), (b"/api/orders", 11), (b"/api/orders?page=2", 11), (b"/?", 1), (b"/a?b/../c%2f", 2),
     (b"/a/./b", -1), (b"/a//b", -1), (b"/a%41", -1), (b"/a\\b", -1), (b"/a#b", -1), (b"/a/.", -1), (b"/a.b/c.", 7)],
)
def test_plain_path_end_finds_the_query_of_a_path_already_normal(target: bytes, end: int) -> None:
    assert plain_path_end(target) == end


def test_a_path_plain_path_end_passes_is_its_own_normal_form() -> None:
    # every spelling of the tables above: where the fast check says "nothing to do", normalising changes nothing
    samples = [path for path, _ in PATH_CASES] + [normal for _, normal in PATH_CASES] + REFUSED_PATHS
    for path in samples:
        if plain_path_end(path.encode("latin-1")) >= 0:
            assert normalise_path(path) == path, path


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("http://API.example.com./a?b", ("API.example.com.", "api.example.com", "/a?b")),
        ("HTTPS://h:8443", ("h:8443", "h", "")),
        ("http://h?q", ("h", "h", "?q")),
        ("http://[::1]:80/x#f", ("[::1]:80", "[::1]", "/x#f")),
    ],
)
def test_an_absolute_uri_splits_into_authority_host_and_the_rest(uri: str, parts: tuple[str, str, str]) -> None:
    assert split_absolute(uri) == parts


@pytest.mark.parametrize("uri", ["ftp://h/x", "h/x", "http:/h/x", "http://user@h/x", "http:///x", "http://a..b/x"])
def test_other_absolute_uris_are_refused(uri: str) -> None:
    with pytest.raises(InvalidTarget):
        split_absolute(uri)
