"""``core.bearer``'s hand-written ``b64token`` check and token classes against the regex implementation they replaced:
the same accept/reject set, the same ``extract`` answers, over tricky inputs and many random ones (fixed seeds, so a
failure is reproducible)."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence

import pytest

from phantom_token.core.bearer import (
    BearerToken,
    DPoPToken,
    Problem,
    b64token_bytes,
    extract,
    fingerprint,
    is_b64token,
)

# The implementation before the hand-written check, verbatim (the oracle).
_HEADER = re.compile(r"[ \t]*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:[ \t]+(.*?))?[ \t]*", re.DOTALL)
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def reference_extract(values: Sequence[str] | None, max_length: int) -> tuple[str, str] | Problem:
    """The old ``extract``, answering ("bearer"|"dpop", token) instead of the token classes."""
    if not values:
        return Problem.MISSING
    if len(values) > 1:
        return Problem.DUPLICATE
    value = values[0]
    if value[:7] == "Bearer ":
        usual = value[7:]
        if len(usual) <= max_length and _B64TOKEN.fullmatch(usual):
            return ("bearer", usual)
    match = _HEADER.fullmatch(value)
    if match is None:
        return Problem.INVALID if values[0].lstrip(" \t")[:6].lower() == "bearer" else Problem.MISSING
    scheme: str = match.group(1).lower()
    credentials: str | None = match.group(2)
    if scheme != "bearer" and scheme != "dpop":
        return Problem.MISSING
    if not credentials or len(credentials) > max_length or not _B64TOKEN.fullmatch(credentials):
        return Problem.INVALID if scheme == "bearer" else Problem.INVALID_DPOP
    return (scheme, credentials)


def new_extract(values: Sequence[str] | None, max_length: int) -> tuple[str, str] | Problem:
    found = extract(values, max_length)
    if isinstance(found, BearerToken):
        return ("bearer", found.value)
    if isinstance(found, DPoPToken):
        return ("dpop", found.value)
    return found


# Every character class that matters: the b64token alphabet, the padding, the separators of the header grammar,
# characters the regex must refuse (ASCII punctuation, controls, DEL, Latin-1, beyond Latin-1, a lone surrogate).
TRICKY = ("a", "Z", "0", "9", "-", ".", "_", "~", "+", "/", "=", " ", "\t", "&", "%", "?", "#", ",", ";", ":", '"',
          "\\", "\x00", "\r", "\n", "\x0b", "\x7f", "\x80", "\xa0", "\xe9", "\xff", "\u0100", "\u2028", "\uff21",
          "\U0001f600", "\udcff", "B", "e", "r", "D", "P", "o", "p")
SCHEMES = ("Bearer", "bearer", "BEARER", "bEaReR", "Bearer", "DPoP", "dpop", "DPOP", "Basic", "Bearerx", "Bear",
           "Bearer=", "bearer\t", "", "Dpop")
SEPARATORS = ("", " ", "  ", "\t", " \t ", "\t\t", "\n", " \r")


def test_b64token_matches_the_regex_on_every_short_string_of_tricky_characters() -> None:
    for length in range(4):
        for chars in itertools.product(TRICKY, repeat=length):
            value = "".join(chars)
            assert is_b64token(value) == bool(_B64TOKEN.fullmatch(value)), repr(value)
            # the bytes the engine hashes: the whole value's (padding included), exactly when it is a b64token
            assert b64token_bytes(value) == (value.encode("ascii") if is_b64token(value) else None), repr(value)


@pytest.mark.parametrize("seed", range(4))
def test_b64token_matches_the_regex_on_random_strings(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "".join(TRICKY) + "ABCxyz123=="
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert is_b64token(value) == bool(_B64TOKEN.fullmatch(value)), repr(value)
        # mostly valid, with one character changed: the rejections that matter
        token = "".join(rng.choice("abcXYZ019-._~+/") for _ in range(rng.randrange(1, 60))) + "=" * rng.randrange(3)
        assert is_b64token(token)
        assert _B64TOKEN.fullmatch(token)
        at = rng.randrange(len(token))
        changed = token[:at] + rng.choice(TRICKY) + token[at + 1:]
        assert is_b64token(changed) == bool(_B64TOKEN.fullmatch(changed)), repr(changed)


@pytest.mark.parametrize(
    "value",
    ["", "=", "==", "a", "a=", "a==", "=a", "a=a", "a=a=", "abc def", "abc\tdef", "abc&def", "abc%20", "abc\u00e9",
     "abc\x00", "a" * 5000, "a" * 5000 + "=", "\u0100", "abc\n", "\nabc", "abc==\n", "abc==="],
)
def test_b64token_examples(value: str) -> None:
    assert is_b64token(value) == bool(_B64TOKEN.fullmatch(value))


def test_extract_matches_the_regex_implementation_on_built_headers() -> None:
    tokens = ("abc", "a-b.c_d~e+f/g==", "abc def", "a,b", "abc&x=1", "abc%3D", "t\u00e9st", "abc\t", "=abc", "",
              "a" * 40, "a" * 41, "abc==x", "\u0100")
    max_length = 40
    checked = 0
    for lead, scheme, sep, token, trail in itertools.product(("", " ", "\t", "  "), SCHEMES, SEPARATORS, tokens,
                                                             ("", " ", "\t", " \t", "\r")):
        value = lead + scheme + sep + token + trail
        assert _extract_checked([value], max_length) == reference_extract([value], max_length), repr(value)
        checked += 1
    assert checked > 10000


@pytest.mark.parametrize("seed", range(4))
def test_extract_matches_the_regex_implementation_on_random_headers(seed: int) -> None:
    rng = random.Random(1000 + seed)
    alphabet = "".join(TRICKY) + "abcXYZ019"
    for _ in range(5000):
        value = (rng.choice(("", " ", "\t")) + rng.choice(SCHEMES) + rng.choice(SEPARATORS)
                 + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30))))
        max_length = rng.choice((1, 5, 20, 4096))
        assert _extract_checked([value], max_length) == reference_extract([value], max_length), repr(value)


def _extract_checked(values: list[str], max_length: int) -> object:
    """``extract``, checking that a Bearer token carries its own ASCII bytes (which the engine hashes for the cache
    key: bytes of anything else, such as the token without its padding, would key another token's entry)."""
    result = new_extract(values, max_length)
    if isinstance(result, BearerToken):
        assert result.data == result.value.encode("ascii"), repr(values)
    return result


@pytest.mark.parametrize("header", ["Bearer abc", "Bearer abc==", "Bearer a-b.c_d~e+f/g==", "bearer  abc=", "Bearer ="])
def test_the_usual_and_the_general_path_give_the_token_its_own_bytes(header: str) -> None:
    result = extract([header], 100)
    if header == "Bearer =":
        assert result is Problem.INVALID
        return
    assert isinstance(result, BearerToken)
    assert result.data == result.value.encode("ascii")
    assert BearerToken(result.value).data == result.data  # made without them: encoded by the class


def test_extract_missing_and_duplicate_as_before() -> None:
    for values in (None, [], [""], ["Bearer abc", "Bearer abc"], ["x", "y", "z"]):
        assert new_extract(values, 100) == reference_extract(values, 100)


def test_token_classes_compare_by_value_and_never_show_the_token() -> None:
    assert BearerToken("abc") == BearerToken("abc")
    assert BearerToken("abc") != BearerToken("abd")
    assert BearerToken("abc") != DPoPToken("abc")
    assert DPoPToken("abc") == DPoPToken("abc")
    assert hash(BearerToken("abc")) == hash(BearerToken("abc"))
    assert len({BearerToken("abc"), BearerToken("abc"), DPoPToken("abc")}) == 2
    secret = "s3cr3t-token-value"
    for token in (BearerToken(secret), DPoPToken(secret)):
        assert secret not in repr(token)
        assert secret not in str(token)
        assert fingerprint(secret) in repr(token)
