"""What tests/deploy checks in every Kubernetes rendering, the plain manifests (deploy/kubernetes) and the Helm
chart's (deploy/helm/phantom-token) alike: one function per property, each failing with what is wrong."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from phantom_token.process import DRAIN_SECONDS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VAULT = re.compile(r"\{vault://env/([A-Za-z_][A-Za-z0-9_]*)\}")

Doc = dict[str, Any]


def tool(name: str) -> str | None:
    """A command from this virtualenv (scripts/setup installs the linters there), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def load_all(texts: Iterable[str]) -> list[Doc]:
    return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def gateway(docs: list[Doc]) -> Doc:
    """The phantom-token Deployment (not Redis's)."""
    found = [d for d in docs if d["kind"] == "Deployment"
             and any(c["name"] == "phantom-token" for c in d["spec"]["template"]["spec"]["containers"])]
    assert len(found) == 1, "expected one Deployment running the phantom-token container"
    return found[0]


def container(deployment: Doc, name: str = "phantom-token") -> Doc:
    matches: list[Doc] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert matches, f"no container {name}"
    return matches[0]


def port_number(ctr: Doc, port: int | str) -> int:
    """A probe's or Service's port (a number or a container port's name) as the number the container listens on."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in ctr.get("ports", []) if p.get("name") == port]
    assert named, f"port {port!r} is not a named port of container {ctr['name']}"
    return int(named[0])


def config_of(docs: list[Doc], deployment: Doc) -> tuple[str, Doc]:
    """The phantom-token.yml that the Deployment mounts (from its ConfigMap), as text and parsed."""
    ctr = container(deployment)
    args = ctr.get("args", [])
    path = args[args.index("-c") + 1]
    mount = next(m for m in ctr["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = one(docs, "ConfigMap", volume["configMap"]["name"])
    text = cm["data"][path.rsplit("/", 1)[1]]
    return text, yaml.safe_load(text)


def listen_port(value: str) -> int:
    return int(value.rsplit(":", 1)[1])


def secret_values(docs: list[Doc], name: str) -> dict[str, str]:
    import base64

    secret = one(docs, "Secret", name)
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def check_ports_and_probes(docs: list[Doc]) -> None:
    deployment = gateway(docs)
    ctr = container(deployment)
    _, config = config_of(docs, deployment)
    settings = config["phantom_token"]
    admin = listen_port(settings["admin_listen"])
    http = listen_port(settings["listen"])
    assert settings["admin_listen"].startswith("0.0.0.0:"), "the kubelet probes the pod IP: admin_listen 0.0.0.0"
    assert settings["listen"].startswith("0.0.0.0:")
    assert port_number(ctr, "http") == http, "container port 'http' is not the configured listen port"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = ctr[probe]["httpGet"]
        assert get["path"] == path, f"{probe} asks {get['path']}, not {path}"
        assert port_number(ctr, get["port"]) == admin, f"{probe} does not point at the admin listener ({admin})"
    assert "admin_token" not in settings, "admin_token would make the kubelet's probes 401"


def check_security(docs: list[Doc]) -> None:
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for ctr in pod["containers"]:
            sc = ctr["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, ctr["name"]
            assert sc["allowPrivilegeEscalation"] is False, ctr["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], ctr["name"]
            assert "add" not in sc["capabilities"], ctr["name"]
            assert ctr["resources"]["requests"]["cpu"], ctr["name"]
            assert ctr["resources"]["limits"]["memory"], ctr["name"]


def check_drain(docs: list[Doc]) -> None:
    """The kubelet waits longer than preStop plus phantom-token's drain before it kills."""
    deployment = gateway(docs)
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = 0
    command = container(deployment).get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    found = re.search(r"sleep\((\d+)\)", " ".join(command))
    if found:
        pre_stop = int(found.group(1))
    assert pod["terminationGracePeriodSeconds"] > pre_stop + DRAIN_SECONDS


