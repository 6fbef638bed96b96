"""Where a request's CPU time goes on the real CPU: ``perf`` samples of the processes under test, scaled to µs per
request, by shared object and by function, for two loads side by side.

    .venv/bin/python bench/cycles.py serve [--tokens 10000] [--seconds 5] [--top 25] [--keep DIR]
    .venv/bin/python bench/cycles.py nginx [--only set-misc lua ...] [--seconds 5] [--top 25] [--keep DIR]

``serve``: ``phantom-token serve`` at a cache hit with one token, then round robin over N cached tokens (bench/run.py's
scale rows; the per-connection token memo misses on every request). ``nginx``: plain ``proxy_pass``, then each
nginx example at a decision-cache hit (bench/nginx_instructions.py's variants), each against plain. One worker each,
``wrk -t1 -c50``, the nginx ``return 200`` upstream in its own process.

Why beside the instruction counts (``bench/hotpath.py --instructions``, ``bench/serve_instructions.py``,
``bench/nginx_instructions.py``): valgrind counts the instructions, the steady measure of our own code, but it
cannot see what the CPU waits for (an entry that 10,000 others pushed out of the CPU's caches), nor code that runs
differently on the real CPU (OpenSSL uses the SHA extensions, which valgrind hides from it), nor the kernel.

How: ``perf record -e cpu-clock -a`` while wrk runs (a software clock, 4,999 samples a second per CPU: this
machine's VMs offer no hardware counters, and per-process sampling records nothing here), then ``perf script``,
keeping only the samples of the processes under test (the child's process group). A function's µs per request =
its share of those samples x the processes' CPU time per request (user + system from /proc, as bench/run.py counts
it). Sampling is statistical: at 5 s, a function under about 0.02 µs per request is noise. Needs ``perf``
(``apt install linux-perf``) and root or ``kernel.perf_event_paranoid`` <= 0 for ``-a``; every process is stopped on
exit. Nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import Child, Processes, WrkResult, free_port, wrk
from nginx_instructions import VARIANTS, start_variant
from nginx_instructions import start_bed as start_nginx_bed
from run import _work_dir
from serve_instructions import start_bed as start_serve_bed

# perf script -F pid,ip,sym,dso: "  1234 ffffffff81a0b0c0 tcp_sendmsg+0x1d ([kernel.kallsyms])"
_SAMPLE = re.compile(r"^\s*(\d+)\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")

Function = tuple[str, str]  # (shared object's file name, function)


def samples(script: str, pids: Collection[int]) -> Counter[Function]:
    """Samples per (shared object, function) of ``perf script -F pid,ip,sym,dso`` output, only those of ``pids``.
    A function's offset (``+0x1d``) is dropped; an unresolved one is ``[unknown]``."""
    counts: Counter[Function] = Counter()
    for line in script.splitlines():
        found = _SAMPLE.match(line)
        if found is None or int(found.group(1)) not in pids:
            continue
        symbol = re.sub(r"\+0x[0-9a-f]+$", "", found.group(2)) or "[unknown]"
        counts[(found.group(3).rsplit("/", 1)[-1], symbol)] += 1
    return counts


@dataclass
class Profile:
    """One load's requests, the processes' CPU µs per request and their samples."""

    requests: int
    cpu_us: float
    counts: Counter[Function]

    def per_request(self) -> dict[Function, float]:
        """µs per request of each function: its share of the samples x the CPU time per request."""
        total = sum(self.counts.values())
        return {name: count / total * self.cpu_us for name, count in self.counts.items()} if total else {}

    def by_object(self) -> dict[str, float]:
        objects: Counter[str] = Counter()
        for (shared, _), value in self.per_request().items():
            objects[shared] += value  # type: ignore[assignment]  # Counter of floats
        return dict(objects)


def record(child: Child, load: Callable[[float], WrkResult], seconds: float, out: Path) -> Profile:
    """Samples the whole machine while ``load`` runs for ``seconds``; keeps those of ``child``'s processes."""
    recorder = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4999", "-a", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(0.5)  # perf is sampling before the load starts
        before = child.cpu_seconds()
        result = load(seconds)
        used = child.cpu_seconds() - before
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    if result.bad_status or result.socket_errors:
        raise RuntimeError(f"{result.bad_status} bad answers, {result.socket_errors} socket errors:\n{child.tail()}")
    script = subprocess.run(["perf", "script", "-i", str(out), "-F", "pid,ip,sym,dso"], capture_output=True,
                            text=True, check=True).stdout
    counts = samples(script, child.pids())
    if not counts:
        raise RuntimeError(f"perf recorded no samples of {child.name} (perf_event_paranoid? a VM without a clock?)")
    return Profile(result.requests, used / result.requests * 1e6, counts)


