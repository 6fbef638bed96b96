"""Process-wide counters, rendered in the Prometheus text format (version 0.0.4).

Plain integer attributes, so the hot path pays one addition per event; no labels are built per request.
"""

from __future__ import annotations

import bisect
from typing import Final

_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.cache_hits = 0
        self.cache_misses = 0
        self.introspections = 0
        self.introspection_errors = 0
        self.responses: dict[int, int] = {}  # a plain dict: compiled, a Counter's += is a generic call
        self._bucket_counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    def observe_introspection(self, seconds: float) -> None:
        self._bucket_counts[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def observe_response(self, status: int) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1

    def render(self, extra: dict[str, float] | None = None) -> str:
        lines = [
            "# HELP phantom_token_requests_total Requests answered, by HTTP status and outcome.",
            "# TYPE phantom_token_requests_total counter",
        ]
        for status in sorted(self.responses):
            lines.append(
                f'phantom_token_requests_total{{status="{status}",outcome="{_outcome(status)}"}} '
                f"{self.responses[status]}"
            )
        lines += [
            "# HELP phantom_token_cache_hits_total Requests answered from the token cache.",
            "# TYPE phantom_token_cache_hits_total counter",
            f"phantom_token_cache_hits_total {self.cache_hits}",
            "# HELP phantom_token_cache_misses_total Requests that found no cache entry.",
            "# TYPE phantom_token_cache_misses_total counter",
            f"phantom_token_cache_misses_total {self.cache_misses}",
            "# HELP phantom_token_introspections_total Calls made to introspection endpoints.",
            "# TYPE phantom_token_introspections_total counter",
            f"phantom_token_introspections_total {self.introspections}",
            "# HELP phantom_token_introspection_errors_total Introspection calls that gave no usable answer.",
            "# TYPE phantom_token_introspection_errors_total counter",
            f"phantom_token_introspection_errors_total {self.introspection_errors}",
            "# HELP phantom_token_introspection_seconds Latency of introspection calls.",
            "# TYPE phantom_token_introspection_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(_LATENCY_BUCKETS, self._bucket_counts, strict=False):
            cumulative += count
            lines.append(f'phantom_token_introspection_seconds_bucket{{le="{bound}"}} {cumulative}')
        cumulative += self._bucket_counts[-1]
        lines.append(f'phantom_token_introspection_seconds_bucket{{le="+Inf"}} {cumulative}')
        lines.append(f"phantom_token_introspection_seconds_sum {self._latency_sum}")
        lines.append(f"phantom_token_introspection_seconds_count {cumulative}")
        for name, value in (extra or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"


def _outcome(status: int) -> str:
    if status < 400:
        return "allowed"
    return {400: "malformed", 401: "unauthorized", 403: "forbidden", 404: "no_route"}.get(
        status, "upstream_error" if status in (502, 504) else "error"
    )
