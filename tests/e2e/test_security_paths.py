"""Path and host confusion through ``phantom-token serve`` (contract section 9; docs/security.md, defects 3 and 4).

Routes that make the router's choice visible (``recording.routed_config``): ``/public`` and a catch-all ``/``
without the plugin, ``/admin`` (scope ``admin``), ``/api`` (any token) and host ``admin.example.com`` (scope
``admin``), none stripping its path. Requests carry no token, so a protected route answers 401 and an unprotected
one forwards to the raw recording upstream. For every spelling, the route applied and the path forwarded must
agree: a forwarded path is in normal form, is the normalised request path, and (read leniently, as a permissive
upstream would) does not resolve to a protected route; or the answer is 400 and nothing is forwarded.

The differential check sends the same corpus plus malformed requests to plain nginx (``proxy_pass`` to the same
recording upstream) and to ``serve``, and prints the table of where they differ.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import AuthServer, Gateway, Process, free_port, start_process
from .gateways import require_binary
from .recording import (
    ADMIN_HOST,
    RawResponse,
    RecordedRequest,
    RecordingUpstream,
    Refused,
    exchange,
    lenient_view,
    normal_forms,
    normalise_host,
    recording_upstream,
    routed_config,
    start_plain_nginx,
)

pytestmark = pytest.mark.e2e

_case_numbers = itertools.count()


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def serve(auth_server: AuthServer, upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory,
          e2e_logs: Path) -> Iterator[Gateway]:
    """One ``serve`` for the module (the ``gateway`` fixture is per test; hundreds of cases share this one)."""
    config = tmp_path_factory.mktemp("security-paths") / "serve.yml"
    config.write_text(routed_config(auth_server.introspection_endpoint, upstream.url), encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "phantom_token", "serve", "-c", str(config), "--listen", f"127.0.0.1:{port}"]
    process: Process = start_process("gateway", argv, port, e2e_logs)
    try:
        yield Gateway(process.name, process.proc, process.stderr_path, process.host, port, process.stdout_lines)
    finally:
        code = process.stop()
        assert code == 0, process.stderr()


def is_protected(host: str, path: str) -> bool:
    """Whether the routes of ``routed_config`` need a token for this (normalised) host and path."""
    return host == ADMIN_HOST or path.startswith(("/admin", "/api"))


@dataclass
class Sent:
    target: str
    host: str | None
    response: RawResponse | None
    forwarded: list[RecordedRequest]


def send(port: int, upstream: RecordingUpstream, target: str, host: str | None, extra: bytes = b"") -> Sent:
    case = f"{next(_case_numbers)}".encode()
    head = b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\n"
    if host is not None:
        head += b"Host: " + host.encode("latin-1") + b"\r\n"
    request = head + b"X-Case: " + case + b"\r\n" + extra + b"Connection: close\r\n\r\n"
    response = exchange(port, request, timeout=10)
    if response is not None and response.status == 200:
        upstream.wait_for(lambda: any(r.header("X-Case") == case for r in upstream.requests), timeout=5)
    forwarded = [r for r in upstream.requests if r.header("X-Case") == case]
    return Sent(target, host, response, forwarded)


# --- defect 3: dot segments -----------------------------------------------------------------------------------

DOT_SEGMENT_ATTACKS = [
    "/public/../admin/x", "/public/%2e%2e/admin/x", "/public/%2E%2E/admin/x", "/public/.%2e/admin/x",
    "/public/%2e./admin/x", "/public/..%2fadmin/x", "/public/..%2Fadmin/x", "/public/./../admin/x",
    "/public/x/../../admin/x", "/public/..%5cadmin/x", "/public/..\\admin/x", "/public//../admin/x",
    "/public/%2e%2e%2fadmin/x", "/public/..;/admin/x", "/public/%2e%2e;x/admin/x",
]


@pytest.mark.parametrize("target", DOT_SEGMENT_ATTACKS)
def test_dot_segments_cannot_leave_the_public_route(serve: Gateway, upstream: RecordingUpstream, target: str
                                                   ) -> None:
    sent = send(serve.port, upstream, target, "t")
    assert sent.response is not None, "no answer"
    status = sent.response.status
    assert status in (400, 401), (status, sent.response.body[:200], [r.request_line for r in sent.forwarded])
    assert sent.forwarded == [], [r.request_line for r in sent.forwarded]
    if status == 400:
        assert b'"invalid_request"' in sent.response.body


# --- defect 4: host aliases and invalid hosts ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["admin.example.com", "ADMIN.Example.COM", "admin.example.com.",
                                  "admin.example.com:8080", "admin.example.com.:80", "Admin.Example.Com.:1"])
def test_host_aliases_hit_the_host_route(serve: Gateway, upstream: RecordingUpstream, host: str) -> None:
    sent = send(serve.port, upstream, "/public/x", host)
    assert sent.response is not None
    assert sent.response.status == 401, sent.response.head
    assert sent.forwarded == []


@pytest.mark.parametrize("host", ["a@b", "[x]", "admin.example.com..", ".admin.example.com", "admin..example.com",
                                  "admin.example.com:65536", "admin.example.com:x", "[::1]x", "[fe80::1%25eth0]",
                                  "admin.example.com%2e", "a/b", "[::1", "admin.example.com:80:80"])
def test_invalid_host_is_400_and_nothing_is_forwarded(serve: Gateway, upstream: RecordingUpstream, host: str
                                                      ) -> None:
    sent = send(serve.port, upstream, "/public/x", host)
    assert sent.response is not None
    assert sent.response.status == 400, (sent.response.head, [r.request_line for r in sent.forwarded])
    assert sent.forwarded == []


@pytest.mark.parametrize("host", ["admin.example.com:0", "admin.example.com:", "admin.example.com.:"])
def test_port_zero_or_empty_is_refused_or_matched_on_the_host(serve: Gateway, upstream: RecordingUpstream, host: str
                                                             ) -> None:
    """The contract's valid ports are 1-65535; an empty or zero port must at least not change the host matched."""
    sent = send(serve.port, upstream, "/public/x", host)
    assert sent.response is not None
    assert sent.response.status in (400, 401), sent.response.head
    assert sent.forwarded == []


