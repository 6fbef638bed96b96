"""Quick throughput ratio: phantom-token's proxy vs plain nginx ``proxy_pass``, both in front of one nginx upstream.

The proxy runs with a fake authorizer whose ``try_authorize`` allows at once (the cache-hit path), so what is
measured is the HTTP layer. Both proxies get one worker process and keep-alive upstream connections; each is
measured with ``wrk -t1 -c50`` in the same run, so the ratio is comparable across machines.

    python bench/quick_proxy_ratio.py [--duration 10] [--connections 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

UPSTREAM_CONF = """daemon off; worker_processes 1; pid {dir}/up.pid; error_log {dir}/up.err;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}/t1; proxy_temp_path {dir}/t2; fastcgi_temp_path {dir}/t3;
  uwsgi_temp_path {dir}/t4; scgi_temp_path {dir}/t5;
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000; location / {{ return 200 "ok"; }} }} }}
"""

PROXY_CONF = """daemon off; worker_processes 1; pid {dir}/px.pid; error_log {dir}/px.err;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}/p1; proxy_temp_path {dir}/p2; fastcgi_temp_path {dir}/p3;
  uwsgi_temp_path {dir}/p4; scgi_temp_path {dir}/p5;
  upstream api {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    location / {{ proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def nginx(conf: str, directory: Path, name: str) -> subprocess.Popen[bytes]:
    path = directory / f"{name}.conf"
    path.write_text(conf)
    return subprocess.Popen([NGINX, "-p", str(directory), "-c", str(path)])


def wrk(port: int, duration: int, connections: int) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-H", "Authorization: Bearer abc",
                          f"http://127.0.0.1:{port}/api/x"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"  wrk on :{port}: {errors.group(0)}")
    if found is None:
        raise RuntimeError(out)
    return float(found.group(1))


def serve_proxy(port: int, upstream: int) -> None:
    """Child process: the phantom-token proxy with an authorizer that always allows (the cache-hit path)."""
    import uvloop

    from phantom_token.config.settings import Route, Settings, Upstream
    from phantom_token.core.request import RequestInfo
    from phantom_token.core.verdict import Allow, Verdict
    from phantom_token.frontends.proxy import start_proxy

    route = Route("bench", "bench", Upstream("http", "127.0.0.1", upstream, "/"), paths=("/api",))
    allow = Allow(route, "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2ln", 300.0)

    class AlwaysAllow:
        def try_authorize(self, request: RequestInfo) -> Verdict | None:
            return allow

        async def authorize(self, request: RequestInfo) -> Verdict:
            return allow

    async def main() -> None:
        server = await start_proxy(AlwaysAllow(), Settings(routes=(route,)), "127.0.0.1", port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()
        await server.wait_closed()

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--serve-proxy", nargs=2, type=int, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        serve_proxy(*args.serve_proxy)
        return
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        up, px, ours = free_port(), free_port(), free_port()
        try:
            processes.append(nginx(UPSTREAM_CONF.format(dir=tmp, port=up), directory, "up"))
            processes.append(nginx(PROXY_CONF.format(dir=tmp, port=px, upstream=up), directory, "px"))
            processes.append(subprocess.Popen([sys.executable, __file__, "--serve-proxy", str(ours), str(up)],
                                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}))
            for port in (up, px, ours):
                wait_port(port)
            wrk(up, 2, args.connections)  # warm-up
            wrk(ours, 2, args.connections)
            direct = wrk(up, args.duration, args.connections)
            plain = wrk(px, args.duration, args.connections)
            phantom = wrk(ours, args.duration, args.connections)
        finally:
            for process in reversed(processes):  # the proxies first, so they never see their upstream vanish
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(10)
    print(f"upstream nginx direct     {direct:10.0f} req/s")
    print(f"nginx proxy_pass          {plain:10.0f} req/s")
    print(f"phantom-token proxy       {phantom:10.0f} req/s")
    print(f"ratio phantom/nginx       {phantom / plain:10.2f}")


if __name__ == "__main__":
    main()
