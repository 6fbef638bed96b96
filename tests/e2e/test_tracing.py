"""Tracing (issue 17, point 2): ``serve`` with ``OTEL_*`` set exports its spans over OTLP/HTTP to a real receiver.

Real parts: the gateway process with the OpenTelemetry SDK and its OTLP/HTTP exporter (configured only by the
environment), the demo authorization server (behind a recording relay that keeps the headers of each
introspection request), the echo API (which shows the headers it received), a redis-server, and an OTLP/HTTP
receiver here that decodes the protobuf export requests with ``opentelemetry-proto``.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ..integration.redis_server import RedisServer, running_redis
from .conftest import AuthServer, GatewayFactory, dump, free_port, plugin_options

trace_service_pb2 = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2", reason="the otel extra is not installed")

pytestmark = pytest.mark.e2e

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT_ID = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


class _Serving:
    """A ``ThreadingHTTPServer`` on a free loopback port, served by a thread, closed by ``close``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class OtlpReceiver(_Serving):
    """``POST /v1/traces`` (OTLP/HTTP, binary protobuf): keeps every span received, with its resource's service."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, request: Any) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), None)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append({
                            "service": service, "name": span.name, "kind": span.kind,
                            "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(), "trace_state": span.trace_state,
                            "status": span.status.code,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        })

    def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool], within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while True:
            with self.lock:
                if condition(list(self.spans)):
                    return
            assert time.monotonic() < deadline, f"spans not received in time: {self.spans}"
            time.sleep(0.05)


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


class RecordingRelay(_Serving):
    """Relays each POST to the demo authorization server and keeps the request's headers."""

    def __init__(self, target: str) -> None:
        self.headers: list[dict[str, str]] = []
        relay, parts = self, urllib.parse.urlsplit(target)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                relay.headers.append({name.lower(): value for name, value in self.headers.items()})
                forward = {name: value for name, value in self.headers.items()
                           if name.lower() not in ("host", "connection")}
                upstream = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
                try:
                    upstream.request("POST", parts.path, body, forward)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


@pytest.fixture
def relay(auth_server: AuthServer) -> Iterator[RecordingRelay]:
    server = RecordingRelay(auth_server.introspection_endpoint)
    yield server
    server.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from running_redis()


def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50"}


def test_spans_continue_the_clients_trace_into_introspection_redis_and_the_upstream(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, receiver: OtlpReceiver,
    relay: RecordingRelay, redis_server: RedisServer,
) -> None:
    plugin_options(plugin_config)["introspection_endpoint"] = f"http://127.0.0.1:{relay.port}/oauth/introspect"
    config = {**plugin_config, "phantom_token": {"cache": {"redis_url": redis_server.url}}}
    gw = gateway(dump(config), env=otel_env(receiver))
    token = auth_server.issue_token()
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01"
    result = gw.request("/api/hello?q=secret-query-value", [
        ("Authorization", f"Bearer {token}"), ("traceparent", traceparent), ("tracestate", "vendor=abc")])
    assert result.status == 200, result.text
    untraced = gw.get_with_token(token)  # a cache hit, without a traceparent: a trace of its own
    assert untraced.status == 200, untraced.text

    receiver.wait_for(lambda spans: sum(s["kind"] == SERVER for s in spans) >= 2
                      and any(s["name"] == "introspection" for s in spans))
    spans = receiver.spans
    assert {s["service"] for s in spans} == {"gateway-under-test"}
    first = next(s for s in spans if s["kind"] == SERVER and s["trace_id"] == CLIENT_TRACE_ID)
    assert first["parent_id"] == CLIENT_PARENT_ID
    assert first["trace_state"] == "vendor=abc"
    assert first["name"] == "GET business-api-route"
    assert first["attributes"]["http.request.method"] == "GET"
    assert first["attributes"]["url.path"] == "/api/hello"
    assert first["attributes"]["http.response.status_code"] == 200
    assert first["attributes"]["phantom_token.outcome"] == "allowed"
    assert first["attributes"]["phantom_token.route"] == "business-api-route"
    assert first["attributes"]["phantom_token.front_door"] == "serve"

    introspection = next(s for s in spans if s["name"] == "introspection")
    assert (introspection["kind"], introspection["trace_id"]) == (CLIENT, CLIENT_TRACE_ID)
    assert introspection["parent_id"] == first["span_id"]
    assert introspection["attributes"]["server.port"] == relay.port
    redis_spans = [s for s in spans if s["name"].startswith("redis ")]
    assert {"redis GET", "redis SET"} <= {s["name"] for s in redis_spans}, [s["name"] for s in spans]
    assert all(s["trace_id"] == CLIENT_TRACE_ID and s["parent_id"] == first["span_id"] for s in redis_spans)

    second = next(s for s in spans if s["kind"] == SERVER and s["trace_id"] != CLIENT_TRACE_ID)
    assert second["parent_id"] == ""  # a new trace: no parent

    # The introspection request carried a traceparent naming the introspection span.
    sent = [h for h in relay.headers if "traceparent" in h]
    assert len(sent) == 1, relay.headers
    assert sent[0]["traceparent"] == f"00-{CLIENT_TRACE_ID}-{introspection['span_id']}-01"
    # The upstream saw one traceparent, the client's trace with the gateway's request span as parent.
    echoed = result.json()["raw_headers"]
    assert [v for n, v in echoed if n == "traceparent"] == [f"00-{CLIENT_TRACE_ID}-{first['span_id']}-01"]
    assert [v for n, v in echoed if n == "tracestate"] == ["vendor=abc"]

    assert "tracing on: otlp" in gw.stderr()
    # Never the token (nor its JWT) and never the query string in a span.
    for span in spans:
        for value in [span["name"], *map(str, span["attributes"].values())]:
            assert token not in value, span
            assert "secret-query-value" not in value, span
            assert "eyJ" not in value, span  # no JWT either


