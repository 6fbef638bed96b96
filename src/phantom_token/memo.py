"""The one rule of the process-wide memos on the hot path (header names, hosts, upstream paths, rewritten heads,
rendered decisions, trusted peers, shared scope sets): bounded, and a full memo starts over instead of evicting.
They hold a few distinct values in practice; starting over keeps a client that invents new ones from growing them.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, bound: int) -> V:
    """Store ``value`` under ``key`` and return it; first empty ``memo`` when it already holds ``bound`` entries."""
    if len(memo) >= bound:
        memo.clear()
    memo[key] = value
    return value
