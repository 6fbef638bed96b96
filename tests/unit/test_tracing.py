"""The rule that turns tracing on (``tracing.exporter_names``), and the trace headers sent upstream."""

from __future__ import annotations

import pytest

from phantom_token import tracing


@pytest.mark.parametrize(("environ", "names"), [
    ({}, []),
    ({"OTEL_SERVICE_NAME": "gw", "OTEL_TRACES_SAMPLER": "always_on"}, []),  # not an exporter setting
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, []),  # set but empty
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "Console, otlp"}, ["console", "otlp"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
])
def test_tracing_is_on_only_when_the_environment_names_an_exporter(environ: dict[str, str], names: list[str]) -> None:
    assert tracing.exporter_names(environ) == names


def test_start_is_off_without_otel_variables() -> None:
    assert tracing.start({"OTEL_SERVICE_NAME": "gw"}) is None
    assert tracing.ACTIVE is None


def test_an_unknown_exporter_or_protocol_is_a_clear_error() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    with pytest.raises(tracing.TracingError, match="unknown exporter 'zipkin'"):
        tracing.start({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(tracing.TracingError, match="'http/json' is not supported"):
        tracing.start({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert tracing.ACTIVE is None


def test_the_clients_trace_headers_are_replaced_by_the_gateways() -> None:
    head = (b"GET /a HTTP/1.1\r\nTraceParent: 00-aaaa-bbbb-01\r\nAccept: */*\r\ntracestate: x=1\r\n"
            b"Host: api\r\n\r\n")
    ours = b"traceparent: 00-cccc-dddd-01\r\ntracestate: x=1\r\n"
    assert tracing.with_trace_context(head, ours) == (
        b"GET /a HTTP/1.1\r\nAccept: */*\r\nHost: api\r\ntraceparent: 00-cccc-dddd-01\r\ntracestate: x=1\r\n\r\n")
    plain = b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n"
    assert tracing.with_trace_context(plain, ours) == b"GET /a HTTP/1.1\r\nHost: api\r\n" + ours + b"\r\n"


def test_tracing_stays_on_until_its_last_user_shuts_it_down() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    environ = {"OTEL_TRACES_EXPORTER": "console"}
    first = tracing.start(environ)
    assert first is not None
    assert tracing.start(environ) is first  # a second gateway (a reload overlapping the old one)
    tracing.shutdown()
    assert tracing.ACTIVE is first
    tracing.shutdown()
    assert tracing.ACTIVE is None
    tracing.shutdown()  # more shutdowns than starts change nothing
    assert tracing.ACTIVE is None
