"""nginx's own cost per request, in instructions (valgrind callgrind) and in CPU µs, for plain ``proxy_pass`` and the
nginx examples (``auth_request`` with and without decision caching), at a decision-cache hit (one token).

    .venv/bin/python bench/nginx_instructions.py [--requests M] [--warm N] [--cpu-seconds S] [--keep DIR]
                                                 [--only NAME ...] [--conf NAME=PATH ...] [--annotate]

Instructions: nginx runs under ``valgrind --tool=callgrind`` in one process (``master_process off; daemon off;``)
twice, once serving N requests and once N + M; instructions per request = (total at N + M - total at N) / M, so
start-up, configuration and shutdown cancel out and a busy machine changes nothing. Requests go over 10 keep-alive
connections, each carrying one ``Authorization: Bearer`` token the demo authorization server issued (the first
request of a run fills the decision cache; every later one is a hit). CPU: nginx started normally, ``wrk -t1 -c50``
for S seconds, user + system time of nginx's process group divided by the requests (as bench/run.py does; this one
does move with the machine's load). ``--conf NAME=PATH`` measures another configuration with the examples'
placeholders; ``--annotate`` prints callgrind_annotate's top functions of the N + M run of each. The upstream (nginx
``return 200``), the demo AS and ``phantom-token authz`` are ordinary processes; every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import NGINX, PLAIN_PROXY_CONF, REPO, UPSTREAM_CONF, Child, Processes, free_port, wait_listening, wrk
from run import INTROSPECTION_SECRET, _issue, _work_dir, auth_command

EXAMPLES = REPO / "examples" / "nginx"
VARIANTS = {
    "plain proxy_pass": None,
    "auth_request, no cache": EXAMPLES / "nginx.conf",
    "decision cache (lua)": EXAMPLES / "nginx-decision-cache.conf",
    "decision cache (set-misc)": EXAMPLES / "nginx-decision-cache-set-misc.conf",
    "decision cache (njs)": EXAMPLES / "nginx-decision-cache-njs.conf",
}
CONNECTIONS = 10


def render(template: Path | None, work: Path, ports: dict[str, int], secret: str) -> str:
    work.mkdir(parents=True, exist_ok=True)
    if template is None:
        return PLAIN_PROXY_CONF.format(dir=work, name="plain", port=ports["LISTEN_PORT"], upstream=ports["API_PORT"])
    text = template.read_text()
    values = {"WORK_DIR": str(work), "EXAMPLE_DIR": str(template.parent), "DECISION_KEY_SECRET": secret,
              **{k: str(v) for k, v in ports.items()}}
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    return text


def _client(port: int, token: str, count: int, failures: list[str]) -> None:
    request = (f"GET /api/bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
               ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    buffer = b""
    try:
        for _ in range(count):
            sock.sendall(request)
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(buffer) < length:
                buffer += sock.recv(65536)
            buffer = buffer[length:]
            if status != b"200":
                failures.append(status.decode())
                return
    finally:
        sock.close()


def send(port: int, token: str, total: int) -> None:
    """``total`` requests over CONNECTIONS keep-alive connections (under nginx's default keepalive_requests)."""
    failures: list[str] = []
    share, extra = divmod(total, CONNECTIONS)
    threads = [threading.Thread(target=_client, args=(port, token, share + (i < extra), failures))
               for i in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"non-200 answers: {failures[:5]}")


_TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def callgrind_run(conf: str, work: Path, port: int, token: str, requests: int) -> tuple[int, Path]:
    """Total instructions of one nginx process serving ``requests`` requests, and its callgrind file."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "nginx.conf").write_text(conf.replace(str(work.parent / "conf"), str(work)))
    out = work / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--smc-check=all-non-file",
            NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off; master_process off;"]
    with (work / "valgrind.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        _wait_port(process, port, work)
        send(port, token, requests)
        # SIGTERM, not SIGQUIT: nginx's graceful stop of plain proxy_pass (keep-alive to the upstream) did not end
        # within the wait; the fast stop leaves by the same exit, so callgrind still writes its totals
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    found = _TOTALS.search(out.read_text(errors="replace"))
    if found is None:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1)), out


def _wait_port(process: subprocess.Popen[bytes], port: int, work: Path) -> None:
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx under valgrind exited: {(work / 'valgrind.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("nginx under valgrind does not listen")


def annotate(path: Path, top: int = 25) -> str:
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", str(path)], capture_output=True, text=True,
                          check=False).stdout
    lines = [line for line in text.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
    return "\n".join(lines[:top])


def start_bed(procs: Processes, tmp: Path) -> tuple[int, int, str]:
    """The upstream (nginx ``return 200``), the demo AS and ``phantom-token authz`` (examples/phantom-token-authz.yml),
    started and listening: (upstream port, authz port, a token the AS issued)."""
    env = {"INTROSPECTION_SECRET": INTROSPECTION_SECRET, "PYTHONPATH": str(REPO / "src")}
    upstream_port, auth_port, authz_port = free_port(), free_port(), free_port()
    upstream = procs.nginx("upstream", UPSTREAM_CONF.format(dir=tmp, name="upstream", port=upstream_port))
    auth = procs.start("auth", auth_command(auth_port), env=env)
    authz_yml = tmp / "authz.yml"
    authz_yml.write_text((REPO / "examples" / "phantom-token-authz.yml").read_text()
                         .replace("${AUTH_SERVER_PORT}", str(auth_port)))
    authz = procs.start("authz", [sys.executable, "-m", "phantom_token", "authz", "-c", str(authz_yml),
                                  "--listen", f"127.0.0.1:{authz_port}", "--workers", "1",
                                  "--log-level", "warning"], env=env)
    for child, port in ((upstream, upstream_port), (auth, auth_port), (authz, authz_port)):
        wait_listening(child, port)
    return upstream_port, authz_port, asyncio.run(_issue(auth_port, 1))[0]


def start_variant(procs: Processes, name: str, directory: Path, template: Path | None, ports: dict[str, int],
                  secret: str, token: str) -> tuple[Child, str]:
    """nginx (a normal process) with one variant's configuration, listening, its decision asked once and warmed up
    by a second of ``wrk -t1 -c50``: (the child, the URL to load)."""
    port = ports["LISTEN_PORT"]
    child = procs.nginx(name, render(template, directory, ports, secret))
    wait_listening(child, port)
    url = f"http://127.0.0.1:{port}/api/bench"
    send(port, token, CONNECTIONS)  # the decision asked once, not by 50 connections at once
    wrk(url, 1, connections=50, token=token)
    return child, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--cpu-seconds", type=float, default=5.0, help="0: no CPU measurement")
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--only", nargs="*", default=None, help="variant names (substrings)")
    parser.add_argument("--conf", action="append", default=[], help="NAME=PATH: another configuration")
    parser.add_argument("--annotate", action="store_true")
    parser.add_argument("--no-valgrind", action="store_true")
    args = parser.parse_args()
    variants: dict[str, Path | None] = dict(VARIANTS)
    for item in args.conf:
        name, _, path = item.partition("=")
        variants[name] = Path(path).resolve()
    if args.only is not None:
        variants = {k: v for k, v in variants.items() if any(o in k for o in args.only)}
    secret = secrets.token_hex(32)
    with _work_dir(args.keep) as tmp, Processes(tmp) as procs:
        upstream_port, authz_port, token = start_bed(procs, tmp)
        print(f"{'variant':32} {'instr/req':>10} {'CPU us/req':>10}")
        for name, template in variants.items():
            port = free_port()
            ports = {"LISTEN_PORT": port, "AUTHZ_PORT": authz_port, "API_PORT": upstream_port}
            slug = re.sub(r"\W+", "_", name).strip("_")
            instructions = "-"
            if not args.no_valgrind:
                conf = render(template, tmp / slug / "conf", ports, secret)
                low, _ = callgrind_run(conf, tmp / slug / "low", port, token, args.warm)
                high, out = callgrind_run(conf, tmp / slug / "high", port, token, args.warm + args.requests)
                instructions = f"{(high - low) / args.requests:,.0f}"
            cpu = "-"
            if args.cpu_seconds > 0:
                child, url = start_variant(procs, f"{slug}-cpu", tmp / slug / "cpu", template, ports, secret, token)
                before = child.cpu_seconds()
                result = wrk(url, args.cpu_seconds, connections=50, token=token)
                used = child.cpu_seconds() - before
                if result.bad_status:
                    probe = subprocess.run(["curl", "-si", "-H", f"Authorization: Bearer {token}", url],
                                           capture_output=True, text=True, check=False).stdout
                    raise RuntimeError(f"{name}: {result.bad_status} non-2xx answers; now:\n{probe}\n"
                                       f"{child.tail()}")
                procs.stop(child)
                cpu = f"{used / result.requests * 1e6:.1f}"
            print(f"{name:32} {instructions:>10} {cpu:>10}", flush=True)
            if args.annotate and not args.no_valgrind:
                print(annotate(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
