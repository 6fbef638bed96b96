"""The workers table of bench/run.py: plain nginx with 1 and 2 worker processes against ``serve --workers 1`` and
``--workers 2``, at cache hit (one token) and with 10 000 distinct tokens (round robin, so consecutive requests on a
connection differ).

Per row: req/s, the ratio to nginx with the same worker count (nginx is sent the serve hit rows' ``Authorization``
header, as in the main table; until issue 18's fourth round it was sent none, a few bytes less to parse and
forward), CPU µs per request of every process of the gateway under test (nginx's master and workers; serve's
supervisor and workers), that CPU against the same gateway's with one worker (flat = linear), and the balance
between workers: each worker's share of the wrk connections (``ss``, sampled
halfway through the run) and of the CPU the workers used (at equal work per request, its share of the requests).

On a machine with few cores (2 vCPUs here, shared with wrk and the upstream nginx) req/s cannot double with a second
worker: linearity is judged by CPU per request staying flat from 1 to 2 workers, by the balance, and by the ratio to
nginx with the same number of workers (docs/performance.md, "Workers").

nginx with 2 workers is measured both ways: with ``listen ... reuseport`` (one listening socket per worker, the
kernel hashing each new connection to one of them, as ``serve --workers N`` does): **the reference for 2 workers**;
and with nginx's default (one listening socket shared by the workers; on Linux >= 4.5 each waits on it with
EPOLLEXCLUSIVE, ``accept_mutex`` off: nginx.org/r/accept_mutex), which on this kernel gives wrk's 50 connections,
opened in one burst, all to one worker: that row is shown, not used as the reference.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import PLAIN_PROXY_CONF, Child, Processes, WrkResult, free_port, stat_cpu_seconds, wait_listening, wrk

WORKER_COUNTS = (1, 2)
DISTINCT_TOKENS = 10_000
NGINX_SHARED_ROW = "nginx, 2 workers, shared socket"
_SS_PID = re.compile(r"pid=(\d+)")


def nginx_conf(directory: Path, name: str, port: int, upstream: int, workers: int, reuseport: bool = False) -> str:
    """bench/harness.py's plain ``proxy_pass`` nginx with ``workers`` worker processes (optionally reuseport)."""
    text = PLAIN_PROXY_CONF.format(dir=directory, name=name, port=port, upstream=upstream)
    changes = [("worker_processes 1;", f"worker_processes {workers};")]
    if reuseport:
        changes.append((f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port} reuseport;"))
    for old, new in changes:
        if old not in text:
            raise RuntimeError(f"bench/harness.py PLAIN_PROXY_CONF has no {old!r} any more: update bench/workers.py")
        text = text.replace(old, new, 1)
    return text


# -- per-process accounting ----------------------------------------------------------------------------------------


def group_cpu(child: Child) -> dict[int, float]:
    """CPU seconds (user + system) of each process in the child's process group, by pid."""
    return {pid: stat_cpu_seconds(fields) for pid, fields in child.processes()}


def connections_by_pid(port: int) -> dict[int, int]:
    """Established TCP connections accepted on ``port``, counted by the pid that holds them (``ss -tnp``)."""
    done = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                          text=True, timeout=10, check=False)
    counts: dict[int, int] = {}
    for line in done.stdout.splitlines():
        pids = set(_SS_PID.findall(line))
        if len(pids) == 1:  # after fork a socket could be shared: not for accepted connections
            pid = int(pids.pop())
            counts[pid] = counts.get(pid, 0) + 1
    return counts


@dataclass(frozen=True)
class Run:
    result: WrkResult
    cpu_us: float  # every process of the gateway, per request
    cpu_shares: tuple[float, ...]  # each worker's share of the workers' CPU, largest first
    connections: tuple[int, ...]  # wrk connections held by each worker, largest first
    introspected: int  # introspection calls the AS answered during the run (cache misses)


