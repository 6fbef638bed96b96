"""Run a demo ``Handler`` as a process: bind, announce, serve until SIGTERM/SIGINT, exit 0.

Invariant: exactly one line ``listening on http://HOST:PORT`` goes to stdout (flushed) once the socket is bound,
and nothing else is printed there, so a parent process can wait for that line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from phantom_token.http.messages import Handler
from phantom_token.http.server import serve_app


def parse_listen(parser: argparse.ArgumentParser, value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; a usage error (exit 2) otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        parser.error(f"--listen {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def _serve(handler: Handler, host: str, port: int) -> None:
    server = await serve_app(handler, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def run_handler(handler: Handler, host: str, port: int) -> int:
    """Serve ``handler`` on ``host:port`` until SIGTERM or SIGINT; returns the exit status (0).

    Logs go to stderr at INFO level (they never contain a token: the handlers log fingerprints).
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(_serve(handler, host, port))  # asyncio's own loop: the demo servers are not the bottleneck
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
