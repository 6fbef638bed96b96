"""``/metrics`` for the whole process: the metric families, the worker snapshots they are summed from, the text.

With ``--workers N`` each worker counts in its own memory (``metrics.Metrics``, plain integers: the hot path pays
nothing for sharing) and publishes a snapshot of its series, once every ``PUBLISH_SECONDS`` and when it stops,
into its slot of one shared memory segment (``WorkerSlots``: an anonymous ``mmap`` the supervisor maps before it
forks). The worker that runs the admin listener answers ``/metrics`` with every slot summed, its own read fresh.
Counters and histogram buckets sum; so do the gauges, which are per-worker quantities (entries in each worker's
memory cache, workers that see Redis down).

Counters stay monotonic across worker restarts: a worker starting in a slot takes the counters and histograms its
predecessor last published there as its *carry* and publishes carry + its own, so a dead worker's counts neither
vanish nor double. What a worker killed with no chance to publish counted since its last snapshot (at most
``PUBLISH_SECONDS``) is lost; a graceful stop publishes last. The supervisor itself restarting is a counter reset,
as for any Prometheus target. ``/metrics`` may lag the other workers' traffic by up to ``PUBLISH_SECONDS``.

A slot is a seqlock: ``<sequence:u64><length:u32><JSON>``; the writer makes the sequence odd, writes, makes it
even; a reader retries while it is odd or moved. Only the slot's own worker writes it.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from collections.abc import Iterable
from typing import Final

from phantom_token.metrics import Samples

log = logging.getLogger("phantom_token")

PUBLISH_SECONDS: Final = 1.0
SLOT_BYTES: Final = 1 << 20  # per worker; only the pages written are ever resident
_HEADER = struct.Struct("<QI")
_READ_ATTEMPTS = 100

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

FAMILIES: Final[dict[str, tuple[str, str]]] = {
    "phantom_token_requests_total": (
        COUNTER, "Requests answered, by route (\"\" when none matched), outcome and HTTP status."),
    "phantom_token_cache_hits_total": (COUNTER, "Requests answered from a cache tier (memory or Redis)."),
    "phantom_token_cache_misses_total": (COUNTER, "Requests that found no cache entry in any tier."),
    "phantom_token_introspections_total": (COUNTER, "Calls made to introspection endpoints."),
    "phantom_token_introspection_errors_total": (COUNTER, "Introspection calls that gave no usable answer."),
    "phantom_token_introspection_failures_total": (
        COUNTER, "Introspection calls that gave no usable answer, by kind: down, timeout, http_5xx, http_status, "
                 "credentials_rejected, invalid_answer, discovery, config."),
    "phantom_token_introspection_seconds": (HISTOGRAM, "Latency of introspection calls."),
    "phantom_token_upstream_seconds": (
        HISTOGRAM, "Time from sending a request upstream to the end of its response (serve)."),
    "phantom_token_upstream_errors_total": (
        COUNTER, "Upstream requests that failed, by kind: connect, timeout, protocol, aborted."),
    "phantom_token_single_flight_waits_total": (
        COUNTER, "Cache misses that waited for an introspection already running for the same token, by scope: "
                 "process, or cluster (a peer holding the Redis lock)."),
    "phantom_token_cache_entries": (GAUGE, "Entries held in the memory cache, by kind (active, negative)."),
    "phantom_token_cache_evictions_total": (
        COUNTER, "Entries the memory cache dropped to stay within its bound, by kind (active, negative)."),
    "phantom_token_redis_operations_total": (
        COUNTER, "Redis cache commands, by operation (get, set) and result (hit, miss, ok, error)."),
    "phantom_token_redis_unavailable": (
        GAUGE, "Workers that currently treat Redis as unreachable (serving from memory and introspection)."),
    "phantom_token_config_reloads_total": (
        COUNTER, "Configuration reloads (SIGHUP) by result: applied, refused. Counted per worker."),
    "phantom_token_workers": (GAUGE, "Worker processes publishing metrics."),
}
"""Every family ``/metrics`` may show: its type and help. docs/operations.md documents the same."""

_SUFFIXES = ("_bucket", "_sum", "_count")


def family_of(series: str) -> str:
    """The family a series belongs to (``x_bucket{le="1"}`` -> ``x`` when ``x`` is a histogram)."""
    name = series.partition("{")[0]
    for suffix in _SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and FAMILIES.get(base, ("", ""))[0] == HISTOGRAM:
            return base
    return name


def merge(snapshots: Iterable[Samples]) -> Samples:
    """Series summed over snapshots, in order of first appearance."""
    total: Samples = {}
    for snapshot in snapshots:
        for series, value in snapshot.items():
            total[series] = total.get(series, 0) + value
    return total


def monotonic_part(samples: Samples) -> Samples:
    """The counters and histograms of a snapshot (what a restarted worker carries on; gauges are its own)."""
    return {series: value for series, value in samples.items()
            if FAMILIES.get(family_of(series), (COUNTER, ""))[0] != GAUGE}


def render(samples: Samples) -> str:
    """The Prometheus text format (0.0.4): each family's HELP and TYPE, then its series."""
    grouped: dict[str, list[str]] = {}
    for series, value in samples.items():
        grouped.setdefault(family_of(series), []).append(f"{series} {_number(value)}")
    lines: list[str] = []
    for family in [*FAMILIES, *sorted(set(grouped) - FAMILIES.keys())]:
        if family not in grouped:
            continue
        kind, text = FAMILIES.get(family, (GAUGE, ""))
        if text:
            lines.append(f"# HELP {family} {text}")
        lines.append(f"# TYPE {family} {kind}")
        lines.extend(grouped[family])
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


