"""nginx + ``phantom-token authz`` against plain nginx ``proxy_pass``, in the same run (contract section 10).

Every server gets one worker process, on 127.0.0.1:
- upstream: nginx ``return 200`` in its own process (what every proxy forwards to);
- plain: nginx ``proxy_pass`` to the upstream (the baseline);
- authz: nginx with ``examples/nginx/nginx.conf`` (``auth_request`` to phantom-token on every request);
- authz+cache: nginx with ``examples/nginx/nginx-decision-cache.conf`` (repeated decisions from nginx's cache);
plus the demo authorization server and ``phantom-token authz -c examples/phantom-token-authz.yml``.

One real token is issued, so after the first request the decision service answers from its own cache (the hot
path). Each configuration is measured with ``wrk -t1 -c50 -d10s``, in turn, ``--rounds`` times; the median of each is
reported as requests/s and as a ratio to plain nginx. Nothing is asserted: numbers go to docs/gateways/nginx.md.

    python bench/authz_ratio.py [--duration 10] [--connections 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
READY_TIMEOUT = 20.0
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")

UPSTREAM_CONF = """worker_processes 1; pid {dir}/up.pid; error_log {dir}/up.err;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}/t1; proxy_temp_path {dir}/t2; fastcgi_temp_path {dir}/t3;
  uwsgi_temp_path {dir}/t4; scgi_temp_path {dir}/t5;
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000; location / {{ return 200 "ok"; }} }} }}
"""

# The same proxy settings as examples/nginx/nginx.conf, without the auth_request.
PLAIN_CONF = """worker_processes 1; pid {dir}/plain.pid; error_log {dir}/plain.err;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {dir}/p1; proxy_temp_path {dir}/p2; fastcgi_temp_path {dir}/p3;
  uwsgi_temp_path {dir}/p4; scgi_temp_path {dir}/p5;
  upstream business_api {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_set_header Host $host; proxy_set_header Connection ""; proxy_http_version 1.1;
                  proxy_pass http://business_api; }} }} }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: str, url: str, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` until it answers 200 (bounded by READY_TIMEOUT)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 -- http://127.0.0.1 only
            with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{check} did not answer 200 on {url} within {READY_TIMEOUT}s")


def render(template: Path, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template.read_text(encoding="utf-8"))


class Processes:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
        self.running.append(proc)
        return proc

    def nginx(self, conf_text: str, directory: Path, name: str) -> None:
        path = directory / f"{name}.conf"
        path.write_text(conf_text, encoding="utf-8")
        extra = " user root;" if os.geteuid() == 0 else ""  # workers must write the private temp directory
        self.start([NGINX, "-p", str(directory), "-c", str(path), "-g", f"daemon off;{extra}"])

    def stop(self) -> None:
        for proc in reversed(self.running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def issue_token(as_port: int) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{as_port}/oauth/token", data=b"grant_type=client_credentials",
        headers={"Authorization": "Basic " + base64.b64encode(b"demo-client:demo-secret").decode(),
                 "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
        token = json.load(answer)["access_token"]
    assert isinstance(token, str)
    return token


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decisions(admin_port: int) -> int:
    """Decisions the authz service answered so far (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(int(float(v)) for v in re.findall(r"^phantom_token_requests_total\{[^}]*\} (\S+)$", text, re.M))


def wrk(port: int, token: str, duration: int, connections: int) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-H", f"Authorization: Bearer {token}",
                          f"http://127.0.0.1:{port}/api/bench"], capture_output=True, text=True, check=True,
                         timeout=duration + 30).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk on :{port}: {errors.group(0)}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(out)
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure the three configurations in turn this many times; report each one's median")
    parser.add_argument("--authz-workers", type=int, default=1, help="phantom-token authz worker processes")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/setup installs it)", file=sys.stderr)
        return 2
    procs = Processes()
    directory = Path(tempfile.mkdtemp(prefix="authz-bench-"))
    ports = {name: free_port() for name in ("as", "upstream", "authz", "authz_admin", "plain", "nginx_authz",
                                             "nginx_cached")}
    try:
        procs.start([sys.executable, "-m", "phantom_token.demo.authorization_server", "--listen",
                     f"127.0.0.1:{ports['as']}"])
        config = directory / "authz.yml"
        config.write_text(render(EXAMPLES / "phantom-token-authz.yml", {"AUTH_SERVER_PORT": str(ports["as"])}))
        authz = procs.start([sys.executable, "-m", "phantom_token", "authz", "-c", str(config), "--listen",
                     f"127.0.0.1:{ports['authz']}", "--admin-listen", f"127.0.0.1:{ports['authz_admin']}",
                             "--log-level", "warning", "--workers", str(args.authz_workers)],
                    {"INTROSPECTION_SECRET": "demo-introspection-secret"})
        procs.nginx(UPSTREAM_CONF.format(dir=directory, port=ports["upstream"]), directory, "upstream")
        procs.nginx(PLAIN_CONF.format(dir=directory, port=ports["plain"], upstream=ports["upstream"]), directory,
                    "plain")
        for name, template in (("nginx_authz", "nginx.conf"), ("nginx_cached", "nginx-decision-cache.conf")):
            work = directory / name
            work.mkdir()
            values = {"LISTEN_PORT": str(ports[name]), "AUTHZ_PORT": str(ports["authz"]),
                      "API_PORT": str(ports["upstream"]), "WORK_DIR": str(work),
                      "EXAMPLE_DIR": str(EXAMPLES / "nginx")}
            procs.nginx(render(EXAMPLES / "nginx" / template, values), work, name)
        wait_until("authorization server", f"http://127.0.0.1:{ports['as']}/.well-known/jwks.json")
        token = issue_token(ports["as"])
        auth = {"Authorization": f"Bearer {token}"}
        for name in ("plain", "nginx_authz", "nginx_cached"):
            wait_until(name, f"http://127.0.0.1:{ports[name]}/api/bench", auth)
        cpu_per_decision: list[float] = []
        samples: dict[str, list[float]] = {"plain": [], "nginx_authz": [], "nginx_cached": []}
        for _ in range(args.rounds):  # interleaved, so a burst of load elsewhere hits every configuration alike
            for name, runs in samples.items():
                cpu_before, asked_before = cpu_seconds(authz.pid), decisions(ports["authz_admin"])
                runs.append(wrk(ports[name], token, args.duration, args.connections))
                if name == "nginx_authz" and args.authz_workers == 1:
                    asked = decisions(ports["authz_admin"]) - asked_before
                    cpu_per_decision.append((cpu_seconds(authz.pid) - cpu_before) / max(asked, 1))
        results = {name: statistics.median(runs) for name, runs in samples.items()}
    finally:
        procs.stop()
        shutil.rmtree(directory, ignore_errors=True)
    base = results["plain"]
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, one nginx worker each, {args.authz_workers} authz "
          f"worker(s), upstream nginx 'return 200'; "
          f"median of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
    labels = {"plain": "nginx proxy_pass (baseline)", "nginx_authz": "nginx + phantom-token authz",
              "nginx_cached": "nginx + authz + nginx decision cache"}
    for name, rps in results.items():
        each = " ".join(f"{r:.0f}" for r in samples[name])
        print(f"  {labels[name]:<40} {rps:>10.0f} req/s  {rps / base:5.2f}x   ({each})")
    if cpu_per_decision:  # independent of other load on the machine: what one decision costs the authz process
        print(f"  phantom-token authz CPU per decision: {statistics.median(cpu_per_decision) * 1e6:.0f} us "
              f"(so one worker tops out near {1 / statistics.median(cpu_per_decision):.0f} decisions/s per core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
