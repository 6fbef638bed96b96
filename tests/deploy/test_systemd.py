"""deploy/systemd/phantom-token.service: `systemd-analyze verify` and its offline security score, and the settings
the drain and the secrets depend on."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

from phantom_token.process import DRAIN_SECONDS
from tests.deploy.workloads import DEPLOY, tool

UNIT = DEPLOY / "systemd" / "phantom-token.service"
INSTALLED = "/opt/phantom-token/bin/phantom-token"


def unit() -> dict[str, list[str]]:
    """Each Service/Unit key with every value it is given (systemd keys repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


def test_stop_drains_within_the_timeout() -> None:
    u = unit()
    assert u["Service.KillSignal"] == ["SIGTERM"]
    assert u["Service.KillMode"] == ["mixed"], "SIGTERM to the supervisor, which forwards it to the workers"
    seconds = int(u["Service.TimeoutStopSec"][0].rstrip("s"))
    assert seconds > DRAIN_SECONDS


def test_type_and_commands() -> None:
    u = unit()
    src = Path(__file__).resolve().parents[2] / "src"
    notifies = [p for p in src.rglob("*.py") if "NOTIFY_SOCKET" in p.read_text()]
    assert u["Service.Type"] == (["notify"] if notifies else ["exec"]), "Type=notify only with sd_notify support"
    assert u["Service.ExecStart"][0].startswith(f"{INSTALLED} serve -c /etc/phantom-token/")
    assert u["Service.ExecStartPre"][0].startswith(f"{INSTALLED} check -c /etc/phantom-token/")
    # `systemctl reload`: check first (a bad file fails the reload), then SIGHUP the supervisor
    assert u["Service.ExecReload"][0].startswith(f"{INSTALLED} check -c /etc/phantom-token/")
    assert u["Service.ExecReload"][1] == "/bin/kill -HUP $MAINPID"


def test_hardening_and_secrets() -> None:
    u = unit()
    for key, value in {"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "CapabilityBoundingSet": "", "AmbientCapabilities": "", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}.items():
        assert u[f"Service.{key}"] == [value], key
    assert u["Service.EnvironmentFile"] == ["-/etc/phantom-token/phantom-token.env"]
    example = (DEPLOY / "systemd" / "phantom-token.env.example").read_text()
    assert re.search(r"^PHANTOM_CLIENT_SECRET=", example, re.MULTILINE)
    assert not [line for line in UNIT.read_text().splitlines() if line.startswith("Environment=")
                and "SECRET" in line], "secrets go in the EnvironmentFile, never in the unit"
    parser = configparser.ConfigParser(strict=False, interpolation=None)  # and it is INI-shaped at all
    parser.read_string(UNIT.read_text())
    assert parser.has_section("Install")


def installed_copy(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointing at this checkout's phantom-token (verify wants an executable)."""
    command = tool("phantom-token")
    if command is None:
        pytest.skip("phantom-token is not on PATH")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, command))
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    run = subprocess.run([analyze, "verify", str(installed_copy(tmp_path))], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not run.stderr.strip(), run.stderr


def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    run = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(installed_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", run.stdout)
    if found is None and "--offline" in run.stderr:
        pytest.skip(f"this systemd-analyze has no offline security check: {run.stderr.strip()}")
    assert found, run.stdout + run.stderr
    assert float(found.group(1)) <= 2.0, run.stdout[-3000:]  # 0 best, 10 worst; "OK" up to about 2
