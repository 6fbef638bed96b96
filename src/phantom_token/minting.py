"""The gateway's own signing keys, and the ``TokenMinter`` that signs the JWTs it mints (RFC 9068).

Keys come from ``phantom_token.jwt``: ``key_file`` (PEM: EC P-256 by default, RSA >= 2048 bits, Ed25519) signs;
``previous_key_file`` is only published in the JWKS, so that JWTs signed before a rotation still verify until they
expire. With no ``key_file`` a key is generated once per process tree (before ``--workers`` fork, so the workers
share it) and a warning says that other replicas, and this process after a restart, will not know it.

The key files are read once, with the rest of the key and TLS material (``config.material``), when the
configuration is loaded; this module takes the loaded keys from that ``Material`` (given none, for settings built
in code, it loads it with ``load_material``).

Invariants: the signing keys are used here only, and only to sign (nothing else takes them from the ``Material``);
the JWKS holds public halves only.
"""

from __future__ import annotations

import logging
from typing import Any

from phantom_token import jose
from phantom_token.config.material import Material, load_material
from phantom_token.config.settings import JwtSettings, Settings

log = logging.getLogger("phantom_token.jwt")

AT_JWT = "at+jwt"  # RFC 9068 section 2.1
DEFAULT_ALG = "ES256"

_generated: dict[tuple[JwtSettings, str], jose.SigningKey] = {}


class JwtMinter:
    """Signs minted access tokens with the current key; publishes the current and previous public keys."""

    def __init__(
        self, key: jose.SigningKey, issuer: str, max_lifetime_seconds: int, previous: tuple[jose.SigningKey, ...] = ()
    ) -> None:
        self._key = key
        self._issuer = issuer
        self._max_lifetime = max_lifetime_seconds
        self._previous = previous

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def max_lifetime_seconds(self) -> int:
        return self._max_lifetime

    @property
    def kid(self) -> str:
        return self._key.kid

    def sign(self, claims: dict[str, object]) -> str:
        return self._key.sign(claims, {"typ": AT_JWT})

    def jwks(self) -> dict[str, Any]:
        """The JWK Set to publish at ``/.well-known/jwks.json`` (current key first)."""
        return jose.jwks([self._key, *self._previous])


def needs_minter(settings: Settings) -> bool:
    """True when some route mints JWTs, or signing keys are configured (so ``jwks`` has something to show)."""
    return settings.jwt.key_file is not None or any(
        route.plugin is not None and route.plugin.mints_jwt for route in settings.routes
    )


def signing_keys(
    settings: Settings, material: Material | None = None
) -> tuple[jose.SigningKey, tuple[jose.SigningKey, ...]]:
    """The current and previous keys of ``phantom_token.jwt``: those of ``material`` (loaded for ``settings``, or by
    ``load_material`` when not given), the current one generated once per process tree when ``key_file`` is unset."""
    key, previous = (material if material is not None else load_material(settings)).jwt_keys(settings.jwt)
    if key is None:
        key = _generated_key(settings.jwt, settings.source)
    return key, previous


def build_minter(settings: Settings, material: Material | None = None) -> JwtMinter | None:
    """The minter for these settings, or None when nothing mints and no key is configured."""
    if not needs_minter(settings):
        return None
    key, previous = signing_keys(settings, material)
    issuer = settings.jwt.issuer or ""
    return JwtMinter(key, issuer, settings.jwt.max_lifetime_seconds, previous)


def _generated_key(jwt: JwtSettings, source: str) -> jose.SigningKey:
    known = _generated.get((jwt, source))
    if known is None:
        known = _generated[(jwt, source)] = jose.SigningKey.generate(jwt.alg or DEFAULT_ALG, jwt.kid)
        log.warning(
            "phantom_token.jwt.key_file is not set: generated a %s signing key (kid=%s) for this process; other "
            "replicas will not share it and JWTs it signed stop verifying after a restart", known.alg, known.kid,
        )
    return known