class WorkerSlots:
    """One shared memory slot per worker: ``publish`` (by the slot's worker), ``read`` (by anyone)."""

    def __init__(self, workers: int, slot_bytes: int = SLOT_BYTES) -> None:
        self.workers = workers
        self.slot_bytes = slot_bytes
        self._memory = mmap.mmap(-1, workers * slot_bytes)  # anonymous and shared: inherited by forked workers
        self._too_big_logged = False

    def publish(self, index: int, samples: Samples) -> None:
        payload = json.dumps(samples, separators=(",", ":")).encode()
        start = index * self.slot_bytes
        if _HEADER.size + len(payload) > self.slot_bytes:
            if not self._too_big_logged:
                self._too_big_logged = True
                log.warning("metrics snapshot of %d bytes exceeds its %d-byte slot: not published (too many "
                            "routes?)", len(payload), self.slot_bytes)
            return
        memory = self._memory
        sequence = _HEADER.unpack_from(memory, start)[0]
        _HEADER.pack_into(memory, start, sequence + 1, 0)  # odd: being written
        memory[start + _HEADER.size:start + _HEADER.size + len(payload)] = payload
        _HEADER.pack_into(memory, start, sequence + 2, len(payload))

    def read(self, index: int) -> Samples | None:
        """The slot's last snapshot; None if nothing was published there yet."""
        start = index * self.slot_bytes
        memory = self._memory
        for _ in range(_READ_ATTEMPTS):
            sequence, length = _HEADER.unpack_from(memory, start)
            if sequence == 0:
                return None
            if sequence % 2:
                continue
            payload = memory[start + _HEADER.size:start + _HEADER.size + length]
            if _HEADER.unpack_from(memory, start)[0] != sequence:
                continue
            try:
                document = json.loads(payload)
            except ValueError:
                continue
            return {str(k): float(v) for k, v in document.items()} if isinstance(document, dict) else None
        return None

    def close(self) -> None:
        self._memory.close()


class WorkerMetrics:
    """A worker's view: publishes its own series (with its slot's carry) and sums every slot for ``/metrics``."""

    def __init__(self, slots: WorkerSlots, index: int) -> None:
        self.slots = slots
        self.index = index
        previous = slots.read(index)
        self.carry = monotonic_part(previous) if previous else {}

    def snapshot(self, own: Samples) -> Samples:
        """This worker's series as published: the carry plus its own, and its ``phantom_token_workers`` 1."""
        total = merge((self.carry, own))
        total["phantom_token_workers"] = 1
        return total

    def publish(self, own: Samples) -> None:
        self.slots.publish(self.index, self.snapshot(own))

    def total(self, own: Samples) -> Samples:
        """Every worker's series summed, this worker's fresh."""
        snapshots = [self.snapshot(own) if index == self.index else self.slots.read(index)
                     for index in range(self.slots.workers)]
        return merge(snapshot for snapshot in snapshots if snapshot)


__all__ = ["FAMILIES", "PUBLISH_SECONDS", "WorkerMetrics", "WorkerSlots", "family_of", "merge", "monotonic_part",
           "render"]
