"""Process plumbing for the benchmark: free ports, child processes that are always cleaned up, nginx configs, wrk.

Invariants: every process started through ``Processes`` runs in its own session (process group) and is stopped
(SIGTERM to the group, SIGKILL after a grace period) when the ``with`` block ends, whatever ended it; a child that
dies early is reported with the tail of its log, never silently measured.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
_TICKS = os.sysconf("SC_CLK_TCK")
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WRK_DIR = BENCH_DIR / "wrk"

_TEMP_PATHS = """client_body_temp_path {dir}/{name}-t1; proxy_temp_path {dir}/{name}-t2;
  fastcgi_temp_path {dir}/{name}-t3; uwsgi_temp_path {dir}/{name}-t4; scgi_temp_path {dir}/{name}-t5;"""

UPSTREAM_CONF = """worker_processes 1; pid {dir}/{name}.pid; error_log {dir}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; """ + _TEMP_PATHS + """
  server {{ listen 127.0.0.1:{port} reuseport; keepalive_requests 1000000; keepalive_timeout 300s;
    location / {{ return 200 "ok"; }} }} }}
"""

PLAIN_PROXY_CONF = """worker_processes 1; pid {dir}/{name}.pid; error_log {dir}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; """ + _TEMP_PATHS + """
  upstream api {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }}
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    location / {{ proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive free ports, below Linux's ephemeral range (32768+): outgoing connections
    (wrk's, the proxies', the token issuance's) take their local ports from that range and could grab a port between
    this check and the bind. A port handed out once in this process is never handed out again (two picks can come
    before either process binds). The e2e tests use this too."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        if not _GIVEN.isdisjoint(range(base, base + count)):
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        _GIVEN.update(range(base, base + count))
        return base
    raise RuntimeError(f"no run of {count} free ports found")


_GIVEN: set[int] = set()


def stat_cpu_seconds(stat_fields: Sequence[str]) -> float:
    """User + system CPU time of one process, from its ``/proc/<pid>/stat`` fields after the command name."""
    return (int(stat_fields[11]) + int(stat_fields[12])) / _TICKS  # fields 14 and 15 of stat: utime, stime in ticks


class ChildDied(RuntimeError):
    """A process the benchmark started exited before it was told to."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ChildDied(f"{self.name} exited with {code}:\n{self.tail()}")

    def processes(self) -> Iterator[tuple[int, list[str]]]:
        """(pid, /proc/<pid>/stat fields from the state on) of every process in the child's process group."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue  # exited meanwhile
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == self.process.pid:  # field 5 of stat: the process group id
                yield int(stat.parent.name), fields

    def cpu_seconds(self) -> float:
        """User + system CPU time of every process in the child's process group (nginx workers included)."""
        return sum(stat_cpu_seconds(fields) for _, fields in self.processes())

    def pids(self) -> set[int]:
        """Every process in the child's process group (an nginx master and its workers)."""
        return {pid for pid, _ in self.processes()}

    def rss_bytes(self) -> int:
        """Resident set size of the process (Linux /proc), in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no VmRSS for {self.name}")
        return int(found.group(1)) * 1024


class Processes:
    """Starts children in their own process groups and stops every one of them on exit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Child:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})}, cwd=self.directory,
                                       start_new_session=True)
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def nginx(self, name: str, conf: str) -> Child:
        path = self.directory / f"{name}.conf"
        path.write_text(conf)
        return self.start(name, [NGINX, "-p", str(self.directory), "-c", str(path), "-g", "daemon off;"])

    def stop(self, child: Child, grace: float = 10.0) -> None:
        if child.process.poll() is None:
            _signal_group(child.process.pid, signal.SIGTERM)
            try:
                child.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait()
        _signal_group(child.process.pid, signal.SIGKILL)  # nginx workers or grandchildren left behind
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(self.children[:]):
            self.stop(child)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def wait_listening(child: Child, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{child.name} is not listening on {port} after {timeout:g}s:\n{child.tail()}")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    bad_status: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


_BENCH_LINE = re.compile(r"^BENCH (.*)$", re.MULTILINE)


def wrk(url: str, seconds: float, *, connections: int = 50, token: str | None = None,
        token_file: Path | None = None, token_count: int | None = None,
        dpop: tuple[Path, str] | None = None) -> WrkResult:
    """One ``wrk -t1`` run; one fixed token (``-H``), a round robin over ``token_file``, or (``dpop``: a proof
    file and a token) one DPoP token with the next proof of the file on each request."""
    argv = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s"]
    if dpop is not None:
        argv += ["-s", str(WRK_DIR / "dpop.lua"), url, "--", str(dpop[0]), dpop[1]]
    elif token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if dpop is not None:
        pass
    elif token_file is not None:
        argv += ["-s", str(WRK_DIR / "tokens.lua"), url, "--", str(token_file)]
        if token_count is not None:
            argv.append(str(token_count))
    else:
        argv += ["-s", str(WRK_DIR / "report.lua"), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    found = _BENCH_LINE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    fields = dict(item.split("=", 1) for item in found.group(1).split())
    values = {key: int(value) for key, value in fields.items()}
    return WrkResult(
        requests=values["requests"],
        seconds=values["duration_us"] / 1e6,
        p50_ms=values["p50_us"] / 1000,
        p99_ms=values["p99_us"] / 1000,
        socket_errors=values["connect"] + values["read"] + values["write"] + values["timeout"],
        bad_status=values["status"],
    )
