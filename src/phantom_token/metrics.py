"""One process's counters and histograms; ``exposition`` names them, merges workers and renders Prometheus text.

Plain integer attributes and small dicts, so the hot path pays one addition (or one dict lookup) per event and
builds no label strings per request: labels are rendered only by ``samples()``, when ``/metrics`` is asked or
when a worker publishes its snapshot (``exposition.WorkerSlots``, once a second).

Labels are bounded by the configuration and the code, never by what a client sends: ``route`` is a configured
route name ("" when no route matched), ``outcome`` is ``allowed`` or the ``code`` of the ``Deny`` that answered
(``core.verdict``: a new ``Deny`` code, e.g. a DPoP or claim refusal, becomes a new outcome by itself) or one of
the front doors' own words (``aborted``, ``refused``), ``status`` an HTTP status the gateway sent, ``kind`` one of
the fixed words of ``introspection_failed``/``upstream_failed``. No token, path, host or client address is a label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

INTROSPECTION_FAILURE_KINDS: Final = ("down", "timeout", "http_5xx", "http_status", "credentials_rejected",
                                      "invalid_answer", "discovery", "config")
"""Why introspection gave no answer (``core.errors.IntrospectionUnavailable.kind``): the server could not be reached,
did not answer in time, answered 5xx or another unexpected status, refused the gateway's own client credentials
(401/403), answered something unusable; discovery failed; the gateway's own key or TLS file is unusable."""

UPSTREAM_FAILURE_KINDS: Final = ("connect", "timeout", "protocol", "aborted")

ALLOWED: Final = "allowed"
"""The outcome of a request let through (any other outcome is the code of the ``Deny`` that answered)."""

Samples = dict[str, float]
"""Series (``name`` or ``name{label="value",...}``) -> value; the unit ``exposition`` merges and renders."""

Collector = Callable[[Samples], None]
"""Adds samples read from elsewhere (cache sizes, Redis, single-flight) when a snapshot is taken."""


# LATENCY_BUCKETS as a list: compiled, a list is read in place (a Final tuple is boxed whole to be iterated). A
# literal: a Final read at import time is not set yet in the compiled module. test_metrics_exposition checks both agree.
_BOUNDS: Final[list[float]] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


def bucket(seconds: float) -> int:
    """The index of the first of ``LATENCY_BUCKETS`` not below ``seconds`` (``len``: above them all). A scan, not
    ``bisect``: compiled, it compares unboxed floats with no call, and latencies sit in the first few buckets."""
    index = 0
    bounds = _BOUNDS
    size = len(bounds)
    while index < size and seconds > bounds[index]:
        index += 1
    return index


