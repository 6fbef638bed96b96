"""The project's exception tree. Foreign exceptions are translated at the I/O boundary into these.

    PhantomTokenError
    ├── ConfigError                  the configuration file is wrong (start-up only; never a runtime 500)
    ├── IntrospectionUnavailable     the authorization server could not give an answer -> 502 server_error
    └── UpstreamError                the upstream API failed
        ├── UpstreamUnreachable      connect/reset -> 502 bad_gateway
        └── UpstreamTimeout          no answer in time -> 504 gateway_timeout

No message here ever contains a raw token: use ``fingerprint()`` from ``core.bearer``.
"""

from __future__ import annotations

from dataclasses import dataclass


class PhantomTokenError(Exception):
    """Base of every error this project raises on purpose."""


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


class IntrospectionUnavailable(PhantomTokenError):
    """The introspection endpoint did not give a usable answer (down, slow, 5xx, bad credentials, garbage)."""


class UpstreamError(PhantomTokenError):
    """The upstream API failed."""


class UpstreamUnreachable(UpstreamError):
    """Could not connect to the upstream, or it closed the connection before answering."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""
