"""Front doors: turn an HTTP request into a ``RequestInfo``, ask the engine, apply the ``Verdict``.

They never decide a verdict themselves; ``Authorizer`` is all they know of the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from phantom_token.core.request import RequestInfo
from phantom_token.core.verdict import Verdict


class Authorizer(Protocol):
    """The engine as the front doors see it."""

    def try_authorize(self, request: RequestInfo) -> Verdict | None:
        """The verdict when no I/O is needed (a cache hit or a cheap denial); None means call ``authorize``."""
        ...

    async def authorize(self, request: RequestInfo) -> Verdict:
        """The verdict, introspecting the token when needed."""
        ...


Observe = Callable[[int], None]
"""Called once per answer with its status (``Metrics.observe_response`` counts them)."""

__all__ = ["Authorizer", "Observe"]