def check_secret_flow(docs: list[Doc], *, secret_in_docs: bool = True) -> dict[str, str]:
    """Every {vault://env/NAME} of the configuration is an env var of the container, from a Secret key that
    exists; the client secret comes that way, never from the file. Returns NAME -> value (from the Secret)."""
    deployment = gateway(docs)
    ctr = container(deployment)
    text, config = config_of(docs, deployment)
    env = {e["name"]: e for e in ctr.get("env", [])}
    names = set(VAULT.findall(text))
    for service in config["services"]:
        for plugin in service.get("plugins", []):
            assert VAULT.fullmatch(plugin["config"]["client_secret"]), "client_secret is not a vault reference"
    assert "PHANTOM_CLIENT_SECRET" in names
    values: dict[str, str] = {}
    for name in sorted(names):
        assert name in env, f"{name} (vault reference in the config) is not set in the container"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        if secret_in_docs:
            stored = secret_values(docs, ref["name"])
            assert ref["key"] in stored, f"{name}: Secret {ref['name']} has no key {ref['key']}"
            values[name] = stored[ref["key"]]
        else:
            values[name] = "redis://redis:6379/0" if "REDIS" in name else "x" * 44
    return values


def check_selectors(docs: list[Doc]) -> None:
    """The Service, PodDisruptionBudget and HorizontalPodAutoscaler all reach the gateway's pods, and only those."""
    deployment = gateway(docs)
    pod_labels: Mapping[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    redis_pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] == "Deployment"
                  and d is not deployment]
    service = next(s for s in docs if s["kind"] == "Service" and s["spec"]["selector"].items() <= pod_labels.items())
    for other in redis_pods:
        assert not service["spec"]["selector"].items() <= other.items(), "the Service also selects Redis"
    ctr = container(deployment)
    assert [port_number(ctr, p["targetPort"]) for p in service["spec"]["ports"]] == [port_number(ctr, "http")], \
        "the Service must expose the gateway port only, never the admin listener"
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "PDB does not select the pods"
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert hpa["spec"]["minReplicas"] >= 2, "fewer than 2 replicas: a drain or a PDB leaves no pod"
        assert "replicas" not in deployment["spec"], "replicas in the Deployment fights the HPA on every apply"


def check_redis(docs: list[Doc], values: Mapping[str, str]) -> None:
    """With an in-cluster Redis, the URL in the Secret names its Service and port."""
    redis_services = [s for s in docs if s["kind"] == "Service" and any(p["port"] == 6379 for p in s["spec"]["ports"])]
    if not redis_services:
        return
    url = values["PHANTOM_REDIS_URL"]
    assert url == f"redis://{redis_services[0]['metadata']['name']}:6379/0", url
    redis = next(d for d in docs if d["kind"] == "Deployment" and d is not gateway(docs))
    assert redis_services[0]["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()


def phantom_token_check(config_text: str, env: Mapping[str, str], tmp: Path) -> None:
    """`phantom-token check` accepts the configuration with these environment variables."""
    path = tmp / "phantom-token.yml"
    path.write_text(config_text)
    run = subprocess.run([sys.executable, "-m", "phantom_token", "check", "-c", str(path)],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def check_everything(docs: list[Doc], tmp: Path, *, secret_in_docs: bool = True) -> None:
    check_ports_and_probes(docs)
    check_security(docs)
    check_drain(docs)
    check_selectors(docs)
    values = check_secret_flow(docs, secret_in_docs=secret_in_docs)
    if secret_in_docs:  # a Secret made elsewhere: its Redis URL is not ours to check
        check_redis(docs, values)
    text, _ = config_of(docs, gateway(docs))
    phantom_token_check(text, values, tmp)


def kubernetes_validate(docs: list[Doc], tmp: Path) -> str | None:
    """Validates against the Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict: unknown fields
    fail). None when the tool is missing; otherwise its output (the assertion is the caller's)."""
    command = tool("kubernetes-validate")
    if command is None:
        return None
    path = tmp / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    run = subprocess.run([command, "--strict", "--quiet", str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr
