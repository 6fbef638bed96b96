"""Claims as request headers (plugin option ``claims_to_headers``): the rule, once. Pure: no I/O.

The engine calls ``header_values`` once per introspection answer (at a cache miss) and keeps the result in the
cache entry, so a hit does no claim work; the front doors only remove the client's copies of the configured names
and send what the entry holds (``serve`` upstream, ``authz`` as answer headers, the middleware in the scope).

Rules:
- A claim path is dot-separated member names (``org.id``: member ``id`` of the object in claim ``org``); a path
  that reaches a missing member, a non-object on the way, or ``null`` gives no header.
- A string goes as it is; a number or a boolean as JSON (``42``, ``1.5``, ``true``); an array has its items joined
  with ``", "`` (each item rendered the same way; an object item as compact JSON); an object as compact JSON.
- What is sent is the value's UTF-8 bytes; the values here are "wire strings" (those bytes, one character per
  byte), which every front door writes as Latin-1, i.e. byte for byte.
- A value with CR, LF or NUL, or longer than ``MAX_VALUE_BYTES``, is not sent (``refused`` says which, for one log
  line that names the header and never the value).

Header names and claim paths are checked at configuration time (``config.shaping``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

MAX_VALUE_BYTES: Final = 8192
_MISSING: Final = object()

Headers = tuple[tuple[str, str], ...]


def claim_at(claims: Mapping[str, object], path: str) -> object:
    """The value at ``path`` (dots for nested members), or None when any step is missing or not an object."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return None
    return value


def _item(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render(value: object) -> str | None:
    """The header value (a Python string, not yet a wire string) for a claim value; None for null."""
    if value is None:
        return None
    if isinstance(value, list):
        return ", ".join(_item(item) for item in value)
    return _item(value)


def refused(text: str) -> str | None:
    """Why a rendered value cannot be sent, or None."""
    if "\r" in text or "\n" in text or "\0" in text:
        return "its value contains CR, LF or NUL"
    if len(text.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        return f"its value is longer than {MAX_VALUE_BYTES} bytes"
    return None


def header_values(claims: Mapping[str, object], mapping: Sequence[tuple[str, str]]) -> tuple[Headers, list[str]]:
    """The (name, wire value) pairs to send for ``claims``, and why any configured header was left out (only for
    values that were there but could not be sent; a missing claim simply gives no header)."""
    out: list[tuple[str, str]] = []
    problems: list[str] = []
    for name, path in mapping:
        try:
            text = render(claim_at(claims, path))
        except (TypeError, ValueError):  # not JSON-able (cannot happen for parsed JSON); never sent
            problems.append(f"{name} not sent: its value cannot be rendered")
            continue
        if text is None:
            continue
        why = refused(text)
        if why is not None:
            problems.append(f"{name} not sent: {why}")
            continue
        out.append((name, text.encode("utf-8", "surrogatepass").decode("latin-1")))
    return tuple(out), problems


def header_names(mapping: Sequence[tuple[str, str]]) -> frozenset[str]:
    """The configured names, lower case: what the front doors remove from the client's request."""
    return frozenset(name.lower() for name, _ in mapping)


def python_value(wire: str) -> str:
    """A wire string back as the text it encodes (for APIs that take text: gRPC's ``HeaderValue.value``)."""
    return wire.encode("latin-1").decode("utf-8", "replace")


__all__ = ["MAX_VALUE_BYTES", "Headers", "claim_at", "header_names", "header_values", "python_value", "refused",
           "render"]
