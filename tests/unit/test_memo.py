"""The bounded memos of the hot path (phantom_token/memo.py): a full memo starts over, it never grows past its bound."""

from __future__ import annotations

from phantom_token.memo import remember


def test_a_memo_below_its_bound_keeps_everything() -> None:
    memo: dict[str, int] = {}
    assert [remember(memo, f"k{i}", i, 3) for i in range(3)] == [0, 1, 2]
    assert memo == {"k0": 0, "k1": 1, "k2": 2}


def test_a_full_memo_starts_over_with_the_new_entry() -> None:
    memo = {"a": 1, "b": 2, "c": 3}
    assert remember(memo, "d", 4, 3) == 4
    assert memo == {"d": 4}


def test_many_distinct_keys_never_exceed_the_bound() -> None:
    memo: dict[int, int] = {}
    sizes = set()
    for i in range(10_000):
        remember(memo, i, i, 64)
        sizes.add(len(memo))
    assert max(sizes) == 64
