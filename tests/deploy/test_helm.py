"""deploy/helm/phantom-token, rendered and linted by Helm itself (Helm v4's Go SDK, the helm-python-sdk wheel:
no helm binary can be installed here), then held to the same checks as the plain manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.workloads import (
    DEPLOY,
    Doc,
    check_everything,
    container,
    gateway,
    kubernetes_validate,
    load_all,
    one,
    secret_values,
)

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (scripts/setup installs it)")

CHART = DEPLOY / "helm" / "phantom-token"
KEY = "k" * 44


def render(values: dict[str, Any], name: str = "edge") -> list[Doc]:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        rendered: dict[str, str] = chart.render(values, name=name, namespace="gateways")
    return load_all(text for path, text in sorted(rendered.items()) if path.endswith(".yaml"))


def test_helm_lint_finds_no_error() -> None:
    report = helm.lint(str(CHART), values={"secret": {"clientSecret": "s"}})
    assert report["errors"] == [], report
    assert not [m for m in report["messages"] if m["severity"] > 1], report  # 1: INFO (icon is recommended)


def test_the_chart_values_match_its_schema() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.values == yaml.safe_load((CHART / "values.yaml").read_text())
        assert chart.schema is not None
        chart.validate_schema({"secret": {"clientSecret": "s"}})
        for bad in ({"mode": "proxy"}, {"terminationGracePeriodSeconds": 10}, {"secret": {"cacheKey": "short"}},
                    {"phantomToken": {"listen": "0.0.0.0:80"}}, {"ports": {"http": 3000, "admin": 0}}):
            with pytest.raises(helm.HelmError):
                chart.validate_schema(bad)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"secret": {"clientSecret": "s"}}, id="defaults"),
        pytest.param({"secret": {"clientSecret": "s", "cacheKey": KEY}, "redis": {"enabled": True}}, id="redis"),
        pytest.param({"secret": {"clientSecret": "s", "cacheKey": KEY}, "redis": {"url": "rediss://r.example:6380/0"},
                      "autoscaling": {"enabled": False}, "replicaCount": 3}, id="external-redis-no-hpa"),
        pytest.param({"mode": "authz", "secret": {"clientSecret": "s"}, "ports": {"http": 8080, "admin": 8081},
                      "phantomToken": {"trusted_proxies": ["10.0.0.0/8"]}}, id="authz-other-ports"),
    ],
)
def test_every_rendering_holds_together(values: dict[str, Any], tmp_path: Path) -> None:
    docs = render(values)
    check_everything(docs, tmp_path)
    kubernetes_validate(docs, tmp_path)  # asserts when kubernetes-validate is installed; test_kubernetes says if not
    assert container(gateway(docs))["args"][0] == values.get("mode", "serve")


def test_an_existing_secret_is_referenced_not_created(tmp_path: Path) -> None:
    docs = render({"secret": {"existingSecret": "from-vault", "cacheKey": ""}, "redis": {"enabled": True}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = container(gateway(docs))["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env} == {"from-vault"}
    check_everything(docs, tmp_path, secret_in_docs=False)


def test_the_client_secret_is_required_and_lands_in_the_secret_only() -> None:
    with pytest.raises(helm.HelmError, match="clientSecret is required"):
        render({})
    with pytest.raises(helm.HelmError, match="cacheKey is required"):
        render({"secret": {"clientSecret": "s"}, "redis": {"enabled": True}})
    docs = render({"secret": {"clientSecret": "the-real-secret"}})
    assert secret_values(docs, "edge-phantom-token")["client-secret"] == "the-real-secret"
    assert "the-real-secret" not in one(docs, "ConfigMap")["data"]["phantom-token.yml"]


def test_a_grace_period_shorter_than_the_drain_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render({"secret": {"clientSecret": "s"}, "terminationGracePeriodSeconds": 34, "preStopSeconds": 5})


def test_the_config_checksum_rolls_the_pods_when_the_config_changes() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return str(gateway(render(values))["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = {"secret": {"clientSecret": "s"}}
    assert checksum(base) == checksum(base)
    assert checksum(base) != checksum({**base, "phantomToken": {"log_format": "json"}})
