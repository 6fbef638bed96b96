"""Metrics: the counters, the Prometheus text, worker slots summed with a carry, the Grafana dashboard's queries."""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path

import pytest
import yaml

from phantom_token import metrics as metrics_module
from phantom_token.cache.memory import MemoryCache
from phantom_token.config.loader import parse_settings
from phantom_token.config.settings import PluginConfig, Route, Settings, Upstream
from phantom_token.core.engine import Engine
from phantom_token.core.errors import FAILURE_KINDS, IntrospectionUnavailable
from phantom_token.core.request import RequestInfo
from phantom_token.core.routes import Router
from phantom_token.core.verdict import Allow, Deny
from phantom_token.exposition import (
    FAMILIES,
    WorkerMetrics,
    WorkerSlots,
    family_of,
    merge,
    monotonic_part,
    render,
)
from phantom_token.gateway import Gateway
from phantom_token.introspection.rfc7662 import check_status, read_json_response
from phantom_token.metrics import Metrics
from phantom_token.process import Listeners

from .fakes import FakeClock, FakeIntrospector

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "examples" / "grafana" / "phantom-token.json"
UPSTREAM = Upstream("http", "127.0.0.1", 3001, "/")


def parse(text: str) -> dict[str, float]:
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_requests_are_counted_by_route_outcome_and_status() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_request(200, "allowed", "api")
    metrics.observe_request(401, "unauthorized", "api")
    metrics.observe_request(200, "allowed", "api")  # back to a series seen before (not the last one)
    metrics.observe_request(404, "not_found", None)
    metrics.observe_request(401, "invalid_dpop_proof", "api")  # any Deny code is an outcome of its own
    samples = metrics.samples()
    assert samples['phantom_token_requests_total{route="api",outcome="allowed",status="200"}'] == 4
    assert samples['phantom_token_requests_total{route="api",outcome="unauthorized",status="401"}'] == 1
    assert samples['phantom_token_requests_total{route="",outcome="not_found",status="404"}'] == 1
    assert samples['phantom_token_requests_total{route="api",outcome="invalid_dpop_proof",status="401"}'] == 1


def test_a_route_name_is_escaped_in_its_label() -> None:
    metrics = Metrics()
    metrics.observe_request(200, "allowed", 'a "b"\\c')
    assert 'route="a \\"b\\"\\\\c"' in render(metrics.samples())


def test_render_groups_each_family_under_its_help_and_type() -> None:
    metrics = Metrics()
    metrics.observe_introspection(0.003)
    metrics.observe_introspection(20.0)
    metrics.introspection_failed("timeout")
    metrics.upstream_failed("connect")
    text = render(metrics.samples())
    assert "# TYPE phantom_token_introspection_seconds histogram" in text
    samples = parse(text)
    assert samples['phantom_token_introspection_seconds_bucket{le="0.0025"}'] == 0
    assert samples['phantom_token_introspection_seconds_bucket{le="0.005"}'] == 1
    assert samples['phantom_token_introspection_seconds_bucket{le="+Inf"}'] == 2
    assert samples["phantom_token_introspection_seconds_count"] == 2
    assert samples['phantom_token_introspection_failures_total{kind="timeout"}'] == 1
    assert samples["phantom_token_introspection_errors_total"] == 1
    assert samples['phantom_token_upstream_errors_total{kind="connect"}'] == 1
    # every sample line comes after its own family's TYPE line
    family = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
        elif not line.startswith("#"):
            assert family_of(line.rpartition(" ")[0]) == family, line


def test_bucket_agrees_with_bisect() -> None:
    assert list(metrics_module.LATENCY_BUCKETS) == metrics_module._BOUNDS
    for seconds in (0.0, 0.0004, 0.001, 0.0010001, 0.003, 0.25, 9.99, 10.0, 10.5, 1e9):
        assert metrics_module.bucket(seconds) == bisect.bisect_left(metrics_module.LATENCY_BUCKETS, seconds)


def test_family_of_strips_histogram_suffixes_only_for_histograms() -> None:
    assert family_of('phantom_token_upstream_seconds_bucket{le="1.0"}') == "phantom_token_upstream_seconds"
    assert family_of("phantom_token_upstream_seconds_count") == "phantom_token_upstream_seconds"
    assert family_of('phantom_token_requests_total{route="x_count"}') == "phantom_token_requests_total"


