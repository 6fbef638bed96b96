"""deploy/kubernetes: what `kubectl apply -k deploy/kubernetes` creates, checked without a cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.workloads import DEPLOY, Doc, check_everything, gateway, kubernetes_validate, load_all, one, tool

MANIFESTS = DEPLOY / "kubernetes"


def manifests() -> list[Doc]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return load_all((MANIFESTS / name).read_text() for name in kustomization["resources"])


def test_the_kustomization_lists_every_manifest_and_sets_the_namespace() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    namespace = kustomization["namespace"]
    assert one(manifests(), "Namespace")["metadata"]["name"] == namespace
    assert all(d["metadata"].get("namespace", namespace) == namespace for d in manifests())


def test_the_manifests_hold_together(tmp_path: Path) -> None:
    """Probes on the admin port, non-root read-only pods, drain within the grace period, selectors, the client
    secret from the Secret through {vault://env/...}, the Redis URL, and `phantom-token check` on the ConfigMap."""
    docs = manifests()
    check_everything(docs, tmp_path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "ConfigMap", "Secret", "Deployment", "Deployment", "Service", "Service",
                            "PodDisruptionBudget", "HorizontalPodAutoscaler"])
    assert gateway(docs)["spec"]["template"]["spec"]["containers"][0]["args"][0] == "serve"


def test_a_probe_on_the_wrong_port_is_caught(tmp_path: Path) -> None:
    docs = manifests()
    container = gateway(docs)["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["port"] = "http"
    with pytest.raises(AssertionError, match="admin listener"):
        check_everything(docs, tmp_path)


def test_the_manifests_match_the_kubernetes_schemas(tmp_path: Path) -> None:
    docs = manifests()
    if kubernetes_validate(docs, tmp_path) is None:
        pytest.skip("kubernetes-validate is not installed (scripts/setup installs it)")
    docs[0]["spec"] = {"replicas": "two"}  # and the check does catch a broken document
    with pytest.raises(AssertionError):
        kubernetes_validate(docs, tmp_path)


def test_yamllint_passes_on_deploy() -> None:
    command = tool("yamllint")
    if command is None:
        pytest.skip("yamllint is not installed (scripts/setup installs it)")
    run = subprocess.run([command, "--strict", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