def test_a_refused_request_is_a_span_with_an_error_free_401(
    gateway: GatewayFactory, plugin_config: dict[str, Any], receiver: OtlpReceiver
) -> None:
    gw = gateway(dump(plugin_config), env={"OTEL_TRACES_EXPORTER": "otlp", **otel_env(receiver)})
    result = gw.request("/api/hello", [("traceparent", f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01")])
    assert result.status == 401
    receiver.wait_for(lambda spans: any(s["kind"] == SERVER for s in spans))
    span = next(s for s in receiver.spans if s["kind"] == SERVER)
    assert span["attributes"]["phantom_token.outcome"] == "unauthorized"
    assert span["attributes"]["http.response.status_code"] == 401
    assert span["parent_id"] == CLIENT_PARENT_ID


def test_an_unsampled_trace_is_passed_on_unsampled_and_exports_nothing(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, receiver: OtlpReceiver
) -> None:
    gw = gateway(dump(plugin_config), env=otel_env(receiver))  # the default sampler follows the parent's flag
    token = auth_server.issue_token()
    unsampled = gw.request("/api/hello", [("Authorization", f"Bearer {token}"),
                                          ("traceparent", f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-00")])
    assert unsampled.status == 200, unsampled.text
    (sent,) = [v for n, v in unsampled.json()["raw_headers"] if n == "traceparent"]
    assert sent.startswith(f"00-{CLIENT_TRACE_ID}-")
    assert sent.endswith("-00")
    assert sent != f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-00"  # a span id of the gateway's, not the client's
    sampled = gw.get_with_token(token)  # a new trace: sampled
    assert sampled.status == 200
    receiver.wait_for(lambda spans: any(s["kind"] == SERVER for s in spans))
    gw.stop()
    assert all(s["trace_id"] != CLIENT_TRACE_ID for s in receiver.spans), receiver.spans
    assert "Traceback" not in gw.stderr()


def test_without_otel_variables_nothing_is_exported_and_the_clients_traceparent_goes_through(
    gateway: GatewayFactory, plugin_config: dict[str, Any], auth_server: AuthServer, receiver: OtlpReceiver
) -> None:
    gw = gateway(dump(plugin_config), env={"OTEL_SERVICE_NAME": "not-enough-to-turn-tracing-on"})
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01"
    result = gw.request("/api/hello", [("Authorization", f"Bearer {auth_server.issue_token()}"),
                                       ("traceparent", traceparent)])
    assert result.status == 200
    assert [v for n, v in result.json()["raw_headers"] if n == "traceparent"] == [traceparent]
    gw.stop()
    assert receiver.spans == []
    assert "tracing on" not in gw.stderr()


def test_an_unknown_exporter_stops_start_up_with_one_clear_line(
    plugin_config: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yml"
    config.write_text(dump(plugin_config), encoding="utf-8")
    argv = [sys.executable, "-m", "phantom_token", "serve", "-c", str(config), "--listen", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(argv, env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert "phantom-token: cannot start: OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'" in done.stderr
    assert "Traceback" not in done.stderr