@pytest.mark.parametrize(("target", "host", "status"), [
    ("http://admin.example.com/public/x", "public.example", 401),
    ("http://ADMIN.example.com./public/x", "public.example", 401),
    ("http://admin.example.com:8080/public/x", "public.example", 401),
    ("http://public.example/public/x", ADMIN_HOST, 200),
    ("http://a@b/public/x", "public.example", 400),
])
def test_absolute_form_target_wins_over_host(serve: Gateway, upstream: RecordingUpstream, target: str, host: str,
                                             status: int) -> None:
    sent = send(serve.port, upstream, target, host)
    assert sent.response is not None
    assert sent.response.status == status, sent.response.head
    if status == 200:
        assert [r.path for r in sent.forwarded] == ["/public/x"]
    else:
        assert sent.forwarded == []


# --- the table: every spelling, route applied and path forwarded agree ----------------------------------------

PATHS = [
    "/public/x", "/PUBLIC/x", "/%61dmin/x", "/%41dmin/x", "/%61%64%6d%69%6e/x", "/%61%64%6D%69%6E/x", "/adm%69n/x",
    "/adm%49n/x", "/public/%7e%7Euser", "/public/%2d%5f%2E", "/public/%c3%a9", "/public/%C3%a9", "/public/caf%e9",
    "/public/%20x", "/public/%25", "/%2561dmin/x", "//admin/x", "///admin//x", "/public//x", "/./admin/x",
    "/../admin/x", "/../../admin/x", "/..", "/.", "/admin/../public/x", "/admin/./x", "/admin/x/..",
    "/public;x/../admin/x", "/admin;x/y", "/public/x;a=b", "/public/.;/admin/x", "/public/..;x/admin/x",
    "/public/%2fadmin", "/public%2F..%2Fadmin/x", "/public/%5cadmin", "/public/\\..\\admin", "/public/%00/x",
    "/public/%zz", "/public/%4", "/public/%", "/public/x?q=%2e%2e/../admin&%zz", "/public/x?a=/admin/../x#f",
    "/api/../public/x", "/public/%2e%2e", "/public/%2e%2e/", "/public/%2e%2e/%2e%2e/api/x", "/apix",
    "/public/.../admin", "/public/..../admin/x", "/public/%2E/x", "/public/~x", "/admin", "/Admin/x",
    "/public/..%3bx/admin/x", "/public/%2e%2e%3Bx/admin/x", "/public/x%3b/../../admin/x", "/admin/x/../",
    "/public/%2e%2e%2f", "/public/%252e%252e/admin/x",
]
HOSTS = [
    "t", "admin.example.com", "ADMIN.EXAMPLE.COM", "admin.example.com.", "admin.example.com:443",
    "admin.example.com.:8443", "public.example", "127.0.0.1", "127.0.0.1:8080", "[::1]", "[::1]:80", "",
    "admin_example.com", "a@b", "[x]", "admin.example.com..", "admin.example.com:99999",
]
ABSOLUTE = [
    ("http://admin.example.com/public/x", "public.example"),
    ("http://ADMIN.example.com./public/x", "t"),
    ("http://admin.example.com:80/public/../public/x", "t"),
    ("http://public.example/public/x", "admin.example.com"),
    ("http://public.example/public/%2e%2e/admin/x", "t"),
    ("http://public.example//admin/x", "t"),
    ("HTTP://admin.example.com/public/x", "t"),
    ("http://a@b/public/x", "t"),
    ("http://[::1]:8080/public/x", "admin.example.com"),
]
TABLE = ([(path, "t") for path in PATHS] + [("/public/x", host) for host in HOSTS]
         + [("/admin/x", host) for host in ("admin.example.com.", "public.example", "[::1]")] + ABSOLUTE)