class _Cell:
    """One counter (a series of ``requests``, a histogram's bucket): found once, then incremented in place."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class Histogram:
    """Counts per ``LATENCY_BUCKETS`` bucket (not cumulative; ``samples`` makes them so) and the sum. A count is a
    ``_Cell`` each: compiled, ``cells[i].n += 1`` adds to a native int in place, where a list of ints takes the item
    out, adds generically and puts a new int object back (about 120 instructions more per observation)."""

    def __init__(self) -> None:
        self.cells = [_Cell() for _ in range(len(LATENCY_BUCKETS) + 1)]
        self.sum = 0.0

    @property
    def counts(self) -> list[int]:
        return [cell.n for cell in self.cells]

    def observe(self, seconds: float) -> None:
        self.cells[bucket(seconds)].n += 1
        self.sum += seconds

    def samples(self, name: str, into: Samples) -> None:
        cumulative = 0
        counts = self.counts
        for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
            cumulative += count
            into[f'{name}_bucket{{le="{bound}"}}'] = cumulative
        cumulative += counts[-1]
        into[f'{name}_bucket{{le="+Inf"}}'] = cumulative
        into[f"{name}_sum"] = self.sum
        into[f"{name}_count"] = cumulative


class Metrics:
    def __init__(self) -> None:
        self.cache_hits = 0
        self.cache_misses = 0
        self.introspections = 0
        self.introspection_errors = 0
        # Every known kind from the start at 0, so that rate() and alerts see the series before the first failure.
        self.introspection_error_kinds: dict[str, int] = dict.fromkeys(INTROSPECTION_FAILURE_KINDS, 0)
        # (route, outcome, status) -> count. The last series counted is remembered: keep-alive traffic repeats it,
        # and comparing three values by identity is cheaper than hashing a new tuple.
        self.requests: dict[tuple[str, str, int], _Cell] = {}
        self._last_route = ""
        self._last_outcome = ""
        self._last_status = -1
        self._last_cell = _Cell()
        self.introspection_latency = Histogram()
        self.upstream_latency = Histogram()
        self.upstream_errors: dict[str, int] = dict.fromkeys(UPSTREAM_FAILURE_KINDS, 0)
        self.collectors: list[Collector] = []

    # -- the hot path ------------------------------------------------------------------------------------------

    def observe_request(self, status: int, outcome: str, route: str | None) -> None:
        """One answer of a front door: its status, its outcome word and its route's name (None: no route)."""
        name = route if route is not None else ""
        if status == self._last_status and outcome is self._last_outcome and name is self._last_route:
            self._last_cell.n += 1
            return
        key = (name, outcome, status)
        cell = self.requests.get(key)
        if cell is None:
            cell = self.requests[key] = _Cell()
        cell.n += 1
        self._last_route, self._last_outcome, self._last_status, self._last_cell = name, outcome, status, cell

    def observe_introspection(self, seconds: float) -> None:
        self.introspection_latency.observe(seconds)

    def observe_forwarded(self, status: int, route: str, seconds: float) -> None:
        """A response of the upstream passed on in full (``serve``): ``observe_request(status, "allowed", route)``
        and its latency (``seconds`` from sending the request upstream to the end of its response), in one call:
        this is every allowed request's path."""
        if status == self._last_status and ALLOWED is self._last_outcome and route is self._last_route:
            self._last_cell.n += 1
        else:
            self.observe_request(status, ALLOWED, route)
        self.upstream_latency.observe(seconds)

    # -- failures (never on the hit path) -------------------------------------------------------------------------

    def introspection_failed(self, kind: str) -> None:
        """``kind``: one of ``INTROSPECTION_FAILURE_KINDS``."""
        self.introspection_errors += 1
        self.introspection_error_kinds[kind] = self.introspection_error_kinds.get(kind, 0) + 1

    def upstream_failed(self, kind: str) -> None:
        """``kind``: one of ``UPSTREAM_FAILURE_KINDS``: could not connect, no answer in time, closed early or not
        HTTP, failed mid-response (the client connection is dropped)."""
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1

    # -- reading -----------------------------------------------------------------------------------------------

    def samples(self) -> Samples:
        """Every series of this process with its value (names and meaning: ``exposition.FAMILIES``)."""
        out: Samples = {}
        for (route, outcome, status), cell in sorted(self.requests.items(), key=lambda item: item[0]):
            out[f'phantom_token_requests_total{{route="{_escape(route)}",outcome="{outcome}",status="{status}"}}'] = \
                cell.n
        out["phantom_token_cache_hits_total"] = self.cache_hits
        out["phantom_token_cache_misses_total"] = self.cache_misses
        out["phantom_token_introspections_total"] = self.introspections
        out["phantom_token_introspection_errors_total"] = self.introspection_errors
        for kind in sorted(self.introspection_error_kinds):
            out[f'phantom_token_introspection_failures_total{{kind="{kind}"}}'] = self.introspection_error_kinds[kind]
        self.introspection_latency.samples("phantom_token_introspection_seconds", out)
        self.upstream_latency.samples("phantom_token_upstream_seconds", out)
        for kind in sorted(self.upstream_errors):
            out[f'phantom_token_upstream_errors_total{{kind="{kind}"}}'] = self.upstream_errors[kind]
        for collect in self.collectors:
            collect(out)
        return out


def _escape(value: str) -> str:
    """A label value in the text format (route names come from the configuration, which may hold anything)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
