"""deploy/compose.yaml, without a Docker engine: the Compose specification's JSON schema (the copy that
check-jsonschema ships) and what the services must agree on."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.workloads import DEPLOY, listen_port, phantom_token_check, tool

COMPOSE = DEPLOY / "compose.yaml"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with an empty environment: the default (NAME unset)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_the_compose_file_matches_the_compose_specification() -> None:
    command = tool("check-jsonschema")
    if command is None:
        pytest.skip("check-jsonschema is not installed (scripts/setup installs it)")
    run = subprocess.run([command, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_services_health_checks_and_start_order() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "redis", "authorization-server", "echo-api"}
    for name in ("redis", "authorization-server", "echo-api"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    gateway = services["gateway"]
    assert "healthcheck" not in gateway, "the gateway uses the image's HEALTHCHECK (admin /healthz)"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["authorization-server"]["condition"] == "service_healthy"
    assert gateway["command"][0] == "serve"
    assert int(gateway["stop_grace_period"].rstrip("s")) > 30, "longer than the drain"
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"


def test_the_gateway_configuration_fits_the_other_services(tmp_path: Path) -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    env = {k: interpolate(str(v)) for k, v in gateway["environment"].items()}
    assert "${PHANTOM_CLIENT_SECRET" in str(gateway["environment"]["PHANTOM_CLIENT_SECRET"]), \
        "the client secret comes from the shell's environment (or .env), not from the file"
    source, target, mode = gateway["volumes"][0].split(":")
    assert (mode, target) == ("ro", env["PHANTOM_TOKEN_CONFIG"])
    config_path = (COMPOSE.parent / source).resolve()
    text = config_path.read_text()
    phantom_token_check(text, env, tmp_path)
    settings = yaml.safe_load(text)["phantom_token"]
    published = {int(p.split(":")[2]) for p in gateway["ports"]}
    assert published == {listen_port(settings["listen"]), listen_port(settings["admin_listen"])}
    assert listen_port(settings["admin_listen"]) == 9901, "the image's HEALTHCHECK asks 9901"

    def listens(name: str) -> str:
        command = services[name]["command"]
        return str(command[command.index("--listen") + 1]).replace("0.0.0.0", name)

    assert env["PHANTOM_INTROSPECTION_ENDPOINT"] == f"http://{listens('authorization-server')}/oauth/introspect"
    assert env["PHANTOM_UPSTREAM_URL"] == f"http://{listens('echo-api')}"
    assert env["PHANTOM_REDIS_URL"].startswith("redis://redis:6379/")
    from phantom_token.demo.authorization_server import DEFAULT_CLIENTS

    introspector = next(c for c in DEFAULT_CLIENTS if c.introspect)
    assert (env["PHANTOM_CLIENT_ID"], env["PHANTOM_CLIENT_SECRET"]) == (introspector.client_id, introspector.secret)


def test_docker_compose_config_when_a_compose_cli_is_here() -> None:
    """`docker compose config` needs no engine; the compose plugin is not installed here, so this usually skips."""
    docker = tool("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True) if docker else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no `docker compose` plugin here (the docker CLI without it cannot read compose files)")
    assert docker is not None
    run = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PHANTOM_CLIENT_SECRET": "x"})
    assert run.returncode == 0, run.stderr
