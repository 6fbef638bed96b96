"""The typed readers every part of the configuration file goes through, and Kong's env vault references.

Internal to ``phantom_token.config``. A ``Block`` is one YAML mapping: it reports unknown fields when built, and
each reader (``text``, ``flag``, ``integer``, ``number``, ...) records a problem and returns a fallback instead of
raising, so one pass finds every problem.

Invariants:
- A field set to null counts as absent (Kong does the same); a boolean is never accepted as a number.
- No value read from the file or the environment ever appears in a message: problems name the field, the expected
  type, the environment variable, never a value (a secret could be any value).
- ``Block.text`` resolves ``{vault://env/NAME}`` and ``{vault://env/NAME/key}`` (whole value only), so no reference
  survives into ``Settings``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from phantom_token.config.errors import ConfigProblem

if TYPE_CHECKING:
    from phantom_token.config.material import Need

__all__ = ["Block", "Context", "type_name"]

T = TypeVar("T")


class Context:
    """What every reader needs: where problems go, the environment for vault references, the mode; and where the
    key and TLS files the parsers find named go (``needs``: ``config.material`` reads them after parsing)."""

    def __init__(self, source: str, environ: Mapping[str, str], require_upstream: bool) -> None:
        self.source = source
        self.environ = environ
        self.require_upstream = require_upstream
        self.problems: list[ConfigProblem] = []
        self.needs: list[Need] = []

    def problem(self, where: str, field: str, why: str) -> None:
        self.problems.append(ConfigProblem(self.source, where, field, why))


def entity(ctx: Context, raw: object, kind: str, index: int) -> tuple[dict[Any, Any], str | None, str] | None:
    """A Kong entity of a list (``kind`` with its owner, e.g. ``svc / route``) as a mapping, its name, and how
    problems name it: by its name when it has one, else by its position; None (the problem noted) when it is not a
    mapping."""
    if not isinstance(raw, dict):
        ctx.problem(f"{kind} #{index + 1}", "", f"expected a mapping, got {type_name(raw)}")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        return raw, None, f"{kind} #{index + 1}"
    return raw, name, f"{kind} '{name}'"


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "a " + type(value).__name__


class Block:
    """The fields of one YAML mapping. Each reader records a problem and returns a fallback instead of raising.

    A field set to null counts as absent (Kong does the same). Unknown fields are reported on construction;
    ``unsupported`` maps field names Kong knows but this gateway refuses to the reason given.
    """

    def __init__(
        self,
        ctx: Context,
        where: str,
        data: Mapping[Any, Any],
        known: frozenset[str],
        *,
        prefix: str = "",
        unsupported: Mapping[str, str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.where = where
        self.data = data
        self.prefix = prefix
        for key in data:
            if not isinstance(key, str):
                self.ctx.problem(where, prefix.rstrip("."), f"field names must be strings, not {type_name(key)}")
            elif unsupported and key in unsupported:
                self.problem(key, unsupported[key])
            elif key not in known:
                self.problem(key, "unknown field")

    def name(self, key: str) -> str:
        return self.prefix + key

    def problem(self, key: str, why: str) -> None:
        self.ctx.problem(self.where, self.name(key), why)

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _typed(self, key: str, kind: type[T] | tuple[type, ...], expected: str, required: bool) -> T | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.problem(key, "is required")
            return None
        if isinstance(value, bool) and kind is not bool:
            self.problem(key, f"expected {expected}, got a boolean")
            return None
        if not isinstance(value, kind):
            self.problem(key, f"expected {expected}, got {type_name(value)}")
            return None
        return value  # type: ignore[return-value]

    def text(self, key: str, *, required: bool = False, non_empty: bool = False) -> str | None:
        """A string; a ``{vault://env/...}`` reference is replaced by what it refers to."""
        value = self._typed(key, str, "a string", required)
        if value is None:
            return None
        value = resolve_reference(self, key, value)
        if value is not None and non_empty and not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._typed(key, bool, "true or false", False)
        return default if value is None else value

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self._typed(key, int, "an integer", False)
        if value is None:
            return default
        if value < low or (high is not None and value > high):
            self.problem(key, f"must be at least {low}" if high is None else f"must be from {low} to {high}")
            return default
        return value

    def number(self, key: str, default: float, *, above: float = 0.0) -> float:
        value = self._typed(key, (int, float), "a number", False)
        if value is None:
            return default
        number = float(value)
        if not math.isfinite(number) or number <= above:
            self.problem(key, f"must be a number greater than {above:g}")
            return default
        return number

    def mapping(self, key: str, *, required: bool = False) -> Mapping[Any, Any] | None:
        return self._typed(key, dict, "a mapping", required)

    def items(self, key: str) -> list[Any]:
        value = self._typed(key, list, "a list", False)
        return [] if value is None else value

    def texts(self, key: str) -> list[str] | None:
        """A list of strings (no references); None when absent or when any item is not a string."""
        value = self._typed(key, list, "a list of strings", False)
        if value is None:
            return None
        bad = [i for i, item in enumerate(value) if not isinstance(item, str)]
        for i in bad:
            self.problem(f"{key}[{i}]", f"expected a string, got {type_name(value[i])}")
        return None if bad else list(value)

    def accept(self, *keys: str, kind: type | tuple[type, ...] = str, many: bool = False) -> None:
        """Type-check fields that are valid Kong but change nothing here (ids, tags, buffering...)."""
        for key in keys:
            if many:
                self.texts(key)
            else:
                expected = "true or false" if kind is bool else "an integer" if kind is int else "a string"
                self._typed(key, kind, expected, False)


# ------------------------------------------------------------------------------------------ vault references

_REFERENCE = re.compile(r"\{vault://(?P<vault>[^/}]*)/(?P<name>[^/}]+)(?:/(?P<key>[^}]+))?\}")


def url_parts(block: Block, key: str, url: str, *, http: bool = False) -> SplitResult | None:
    """``url`` split (its port checked too), or None with the problem recorded under ``key``: ``is not a valid URL``,
    and with ``http`` also ``must be an http:// or https:// URL with a host``. The one parse every URL option uses;
    what else an option forbids (fragment, path, credentials) is its own rule."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        block.problem(key, "is not a valid URL")
        return None
    if http and (parts.scheme not in ("http", "https") or not parts.hostname):
        block.problem(key, "must be an http:// or https:// URL with a host")
        return None
    return parts


def resolve_reference(block: Block, key: str, value: str) -> str | None:
    """Kong's env vault: ``{vault://env/NAME}`` or ``{vault://env/NAME/json_key}``, the whole value only.

    As in Kong, NAME is upper-cased and '-' becomes '_'; with a json_key the variable holds a JSON object.
    """
    if not value.startswith("{vault://"):
        return value
    found = _REFERENCE.fullmatch(value)
    if found is None:
        block.problem(key, "malformed vault reference (expected {vault://env/NAME} or {vault://env/NAME/key})")
        return None
    if found["vault"] != "env":
        block.problem(key, "only the env vault is supported ({vault://env/NAME})")
        return None
    variable = found["name"].upper().replace("-", "_")
    raw = block.ctx.environ.get(variable)
    if raw is None:
        block.problem(key, f"environment variable {variable} (vault reference) is not set")
        return None
    if found["key"] is None:
        return raw
    try:
        document = json.loads(raw)
    except ValueError:
        block.problem(key, f"environment variable {variable} (vault reference) does not hold a JSON object")
        return None
    if not isinstance(document, dict):
        block.problem(key, f"environment variable {variable} (vault reference) does not hold a JSON object")
        return None
    item = document.get(found["key"])
    if not isinstance(item, str):
        missing = "has no" if item is None else "has a non-string"
        block.problem(key, f"the JSON in environment variable {variable} {missing} key '{found['key']}'")
        return None
    return item
