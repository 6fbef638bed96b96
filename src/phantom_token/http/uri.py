"""What a request target and a Host mean, decided once for every front door (contract section 9).

A gateway that matches routes on one spelling of a path and forwards another lets an attacker pick the route:
``/public/../admin/x`` matched ``/public`` while the upstream served ``/admin/x``. So routes are matched on the
*normalised* path and exactly that path is forwarded; spellings that upstreams disagree about are refused.

``normalise_path``, for an origin-form path (it starts with ``/``; the query string is not part of it):
- percent-encoded unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded, the hex digits of every other
  percent-encoding are upper-cased (RFC 3986 6.2.2.1-2);
- dot segments are removed (RFC 3986 5.2.4) and repeated slashes merged (as nginx's ``merge_slashes``);
- refused (``InvalidTarget``): an encoded ``/``, ``\\`` or NUL (``%2F``, ``%5C``, ``%00``: upstreams disagree on
  whether they separate segments, so no spelling of them is safe to forward), a raw ``\\`` (WHATWG URL parsers, and
  so Node's, read it as ``/``), a ``#`` (a fragment is never part of a request target), a malformed
  percent-encoding, and a ``.`` or ``..`` segment carrying parameters (``..;x`` or ``..%3Bx``: Tomcat and Jetty
  read it as ``..``).
Nothing else changes: case is kept (paths are case-sensitive), other bytes pass as they came.

``normalise_host``, for a Host value or a URI authority: the host in lower case, without one trailing dot and
without the port; IPv6 literals keep their brackets. Refused: anything that is not a registered name of
letters, digits, ``-``, ``.``, ``_`` or ``~`` with no empty label, an IPv4 address, or a bracketed IPv6 address,
each optionally followed by ``:port`` (at most five digits, at most 65535). An empty value is allowed (RFC 9112
3.2: a target without an authority) and gives ``""``.

Both functions are pure and allocate nothing for the common, already normal, spelling.
"""

from __future__ import annotations

import re
from ipaddress import IPv6Address
from typing import Final


class InvalidTarget(ValueError):
    """A path or host that is refused with 400; ``reason`` is a fixed text (never the bytes received)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX: Final = frozenset("0123456789ABCDEFabcdef")
_REG_NAME: Final = re.compile(r"[A-Za-z0-9._~-]*")
_PORT: Final = re.compile(r"[0-9]{0,5}")


def plain_path_end(target: bytes) -> int:
    """Where the path of an origin-form ``target`` ends (at its ``?``, or its length) when that path is already in
    normal form; -1 when it may not be (it holds ``%``, ``\\``, ``#``, ``/.`` or ``//``): then ``normalise_path``.

    One pass over the bytes, which compiled code reads as C integers: cheaper than five substring searches and a
    partition, and most targets need nothing else."""
    previous = 0
    for i in range(len(target)):
        byte = target[i]
        if byte == 63:  # '?'
            return i
        if byte == 37 or byte == 92 or byte == 35:  # '%', '\\', '#'
            return -1
        if previous == 47 and (byte == 46 or byte == 47):  # '/.', '//'
            return -1
        previous = byte
    return len(target)


def normalise_path(path: str) -> str:
    """The normal form of an origin-form ``path`` (see the module docstring); raises ``InvalidTarget``."""
    # One scan per marker of something to do: most paths have none of them and are returned as they are.
    if "%" not in path and "/." not in path and "//" not in path and "\\" not in path and "#" not in path:
        return path
    return _normalise(path)


def _normalise(path: str) -> str:
    if "\\" in path:
        raise InvalidTarget("backslash in the path")
    if "#" in path:
        raise InvalidTarget("fragment in the request target")
    if "%" in path:
        path = _decode_unreserved(path)
    segments = path.split("/")
    kept: list[str] = []
    trailing_slash = False
    last = len(segments) - 1
    for i in range(1, len(segments)):
        segment = segments[i]
        if segment == "" or segment == ".":
            trailing_slash = trailing_slash or i == last
            continue
        if segment == "..":
            if kept:
                kept.pop()
            trailing_slash = i == last
            continue
        bare = segment.partition(";")[0].partition("%3B")[0]  # an encoded ';' too: Tomcat decodes, then strips
        if bare == "." or bare == "..":
            raise InvalidTarget("dot segment with parameters in the path")
        kept.append(segment)
        trailing_slash = False
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if trailing_slash else "")


def _decode_unreserved(path: str) -> str:
    out: list[str] = []
    start = 0
    at = path.find("%")
    while at >= 0:
        digits = path[at + 1 : at + 3]
        if len(digits) != 2 or digits[0] not in _HEX or digits[1] not in _HEX:
            raise InvalidTarget("malformed percent-encoding in the path")
        char = chr(int(digits, 16))
        out.append(path[start:at])
        if char in _UNRESERVED:
            out.append(char)
        elif char == "/" or char == "\\" or char == "\x00":
            raise InvalidTarget("encoded slash, backslash or NUL in the path")
        else:
            out.append("%" + digits.upper())
        start = at + 3
        at = path.find("%", start)
    out.append(path[start:])
    return "".join(out)


def split_absolute(uri: str) -> tuple[str, str, str]:
    """(authority as received, its normal host, the rest: path, query and fragment as received) of an absolute
    http(s) URI; raises ``InvalidTarget`` for another scheme, userinfo (RFC 9110 4.2.4: never sent in a target), or
    a missing or invalid host."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise InvalidTarget("not an http(s) URI")
    end = len(rest)
    for mark in "/?#":
        at = rest.find(mark)
        if 0 <= at < end:
            end = at
    authority = rest[:end]
    if "@" in authority:
        raise InvalidTarget("userinfo in the URI")
    host = normalise_host(authority)
    if not host:
        raise InvalidTarget("no host in the URI")
    return authority, host, rest[end:]


def normalise_host(authority: str) -> str:
    """The host of a Host value or URI authority, lower case, without one trailing dot and without the port;
    raises ``InvalidTarget`` for an invalid one."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise InvalidTarget("invalid Host")
        literal = authority[1:end]
        if "%" in literal:  # a zone identifier means nothing to another host
            raise InvalidTarget("invalid Host")
        try:
            IPv6Address(literal)
        except ValueError as exc:
            raise InvalidTarget("invalid Host") from exc
        host, rest = "[" + literal.lower() + "]", authority[end + 1 :]
        if rest and (rest[0] != ":" or _PORT.fullmatch(rest, 1) is None):
            raise InvalidTarget("invalid Host")
    else:
        name, colon, port = authority.partition(":")
        if _REG_NAME.fullmatch(name) is None or (colon and _PORT.fullmatch(port) is None):
            raise InvalidTarget("invalid Host")
        host = name[:-1] if name.endswith(".") else name
        if (name or colon) and (not host or "" in host.split(".")):
            raise InvalidTarget("invalid Host")
        host = host.lower()
        rest = colon + port
    if len(rest) > 1 and int(rest[1:]) > 65535:
        raise InvalidTarget("invalid Host")
    return host


__all__ = ["InvalidTarget", "normalise_host", "normalise_path", "plain_path_end", "split_absolute"]
