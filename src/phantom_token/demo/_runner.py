"""Run a demo ``Handler`` as a process: bind, announce, serve until SIGTERM/SIGINT, exit 0.

Invariant: exactly one line ``listening on http://HOST:PORT`` goes to stdout (flushed) once the socket is bound,
and nothing else is printed there, so a parent process can wait for that line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from phantom_token.addresses import display
from phantom_token.addresses import parse_listen as parse_address
from phantom_token.http.messages import Handler
from phantom_token.http.server import HttpServer, serve_app
from phantom_token.process import run_until_signalled


def parse_listen(parser: argparse.ArgumentParser, value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; a usage error (exit 2) otherwise."""
    try:
        return parse_address(value)
    except ValueError as exc:
        parser.error(f"--listen: {exc}")


async def _serve(handler: Handler, host: str, port: int) -> None:
    servers: list[HttpServer] = []

    async def start() -> list[str]:
        servers.append(await serve_app(handler, host, port))
        return [display(host, servers[0].port)]

    async def stop() -> None:
        for server in servers:
            server.close()
            await server.wait_closed()

    await run_until_signalled(start, stop, lambda urls: print(f"listening on {urls[0]}", flush=True))


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
    return 0
