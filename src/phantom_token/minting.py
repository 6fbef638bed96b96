"""The gateway's own signing keys, and the ``TokenMinter`` that signs the JWTs it mints (RFC 9068).

Keys come from ``phantom_token.jwt``: ``key_file`` (PEM: EC P-256 by default, RSA >= 2048 bits, Ed25519) signs;
``previous_key_file`` is only published in the JWKS, so that JWTs signed before a rotation still verify until they
expire. With no ``key_file`` a key is generated once per process tree (before ``--workers`` fork, so the workers
share it) and a warning says that other replicas, and this process after a restart, will not know it.

Invariants: private keys never leave this module except as signatures; the JWKS holds public halves only.
"""

from __future__ import annotations

import logging
from typing import Any

from phantom_token import jose
from phantom_token.config.errors import ConfigError, ConfigProblem
from phantom_token.config.settings import JwtSettings, Settings

log = logging.getLogger("phantom_token.jwt")

AT_JWT = "at+jwt"  # RFC 9068 section 2.1
DEFAULT_ALG = "ES256"

_loaded: dict[tuple[JwtSettings, str], tuple[jose.SigningKey, tuple[jose.SigningKey, ...]]] = {}


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


def signing_keys(settings: Settings) -> tuple[jose.SigningKey, tuple[jose.SigningKey, ...]]:
    """The current and previous keys of ``phantom_token.jwt``; loaded (or generated) once per process tree."""
    cache_key = (settings.jwt, settings.source)
    if cache_key not in _loaded:
        _loaded[cache_key] = _load(settings.jwt, settings.source)
    return _loaded[cache_key]


def build_minter(settings: Settings) -> JwtMinter | None:
    """The minter for these settings, or None when nothing mints and no key is configured."""
    if not needs_minter(settings):
        return None
    key, previous = signing_keys(settings)
    issuer = settings.jwt.issuer or ""
    return JwtMinter(key, issuer, settings.jwt.max_lifetime_seconds, previous)


def _load(jwt: JwtSettings, source: str) -> tuple[jose.SigningKey, tuple[jose.SigningKey, ...]]:
    if jwt.key_file is None:
        key = jose.SigningKey.generate(jwt.alg or DEFAULT_ALG, jwt.kid)
        log.warning(
            "phantom_token.jwt.key_file is not set: generated a %s signing key (kid=%s) for this process; other "
            "replicas will not share it and JWTs it signed stop verifying after a restart", key.alg, key.kid,
        )
    else:
        key = _read(source, "jwt.key_file", jwt.key_file, jwt.alg, jwt.kid)
    previous: tuple[jose.SigningKey, ...] = ()
    if jwt.previous_key_file is not None:
        previous = (_read(source, "jwt.previous_key_file", jwt.previous_key_file, None, jwt.previous_kid),)
    return key, previous


def _read(source: str, field: str, path: str, alg: str | None, kid: str | None) -> jose.SigningKey:
    try:
        return jose.SigningKey.from_pem_file(path, alg, kid)
    except OSError as exc:
        why = f"cannot read the key file: {exc.strerror}"
    except jose.JoseError as exc:
        why = str(exc)
    raise ConfigError([ConfigProblem(source, "phantom_token", field, why)])
