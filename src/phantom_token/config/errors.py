"""The configuration's errors: every problem found in a file, raised together at start-up (never per request).

Invariants: a ``ConfigError`` lists every problem, not only the first; its message is one line per problem,
``file: where: field: why``; this module imports nothing of the project but ``phantom_token.errors``, so that any
package may raise a ``ConfigError`` without depending on ``core`` (the tree: ``phantom_token/errors.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from phantom_token.errors import PhantomTokenError


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration file."""

    file: str
    where: str  # e.g. "service 'api' / route 'r1' / plugin 'phantom-token'"
    field: str  # dotted path of the offending field, '' when the problem is the whole block
    why: str

    def __str__(self) -> str:
        location = f"{self.where}: " if self.where else ""
        name = f"{self.field}: " if self.field else ""
        return f"{self.file}: {location}{name}{self.why}"


class ConfigError(PhantomTokenError):
    """The configuration is invalid; ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


__all__ = ["ConfigError", "ConfigProblem"]
