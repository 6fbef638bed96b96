"""Tracing with OpenTelemetry (the optional ``otel`` extra), configured only by the standard ``OTEL_*`` environment.

Tracing is on in a process when, at start-up (``start``, called by ``Gateway.open`` in every worker, after the
fork):
- ``OTEL_SDK_DISABLED`` is not ``true``, and
- ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none`` (``otlp``, ``console``; a comma-separated list),
  or, when ``OTEL_TRACES_EXPORTER`` is unset, some ``OTEL_EXPORTER_OTLP_*`` variable is set (``otlp`` is then used).
Otherwise it is off and ``ACTIVE`` stays None. With it on but the extra missing (``pip install
'phantom-token[otel]'``), one warning is logged and tracing stays off: the gateway itself never depends on it.

Everything else comes from the SDK's own reading of the environment: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (the resource; the service name defaults to ``phantom-token`` here),
``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``),
``OTEL_BSP_*`` (the batch span processor),
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``, ``_CERTIFICATE`` and
``_PROTOCOL`` (``http/protobuf``, the default; ``grpc`` needs ``opentelemetry-exporter-otlp-proto-grpc``).

The front doors (compiled) never import this module's OpenTelemetry side: they read ``ACTIVE`` once, when their
listener starts, keep it (None when off) and, only when it is not None, call ``start_request``/``end_request`` and
``upstream_lines``; off, a request costs nothing more than before (the access log's one boolean test per request
already covers both). The introspection client and the Redis link ask ``ACTIVE`` on their own (slow) paths.

Spans (one tracer, ``phantom_token``):
- the request (``SERVER``), continuing the client's W3C ``traceparent``/``tracestate`` when valid: front door,
  method, path without the query, route, status, outcome, the token's fingerprint; an error status for 5xx;
- the introspection (``CLIENT``), child of the request: the server's address, the outcome; its request carries a
  ``traceparent`` naming it, so the authorization server's spans join the trace;
- each Redis command made for a request (``CLIENT``), child of the request (commands made outside a request, such as
  purges and the events subscription, are not traced);
- the upstream request carries a ``traceparent`` (and the client's ``tracestate``) whose parent is the request span,
  replacing whatever the client sent.

Invariants: never a token, a query string, a header value or an exception message in a span (exceptions are
recorded by type only); the client's trace headers are read, never copied upstream as they came.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

from phantom_token.errors import PhantomTokenError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from phantom_token.http.request_head import RequestHead

log = logging.getLogger("phantom_token.tracing")

T = TypeVar("T")
TRACE_HEADERS: Final = ("traceparent", "tracestate")
DEFAULT_SERVICE_NAME: Final = "phantom-token"
EXTRA_HINT: Final = "pip install 'phantom-token[otel]'"


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the environment asks for; empty when tracing is off (the rule in the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    listed = environ.get("OTEL_TRACES_EXPORTER")
    if listed is not None and listed.strip():
        names = [name.strip().lower() for name in listed.split(",") if name.strip()]
        return [] if "none" in names else names
    if any(name.startswith("OTEL_EXPORTER_OTLP_") and value for name, value in environ.items()):
        return ["otlp"]
    return []


ACTIVE: Tracing | None = None
"""This process's tracing, or None (off). Set by ``start``; the front doors read it when their listener starts."""


class TracingError(PhantomTokenError, ValueError):
    """The environment asks for something this process cannot do (an unknown exporter or protocol): the process
    does not start (``phantom-token: cannot start: ...``)."""


_users = 0  # gateways that started tracing and have not shut it down (a reload may overlap two)