def expected(target: str, host: str) -> tuple[str, set[str]] | None:
    """(normalised host, acceptable normalised paths) the fixed gateway should match, or None for a 400."""
    authority = host
    path_and_query = target
    if "://" in target and not target.startswith("/"):
        rest = target.split("://", 1)[1]
        authority, slash, path_and_query = rest.partition("/")
        path_and_query = slash + path_and_query
    path = path_and_query.partition("?")[0].partition("#")[0]
    try:
        return normalise_host(authority), normal_forms(path)
    except Refused:
        return None


def check_agreement(sent: Sent) -> list[str]:
    """What is wrong with how ``serve`` treated ``sent`` (empty: route applied and path forwarded agree)."""
    problems: list[str] = []
    response = sent.response
    if response is None:
        return ["no answer"]
    status = response.status
    want = expected(sent.target, sent.host or "")
    if sent.forwarded:
        if status != 200:
            problems.append(f"forwarded, yet the client got {status}")
        for request in sent.forwarded:
            forwarded_path = request.path
            lenient = lenient_view(forwarded_path)
            host = want[0] if want is not None else ""
            if is_protected(host, lenient) or is_protected(host, forwarded_path):
                problems.append(f"forwarded {forwarded_path!r} (read as {lenient!r}) past a protected route")
            try:
                if forwarded_path not in normal_forms(forwarded_path):
                    problems.append(f"forwarded path {forwarded_path!r} is not in normal form")
            except Refused:
                problems.append(f"forwarded path {forwarded_path!r} would be refused")
            if want is None:
                problems.append(f"forwarded {forwarded_path!r}; expected 400")
            elif forwarded_path not in want[1]:
                problems.append(f"forwarded {forwarded_path!r}; the normalised path is {sorted(want[1])}")
            if "?" in sent.target and request.query != sent.target.partition("?")[2].encode("latin-1"):
                problems.append(f"query changed: {request.query!r}")
        return problems
    if status == 400:
        if want is not None:
            problems.append(f"400 for a request that normalises to {want}")
        return problems
    if status == 401:
        if want is None:
            problems.append("401 where 400 was expected (tolerable: nothing forwarded)")
        elif not any(is_protected(want[0], path) for path in want[1]):
            problems.append(f"401 although {want} needs no token")
        return problems
    return [f"status {status}, nothing forwarded"]


