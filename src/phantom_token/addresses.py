"""Listen addresses: ``HOST:PORT`` or ``[IPv6]:PORT`` in, ``(host, port)`` out, and back to a URL.

Shared by the command line (which checks ``--listen`` before anything starts), the runners, the demo servers
and ``phantom-token purge`` (which finds the admin listener from its address). Pure functions; no I/O.
"""

from __future__ import annotations


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"listen address {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def display(host: str, port: int, scheme: str = "http") -> str:
    """The ``http://`` (or ``scheme``) URL of a listener (an IPv6 host in brackets)."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


__all__ = ["display", "parse_listen"]
