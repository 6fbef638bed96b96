"""What the engine needs to know about a request, independent of any HTTP framework."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class RequestInfo:
    """One incoming request as plain values.

    ``headers`` maps lower-case header names to every value received, in order (so a duplicated
    ``Authorization`` header is visible). ``host`` is the Host header without its port, lower case.
    ``path`` is the raw request path without the query string.
    """

    method: str
    host: str
    path: str
    headers: Mapping[str, Sequence[str]]
