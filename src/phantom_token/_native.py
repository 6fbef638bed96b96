"""mypyc's native helpers for the compiled modules, with pure-Python stand-ins.

``read_i64_le(data, index)``: the 8 bytes of ``data`` at ``index`` as a signed little-endian 64-bit integer. Compiled
(mypyc resolves the name to ``librt.strings.read_i64_le``, mypyc's runtime library, which comes with mypy) it is an
inline 8-byte load with a bounds check, about ten instructions; the memory cache reads a key's first 128 bits with it
(cache/memory.py). Without librt ``int_from_bytes_i64_le`` does the same (a compiled build needs librt at run time:
``compiled.py`` runs the hot path from source when it is missing). This module itself is never
compiled.
"""

from __future__ import annotations


def int_from_bytes_i64_le(data: bytes, index: int, /) -> int:
    """``read_i64_le`` in plain Python (what runs without librt)."""
    if index < 0 or index + 8 > len(data):
        raise ValueError(f"cannot read 8 bytes at {index} of {len(data)}")
    return int.from_bytes(data[index:index + 8], "little", signed=True)


try:
    from librt.strings import read_i64_le as read_i64_le
except ImportError:  # an install without librt: the modules run as plain Python
    read_i64_le = int_from_bytes_i64_le


__all__ = ["int_from_bytes_i64_le", "read_i64_le"]