@pytest.mark.parametrize(("target", "host"), TABLE)
def test_route_applied_and_path_forwarded_agree(serve: Gateway, upstream: RecordingUpstream, target: str,
                                                host: str) -> None:
    sent = send(serve.port, upstream, target, host)
    problems = check_agreement(sent)
    status = sent.response.status if sent.response is not None else None
    assert not problems, (status, [r.request_line for r in sent.forwarded], problems)


# --- differential: plain nginx against serve ------------------------------------------------------------------


def crlf(*lines: str | bytes, body: bytes = b"") -> bytes:
    encoded = [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    return b"\r\n".join(encoded) + b"\r\n\r\n" + body


MALFORMED: list[tuple[str, bytes]] = [
    ("version-1.2", crlf("GET /public/x HTTP/1.2", "Host: t")),
    ("version-2.0", crlf("GET /public/x HTTP/2.0", "Host: t")),
    ("version-0.9", crlf("GET /public/x HTTP/0.9", "Host: t")),
    ("http-1.0-no-host", crlf("GET /public/x HTTP/1.0")),
    ("http-1.1-no-host", crlf("GET /public/x HTTP/1.1")),
    ("two-hosts", crlf("GET /public/x HTTP/1.1", "Host: t", "Host: admin.example.com")),
    ("host-with-space", crlf("GET /public/x HTTP/1.1", "Host: admin.example.com x")),
    ("host-userinfo", crlf("GET /public/x HTTP/1.1", "Host: a@admin.example.com")),
    ("host-trailing-dot", crlf("GET /public/x HTTP/1.1", "Host: admin.example.com.")),
    ("double-space", crlf("GET  /public/x HTTP/1.1", "Host: t")),
    ("tab-in-target", crlf("GET /public/\tx HTTP/1.1", "Host: t")),
    ("fragment", crlf("GET /public/x#/../../admin HTTP/1.1", "Host: t")),
    ("asterisk", crlf("GET * HTTP/1.1", "Host: t")),
    ("options-asterisk", crlf("OPTIONS * HTTP/1.1", "Host: t")),
    ("connect", crlf("CONNECT admin.example.com:443 HTTP/1.1", "Host: admin.example.com:443")),
    ("bare-lf", b"GET /public/x HTTP/1.1\nHost: t\n\n"),
    ("obs-fold", crlf("GET /public/x HTTP/1.1", "Host: t", "X-A: 1", " folded")),
    ("cl-te", crlf("POST /public/x HTTP/1.1", "Host: t", "Content-Length: 3", "Transfer-Encoding: chunked",
                   body=b"0\r\n\r\n")),
    ("te-chunked-identity", crlf("POST /public/x HTTP/1.1", "Host: t", "Transfer-Encoding: chunked, identity",
                                 body=b"0\r\n\r\n")),
    ("te-xchunked", crlf("POST /public/x HTTP/1.1", "Host: t", "Transfer-Encoding: xchunked", body=b"0\r\n\r\n")),
    ("cl-plus", crlf("POST /public/x HTTP/1.1", "Host: t", "Content-Length: +3", body=b"abc")),
    ("cl-list", crlf("POST /public/x HTTP/1.1", "Host: t", "Content-Length: 3, 3", body=b"abc")),
    ("connection-cl", crlf("POST /public/x HTTP/1.1", "Host: t", "Connection: Content-Length",
                           "Content-Length: 38", body=b"GET /admin/y HTTP/1.1\r\nHost: t\r\n\r\n\r\n\r\n")),
    ("space-before-colon", crlf("GET /public/x HTTP/1.1", "Host : admin.example.com")),
    ("underscore-header", crlf("GET /public/x HTTP/1.1", "Host: t", "X_Forwarded_Host: admin.example.com")),
    ("nul-in-header", crlf("GET /public/x HTTP/1.1", "Host: t", b"X-A: a\x00b")),
    ("high-byte-target", crlf(b"GET /public/\xc3\xa9 HTTP/1.1", "Host: t")),
    ("lowercase-method", crlf("get /public/x HTTP/1.1", "Host: t")),
    ("absolute-https", crlf("GET https://admin.example.com/public/x HTTP/1.1", "Host: t")),
    ("absolute-no-path", crlf("GET http://admin.example.com HTTP/1.1", "Host: t")),
    ("absolute-other-scheme", crlf("GET ftp://admin.example.com/public/x HTTP/1.1", "Host: t")),
]


def corpus() -> list[tuple[str, bytes]]:
    cases = list(MALFORMED)
    for target, host in TABLE:
        cases.append((f"{target} @ {host!r}", crlf(f"GET {target} HTTP/1.1", f"Host: {host}")))
    return cases


def with_case(raw: bytes, case: bytes) -> bytes:
    """``raw`` with an ``X-Case`` header after the request line (same line ending) and ``Connection: close``."""
    eol = b"\r\n" if b"\r\n" in raw else b"\n"
    line, _, rest = raw.partition(eol)
    return line + eol + b"X-Case: " + case + eol + b"Connection: close" + eol + rest


@dataclass
class Outcome:
    status: int | None
    forwarded: list[RecordedRequest]

    def show(self) -> str:
        status = "-" if self.status is None else str(self.status)
        if not self.forwarded:
            return status
        return status + " -> " + ", ".join(r.target.decode("latin-1") for r in self.forwarded)


def run_case(port: int, upstream: RecordingUpstream, raw: bytes, case: bytes) -> Outcome:
    try:
        response = exchange(port, with_case(raw, case), timeout=5)
    except TimeoutError:
        response = None
    status = response.status if response is not None else None
    if response is not None and response.status < 300:
        upstream.wait_for(lambda: any(r.header("X-Case") == case for r in upstream.requests), timeout=5)
    return Outcome(status, [r for r in upstream.requests if r.header("X-Case") == case])


def difference(by_nginx: Outcome, by_serve: Outcome) -> str:
    """How the two outcomes differ, for sorting the table (nginx here checks no token: it forwards what it parses)."""
    if by_nginx.forwarded and by_serve.forwarded:
        return "1 both forward, other target"
    if by_nginx.forwarded and by_serve.status in (401, 403):
        return "2 serve asks for a token"
    if by_nginx.forwarded:
        return "3 serve refuses, nginx forwards"
    if by_serve.forwarded:
        return "4 nginx refuses, serve forwards"
    return "5 both refuse, other status"


def test_differential_against_plain_nginx(serve: Gateway, upstream: RecordingUpstream, tmp_path: Path,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    binary = require_binary("nginx")
    nginx = start_plain_nginx(binary, upstream.port, tmp_path)
    rows: list[tuple[str, str, str, str]] = []
    problems: list[str] = []
    try:
        for number, (name, raw) in enumerate(corpus()):
            by_nginx = run_case(nginx.port, upstream, raw, b"n%d" % number)
            by_serve = run_case(serve.port, upstream, raw, b"s%d" % number)
            nginx_refused = not by_nginx.forwarded and (by_nginx.status is None or by_nginx.status >= 400)
            for request in by_serve.forwarded:
                path = request.path
                try:
                    normal = path in normal_forms(path)
                except Refused:
                    normal = False
                lenient = lenient_view(path)
                if nginx_refused and not normal:
                    problems.append(f"{name}: nginx refused ({by_nginx.status}); serve forwarded {path!r}, "
                                    "not the path it matched")
                if is_protected("", lenient):
                    problems.append(f"{name}: serve forwarded {path!r} (read as {lenient!r}) without a token")
            if by_nginx.show() != by_serve.show():
                rows.append((difference(by_nginx, by_serve), name, by_nginx.show(), by_serve.show()))
    finally:
        nginx.stop()
    rows.sort(key=lambda row: row[0])
    table = ["| difference | request | nginx (status -> target forwarded) | serve |", "|---|---|---|---|"]
    table += [f"| {kind} | `{name}` | {a} | {b} |" for kind, name, a, b in rows]
    text = "\n".join(table)
    (tmp_path_factory.getbasetemp() / "security-differential.md").write_text(text + "\n", encoding="utf-8")
    print(f"\nnginx and serve differ on {len(rows)} requests:\n{text}")
    assert not problems, "\n".join(problems)
