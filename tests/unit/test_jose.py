"""Unit tests for phantom_token.jose: roundtrips, tampering, alg confusion, kid handling, strict parsing."""

from __future__ import annotations

import base64
import hashlib
import json
import warnings
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from phantom_token import jose
from phantom_token.jose import (
    AlgorithmNotAllowed,
    BadSignature,
    JoseError,
    MalformedToken,
    SigningKey,
    UnknownKey,
    b64url_decode,
    b64url_encode,
    check_b64url,
    decode_unverified,
    jwks,
    verify,
)

ALGS = ["ES256", "ES384", "ES512", "RS256", "PS256", "PS512", "EdDSA"]
CLAIMS = {"sub": "alice", "scope": "read write", "exp": 2_000_000_000, "name": "Zoë"}


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {alg: SigningKey.generate(alg) for alg in ALGS}


def _b64json(value: Any) -> str:
    return b64url_encode(json.dumps(value).encode())


@pytest.mark.parametrize("alg", ALGS)
def test_roundtrip_with_keys_and_with_jwks(keys: dict[str, SigningKey], alg: str) -> None:
    key = keys[alg]
    token = key.sign(CLAIMS, {"typ": "at+jwt"})
    header, claims = verify(token, [key], algorithms=[alg])
    assert claims == CLAIMS
    assert header == {"alg": alg, "typ": "at+jwt", "kid": key.kid}
    # the same through a JSON-serialised JWK Set, as a peer would fetch it
    published = json.loads(json.dumps(jwks(keys.values())))
    assert verify(token, published, algorithms=[alg]) == (header, claims)
    assert decode_unverified(token) == (header, claims)


@pytest.mark.parametrize("alg", ALGS)
def test_pem_roundtrip_keeps_kid(keys: dict[str, SigningKey], alg: str) -> None:
    key = keys[alg]
    loaded = SigningKey.from_pem(key.private_pem(), alg)
    assert loaded.kid == key.kid  # RFC 7638 thumbprint is a function of the public key
    assert verify(loaded.sign(CLAIMS), [key], algorithms=[alg])[1] == CLAIMS


def test_pem_file_and_default_algorithm(tmp_path: Any, keys: dict[str, SigningKey]) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(keys["EdDSA"].private_pem())
    assert SigningKey.from_pem_file(path).alg == "EdDSA"
    path.write_bytes(keys["RS256"].private_pem())
    assert SigningKey.from_pem_file(path, kid="k1").kid == "k1"
    assert SigningKey.from_pem_file(path).alg == "RS256"
    assert SigningKey.generate().alg == "ES256"


def test_es256_signature_is_raw_r_s(keys: dict[str, SigningKey]) -> None:
    key = keys["ES256"]
    token = key.sign(CLAIMS)
    signing_input, _, sig_part = token.rpartition(".")
    signature = b64url_decode(sig_part)
    assert len(signature) == 64
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public = serialization.load_pem_private_key(key.private_pem(), password=None).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(encode_dss_signature(r, s), signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    # and a DER signature in its place is refused
    der = ec.generate_private_key(ec.SECP256R1()).sign(b"x", ec.ECDSA(hashes.SHA256()))
    decode_dss_signature(der)
    with pytest.raises(BadSignature):
        verify(f"{signing_input}.{b64url_encode(der)}", [key], algorithms=["ES256"])


def test_public_jwk_members(keys: dict[str, SigningKey]) -> None:
    ec_jwk = keys["ES256"].public_jwk()
    assert (ec_jwk["kty"], ec_jwk["crv"], ec_jwk["use"], ec_jwk["alg"]) == ("EC", "P-256", "sig", "ES256")
    assert [len(b64url_decode(ec_jwk[m])) for m in ("x", "y")] == [32, 32]
    assert "d" not in ec_jwk
    rsa_jwk = keys["RS256"].public_jwk()
    assert rsa_jwk["e"] == "AQAB"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(rsa_jwk)
    assert keys["EdDSA"].public_jwk()["crv"] == "Ed25519"


@pytest.mark.parametrize("alg", ["ES256", "ES512", "RS256", "EdDSA"])
def test_default_kid_is_the_rfc7638_thumbprint(keys: dict[str, SigningKey], alg: str) -> None:
    # RFC 7638 section 3: SHA-256 of the required public members, sorted, no whitespace; computed here by hand
    jwk = keys[alg].public_jwk()
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    assert keys[alg].kid == b64url_encode(hashlib.sha256(canonical.encode()).digest())


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 section 3.1: the example key, as a JWK Set member with no kid of its own
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQM"
        "icAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3"
        "XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
    }
    key = jose.VerificationKey.from_jwk(jwk)
    assert key.kid is None  # a kid-less JWK stays kid-less (a candidate for tokens without kid only)
    assert key.key.thumbprint() == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_tampering_is_detected(keys: dict[str, SigningKey], alg: str) -> None:
    key = keys[alg]
    header, payload, signature = key.sign(CLAIMS).split(".")
    forged_payload = _b64json({**CLAIMS, "scope": "admin"})
    with pytest.raises(BadSignature):
        verify(f"{header}.{forged_payload}.{signature}", [key], algorithms=[alg])
    flipped = bytearray(b64url_decode(signature))
    flipped[0] ^= 1
    with pytest.raises(BadSignature):
        verify(f"{header}.{payload}.{b64url_encode(bytes(flipped))}", [key], algorithms=[alg])
    with pytest.raises(BadSignature):
        verify(f"{header}.{payload}.", [key], algorithms=[alg])