def start(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Turn tracing on when the environment says so (once per process; later calls return the same). Each call
    that returns a ``Tracing`` is to be paired with one ``shutdown``."""
    global ACTIVE, _users
    if ACTIVE is not None:
        _users += 1
        return ACTIVE
    env = os.environ if environ is None else environ
    names = exporter_names(env)
    if not names:
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider  # noqa: F401
    except ImportError:
        log.warning("OTEL_* asks for traces but OpenTelemetry is not installed (%s): tracing off", EXTRA_HINT)
        return None
    ACTIVE = Tracing(_provider([_exporter(name, env) for name in names], env))
    _users = 1
    log.info("tracing on: %s", ", ".join(names))
    return ACTIVE


def shutdown() -> None:
    """The counterpart of ``start``: the last user's call exports what is pending and turns tracing off."""
    global ACTIVE, _users
    if ACTIVE is None:
        return
    _users -= 1
    if _users <= 0:
        active, ACTIVE, _users = ACTIVE, None, 0
        active.provider.shutdown()


def _provider(exporters: list[SpanExporter], environ: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({} if environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", "") else {SERVICE_NAME: DEFAULT_SERVICE_NAME})
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER[_ARG]
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    return provider


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # e.g. xds-protos' older copy of opentelemetry.proto over opentelemetry-proto's
            raise TracingError(f"the OTLP exporter cannot be imported ({exc}); with the grpc extra installed too, "
                               "reinstall opentelemetry-proto last (docs/tracing.md, \"Installing\")") from None
        return OTLPSpanExporter()  # endpoint, headers, timeout, compression, certificate: OTEL_EXPORTER_OTLP_*
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc import trace_exporter  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise TracingError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc "
                               "installed (or use http/protobuf)") from None
        return trace_exporter.OTLPSpanExporter()  # type: ignore[no-any-return,unused-ignore]
    raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)")


class Tracing:
    """The tracer and the W3C trace-context propagator of one process."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from phantom_token import __version__

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("phantom_token", __version__)
        self._trace = trace
        self._context = context
        self._propagator = TraceContextTextMapPropagator()
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)

    # -- the request (front doors) -----------------------------------------------------------------------------

    def start_request(self, front: str, head: RequestHead) -> Span:
        """The request's server span, continuing the client's trace when its ``traceparent`` is valid."""
        carrier = {name: values[0] for name in TRACE_HEADERS
                   if (values := head.headers.get(name)) is not None and len(values) == 1}
        parent = self._propagator.extract(carrier) if carrier else None
        return self.tracer.start_span(head.method, context=parent, kind=self._server, attributes={
            "phantom_token.front_door": front, "http.request.method": head.method, "url.path": head.path,
        })

    def end_request(self, span: Span, status: int, outcome: str, route: str | None, token: str | None) -> None:
        """End the request span; ``token`` is the token's fingerprint (as the access log computes it), if any."""
        if not span.is_recording():  # not sampled: nothing to record
            span.end()
            return
        attributes: dict[str, Any] = {"http.response.status_code": status, "phantom_token.outcome": outcome}
        if route is not None:
            attributes["phantom_token.route"] = route
            span.update_name(f"{span.name} {route}")  # type: ignore[attr-defined]
        if token is not None:
            attributes["phantom_token.token.fingerprint"] = token
        span.set_attributes(attributes)  # one call: each takes the span's lock
        if status >= 500:
            span.set_status(self._error)
        span.end()

    def attach(self, span: Span) -> None:
        """Make ``span`` the current one in the running task (its context is the task's own copy, so nothing has to
        be detached: the engine's asynchronous path, its introspection and Redis calls become its children)."""
        self._context.attach(self._trace.set_span_in_context(span))

    def upstream_lines(self, span: Span) -> bytes:
        """``traceparent`` (and ``tracestate``) header lines naming ``span`` as the parent."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, self._trace.set_span_in_context(span))
        return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in carrier.items()
                        if "\r" not in value and "\n" not in value)

    # -- calls made for a request (introspection, Redis) -------------------------------------------------------

    async def introspection(self, endpoint: str, call: Callable[[list[tuple[str, str]]], Awaitable[T]]) -> T:
        """``call(headers)`` in an introspection span; ``headers`` carry its ``traceparent``."""
        parts = urlsplit(endpoint)
        attributes: dict[str, Any] = {"server.address": parts.hostname or "", "url.scheme": parts.scheme}
        if parts.port is not None:
            attributes["server.port"] = parts.port
        with self.tracer.start_as_current_span("introspection", kind=self._client, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
            try:
                result = await call(list(carrier.items()))
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(self._error)
                raise
            active = getattr(result, "active", None)
            if isinstance(active, bool):
                span.set_attribute("phantom_token.introspection.active", active)
            return result

    async def redis(self, command: str, call: Awaitable[T]) -> T:
        """``call`` in a Redis span when made for a traced request, else as it is."""
        if not self._trace.get_current_span().get_span_context().is_valid:
            return await call
        with self.tracer.start_as_current_span(f"redis {command}", kind=self._client,
                                               attributes={"db.system": "redis", "db.operation.name": command},
                                               record_exception=False, set_status_on_exception=False) as span:
            try:
                return await call
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(self._error)
                raise


def with_trace_context(request_head: bytes, lines: bytes) -> bytes:
    """``request_head`` (ending with its empty line) without the client's ``traceparent``/``tracestate`` and with
    ``lines`` (``upstream_lines``) instead."""
    lowered = request_head.lower()
    if b"\ntraceparent:" in lowered or b"\ntracestate:" in lowered:
        kept = [line for line in request_head[:-4].split(b"\r\n")
                if not line[:12].lower().startswith((b"traceparent:", b"tracestate:"))]
        request_head = b"\r\n".join(kept) + b"\r\n\r\n"
    return request_head[:-2] + lines + b"\r\n"


__all__ = ["ACTIVE", "Tracing", "TracingError", "exporter_names", "shutdown", "start", "with_trace_context"]
