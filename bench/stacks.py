"""Which HTTP stack to build the gateway on: the same toy cache-hit gateway (bench/stack_apps.py) on granian (RSGI
and ASGI), uvicorn and aiohttp's server, each with an aiohttp client, against plain nginx ``proxy_pass`` and
``phantom-token serve`` (the whole job, compiled) in the same run.

    .venv/bin/pip install granian uvicorn aiohttp     # not phantom-token's dependencies; missing stacks are skipped
    .venv/bin/python bench/stacks.py [--seconds 4] [--rounds 3]

Everything on 127.0.0.1, one worker each, the upstream an nginx ``return 200`` in its own process (as in
bench/run.py). Rows are measured in rounds; each is printed as its median ratio to nginx's run of the same round,
with its CPU per request. Nothing here is asserted: it is the measurement behind docs/performance.md's choice.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from harness import PLAIN_PROXY_CONF, UPSTREAM_CONF, Child, Processes, free_port, wait_listening, wrk
from run import INTROSPECTION_SECRET, _issue, auth_command, serve_command, serve_config

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def stacks(python: str, port: int) -> dict[str, list[str]]:
    """The toy gateway's command line on each stack that is installed."""
    granian = shutil.which("granian", path=str(Path(python).parent)) or shutil.which("granian")
    found: dict[str, list[str]] = {}
    if granian and _have("granian"):
        for interface, app in (("rsgi", "stack_apps:rsgi"), ("asgi", "stack_apps:asgi")):
            found[f"granian {interface.upper()} + aiohttp client"] = [
                granian, "--interface", interface, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--loop", "uvloop", "--no-access-log", "--log-level", "warning", app]
    if _have("uvicorn"):
        found["uvicorn (uvloop, httptools) + aiohttp client"] = [
            python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning", "stack_apps:asgi"]
    if _have("aiohttp"):
        found["aiohttp server + aiohttp client"] = [
            python, "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", str(port), "stack_apps:aiohttp_app"]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per row and round (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the rows (default 3)")
    args = parser.parse_args()
    if not _have("aiohttp"):
        print("bench/stacks.py: the toy gateways need aiohttp as their client: pip install granian uvicorn aiohttp",
              file=sys.stderr)
        return 2
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="phantom-stacks-") as name, Processes(Path(name)) as procs:
        tmp = Path(name)
        tmp.chmod(0o755)
        upstream, nginx, auth, serve = free_port(), free_port(), free_port(), free_port()
        env = {"INTROSPECTION_SECRET": INTROSPECTION_SECRET, "PYTHONPATH": f"{REPO / 'src'}:{BENCH}",
               "STACK_UPSTREAM": f"http://127.0.0.1:{upstream}"}
        targets: dict[str, tuple[Child, int]] = {
            "nginx proxy_pass (the limit)": (procs.nginx("nginx", PLAIN_PROXY_CONF.format(
                dir=tmp, name="nginx", port=nginx, upstream=upstream)), nginx),
            "phantom-token serve (the whole job)": (procs.start(
                "serve", serve_command(serve_config(tmp, upstream, auth), serve), env=env), serve),
        }
        helpers = [(procs.nginx("upstream", UPSTREAM_CONF.format(dir=tmp, name="upstream", port=upstream)), upstream),
                   (procs.start("auth", auth_command(auth), env=env), auth)]
        for label in stacks(python, 0):
            port = free_port()
            targets[label] = (procs.start(f"{label.split()[0]}-{port}", stacks(python, port)[label], env=env), port)
        for child, port in [*helpers, *targets.values()]:
            wait_listening(child, port)
        serve_token = asyncio.run(_issue(auth, 1))[0]
        from stack_apps import TOKEN

        def token_for(label: str) -> str:
            return serve_token if label.startswith("phantom-token") else TOKEN

        results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in targets}
        for label, (_, port) in targets.items():  # warm-up: caches filled, keep-alive pools open
            wrk(f"http://127.0.0.1:{port}/api/bench", 2, token=token_for(label))
        for _ in range(args.rounds):
            for label, (child, port) in targets.items():
                before = child.cpu_seconds()
                result = wrk(f"http://127.0.0.1:{port}/api/bench", args.seconds, token=token_for(label))
                cpu_us = (child.cpu_seconds() - before) / result.requests * 1e6 if result.requests else 0.0
                if result.bad_status or result.socket_errors:
                    print(f"  {label}: {result.bad_status} non-2xx, {result.socket_errors} socket errors",
                          file=sys.stderr)
                results[label].append((result.rps, cpu_us, result.p99_ms))
                print(f"  {label}: {result.rps:.0f} req/s", file=sys.stderr, flush=True)
        limit = results["nginx proxy_pass (the limit)"]
        print(f"{'stack (cache-hit path, 1 worker, wrk -t1 -c50)':<48} {'req/s':>8} {'x nginx':>7} "
              f"{'CPU us/req':>10} {'p99 ms':>7}")
        for label, runs in results.items():
            ratio = statistics.median(run[0] / base[0] for run, base in zip(runs, limit, strict=True))
            print(f"{label:<48} {statistics.median(r[0] for r in runs):>8.0f} {ratio:>7.2f} "
                  f"{statistics.median(r[1] for r in runs):>10.1f} {statistics.median(r[2] for r in runs):>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