def test_signature_from_another_key_with_same_kid(keys: dict[str, SigningKey]) -> None:
    impostor = SigningKey.generate("ES256", kid=keys["ES256"].kid)
    with pytest.raises(BadSignature):
        verify(impostor.sign(CLAIMS), [keys["ES256"]], algorithms=["ES256"])


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_refused_even_if_allowed(keys: dict[str, SigningKey], alg: str) -> None:
    token = f"{_b64json({'alg': alg})}.{_b64json(CLAIMS)}."
    with pytest.raises(AlgorithmNotAllowed):
        verify(token, [keys["ES256"]], algorithms=["ES256", alg])


def test_wrong_algorithm_refused(keys: dict[str, SigningKey]) -> None:
    with pytest.raises(AlgorithmNotAllowed):
        verify(keys["RS256"].sign(CLAIMS), [keys["RS256"]], algorithms=["ES256"])
    with pytest.raises(AlgorithmNotAllowed):
        verify(f"{_b64json({'alg': 'HS256'})}.{_b64json(CLAIMS)}.AAAA", [keys["RS256"]], algorithms=["HS256"])


def test_algorithm_confusion_between_key_types(keys: dict[str, SigningKey]) -> None:
    # an RS256 header with the EC key's kid: the key does not fit the algorithm -> no candidate
    header = _b64json({"alg": "RS256", "kid": keys["ES256"].kid})
    with pytest.raises(UnknownKey):
        verify(f"{header}.{_b64json(CLAIMS)}.AAAA", [keys["ES256"]], algorithms=["RS256", "ES256"])
    # PS256 with a key whose JWK says RS256 -> not a candidate either
    rs = keys["RS256"]
    header = _b64json({"alg": "PS256", "kid": rs.kid})
    with pytest.raises(UnknownKey):
        verify(f"{header}.{_b64json(CLAIMS)}.AAAA", jwks([rs]), algorithms=["PS256"])


def test_unknown_kid(keys: dict[str, SigningKey]) -> None:
    token = SigningKey.generate("ES256", kid="other").sign(CLAIMS)
    with pytest.raises(UnknownKey):
        verify(token, jwks([keys["ES256"]]), algorithms=["ES256"])
    header = _b64json({"alg": "ES256", "kid": 7})
    with pytest.raises(MalformedToken):
        verify(f"{header}.{_b64json(CLAIMS)}.AAAA", [keys["ES256"]], algorithms=["ES256"])


def test_no_kid_tries_every_fitting_key() -> None:
    private = Ed25519PrivateKey.generate()
    key = SigningKey(private, kid="k")
    signing_input = f"{_b64json({'alg': 'EdDSA'})}.{PAYLOAD}"
    token = f"{signing_input}.{b64url_encode(private.sign(signing_input.encode()))}"
    others = [SigningKey.generate("EdDSA"), SigningKey.generate("ES256")]
    assert verify(token, [*others, key], algorithms=["EdDSA"])[1] == CLAIMS
    with pytest.raises(BadSignature):
        verify(token, others, algorithms=["EdDSA"])


def test_crit_header_refused(keys: dict[str, SigningKey]) -> None:
    token = keys["ES256"].sign(CLAIMS, {"crit": ["exp"]})
    with pytest.raises(MalformedToken):
        verify(token, [keys["ES256"]], algorithms=["ES256"])


