"""What one introspection call costs the gateway's process: our client against httpx and aiohttp, same call.

    .venv/bin/python -m pip install aiohttp    # bench-only (httpx comes with the dev extra); not a dependency
    .venv/bin/python bench/introspection_client.py [--calls 20000] [--concurrency 50]

Starts a static nginx on 127.0.0.1 (one worker) that answers ``POST /oauth/introspect`` with a fixed body: the demo
AS's RFC 7662 JSON answer for an active token (``Cache-Control: max-age``), so the server side costs the same for
every client and nothing of it is counted. Then makes ``--calls`` introspection calls, sequentially and
``--concurrency`` at a time, through:

- ``HttpIntrospector``: the gateway's adapter (``introspection_response: json``): the request built, sent over the
  pooled keep-alive ``HttpClient``, the answer read strictly (RFC 7662, unique members) into an ``Active``;
- ``HttpClient``: the same POST through the bare client, the body read with ``json.loads``;
- ``httpx.AsyncClient`` and ``aiohttp.ClientSession`` (keep-alive pools, the same headers and body), the body read
  with their ``.json()``.

Each prints the CPU this process spent per call (``resource.getrusage``: user + system, so the syscalls count) and
calls per second. Everything runs on uvloop, as ``serve`` does. Wall-clock figures move with other load on the
machine; CPU per call moves much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from harness import Processes, free_port, wait_listening

from phantom_token.config.settings import PluginConfig
from phantom_token.http.client import HttpClient
from phantom_token.introspection.client import HttpIntrospector
from phantom_token.introspection.rfc7662 import basic_credentials

ANSWER = json.dumps({
    "active": True, "token_type": "bearer", "iss": "http://127.0.0.1:8443", "sub": "demo-client",
    "client_id": "demo-client", "scope": "read write", "iat": 1795000000, "exp": 1795007200,
    "jti": "k7bB1iBxPBdGdAqbbBzU4Q"}, separators=(", ", ": "))

NGINX_CONF = """worker_processes 1; pid {dir}/as.pid; error_log {dir}/as.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}/t1; proxy_temp_path {dir}/t2; fastcgi_temp_path {dir}/t3;
  uwsgi_temp_path {dir}/t4; scgi_temp_path {dir}/t5;
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000; keepalive_timeout 300s;
    location = /oauth/introspect {{ default_type application/json; add_header Cache-Control "max-age=7199";
      return 200 '{answer}'; }} }} }}
"""

TOKEN = "c2N8kV0r3dHk9eJ5xq1mX4yTQ7wZb2LpA6sUoRfEgIh"  # the demo AS's shape: 32 random bytes, base64url
CLIENT_ID, SECRET = "introspection-client", "demo-introspection-secret"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(name: str, call: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> None:
    for _ in range(min(200, calls)):  # warm: connections open, caches filled
        await call()
    for mode, width in (("sequential", 1), (f"{concurrency} concurrent", concurrency)):
        started, used = time.perf_counter(), cpu()

        async def worker(n: int) -> None:
            for _ in range(n):
                await call()

        share, extra = divmod(calls, width)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(width)))
        used, elapsed = cpu() - used, time.perf_counter() - started
        print(f"{name:<26} {mode:<14} {used / calls * 1e6:8.1f} us CPU/call {calls / elapsed:9.0f} calls/s",
              flush=True)


async def run(port: int, calls: int, concurrency: int, only: set[str]) -> None:
    url = f"http://127.0.0.1:{port}/oauth/introspect"
    body = f"token={TOKEN}".encode()
    headers = {"Authorization": basic_credentials(CLIENT_ID, SECRET),
               "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}

    if "ours" in only:
        client = HttpClient()
        plugin = PluginConfig(introspection_endpoint=url, client_id=CLIENT_ID, client_secret=SECRET,
                              introspection_response="json")
        introspector = HttpIntrospector(client)

        async def ours() -> None:
            result = await introspector.introspect(TOKEN, plugin)
            if not getattr(result, "claims", None):
                raise RuntimeError(f"unexpected answer {result!r}")

        await measure("HttpIntrospector (ours)", ours, calls, concurrency)
        listed = list(headers.items())

        async def bare() -> None:
            response = await client.request("POST", url, listed, body, timeout=5)
            json.loads(response.body)

        await measure("HttpClient (ours, bare)", bare, calls, concurrency)
        await client.aclose()

    if "httpx" in only:
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=5) as session:

            async def with_httpx() -> None:
                response = await session.post(url, content=body, headers=headers)
                response.json()

            await measure(f"httpx {httpx.__version__}", with_httpx, calls, concurrency)

    if "aiohttp" in only:
        try:
            import aiohttp
        except ImportError:
            print("aiohttp is not installed (pip install aiohttp): no aiohttp rows", flush=True)
            return
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as aio:

            async def with_aiohttp() -> None:
                async with aio.post(url, data=body, headers=headers) as answer:
                    await answer.json()

            await measure(f"aiohttp {aiohttp.__version__}", with_aiohttp, calls, concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per row (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=50, help="calls in flight in the concurrent rows")
    parser.add_argument("--only", action="append", choices=("ours", "httpx", "aiohttp"),
                        help="one client only (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="phantom-introspection-") as name, Processes(Path(name)) as procs:
        port = free_port()
        nginx = procs.nginx("as", NGINX_CONF.format(dir=name, port=port, answer=ANSWER))
        wait_listening(nginx, port)
        print(f"{args.calls} calls per row to a static nginx answering the demo AS's JSON ({len(ANSWER)} bytes); "
              f"Python {sys.version.split()[0]}, uvloop", flush=True)
        uvloop.run(run(port, args.calls, args.concurrency, set(args.only or ("ours", "httpx", "aiohttp"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
