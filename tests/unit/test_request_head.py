"""``index_headers`` with a connection's ``HeaderMemo`` gives exactly what it gives without one, for any sequence of
heads on a connection: the memo only skips hashing bytes it has seen at the same place in the previous head."""

from __future__ import annotations

import itertools

import pytest

from phantom_token.http.messages import RawHeaders
from phantom_token.http.request_head import METHODS, HeaderMemo, Reject, RequestHead, index_headers, method_name

H = b"Host"
A = (b"Authorization", b"Bearer tok")
HEADS: list[tuple[RawHeaders, bool]] = [  # (raw headers, HTTP/1.0)
    ([(H, b"api.test"), A], False),
    ([(H, b"api.test"), A], False),  # the same again
    ([(b"HOST", b"API.test."), A], False),  # another spelling of the same name and host
    ([A, (H, b"api.test")], False),  # the same names in another order
    ([(H, b"api.test:8080"), (b"X_Forwarded_Host", b"evil"), A], False),  # an underscore name: ignored
    ([(H, b"api.test:8080"), (b"X-Forwarded-Host", b"evil"), A], False),  # the dash name at the same index
    ([(H, b"bad host")], False),  # an invalid Host after valid ones
    ([(H, b"")], False),  # an empty Host (what no valid value memo may stand for)
    ([(H, b"api.test"), (H, b"api.test")], False),  # two Host headers
    ([A], False),  # no Host: 400 in HTTP/1.1
    ([A], True),  # no Host in HTTP/1.0: accepted
    ([(b"Content-Length", b"5"), (H, b"api.test"), (b"Expect", b"100-continue")], False),
    ([(b"Transfer-Encoding", b"chunked"), (H, b"api.test"), (b"Connection", b"keep-alive, Upgrade"),
      (b"Upgrade", b"websocket")], False),  # an upgrade with a body: 400
    ([(H, b"api.test"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], False),
    ([(H, b"[::1]:8080"), (b"connection", b"close"), (b"X-Forwarded-For", b"1.2.3.4")], False),
    ([], True),
    ([(H, b"api.test\xff")], False),  # a byte outside ASCII
    ([(H, b"api.test"), (b"Authorization", b"Bearer tok2")], False),  # same names, another value
    ([(H, b"api.test"), (b"Authorization", b"Bearer tok\xe9")], False),
]


def indexed(raw: RawHeaders, http10: bool, memo: HeaderMemo | None) -> tuple[object, ...]:
    head = RequestHead("GET", b"/", list(raw), True, http10)
    try:
        index_headers(head, memo)
    except Reject as exc:
        return ("reject", exc.status, exc.reason)
    return (head.lnames, head.headers, head.host, head.raw_host, head.content_length, head.chunked,
            head.expect_continue, head.connection_tokens, head.upgrade)


@pytest.mark.parametrize("order", [HEADS, HEADS[::-1], [HEADS[i] for i in (0, 6, 0, 7, 2, 7, 9, 0, 4, 5, 4, 16, 0)]])
def test_a_memo_never_changes_what_a_head_indexes_to(order: list[tuple[RawHeaders, bool]]) -> None:
    memo = HeaderMemo()
    for raw, http10 in order:
        assert indexed(raw, http10, memo) == indexed(raw, http10, None), raw


def test_every_pair_of_heads_in_sequence_indexes_as_without_a_memo() -> None:
    for (first, first10), (second, second10) in itertools.product(HEADS, repeat=2):
        memo = HeaderMemo()
        indexed(first, first10, memo)
        assert indexed(second, second10, memo) == indexed(second, second10, None), (first, second)


def test_method_names_through_the_memo_are_the_ones_without_it() -> None:
    """Every ordered pair of methods (the shared names of METHODS and others llhttp accepts) over one connection's
    memo: the same name as without a memo, the very METHODS string for those, and never the previous method's."""
    methods = [*METHODS, b"PROPFIND", b"MKCOL", b"PURGE", b"SEARCH", b"GET"]
    for first in methods:
        for second in methods:
            memo = HeaderMemo()
            for method in (first, second, second, first):
                name = method_name(method, memo)
                assert name == method_name(method) == method.decode("ascii"), (first, second)
                if method in METHODS:
                    assert name is METHODS[method]


@pytest.mark.parametrize("spelling", [bytes.title, bytes.lower, bytes.upper])
def test_each_framing_header_alone_is_read(spelling: object) -> None:
    """Content-Length, Transfer-Encoding, Expect and Connection are each read when they are the only one of the four
    (``index_headers`` skips their look-ups when no name has one of their lengths), among names of other lengths and
    after a name of the same length that is none of them."""
    def spelt(name: bytes) -> bytes:
        assert callable(spelling)
        return bytes(spelling(name))

    def head_of(*raw: tuple[bytes, bytes]) -> RequestHead:
        head = RequestHead("POST", b"/", [(H, b"api.test"), A, *raw], True, False)
        index_headers(head, HeaderMemo())
        return head

    assert head_of((spelt(b"content-length"), b"5")).content_length == 5
    assert head_of((b"X-Content-Lengt", b"1"), (spelt(b"content-length"), b"7")).content_length == 7
    assert head_of((spelt(b"transfer-encoding"), b"chunked")).chunked
    assert head_of((spelt(b"expect"), b"100-continue")).expect_continue
    assert head_of((spelt(b"connection"), b"close")).connection_tokens == frozenset({"close"})
    upgrade = head_of((spelt(b"connection"), b"Upgrade"), (b"Upgrade", b"websocket"))
    assert upgrade.upgrade
    plain = head_of((b"X-Abcdefghijklm", b"1"), (b"Accept", b"*/*"), (b"X-Abcdefgh", b"2"))  # the lengths, no name
    assert (plain.content_length, plain.chunked, plain.expect_continue, plain.connection_tokens, plain.upgrade) == \
        (None, False, False, frozenset(), False)
    with pytest.raises(Reject):  # an upgrade with a body is still refused
        head_of((spelt(b"content-length"), b"3"), (spelt(b"connection"), b"upgrade"), (b"Upgrade", b"websocket"))


def _in_turn(memo: HeaderMemo, previous: RawHeaders, raw: RawHeaders
             ) -> tuple[RequestHead, RequestHead, tuple[dict[str, list[str]], list[str]]]:
    """``previous`` and then ``raw`` indexed through ``memo``: both heads, and the first's mapping and names as they
    were before the second was indexed (copies)."""
    last = RequestHead("GET", b"/", list(previous), True, False)
    index_headers(last, memo)
    before = (dict(last.headers), list(last.lnames))
    head = RequestHead("GET", b"/other", list(raw), True, False)
    index_headers(head, memo)
    return last, head, before


def test_a_head_repeating_the_last_ones_bytes_shares_its_mapping_and_no_other_does() -> None:
    """Raw headers that are the previous head's bytes, field by field, get the previous head's ``headers`` and
    ``lnames`` (the very objects) and ``previous_raw``/``raw_repeated``; a head differing in one name's spelling,
    one value or the number of fields gets mappings of its own, equal to what it indexes to without a memo, and
    the previous head's are left as they were."""
    memo = HeaderMemo()
    base = [(H, b"api.test"), A, (b"Accept", b"*/*")]
    first, second, before = _in_turn(memo, base, base)
    assert second.headers is first.headers
    assert second.lnames is first.lnames
    assert second.previous_raw is first.raw_headers
    assert second.raw_repeated
    for variant in ([(b"host", b"api.test"), A, (b"Accept", b"*/*")], [(H, b"api.test"), A, (b"Accept", b"*/+")],
                    [(H, b"api.test"), (b"authorization", b"Bearer tok2"), (b"Accept", b"*/*")], base[:2],
                    [(H, b"api.test"), (b"Authorization", b"Bearer tok2"), (b"Accept", b"*/+")],
                    [*base, (b"X-A", b"1")]):
        last, head, _ = _in_turn(memo, base, variant)  # the base again: then the variant
        assert head.headers is not last.headers, variant
        assert head.lnames is not last.lnames, variant
        assert not head.raw_repeated, variant
        assert indexed(variant, False, memo) == indexed(variant, False, None), variant
        assert (dict(last.headers), list(last.lnames)) == before, variant
    # only Authorization values differ (one of two, both, the first field or a later one): the same names, a copy of
    # the mapping with an authorization list of its own, the previous head's raw headers named for the proxy's memo
    two = [(H, b"api.test"), A, (b"Accept", b"*/*"), (b"Authorization", b"Bearer second")]
    for previous, raw in ((base, [(H, b"api.test"), (b"Authorization", b"Bearer tok2"), base[2]]),
                          (two, [(H, b"api.test"), A, base[2], (b"Authorization", b"Bearer other")]),
                          (two, [(H, b"api.test"), (b"Authorization", b"Bearer x"), base[2], (b"Authorization", b"y")]),
                          ([A, (H, b"api.test")], [(b"Authorization", b"Bearer \xe9"), (H, b"api.test")])):
        last, other_token, before = _in_turn(memo, previous, raw)
        assert other_token.previous_raw is last.raw_headers
        assert not other_token.raw_repeated
        assert other_token.lnames is last.lnames
        assert other_token.headers is not last.headers
        assert other_token.headers["host"] is last.headers["host"]
        assert (dict(last.headers), list(last.lnames)) == before
        assert indexed(raw, False, memo) == indexed(raw, False, None), raw
        again = RequestHead("GET", b"/", list(raw), True, False)  # and the same bytes once more: shared
        index_headers(again, memo)
        assert again.headers is memo.headers
        assert again.raw_repeated