def test_merge_sums_series_and_the_carry_keeps_counters_but_not_gauges() -> None:
    a = {"phantom_token_cache_hits_total": 2.0, "phantom_token_cache_entries{kind=\"active\"}": 5.0}
    b = {"phantom_token_cache_hits_total": 3.0, "phantom_token_introspections_total": 1.0}
    assert merge((a, b)) == {"phantom_token_cache_hits_total": 5.0, 'phantom_token_cache_entries{kind="active"}': 5.0,
                             "phantom_token_introspections_total": 1.0}
    assert monotonic_part(a) == {"phantom_token_cache_hits_total": 2.0}


def test_worker_slots_sum_every_worker_and_a_restarted_worker_carries_its_slot_on() -> None:
    slots = WorkerSlots(2, slot_bytes=64 * 1024)
    try:
        first, second = WorkerMetrics(slots, 0), WorkerMetrics(slots, 1)
        assert first.carry == {}
        assert slots.read(1) is None
        one, two = Metrics(), Metrics()
        for _ in range(5):
            one.observe_request(200, "allowed", "api")
        for _ in range(7):
            two.observe_request(200, "allowed", "api")
        two.cache_hits = 4
        second.publish(two.samples())
        key = 'phantom_token_requests_total{route="api",outcome="allowed",status="200"}'
        total = first.total(one.samples())  # its own series fresh, the others' from their slots
        assert total[key] == 12
        assert total["phantom_token_cache_hits_total"] == 4
        assert total["phantom_token_workers"] == 2
        # worker 1 dies after its last publish; its replacement starts from zero and carries the slot on
        replacement, fresh = WorkerMetrics(slots, 1), Metrics()
        assert replacement.carry[key] == 7
        assert "phantom_token_workers" not in replacement.carry  # a gauge: not carried
        fresh.observe_request(200, "allowed", "api")
        replacement.publish(fresh.samples())
        assert first.total(one.samples())[key] == 13  # nothing vanished, nothing doubled
        assert first.total(one.samples())["phantom_token_cache_hits_total"] == 4
    finally:
        slots.close()


def test_a_snapshot_too_big_for_its_slot_is_not_published(caplog: pytest.LogCaptureFixture) -> None:
    slots = WorkerSlots(1, slot_bytes=256)
    try:
        metrics = Metrics()
        for index in range(50):
            metrics.observe_request(200, "allowed", f"route-{index}")
        WorkerMetrics(slots, 0).publish(metrics.samples())
        assert slots.read(0) is None
        assert "exceeds" in caplog.text
    finally:
        slots.close()


def test_a_torn_slot_is_never_read() -> None:
    slots = WorkerSlots(1, slot_bytes=4096)
    try:
        slots.publish(0, {"phantom_token_cache_hits_total": 1.0})
        memory = slots._memory
        sequence = int.from_bytes(memory[0:8], "little")
        memory[0:8] = (sequence + 1).to_bytes(8, "little")  # a writer in the middle of its write
        assert slots.read(0) is None
        memory[0:8] = (sequence + 2).to_bytes(8, "little")
        assert slots.read(0) == {"phantom_token_cache_hits_total": 1.0}
    finally:
        slots.close()


def test_introspection_failures_say_their_kind() -> None:
    with pytest.raises(IntrospectionUnavailable) as rejected:
        check_status(401)
    assert rejected.value.kind == "credentials_rejected"
    with pytest.raises(IntrospectionUnavailable) as failed:
        check_status(503)
    assert failed.value.kind == "http_5xx"
    with pytest.raises(IntrospectionUnavailable) as other:
        check_status(302)
    assert other.value.kind == "http_status"
    with pytest.raises(IntrospectionUnavailable) as garbage:
        read_json_response(200, [], b"<html>")
    assert garbage.value.kind == "invalid_answer"
    assert {"down", "timeout", "http_5xx", "credentials_rejected", "invalid_answer"} <= set(FAILURE_KINDS)


async def test_the_engine_counts_introspection_failures_by_kind() -> None:
    plugin = PluginConfig("http://as.test/introspect", "gateway", "secret")
    introspector, metrics = FakeIntrospector(), Metrics()
    routes = (Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)
    engine = Engine(Router(routes), MemoryCache(10), introspector, clock=FakeClock(), metrics=metrics)
    introspector.answers["t1"] = IntrospectionUnavailable("no answer in time", "timeout")
    verdict = await engine.authorize(RequestInfo("GET", "h", "/api", {"authorization": ["Bearer t1"]}))
    assert isinstance(verdict, Deny)
    assert verdict.status == 502
    assert {kind: n for kind, n in metrics.introspection_error_kinds.items() if n} == {"timeout": 1}
    assert metrics.introspection_errors == 1