def test_jwks_ignores_unsupported_members(keys: dict[str, SigningKey]) -> None:
    published = jwks([keys["ES256"]])
    published["keys"].insert(0, {"kty": "oct", "k": "c2VjcmV0"})
    assert verify(keys["ES256"].sign(CLAIMS), published, algorithms=["ES256"])[1] == CLAIMS
    with pytest.raises(JoseError):
        verify(keys["ES256"].sign(CLAIMS), {"nokeys": []}, algorithms=["ES256"])


HEADER = _b64json({"alg": "ES256"})
PAYLOAD = _b64json(CLAIMS)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        f"{HEADER}.{PAYLOAD}",
        f"{HEADER}.{PAYLOAD}.sig.extra",
        f"{HEADER}=.{PAYLOAD}.AAAA",  # padding
        f"{HEADER}.{PAYLOAD}=.AAAA",
        f"{HEADER}.{PAYLOAD}.AA+/",  # standard alphabet
        f" {HEADER}.{PAYLOAD}.AAAA",
        f"{HEADER}.{PAYLOAD}.A",  # impossible length
        f"{_b64json(['alg', 'ES256'])}.{PAYLOAD}.AAAA",  # header not an object
        f"{_b64json({'alg': 1})}.{PAYLOAD}.AAAA",  # alg not a string
        f"{_b64json({'typ': 'JWT'})}.{PAYLOAD}.AAAA",  # no alg
        f"{HEADER}.{_b64json([1, 2])}.AAAA",  # payload not an object
        f"{HEADER}.{_b64json('claims')}.AAAA",
        f"{HEADER}.{b64url_encode(b'not json')}.AAAA",
        f"{HEADER}.{b64url_encode(bytes([0xFF, 0xFE]))}.AAAA",  # not UTF-8
        HEADER + "." + b64url_encode(b'{"a":1,"a":2}') + ".AAAA",  # duplicate member
        HEADER + "." + b64url_encode(b'{"a":NaN}') + ".AAAA",
        b64url_encode(b'{"alg":"ES256","alg":"none"}') + "." + PAYLOAD + ".AAAA",
    ],
)
def test_decode_unverified_is_strict(token: str) -> None:
    with pytest.raises(MalformedToken):
        decode_unverified(token)


def test_decode_unverified_accepts_empty_signature() -> None:
    header, claims = decode_unverified(f"{HEADER}.{PAYLOAD}.")
    assert (header, claims) == ({"alg": "ES256"}, CLAIMS)


def test_b64url_helpers() -> None:
    for data in [b"", b"f", b"fo", b"foo", bytes(range(256))]:
        encoded = b64url_encode(data)
        assert not set("=+/") & set(encoded)
        assert b64url_decode(encoded) == data
        assert encoded == base64.urlsafe_b64encode(data).decode().rstrip("=")
    with pytest.raises(MalformedToken):
        b64url_decode("AB")  # non-canonical: trailing bits set ("AA" is canonical for b"\0")
    with pytest.raises(MalformedToken):
        b64url_decode("Zg==")


def test_signing_key_refuses_mismatched_algorithm(keys: dict[str, SigningKey]) -> None:
    with pytest.raises(JoseError):
        SigningKey.from_pem(keys["ES256"].private_pem(), "RS256")
    with pytest.raises(JoseError):
        SigningKey.from_pem(keys["ES256"].private_pem(), "ES384")
    with pytest.raises(AlgorithmNotAllowed):
        SigningKey.generate("HS256")
    with pytest.raises(JoseError):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def test_sign_cannot_override_alg_or_kid(keys: dict[str, SigningKey]) -> None:
    key = keys["ES256"]
    header, _ = decode_unverified(key.sign(CLAIMS, {"alg": "none", "kid": "evil"}))
    assert (header["alg"], header["kid"]) == ("ES256", key.kid)


def _jwk_of(public: Any) -> dict[str, Any]:
    """A public JWK built by hand from a ``cryptography`` key (for key types this module refuses)."""
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                "e": b64url_encode(numbers.e.to_bytes(3, "big"))}
    if isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_numbers()
        return {"kty": "EC", "crv": "secp256k1", "x": b64url_encode(point.x.to_bytes(32, "big")),
                "y": b64url_encode(point.y.to_bytes(32, "big"))}
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed448", "x": b64url_encode(raw)}


