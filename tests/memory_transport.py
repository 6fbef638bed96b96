"""An in-memory ``asyncio.Transport`` for driving the real protocols without sockets.

Shared by the unit tests that feed bytes to the server and client protocols and read what they write
(tests/unit/test_proxy_request_memo.py, tests/unit/test_http_client_connection.py) and by ``bench/hotpath.py``,
which times and counts the hot path through the same transports.
"""

from __future__ import annotations

import asyncio
from typing import Any


class MemoryTransport(asyncio.Transport):
    """Keeps every write in ``out``; ``close`` and ``abort`` only mark it closing; reading is never really paused;
    ``peer`` is what ``get_extra_info("peername")`` answers."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 50000), *, can_write_eof: bool = True) -> None:
        super().__init__()
        self.peer = peer
        self.out: list[bytes] = []
        self.closing = False
        self._can_write_eof = can_write_eof

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.append(bytes(data))

    def writelines(self, data: Any) -> None:
        self.out.append(b"".join(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return self._can_write_eof

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default
