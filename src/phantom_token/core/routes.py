"""Kong route matching and Kong's ``strip_path`` join, as pure functions of plain values.

A route matches a request when every condition it sets matches:
- ``paths``: a plain path is a string prefix of the raw request path (Kong: ``/api`` also matches
  ``/apiv2``); a path starting with ``~`` is a regex anchored at the start of the path (``re.match``).
- ``methods``: the request method is one of them (case-sensitive, as HTTP methods are).
- ``hosts``: the request host (lower case, no port) equals one of them, or matches a wildcard
  ``*.example.com`` (one or more labels in front) or ``example.*`` (one or more labels after).
- ``headers``: for each condition, the request has that header and one of its values equals a literal
  (case-insensitively) or is matched by one of the ``~*`` regexes (``re.search``, case-insensitive).

Precedence among matching routes follows Kong 3's ``traditional_compatible`` router. Each (route, path)
pair is one candidate; candidates are tried in this order and the first that matches wins:
1. more condition categories set first (of hosts, headers, methods, paths);
2. routes whose hosts are all plain (no wildcard) before the others;
3. regex paths before plain prefixes;
4. more header conditions first;
5. regex paths: higher ``regex_priority`` first; plain prefixes: longer prefix first;
6. configuration order.

Invariants: everything is computed once in ``Router.__init__``; ``match`` allocates nothing and does no
I/O; ``upstream_path`` picks the path of a route in the same order the router tried them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from phantom_token.config.settings import HeaderCondition, Route

__all__ = ["Router", "matched_length", "upstream_path"]


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One (route, path) pair with its conditions prepared for a fast test."""

    route: Route
    prefix: str | None  # plain path prefix, or None
    regex: re.Pattern[str] | None  # regex path, or None; both None: the route sets no path
    methods: frozenset[str]  # empty: any
    has_hosts: bool
    plain_hosts: frozenset[str]
    host_suffixes: tuple[str, ...]  # '*.example.com' -> '.example.com'
    host_prefixes: tuple[str, ...]  # 'example.*' -> 'example.'
    headers: tuple[HeaderCondition, ...]

    def matches(self, method: str, host: str, path: str, headers: Mapping[str, Sequence[str]]) -> bool:
        if self.prefix is not None:
            if not path.startswith(self.prefix):
                return False
        elif self.regex is not None and self.regex.match(path) is None:
            return False
        if self.methods and method not in self.methods:
            return False
        if self.has_hosts and not self._host_matches(host):
            return False
        return not self.headers or _headers_match(self.headers, headers)

    def _host_matches(self, host: str) -> bool:
        if host in self.plain_hosts:
            return True
        if any(host.endswith(suffix) and len(host) > len(suffix) for suffix in self.host_suffixes):
            return True
        return any(host.startswith(prefix) and len(host) > len(prefix) for prefix in self.host_prefixes)


def _headers_match(conditions: tuple[HeaderCondition, ...], headers: Mapping[str, Sequence[str]]) -> bool:
    for condition in conditions:
        values = headers.get(condition.name)
        if not values:
            return False
        if not any(_value_matches(condition, value) for value in values):
            return False
    return True


def _value_matches(condition: HeaderCondition, value: str) -> bool:
    if condition.literals and value.lower() in condition.literals:
        return True
    return any(pattern.search(value) is not None for pattern in condition.patterns)


def _regex(path: str) -> re.Pattern[str] | None:
    """The compiled regex of a ``~`` path, or None for a plain prefix."""
    return re.compile(path[1:]) if path.startswith("~") else None


def _path_order(route: Route) -> list[str]:
    """A route's paths in the order the router tries them: regexes as written, then longest prefix first."""
    if len(route.paths) < 2:
        return list(route.paths)
    regexes = [p for p in route.paths if p.startswith("~")]
    prefixes = sorted((p for p in route.paths if not p.startswith("~")), key=len, reverse=True)
    return regexes + prefixes


def _candidates(route: Route, order: int) -> list[tuple[tuple[int, ...], _Candidate]]:
    """One candidate per path of the route (one for a route without paths), each with its sort key."""
    wildcard = tuple(h for h in route.hosts if "*" in h)
    plain_hosts = frozenset(h for h in route.hosts if "*" not in h)
    suffixes = tuple(h[1:] for h in wildcard if h.startswith("*"))
    prefixes = tuple(h[:-1] for h in wildcard if h.endswith("*"))
    categories = sum(1 for field in (route.hosts, route.headers, route.methods, route.paths) if field)
    plain_hosts_only = 1 if route.hosts and not wildcard else 0
    out: list[tuple[tuple[int, ...], _Candidate]] = []
    for path in route.paths or (None,):
        regex = _regex(path) if path is not None else None
        prefix = path if regex is None else None
        weight = route.regex_priority if regex is not None else len(prefix or "")
        kind = 0 if regex is not None else 1
        key = (-categories, -plain_hosts_only, kind, -len(route.headers), -weight, order)
        candidate = _Candidate(
            route, prefix, regex, route.methods, bool(route.hosts), plain_hosts, suffixes, prefixes, route.headers
        )
        out.append((key, candidate))
    return out


class Router:
    """Picks the route for a request, with Kong's matching rules and precedence (see the module docstring)."""

    __slots__ = ("_candidates", "_lower_host")

    def __init__(self, routes: Sequence[Route]) -> None:
        keyed = [pair for order, route in enumerate(routes) for pair in _candidates(route, order)]
        keyed.sort(key=lambda pair: pair[0])
        self._candidates = tuple(candidate for _, candidate in keyed)
        self._lower_host = any(candidate.has_hosts for candidate in self._candidates)

    def match(self, method: str, host: str, path: str, headers: Mapping[str, Sequence[str]]) -> Route | None:
        """The route for this request, or None (404).

        ``host`` is the Host header without its port; ``path`` is the raw path without the query string;
        ``headers`` maps lower-case names to every value received.
        """
        if self._lower_host:
            host = host.lower()
        for candidate in self._candidates:
            if candidate.matches(method, host, path, headers):
                return candidate.route
        return None


def matched_length(route: Route, path: str) -> int:
    """How many leading characters of ``path`` the route's path condition matched (0: it sets no path)."""
    for candidate in _path_order(route):
        if candidate.startswith("~"):
            found = re.match(candidate[1:], path)  # re's own cache keeps this compiled
            if found is not None:
                return found.end()
        elif path.startswith(candidate):
            return len(candidate)
    return 0


def upstream_path(route: Route, path: str) -> str:
    """The path to send upstream, with Kong's ``strip_path`` and ``path_handling: v0`` rules.

    ``path`` is the request path without the query string (append the query yourself). With ``strip_path``
    the matched part of the path is removed and the rest is joined to the service's base path with
    exactly one ``/`` between them; an empty rest gives the base path itself, keeping a trailing ``/`` when
    the request had one. Without ``strip_path`` the whole request path is appended to the base path.
    Examples with service path ``/v1`` and route path ``/api``::

        /api/x  -> /v1/x        /api  -> /v1        /api/ -> /v1/       /apix -> /v1/x
        strip_path false:  /api/x -> /v1/api/x
        service path /:    /api/x -> /x             /api  -> /
    """
    base = route.upstream.path if route.upstream is not None else "/"
    if not route.strip_path:
        return base.removesuffix("/") + path
    rest = path[matched_length(route, path) :]
    if not rest:
        return base + "/" if path.endswith("/") and not base.endswith("/") else base
    return base.removesuffix("/") + "/" + rest.removeprefix("/")
