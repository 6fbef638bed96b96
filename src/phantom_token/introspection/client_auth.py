"""How the gateway authenticates to the introspection endpoint (plugin option ``client_auth_method``). Pure.

- ``client_secret_basic`` (default): HTTP Basic, id and secret form-urlencoded first (RFC 6749 section 2.3.1).
- ``client_secret_post``: ``client_id`` and ``client_secret`` in the form body (RFC 6749 section 2.3.1).
- ``private_key_jwt`` (RFC 7523 section 2.2, OpenID Connect Core section 9): ``client_assertion_type`` and a
  ``client_assertion`` signed with ``client_private_key_file``: ``iss`` = ``sub`` = client_id, ``aud`` =
  ``client_assertion_audience`` (default: the issuer, else the introspection endpoint), a unique ``jti``, ``iat``,
  and ``exp`` ``ASSERTION_LIFETIME_SECONDS`` later (short, so a captured assertion is soon worthless). The header
  carries a ``kid`` only when ``client_private_key_id`` names one: an authorization server that registered the key
  under a ``kid`` of its own refuses any other (oidc-provider does), and without a ``kid`` it tries the client's keys.
- ``tls_client_auth`` (RFC 8705 section 2.1): the TLS client certificate does it (the adapter's SSL context);
  the body names the client with ``client_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

from phantom_token.config.settings import CLIENT_AUTH_METHODS, PluginConfig
from phantom_token.introspection.rfc7662 import basic_credentials
from phantom_token.jose import SigningKey

METHODS = frozenset(CLIENT_AUTH_METHODS)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 60


@dataclass(frozen=True, slots=True)
class ClientAuthentication:
    """What one request carries to authenticate the gateway: headers and form parameters."""

    headers: list[tuple[str, str]]
    params: list[tuple[str, str]]


def assertion_audience(plugin: PluginConfig, endpoint: str) -> str:
    """``aud`` of a client assertion: the configured one, else the issuer, else the endpoint being called."""
    return plugin.client_assertion_audience or plugin.issuer or endpoint


def client_authentication(
    plugin: PluginConfig, *, endpoint: str, key: SigningKey | None, now: float, jti: str
) -> ClientAuthentication:
    """The headers and form parameters for ``plugin.client_auth_method`` (``key``: for ``private_key_jwt``)."""
    method = plugin.client_auth_method
    if method == "client_secret_post":
        return ClientAuthentication([], [("client_id", plugin.client_id), ("client_secret", plugin.client_secret)])
    if method == "private_key_jwt":
        if key is None:
            raise ValueError("private_key_jwt needs the client's private key")
        issued = int(now)
        claims = {
            "iss": plugin.client_id,
            "sub": plugin.client_id,
            "aud": assertion_audience(plugin, endpoint),
            "jti": jti,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_SECONDS,
        }
        assertion = key.sign(claims, with_kid=plugin.client_private_key_id is not None)
        params = [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", assertion)]
        return ClientAuthentication([], params)
    if method == "tls_client_auth":
        return ClientAuthentication([], [("client_id", plugin.client_id)])
    return ClientAuthentication([("Authorization", basic_credentials(plugin.client_id, plugin.client_secret))], [])
