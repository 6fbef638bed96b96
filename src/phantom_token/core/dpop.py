"""DPoP (RFC 9449): the proof checks of section 4.3, the request URL a proof must name, and stateless nonces.

Pure: no I/O, no clock of its own (``now`` is passed in); the JOSE work is ``phantom_token.jose``'s. The engine calls
``check_proof`` before any introspection (a bad proof never reaches the authorization server), then compares the
proof's key with the token's binding (``Proof.jkt`` against ``cnf.jkt``) and asks its ``ProofReplayGuard`` whether
the proof's ``jti`` is new.

Checks, in order (a refusal names the first that failed; the reason goes to one log line, never the proof):
1. exactly one ``DPoP`` header, holding one compact JWS (``jose.decode_unverified``'s strict reader);
2. header ``typ`` is ``dpop+jwt``; ``alg`` is one of the plugin's ``dpop_signing_alg_values`` (always within
   ``jose.SUPPORTED_ALGORITHMS``: asymmetric, never ``none`` nor HMAC); ``jwk`` is a JSON object with no private
   member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``, ``oth``, ``k``) of a supported key type and size;
3. the signature verifies with that ``jwk``;
4. the claims ``jti`` (a non-empty string of at most 256 characters), ``htm``, ``htu``, ``iat`` (a number) are there;
5. ``htm`` equals the request method; ``htu``, without query and fragment and normalised (RFC 3986 section 6:
   scheme and host in lower case, the default port dropped, percent-encodings and dot segments as
   ``phantom_token.http.uri`` normalises request paths, ``/`` for an empty path), equals the request's URL
   (``request_url``, normalised the same way);
6. ``iat`` is no more than ``clock_skew_seconds`` in the future and no more than ``dpop_proof_lifetime_seconds`` +
   ``clock_skew_seconds`` in the past;
7. ``ath`` equals base64url(SHA-256(the access token));
8. with nonces on, ``nonce`` is one this gateway (any replica sharing the secret) issued in the current or the
   previous window; else the refusal is ``use_dpop_nonce`` and carries a fresh nonce.

The binding (RFC 7638 SHA-256 thumbprint of the ``jwk``) is ``Proof.jkt``; ``Proof.replay_key`` names the proof
for the replay guard (SHA-256 of the thumbprint and the ``jti``), and ``Proof.until`` is when it stops being
acceptable (so the guard can forget it then).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
import struct
from collections.abc import Collection, Sequence
from typing import Final
from urllib.parse import urlsplit

from phantom_token import jose
from phantom_token.core.claims import numeric_claim
from phantom_token.memo import remember

TYP: Final = "dpop+jwt"
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
DEFAULT_ALGORITHMS: Final = ("ES256", "ES384", "ES512", "PS256", "RS256", "EdDSA")
MAX_JTI_CHARS: Final = 256
MAX_PROOF_CHARS: Final = 8192  # a proof with an RSA-4096 jwk is about 1.5 KB
MAX_KNOWN_HEADERS: Final = 4096  # proof headers (one per client key) whose jwk is imported and thumbprinted
NONCE_WINDOW_SECONDS: Final = 300  # a nonce is accepted in the window it was issued in and the next one

INVALID_PROOF: Final = "invalid_dpop_proof"
USE_NONCE: Final = "use_dpop_nonce"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_HEADERS: Final[dict[str, tuple[str, jose.Key, str]]] = {}  # a proof's header segment -> its alg, key, thumbprint


class Proof:
    """A proof that passed every check of ``check_proof``."""

    __slots__ = ("jkt", "replay_key", "until")

    def __init__(self, jkt: str, replay_key: bytes, until: float) -> None:
        self.jkt = jkt  # RFC 7638 SHA-256 thumbprint of the proof's jwk
        self.replay_key = replay_key
        self.until = until  # seconds since the epoch after which the proof is refused anyway (its iat is too old)


class Refusal:
    """Why a proof is refused: ``error`` is ``invalid_dpop_proof`` or ``use_dpop_nonce`` (then ``nonce`` is the
    one to use); ``reason`` is for one log line."""

    __slots__ = ("error", "nonce", "reason")

    def __init__(self, reason: str, error: str = INVALID_PROOF, nonce: str | None = None) -> None:
        self.reason = reason
        self.error = error
        self.nonce = nonce

    def __repr__(self) -> str:
        return f"Refusal({self.error}: {self.reason})"


class NonceKeeper:
    """Stateless server nonces (RFC 9449 section 8): base64url(window number || HMAC-SHA256(key, window)[:16]).

    Any replica that shares the secret accepts another's nonce; a nonce lives one to two windows. The key is
    derived from the configured secret (``phantom_token.dpop_nonce_secret``), never used raw.
    """

    __slots__ = ("_key", "_window")

    def __init__(self, secret: str, window_seconds: int = NONCE_WINDOW_SECONDS) -> None:
        self._key = hashlib.sha256(b"phantom-token dpop nonce v1\x00" + secret.encode("utf-8")).digest()
        self._window = window_seconds

    def _mac(self, window: int) -> bytes:
        packed = struct.pack(">Q", window)
        return packed + hmac.new(self._key, packed, hashlib.sha256).digest()[:16]

    def issue(self, now: float) -> str:
        return jose.b64url_encode(self._mac(int(now // self._window)))

    def valid(self, nonce: object, now: float) -> bool:
        if not isinstance(nonce, str) or len(nonce) != 32:
            return False
        try:
            raw = jose.b64url_decode(nonce)
        except jose.JoseError:
            return False
        current = int(now // self._window)
        window = struct.unpack(">Q", raw[:8])[0]
        return window in (current, current - 1) and hmac.compare_digest(raw, self._mac(window))


def access_token_hash(token: str) -> str:
    """``ath``: base64url(SHA-256(the access token's ASCII))."""
    return jose.b64url_encode(hashlib.sha256(token.encode("ascii", "surrogateescape")).digest())


def normalise_url(url: str) -> str | None:
    """``scheme://host[:port]/path`` of an http(s) URL, without query and fragment, in RFC 3986 section 6 normal
    form: scheme and host in lower case (one trailing dot of the host dropped), no default port, percent-encoded
    unreserved characters decoded and other percent-encodings in upper case, dot segments removed and repeated
    slashes merged (as request paths are: ``phantom_token.http.uri``), ``/`` for an empty path. None when it is not
    an absolute http(s) URL with a host (userinfo is refused)."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    if host.endswith("."):
        host = host[:-1]
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{_normal_path(parts.path)}"


def _normal_path(path: str) -> str:
    if "%" in path:
        path = _PERCENT.sub(_percent, path)
    kept: list[str] = []
    segments = path.split("/")
    trailing = False
    for i in range(1, len(segments)):
        segment = segments[i]
        last = i == len(segments) - 1
        if segment in ("", "."):
            trailing = trailing or last
        elif segment == "..":
            if kept:
                kept.pop()
            trailing = last
        else:
            kept.append(segment)
            trailing = False
    return "/" + "/".join(kept) + ("/" if trailing and kept else "")


def _percent(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else "%" + match[1].upper()


def request_url(origin: str, path: str) -> str | None:
    """The normal form (``normalise_url``) of the URL a request was sent to: ``origin`` (``scheme://authority`` as
    the front door established it) and the request's path; None when they do not make a valid http(s) URL."""
    if "/" in origin.partition("://")[2] or "?" in origin or "#" in origin:
        return None
    return normalise_url(origin + (path if path.startswith("/") else "/" + path))


def request_origin(
    *, public_base_url: str | None, scheme: str, host: str, forwarded_proto: Sequence[str] | None = None,
    forwarded_host: Sequence[str] | None = None, trusted: bool = False,
) -> str:
    """``scheme://authority`` of the URL the client used, for ``htu`` (the rule every front door applies): the
    configured ``public_base_url`` when set; else ``X-Forwarded-Proto``/``X-Forwarded-Host`` (one value each, the
    first of a comma-separated list) when the peer is ``trusted``; else the listener's ``scheme`` and the ``Host``.
    "" when there is no host to name."""
    if public_base_url:
        return public_base_url.rstrip("/")
    if trusted:
        proto = _first(forwarded_proto)
        if proto in ("http", "https"):
            scheme = proto
        forwarded = _first(forwarded_host)
        if forwarded:
            host = forwarded
    return f"{scheme}://{host}" if host else ""


def _first(values: Sequence[str] | None) -> str:
    if not values or len(values) != 1:
        return ""
    return values[0].partition(",")[0].strip().lower() if values[0] else ""


def _check_header(proof: str, algorithms: Collection[str]) -> tuple[str, jose.Key, str] | Refusal:
    """(alg, key, RFC 7638 thumbprint) of a proof's header (checks 1 and 2), or why it is refused."""
    try:
        header, _ = jose.decode_unverified(proof)
    except jose.JoseError:
        return Refusal("the proof is not a compact JWS")
    if header.get("typ") != TYP:
        return Refusal("typ is not dpop+jwt")
    alg = header["alg"]
    if alg not in algorithms or alg not in jose.SUPPORTED_ALGORITHMS:
        return Refusal(f"alg {alg!r} is not allowed")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        return Refusal("no jwk in the header")
    if PRIVATE_MEMBERS.intersection(jwk):
        return Refusal("the jwk has a private member")
    try:
        key = jose.VerificationKey.from_jwk(jwk).key
    except jose.JoseError as exc:
        return Refusal(f"unusable jwk: {exc}")
    return alg, key, key.thumbprint()


def check_proof(
    values: Sequence[str] | None, *, method: str, url: str | None, token: str, algorithms: Collection[str],
    now: float, lifetime: int, skew: int, nonces: NonceKeeper | None = None,
) -> Proof | Refusal:
    """Check the ``DPoP`` header values of one request carrying ``token`` (see the module docstring).

    ``url`` is ``request_url``'s normal form of the request (None: unknown, every proof is refused); ``nonces``
    is given when the route requires server nonces.
    """
    if not values:
        return Refusal("no DPoP header")
    if len(values) != 1:
        return Refusal("more than one DPoP header")
    proof = values[0].strip()
    if len(proof) > MAX_PROOF_CHARS:
        return Refusal("the proof is too long")
    head = proof[:proof.find(".")]
    known = _HEADERS.get(head)  # one client sends the same header (typ, alg, jwk) with every proof
    if known is None:
        checked = _check_header(proof, algorithms)
        if isinstance(checked, Refusal):
            return checked
        known = remember(_HEADERS, head, checked, MAX_KNOWN_HEADERS)
    alg, key, jkt = known
    if alg not in algorithms:  # the memo is shared by routes with different lists
        return Refusal(f"alg {alg!r} is not allowed")
    try:
        _, claims = jose.verify_with_key(proof, key, algorithms=(alg,))
    except jose.BadSignature:
        return Refusal("the signature does not verify with the jwk")
    except jose.JoseError as exc:
        return Refusal(f"unusable proof: {exc}")
    jti, htm, htu = claims.get("jti"), claims.get("htm"), claims.get("htu")
    issued = numeric_claim(claims, "iat")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        return Refusal("no valid jti")
    if not isinstance(htm, str) or not isinstance(htu, str) or issued is None:
        return Refusal("htm, htu or a numeric iat is missing")
    if htm != method:
        return Refusal("htm is not the request method")
    if url is None:
        return Refusal("the gateway cannot tell the request's URL")
    if normalise_url(htu) != url:
        return Refusal("htu is not the request URL")
    if issued > now + skew:
        return Refusal("iat is in the future")
    if issued < now - lifetime - skew:
        return Refusal("the proof is too old (iat)")
    ath = claims.get("ath")
    if not isinstance(ath, str) or not hmac.compare_digest(ath, access_token_hash(token)):
        return Refusal("ath is not the access token's hash")
    if nonces is not None and not nonces.valid(claims.get("nonce"), now):
        return Refusal("no valid nonce", USE_NONCE, nonces.issue(now))
    replay_key = hashlib.sha256(f"{jkt}\x00{jti}".encode("utf-8", "surrogateescape")).digest()
    return Proof(jkt, replay_key, issued + lifetime + skew)


__all__ = [
    "DEFAULT_ALGORITHMS",
    "INVALID_PROOF",
    "NONCE_WINDOW_SECONDS",
    "PRIVATE_MEMBERS",
    "TYP",
    "USE_NONCE",
    "NonceKeeper",
    "Proof",
    "Refusal",
    "access_token_hash",
    "check_proof",
    "normalise_url",
    "request_origin",
    "request_url",
]