def test_jwks_leaves_out_keys_this_module_does_not_verify_with(keys: dict[str, SigningKey]) -> None:
    unsupported = [
        _jwk_of(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()),  # noqa: S505 (too short)
        _jwk_of(ec.generate_private_key(ec.SECP256K1()).public_key()),  # ES256K: not in the allowlist
        _jwk_of(Ed448PrivateKey.generate().public_key()),  # EdDSA here is Ed25519 only
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},  # not a point
    ]
    assert jose.verification_keys({"keys": unsupported}) == []
    published = {"keys": [*unsupported, keys["ES256"].public_jwk()]}
    assert verify(keys["ES256"].sign(CLAIMS), published, algorithms=["ES256"])[1] == CLAIMS
    assert [k.kid for k in jose.verification_keys(published)] == [keys["ES256"].kid]


@pytest.mark.parametrize("member", [{"use": "enc"}, {"key_ops": ["sign"]}, {"use": None, "key_ops": ["encrypt"]}])
def test_a_key_not_for_verifying_is_never_a_candidate(keys: dict[str, SigningKey], member: dict[str, Any]) -> None:
    published = jwks([keys["ES256"]])
    published["keys"][0].update(member)
    published["keys"][0] = {k: v for k, v in published["keys"][0].items() if v is not None}
    with pytest.raises(UnknownKey):
        verify(keys["ES256"].sign(CLAIMS), published, algorithms=["ES256"])
    published["keys"][0].update(use="sig", key_ops=["verify"])
    assert verify(keys["ES256"].sign(CLAIMS), published, algorithms=["ES256"])[1] == CLAIMS


def test_crit_b64_refused_too(keys: dict[str, SigningKey]) -> None:
    # joserfc understands RFC 7797's b64; this module understands no extension at all
    token = keys["ES256"].sign(CLAIMS, {"crit": ["b64"], "b64": True})
    with pytest.raises(MalformedToken):
        verify(token, [keys["ES256"]], algorithms=["ES256"])


def test_duplicate_alg_refused_even_when_the_signature_verifies() -> None:
    # the verifier must never see a different header from the reader's: duplicates are refused before verifying
    private = ec.generate_private_key(ec.SECP256R1())
    key = SigningKey(private, kid="k")
    header = b64url_encode(b'{"alg":"ES512","alg":"ES256","kid":"k"}')
    signing_input = f"{header}.{PAYLOAD}"
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    token = f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    with pytest.raises(MalformedToken, match="duplicate"):
        verify(token, [key], algorithms=["ES256", "ES512"])
    clean = b64url_encode(b'{"alg":"ES256","kid":"k"}')
    signing_input = f"{clean}.{PAYLOAD}"
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    token = f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    assert verify(token, [key], algorithms=["ES256"])[1] == CLAIMS  # the same signing done right verifies


def test_eddsa_warns_nothing(keys: dict[str, SigningKey]) -> None:
    # joserfc's registry warns on every EdDSA use (RFC 9864 deprecates the name); the gateway's logs stay quiet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verify(keys["EdDSA"].sign(CLAIMS), jwks([keys["EdDSA"]]), algorithms=["EdDSA"])
    assert caught == []