def report(first_name: str, first: Profile, second_name: str, second: Profile, top: int) -> str:
    """The two loads' µs per request by shared object, then the ``top`` functions that grow most."""
    lines = [f"CPU us per request: {first_name} {first.cpu_us:.2f}, {second_name} {second.cpu_us:.2f} "
             f"({second.cpu_us - first.cpu_us:+.2f}); samples {sum(first.counts.values())}, "
             f"{sum(second.counts.values())}",
             f"{'us/req: first':>14} {'second':>7} {'growth':>7}  shared object"]
    a, b = first.by_object(), second.by_object()
    for name in sorted(a.keys() | b.keys(), key=lambda name: -b.get(name, 0.0)):
        lines.append(f"{a.get(name, 0.0):14.3f} {b.get(name, 0.0):7.3f} {b.get(name, 0.0) - a.get(name, 0.0):+7.3f}"
                     f"  {name}")
    lines.append(f"{'':14} {'':7} {'':7}  function (the {top} that grow most)")
    fa, fb = first.per_request(), second.per_request()
    growth = sorted(((fb.get(k, 0.0) - fa.get(k, 0.0), k) for k in fa.keys() | fb.keys()), reverse=True)[:top]
    for grown, (shared, function) in growth:
        lines.append(f"{fa.get((shared, function), 0.0):14.3f} {fb.get((shared, function), 0.0):7.3f} {grown:+7.3f}"
                     f"  {function[:60]}  [{shared[:40]}]")
    return "\n".join(lines)


def profile_serve(tmp: Path, procs: Processes, tokens: int, seconds: float, top: int) -> None:
    bed = start_serve_bed(procs, tmp, tokens, [])
    profiles: list[tuple[str, Profile]] = []
    for name, load in bed.loads():
        load(2)  # warm-up
        profiles.append((name, record(bed.serve, load, seconds, tmp / f"perf-{len(profiles)}.data")))
    (first_name, first), (second_name, second) = profiles
    print(f"phantom-token serve, cache hit: {first_name} -> {second_name}")
    print(report(first_name, first, second_name, second, top), flush=True)


def profile_nginx(tmp: Path, procs: Processes, only: list[str] | None, seconds: float, top: int) -> None:
    upstream_port, authz_port, token = start_nginx_bed(procs, tmp)
    secret = secrets.token_hex(32)
    profiles: dict[str, Profile] = {}
    for name, template in VARIANTS.items():
        if template is not None and only is not None and not any(o in name for o in only):
            continue
        ports = {"LISTEN_PORT": free_port(), "AUTHZ_PORT": authz_port, "API_PORT": upstream_port}
        slug = re.sub(r"\W+", "_", name).strip("_")
        child, url = start_variant(procs, slug, tmp / slug, template, ports, secret, token)

        def load(duration: float, url: str = url) -> WrkResult:
            return wrk(url, duration, connections=50, token=token)

        profiles[name] = record(child, load, seconds, tmp / f"perf-{slug}.data")
        procs.stop(child)
    plain = profiles.pop("plain proxy_pass")
    for name, profile in profiles.items():
        print(f"\nnginx at a hit: plain proxy_pass -> {name}")
        print(report("plain", plain, name, profile, top), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("serve", "nginx"))
    parser.add_argument("--tokens", type=int, default=10_000, help="serve: distinct tokens of the second load")
    parser.add_argument("--only", nargs="*", default=None, help="nginx: example names (substrings)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of wrk per load")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep its configs, logs and perf files")
    args = parser.parse_args(argv)
    with _work_dir(args.keep) as tmp, Processes(tmp) as procs:
        if args.what == "serve":
            profile_serve(tmp, procs, args.tokens, args.seconds, args.top)
        else:
            profile_nginx(tmp, procs, args.only, args.seconds, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