@dataclass
class WorkersRow:
    name: str
    gateway: str  # "nginx" or "serve": the ratio is to nginx with the same worker count
    workers: int
    tokens: int  # 0: no token (nginx)
    reference: bool = False  # the nginx row the others with this worker count are compared with
    runs: list[Run] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(run.result.rps for run in self.runs)

    @property
    def cpu_us(self) -> float:
        return statistics.median(run.cpu_us for run in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(run.result.p99_ms for run in self.runs)


def worker_pids(child: Child, cpu: dict[int, float], workers: int) -> list[int]:
    """The pids that serve: the group's processes other than the leader (nginx's master, serve's supervisor), or the
    leader alone when it is the one worker (``serve --workers 1``)."""
    others = [pid for pid in cpu if pid != child.process.pid]
    return others if others and (workers > 1 or len(others) == 1) else [child.process.pid]


def measure_workers(url: str, port: int, child: Child, workers: int, seconds: float, warm_seconds: float,
                    connections: int, introspections: Callable[[], int], *, token: str | None = None,
                    token_file: Path | None = None, token_count: int | None = None) -> Run:
    """One warmed wrk run against ``child`` (all its processes counted), with the connections per worker sampled
    halfway through."""
    wrk(url, warm_seconds, connections=connections, token=token, token_file=token_file, token_count=token_count)
    held: dict[int, int] = {}
    sampler = threading.Timer(max(0.5, seconds / 2), lambda: held.update(connections_by_pid(port)))
    before, asked = group_cpu(child), introspections()
    sampler.start()
    result = wrk(url, seconds, connections=connections, token=token, token_file=token_file, token_count=token_count)
    sampler.join()
    after, asked = group_cpu(child), introspections() - asked
    child.check()
    used = {pid: after.get(pid, 0.0) - before.get(pid, 0.0) for pid in after}
    pids = worker_pids(child, after, workers)
    workers_cpu = sum(used.get(pid, 0.0) for pid in pids) or 1.0
    shares = tuple(sorted((used.get(pid, 0.0) / workers_cpu for pid in pids), reverse=True))
    conns = tuple(sorted((held.get(pid, 0) for pid in pids), reverse=True))
    cpu_us = sum(used.values()) / result.requests * 1e6 if result.requests else 0.0
    return Run(result, cpu_us, shares, conns, asked)


def warm_distinct(url: str, token_file: Path, count: int, connections: int, introspections: Callable[[], int],
                  pass_seconds: float = 4.0, passes: int = 12) -> int:
    """Send the ``count`` tokens round robin until a pass costs (almost) no introspection: with several workers each
    keeps its own memory cache, so every worker must have seen every token (a token reaches a worker when one of
    that worker's connections happens to send it). Returns the passes run."""
    for done in range(1, passes + 1):
        asked = introspections()
        result = wrk(url, pass_seconds, connections=connections, token_file=token_file, token_count=count)
        if introspections() - asked <= result.requests * 0.0005:
            return done
    return passes


@dataclass
class WorkersSetup:
    """The processes of the workers table (the upstream and the AS come from the caller)."""

    ports: dict[str, int]
    kids: dict[str, Child]


def start_workers(procs: Processes, tmp: Path, upstream: int, serve_command: Callable[..., list[str]],
                  serve_yml: Path, env: dict[str, str]) -> WorkersSetup:
    """nginx with 1 worker, 2 with reuseport, 2 sharing one socket; serve with 1 and 2 workers; each on its own
    port."""
    ports = {name: free_port() for name in ("nginx_w1", "nginx_w2", "nginx_w2_shared", "serve_w1", "serve_w2")}
    kids: dict[str, Child] = {}
    for workers in WORKER_COUNTS:
        name = f"nginx_w{workers}"
        kids[name] = procs.nginx(name, nginx_conf(tmp, name, ports[name], upstream, workers,
                                                  reuseport=workers > 1))
    kids["nginx_w2_shared"] = procs.nginx("nginx_w2_shared", nginx_conf(
        tmp, "nginx_w2_shared", ports["nginx_w2_shared"], upstream, 2))
    for workers in WORKER_COUNTS:
        name = f"serve_w{workers}"
        # the last --workers wins (argparse): serve_command's own is 1
        kids[name] = procs.start(name, serve_command(serve_yml, ports[name], "--workers", str(workers)), env=env)
    for name, child in kids.items():
        wait_listening(child, ports[name])
    return WorkersSetup(ports, kids)


def workers_rows(setup: WorkersSetup, *, token: str, token_file: Path, seconds: float, warm_seconds: float,
                 connections: int, repeat: int, introspections: Callable[[], int]) -> list[WorkersRow]:
    """Every row, ``repeat`` rounds (all rows, then all rows again); the 10 000 tokens are warmed into every worker
    of both serve processes first. nginx is sent the same ``Authorization`` header as serve's cache-hit rows (it
    forwards it), as in the main table: both sides parse and forward the same request bytes."""
    rows: list[tuple[WorkersRow, str, dict[str, object]]] = []
    same: dict[str, object] = {"token": token}
    rows.append((WorkersRow("nginx proxy_pass, 1 worker", "nginx", 1, 0, reference=True), "nginx_w1", same))
    rows.append((WorkersRow("nginx proxy_pass, 2 workers, reuseport", "nginx", 2, 0, reference=True), "nginx_w2",
                 same))
    rows.append((WorkersRow(NGINX_SHARED_ROW, "nginx", 2, 0), "nginx_w2_shared", same))
    for workers in WORKER_COUNTS:
        rows.append((WorkersRow(f"serve --workers {workers}, cache hit", "serve", workers, 1), f"serve_w{workers}",
                     {"token": token}))
    for workers in WORKER_COUNTS:
        rows.append((WorkersRow(f"serve --workers {workers}, {DISTINCT_TOKENS:,} tokens", "serve", workers,
                                DISTINCT_TOKENS), f"serve_w{workers}",
                     {"token_file": token_file, "token_count": DISTINCT_TOKENS}))
    for workers in WORKER_COUNTS:
        port = setup.ports[f"serve_w{workers}"]
        passes = warm_distinct(f"http://127.0.0.1:{port}/api/bench", token_file, DISTINCT_TOKENS, connections,
                               introspections)
        print(f"  serve --workers {workers}: {DISTINCT_TOKENS} tokens warmed in {passes} passes", file=sys.stderr,
              flush=True)
    for _ in range(repeat):
        for row, key, load in rows:
            port = setup.ports[key]
            run = measure_workers(f"http://127.0.0.1:{port}/api/bench", port, setup.kids[key], row.workers, seconds,
                                  warm_seconds, connections, introspections, **load)  # type: ignore[arg-type]
            row.runs.append(run)
            print(f"  {row.name}: {run.result.rps:.0f} req/s, {run.cpu_us:.1f} us/req", file=sys.stderr, flush=True)
    return [row for row, _, _ in rows]


def _balance(runs: Sequence[Run]) -> str:
    """Connections and CPU shares per worker: the median round's and, with several rounds, the most uneven one."""
    if len(runs[0].cpu_shares) < 2:
        return "-"
    ordered = sorted(runs, key=lambda run: run.cpu_shares[0])
    middle, worst = ordered[len(ordered) // 2], ordered[-1]

    def show(run: Run) -> str:
        return ("conns " + "/".join(str(c) for c in run.connections) + ", CPU "
                + "/".join(f"{share:.0%}" for share in run.cpu_shares))

    return show(middle) + (f" (most uneven: {show(worst)})" if len(runs) > 1 and worst is not middle else "")


def print_workers_table(rows: list[WorkersRow], repeat: int) -> None:
    nginx = {row.workers: row for row in rows if row.reference}
    one = {(row.gateway, row.tokens): row for row in rows if row.workers == 1}
    print(f"\nWorkers: nginx worker_processes 1 and 2 against serve --workers 1 and 2, the same upstream; medians of "
          f"{repeat} rounds.\nx nginx: against nginx with the same worker count (2: listen reuseport). CPU: every "
          "process of the gateway (master/supervisor and workers) per request; x 1w: that CPU against the same\n"
          "gateway with one worker (1.00 = linear). AS calls: introspections during the run. Balance: wrk connections "
          "held by each worker, and each worker's share of the workers' CPU.")
    print(f"{'row':<38} {'req/s':>8} {'x nginx':>7} {'p99 ms':>7} {'CPU us/req':>10} {'x nginx CPU':>11} "
          f"{'x 1w CPU':>8} {'AS calls':>8}  balance")
    for row in rows:
        limit = nginx[row.workers]
        base = one.get((row.gateway, row.tokens))
        scaling = row.cpu_us / base.cpu_us if base is not None and base.cpu_us else 0.0
        asked = statistics.median(run.introspected for run in row.runs) if row.gateway == "serve" else 0
        print(f"{row.name:<38} {row.rps:>8.0f} {row.rps / limit.rps:>7.2f} {row.p99_ms:>7.2f} {row.cpu_us:>10.1f} "
              f"{limit.cpu_us / row.cpu_us if row.cpu_us else 0.0:>11.2f} {scaling:>8.2f} {asked:>8.0f}  "
              f"{_balance(row.runs)}")
