"""The authorization server's JWK Set, as the ``signed`` mode needs it: fetched, cached, refreshed.

Invariants:
- Fetched on first use; kept ``max_age`` seconds, then fetched again on next use (a failed refetch keeps the keys
  it has, with a warning: a JWKS outage must not stop signed answers that verify with known keys).
- An answer signed with an unknown ``kid`` (key rotation) triggers a refetch, at most once per
  ``min_refresh_interval`` seconds whatever the traffic, so forged ``kid`` values cannot make the gateway
  hammer the JWKS endpoint (the regular fetches do not count: a kid that appeared just after one is still found).
- Concurrent callers share one fetch. No I/O here but through the injected ``fetch``.
- A fetched document is parsed into keys once (``jose.verification_keys``), not on every signed answer; members of
  a type or size ``jose`` does not verify with are left out (RFC 7517 section 5).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from phantom_token import jose
from phantom_token.core.errors import IntrospectionUnavailable

log = logging.getLogger("phantom_token.introspection")

Fetch = Callable[[], Awaitable[bytes]]
"""Fetches the JWKS document's body; raises ``IntrospectionUnavailable`` when it cannot."""

JwkSet = tuple[jose.VerificationKey, ...]


def read_jwks(body: bytes) -> JwkSet:
    """The keys of a JWK Set document (RFC 7517 section 5); raises ``IntrospectionUnavailable`` when it is not one."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise IntrospectionUnavailable("the JWKS is not JSON") from None
    if not isinstance(document, dict):
        raise IntrospectionUnavailable("the JWKS is not a JWK Set (an object with a 'keys' array)")
    try:
        return tuple(jose.verification_keys(document))
    except jose.JoseError as exc:
        raise IntrospectionUnavailable(f"the JWKS is not a JWK Set ({exc})") from None


class JwksCache:
    def __init__(
        self,
        url: str,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = 3600.0,
        min_refresh_interval: float = 30.0,
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._clock = clock
        self._max_age = max_age
        self._min_interval = min_refresh_interval
        self._keys: JwkSet | None = None
        self._fetched_at = -float("inf")  # last successful fetch
        self._tried_at = -float("inf")  # last attempt, successful or not
        self._refreshed_at = -float("inf")  # last refetch for an unknown kid (the rate-limited kind)
        self._lock = asyncio.Lock()

    async def keys(self) -> JwkSet:
        """The current keys; fetched when there are none yet or they are older than ``max_age``."""
        if self._keys is not None and self._clock() - self._fetched_at < self._max_age:
            return self._keys
        async with self._lock:
            if self._keys is not None and self._clock() - self._fetched_at < self._max_age:
                return self._keys
            try:
                return await self._load()
            except IntrospectionUnavailable as exc:
                if self._keys is None:
                    raise
                log.warning("JWKS refresh failed, keeping the keys fetched before: url=%s reason=%s", self._url, exc)
                return self._keys

    async def refresh(self) -> JwkSet | None:
        """Fetch again after an unknown ``kid``; None when the last attempt was too recent (rate limit)."""
        tried_at = self._tried_at
        async with self._lock:
            if self._tried_at != tried_at:  # someone fetched while we waited: use what they got
                return self._keys
            if self._clock() - self._refreshed_at < self._min_interval:
                return None
            self._refreshed_at = self._clock()
            return await self._load()

    async def _load(self) -> JwkSet:
        self._tried_at = self._clock()
        try:
            keys = read_jwks(await self._fetch())
        except IntrospectionUnavailable as exc:
            raise IntrospectionUnavailable(f"cannot use the JWKS at {self._url}: {exc}", exc.kind) from exc
        self._keys, self._fetched_at = keys, self._clock()
        return keys
