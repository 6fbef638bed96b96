"""Reading a signed introspection answer (RFC 9701, ``introspection_response: signed``). Pure: no I/O.

The request carries ``Accept: application/token-introspection+jwt``; the answer is a JWT signed by the
authorization server. Before any claim is believed:
- the signature verifies with a key of the server's JWKS (the adapter fetches it; ``UnknownSigningKey`` asks it to
  refresh and try again), with an asymmetric algorithm, never ``none``;
- header ``typ`` is ``token-introspection+jwt`` (RFC 9701 section 5; the ``application/`` prefix is tolerated,
  RFC 7515 section 4.1.9);
- ``iss`` equals the configured issuer exactly; ``aud`` is (or contains) our client_id;
- ``iat`` is present, not in the future and not older than ``MAX_RESPONSE_AGE_SECONDS`` (both with the clock skew);
  an ``exp``, when present, has not passed.
The token's claims are the ``token_introspection`` member (RFC 9701 section 5), read by the RFC 7662 rules:
``active`` must be a JSON boolean. Every failure is ``IntrospectionUnavailable`` (502) with a reason for one log
line; no reason ever contains the token.
"""

from __future__ import annotations

from phantom_token import jose
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.jwt import numeric_claim
from phantom_token.core.ports import IntrospectionResult
from phantom_token.introspection.rfc7662 import check_status, read_introspection_object

ACCEPT_SIGNED = "application/token-introspection+jwt"
TYP = "token-introspection+jwt"
MAX_RESPONSE_AGE_SECONDS = 300
ALGORITHMS = jose.SUPPORTED_ALGORITHMS  # asymmetric only: jose has no HMAC and never accepts 'none'


class UnknownSigningKey(IntrospectionUnavailable):
    """No key of the JWKS at hand has the answer's ``kid``: refresh the JWKS (rate-limited) and read again."""


def read_signed_response(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    keys: jose.KeySource,
    issuer: str,
    client_id: str,
    now: float,
    clock_skew_seconds: float,
) -> IntrospectionResult:
    """Interpret the answer to an ``Accept: application/token-introspection+jwt`` request."""
    check_status(status)
    text = body.strip()
    if text.startswith(b"{"):
        raise IntrospectionUnavailable(
            "the endpoint answered JSON instead of a signed JWT: it does not support RFC 9701, or this client is "
            "not registered for signed introspection responses"
        )
    try:
        jwt = text.decode("ascii")
        header, claims = jose.verify(jwt, keys, algorithms=ALGORITHMS)
    except UnicodeDecodeError:
        raise IntrospectionUnavailable("the 200 body is not a JWT (not ASCII)") from None
    except jose.UnknownKey as exc:
        raise UnknownSigningKey(f"no key in the JWKS verifies the signed answer ({exc})") from None
    except jose.BadSignature:
        raise IntrospectionUnavailable("the signed answer's signature does not verify with the JWKS") from None
    except jose.AlgorithmNotAllowed as exc:
        raise IntrospectionUnavailable(f"the signed answer's algorithm is refused ({exc})") from None
    except jose.JoseError as exc:
        raise IntrospectionUnavailable(f"the 200 body is not a signed JWT ({exc})") from None
    _check_envelope(header, claims, issuer, client_id, now, clock_skew_seconds)
    return _read_token_introspection(claims.get("token_introspection"), headers)


def _check_envelope(
    header: dict[str, object], claims: dict[str, object], issuer: str, client_id: str, now: float, skew: float
) -> None:
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != TYP:
        raise IntrospectionUnavailable(f"the signed answer's typ is not {TYP}")
    if claims.get("iss") != issuer:
        raise IntrospectionUnavailable("the signed answer's iss is not the configured issuer")
    aud = claims.get("aud")
    if not (aud == client_id or (isinstance(aud, list) and client_id in aud)):
        raise IntrospectionUnavailable("the signed answer's aud is not our client_id")
    issued = numeric_claim(claims, "iat")
    if issued is None:
        raise IntrospectionUnavailable("the signed answer has no numeric iat")
    if issued > now + skew:
        raise IntrospectionUnavailable("the signed answer's iat is in the future")
    if issued < now - MAX_RESPONSE_AGE_SECONDS - skew:
        raise IntrospectionUnavailable(f"the signed answer is older than {MAX_RESPONSE_AGE_SECONDS}s (iat)")
    expires = numeric_claim(claims, "exp")
    if "exp" in claims and (expires is None or expires <= now - skew):
        raise IntrospectionUnavailable("the signed answer has expired (exp)")


def _read_token_introspection(member: object, headers: list[tuple[str, str]]) -> IntrospectionResult:
    return read_introspection_object(member, headers, "the signed answer's token_introspection")
