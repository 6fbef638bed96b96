"""DPoP proofs (RFC 9449) as a client makes them, for the tests of every layer: a key, its thumbprint, and proofs
that are valid or broken in one chosen way."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from phantom_token import jose


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ath(token: str) -> str:
    return _b64(hashlib.sha256(token.encode()).digest())


class ProofKey:
    """A client's DPoP key pair."""

    def __init__(self, alg: str = "ES256") -> None:
        self.key = jose.SigningKey.generate(alg)
        self.alg = alg

    @property
    def jwk(self) -> dict[str, Any]:
        jwk = self.key.public_jwk()
        return {name: value for name, value in jwk.items() if name not in ("kid", "alg", "use")}

    @property
    def jkt(self) -> str:
        """The RFC 7638 SHA-256 thumbprint of the public key: what the token's ``cnf.jkt`` holds."""
        return self.key.kid  # SigningKey's default kid is that thumbprint

    def claims(self, method: str, url: str, token: str | None = None, *, iat: float | None = None,
               nonce: str | None = None, **extra: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url,
                                  "iat": int(time.time() if iat is None else iat)}
        if token is not None:
            claims["ath"] = ath(token)
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(extra)
        return {name: value for name, value in claims.items() if value is not None}

    def proof(self, method: str, url: str, token: str | None = None, *, iat: float | None = None,
              nonce: str | None = None, header: dict[str, Any] | None = None, **extra: Any) -> str:
        """A proof signed by this key (``extra`` claims override or, with None, remove the standard ones)."""
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return self.key.sign(self.claims(method, url, token, iat=iat, nonce=nonce, **extra), headers,
                             with_kid=False)


def unsigned_proof(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None = None) -> str:
    """A proof with any header: ``alg: none`` (empty signature) or HS256 with ``secret``."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)
