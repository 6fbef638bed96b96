"""Fakes for the engine's ports, and a JWT builder that needs no keys (the engine does not verify signatures)."""

from __future__ import annotations

import asyncio
import base64
import json

from phantom_token.config.settings import PluginConfig
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import Active, Inactive, IntrospectionResult
from phantom_token.core.ttl import CacheDirectives


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, object], alg: str = "ES256") -> str:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'signature')}"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeIntrospector:
    """Answers from a dict of token -> result (an exception instance is raised); counts calls."""

    def __init__(self) -> None:
        self.answers: dict[str, IntrospectionResult | IntrospectionUnavailable] = {}
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None

    def activate(self, token: str, claims: dict[str, object], max_age: float | None = None,
                 no_store: bool = False) -> str:
        jwt = make_jwt(claims)
        self.answers[token] = Active(jwt, claims, CacheDirectives(max_age, no_store))
        return jwt

    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        self.calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.get(token, Inactive())
        if isinstance(answer, IntrospectionUnavailable):
            raise answer
        return answer
