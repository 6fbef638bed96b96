"""Reading a signed introspection answer (RFC 9701, ``introspection_response: signed``). Pure: no I/O.

The request carries ``Accept: application/token-introspection+jwt``; the answer is a JWT signed by the
authorization server. Before any claim is believed:
- the signature verifies with a key of the server's JWKS (the adapter fetches it; ``UnknownSigningKey`` asks it to
  refresh and try again), with an asymmetric algorithm, never ``none``;
- header ``typ`` is ``token-introspection+jwt`` (RFC 9701 section 5; the ``application/`` prefix is tolerated,
  RFC 7515 section 4.1.9);
- the envelope's claims pass ``core.claims.envelope_refusal`` (``iss``, ``aud``, ``iat``, ``exp``: the claim rules
  all live there).
The token's claims are the ``token_introspection`` member (RFC 9701 section 5), read by the RFC 7662 rules:
``active`` must be a JSON boolean. Every failure is ``IntrospectionUnavailable`` (502) with a reason for one log
line; no reason ever contains the token.
"""

from __future__ import annotations

from phantom_token import jose
from phantom_token.core.claims import envelope_refusal
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import IntrospectionResult
from phantom_token.introspection.rfc7662 import check_status, read_introspection_object

ACCEPT_SIGNED = "application/token-introspection+jwt"
TYP = "token-introspection+jwt"
ALGORITHMS = jose.SUPPORTED_ALGORITHMS  # the allowlist: asymmetric only, no HMAC, never 'none'


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
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != TYP:
        raise IntrospectionUnavailable(f"the signed answer's typ is not {TYP}")
    refused = envelope_refusal(claims, issuer=issuer, client_id=client_id, now=now,
                               clock_skew_seconds=clock_skew_seconds)
    if refused is not None:
        raise IntrospectionUnavailable(f"the signed answer is refused: {refused}")
    return _read_token_introspection(claims.get("token_introspection"), headers)


def _read_token_introspection(member: object, headers: list[tuple[str, str]]) -> IntrospectionResult:
    return read_introspection_object(member, headers, "the signed answer's token_introspection")