async def test_reconfigure_swaps_the_routes_and_keeps_the_cache() -> None:
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(10)
    plugin = PluginConfig("http://as.test/introspect", "gateway", "secret")
    stricter = PluginConfig("http://as.test/introspect", "gateway", "secret", scope=("admin",))
    assert stricter.cache_namespace == plugin.cache_namespace
    engine = Engine(Router((Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),)), cache, introspector,
                    clock=clock)
    introspector.activate("t1", {"sub": "a", "scope": "read", "exp": clock.now + 3600})
    request = RequestInfo("GET", "h", "/api", {"authorization": ["Bearer t1"]})
    assert isinstance(await engine.authorize(request), Allow)
    other = FakeIntrospector()
    engine.reconfigure(Router((Route("api", "svc", UPSTREAM, paths=("/api",), plugin=stricter),)), other)
    verdict = engine.try_authorize(request)  # a cache hit: the entry of the unchanged namespace was kept
    assert isinstance(verdict, Deny)
    assert verdict.status == 403
    assert other.calls == []
    assert introspector.calls == ["t1"]
    engine.reconfigure(Router((Route("open", "svc", UPSTREAM, paths=("/api",)),)), other)
    assert isinstance(engine.try_authorize(request), Allow)


async def test_after_reconfigure_a_miss_asks_the_new_introspector() -> None:
    """The engine keeps its introspector's ``introspect`` bound (one look-up less per miss): a reload must rebind it."""
    clock, introspector, cache = FakeClock(), FakeIntrospector(), MemoryCache(10)
    plugin = PluginConfig("http://as.test/introspect", "gateway", "secret")
    router = Router((Route("api", "svc", UPSTREAM, paths=("/api",), plugin=plugin),))
    engine = Engine(router, cache, introspector, clock=clock)
    other = FakeIntrospector()
    other.activate("t2", {"sub": "a", "scope": "read", "exp": clock.now + 3600})
    engine.reconfigure(router, other)
    assert isinstance(await engine.authorize(RequestInfo("GET", "h", "/api", {"authorization": ["Bearer t2"]})), Allow)
    assert (introspector.calls, other.calls) == ([], ["t2"])


def test_memory_cache_counts_evictions() -> None:
    from phantom_token.core.ports import CacheEntry, NegativeEntry

    cache = MemoryCache(2, 1)
    for index in range(4):
        cache.put_local(bytes([index]), CacheEntry("Bearer x", frozenset(), 10.0))
    cache.put_local(b"n1", NegativeEntry(10.0))
    cache.put_local(b"n2", NegativeEntry(10.0))
    assert cache.evictions == (2, 1)


REDIS_CONFIG = """
_format_version: "2.1"
phantom_token:
  cache: {redis_url: "redis://127.0.0.1:9/0"}
services:
  - name: api
    url: http://127.0.0.1:9
    routes: [{name: api-route, paths: [/api]}]
    plugins:
      - name: phantom-token
        config: {introspection_endpoint: "http://127.0.0.1:9/introspect", client_id: c, client_secret: s}
"""


def full_exposition() -> str:
    """What /metrics shows for a supervised worker of a gateway with Redis once each kind of event happened
    (nothing is opened: no I/O)."""
    gateway = Gateway(parse_settings(yaml.safe_load(REDIS_CONFIG), source="redis.yml"))
    slots = WorkerSlots(1, slot_bytes=64 * 1024)
    try:
        listeners = Listeners(gateway, "serve", shared_metrics=WorkerMetrics(slots, 0))
        metrics = gateway.metrics
        metrics.observe_request(200, "allowed", "api-route")
        metrics.introspection_failed("down")
        metrics.upstream_failed("timeout")
        return listeners.render_metrics()
    finally:
        slots.close()


def test_a_gateway_with_redis_shows_every_family() -> None:
    shown = {family_of(series) for series in parse(full_exposition())}
    assert shown == set(FAMILIES)


def test_the_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    shown = set(parse(full_exposition())) | {series.partition("{")[0] for series in parse(full_exposition())}
    names = {name.partition("{")[0] for name in shown}
    for expr in exprs:
        for name in re.findall(r"\bphantom_token_[a-z_]+", expr):
            assert name in names, f"the dashboard queries {name}, which /metrics does not show"
    labels_used = set(re.findall(r'(\w+)=~?"', " ".join(exprs)))
    assert labels_used <= {"route", "outcome", "status", "kind", "result", "operation", "scope", "le", "job",
                           "instance"}


def test_settings_without_redis_still_show_the_memory_tier() -> None:
    gateway = Gateway(Settings(()))
    samples = gateway.metrics.samples()
    assert samples['phantom_token_cache_entries{kind="active"}'] == 0
    assert samples['phantom_token_single_flight_waits_total{scope="process"}'] == 0
    assert "phantom_token_redis_unavailable" not in samples