def test_b64url_decode_accepts_and_refuses_what_joserfcs_strict_decoder_does() -> None:
    """``b64url_decode`` does joserfc's ``urlsafe_b64decode`` rules its own (cheaper) way: same bytes for what both
    accept, ``MalformedToken`` for everything joserfc refuses (padding, the standard alphabet, whitespace, stray bits
    in the last character, a length of 1 mod 4, non-ASCII)."""
    import binascii
    import random

    from joserfc.util import urlsafe_b64decode

    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    every_ascii = "".join(map(chr, range(128)))
    samples = ["", "A", "AA", "AB", "AAA", "AAB", "AAAA", "QQ", "QR", "QUI", "QUJ", "Zm9v", "Zm9vYg", "Zm9vYmE",
               "Zm9v\n", " Zm9v", "Zm9v ", "Zm9v=", "Zm9vYg==", "ab+c", "ab/c", "Zm9vYmE=", "Zé9v", "-_-_", "____",
               "Zm9\x00v", "Zm9v!", "Zm9v.", "Zm9v\x7f", "Zm9v\x80", "AA==", "QR==", "Zm9vY", "ab*c", "ab~c"]
    for _ in range(3000):
        size = rng.randrange(0, 12)
        chars = alphabet + ("+/= \t.é" if rng.random() < 0.3 else "") + (every_ascii if rng.random() < 0.1 else "")
        samples.append("".join(rng.choice(chars) for _ in range(size)))
    samples += [b64url_encode(bytes(rng.randrange(256) for _ in range(n))) for n in range(40)]
    for text in samples:
        try:
            expected: bytes | None = urlsafe_b64decode(text.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            expected = None
        if expected is None:
            with pytest.raises(MalformedToken):
                b64url_decode(text)
            with pytest.raises(MalformedToken):  # the check without decoding refuses the same
                check_b64url(text)
            with pytest.raises(MalformedToken):  # and so does the reader, in the signature part it only checks
                decode_unverified(f"{HEADER}.{PAYLOAD}.{text}")
        else:
            assert b64url_decode(text) == expected, text
            check_b64url(text)
            assert decode_unverified(f"{HEADER}.{PAYLOAD}.{text}") == ({"alg": "ES256"}, CLAIMS), text


def test_scan_json_accepts_and_refuses_what_json_decode_does() -> None:
    """``scan_json`` (the JWT parts' and the JSON answers' reader) is ``JSONDecoder.decode`` without its Python frames:
    the same value for every document decode accepts, a ``JSONDecodeError`` for every one it refuses (leading and
    trailing whitespace of json's four kinds only, extra data, nothing at all, a document cut short), and the
    decoder's hooks still run (duplicate members, NaN)."""
    import json
    import random

    from phantom_token.jose import _STRICT_JSON, scan_json, scanner_of

    plain = json.JSONDecoder()
    rng = random.Random(11)
    samples = ["", " ", "{}", " {} ", "\t\n\r{}\r\n\t", "\x0c{}", "{}\x0c", "{}\u00a0", "\u00a0{}", "{} {}", "{}x",
               '{"a": 1}', '{"a": 1} ', '{"a": 1', '"s"', "1", "1 2", "[1, 2]", "[1, 2] ]", "null", "nul", "truex",
               '{"a": NaN}', '{"a": 1, "a": 2}', "-", "1.", "[", "]", '{"a": [1, {"b": null}]}\n']
    pieces = ["{", "}", "[", "]", '"a"', ":", ",", "1", " ", "\n", "\t", "null", "true", "x", '"\\u00e9"', "2.5e3",
              "\x0b", "NaN"]
    for _ in range(3000):
        samples.append("".join(rng.choice(pieces) for _ in range(rng.randrange(0, 9))))
    for decoder in (plain, _STRICT_JSON):
        for text in samples:
            try:
                expected: Any = ("ok", decoder.decode(text))
            except json.JSONDecodeError:
                expected = ("JSONDecodeError",)
            except ValueError as exc:  # the strict decoder's hooks: MalformedToken
                expected = (type(exc).__name__,)
            try:
                got: Any = ("ok", scan_json(scanner_of(decoder), text))
            except json.JSONDecodeError:
                got = ("JSONDecodeError",)
            except ValueError as exc:
                got = (type(exc).__name__,)
            assert got == expected, text


def test_a_header_read_before_is_handed_out_as_a_copy_and_only_when_all_strings() -> None:
    """``_split``'s memo of headers (the tokens of one issuer share theirs): a reader changing what it got changes
    nothing for the next; a header with a non-string member (a DPoP proof's ``jwk``) is read anew each time."""
    from phantom_token import jose

    flat = b64url_encode(json.dumps({"alg": "ES256", "kid": "k1", "typ": "JWT"}).encode())
    nested = b64url_encode(json.dumps({"alg": "ES256", "jwk": {"kty": "EC"}}).encode())
    payload = b64url_encode(b'{"sub": "a"}')
    first, _ = decode_unverified(f"{flat}.{payload}.")
    first["alg"] = "none"
    first["x"] = "y"
    again, _ = decode_unverified(f"{flat}.{payload}.")
    assert again == {"alg": "ES256", "kid": "k1", "typ": "JWT"}
    assert flat in jose._headers
    header, _ = decode_unverified(f"{nested}.{payload}.")
    header["jwk"]["kty"] = "RSA"
    assert decode_unverified(f"{nested}.{payload}.")[0] == {"alg": "ES256", "jwk": {"kty": "EC"}}
    assert nested not in jose._headers
    bad = b64url_encode(b'{"alg": 1}')
    for _ in range(2):  # refused every time: only good headers are remembered
        with pytest.raises(MalformedToken):
            decode_unverified(f"{bad}.{payload}.")
