"""``serve``'s own instructions per request in a real process under wrk, at one token and over N distinct tokens.

    .venv/bin/python bench/serve_instructions.py [--tokens 10000] [--seconds 15] [--top 30] [--keep DIR]

``bench/hotpath.py --instructions`` drives the Python hot path through in-memory transports; this runs the real
thing: the nginx upstream (``return 200``) and the demo authorization server as ordinary processes, ``phantom-token
serve`` under ``valgrind --tool=callgrind --instr-atstart=no``, its cache warmed with every token, then, for each load
(``wrk -t1 -c50`` with one token, then round robin over the N tokens as bench/run.py's scale rows send them),
``callgrind_control`` zeroes the counters, turns instrumentation on for the run and dumps it. Instructions per
request = the dump's total / the requests wrk completed (the event loop and uvloop's socket calls included; the
kernel not). Printed: both totals and the functions whose inclusive cost per request grows most from the first load
to the second. Needs valgrind (``apt install valgrind``); wrk and nginx as bench/run.py. Every process is stopped on
exit. Nothing here asserts on timing: under valgrind the rates mean nothing, the counts do.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import REPO, UPSTREAM_CONF, Child, Processes, WrkResult, free_port, wait_listening, wrk
from run import INTROSPECTION_SECRET, _issue, _send_each, _work_dir, auth_command, serve_command, serve_config

_COST = re.compile(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$")


def costs(annotated: str) -> tuple[int, dict[str, int]]:
    """The program total and each function's cost from ``callgrind_annotate`` output (call lines, ``=>``, left out)."""
    total = 0
    functions: dict[str, int] = {}
    for line in annotated.splitlines():
        found = _COST.match(line)
        if found is None:
            continue
        count, name = int(found.group(1).replace(",", "")), found.group(2).strip()
        if name.startswith("PROGRAM TOTALS"):
            total = count
        elif ":" in name and not name.startswith("=>"):
            functions[name] = count
    return total, functions


def annotate(path: Path) -> tuple[int, dict[str, int]]:
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
                          capture_output=True, text=True, check=True).stdout
    return costs(text)


def growth(first: dict[str, int], first_requests: int, second: dict[str, int], second_requests: int,
           top: int) -> list[tuple[float, float, float, str]]:
    """(growth, first, second) per request for the ``top`` functions whose cost per request grows most."""
    rows = []
    for name in first.keys() | second.keys():
        a, b = first.get(name, 0) / first_requests, second.get(name, 0) / second_requests
        rows.append((b - a, a, b, name))
    rows.sort(reverse=True)
    return rows[:top]


def _dump(directory: Path, pid: str, number: int, poke: Callable[[], object], timeout: float = 60.0) -> Path:
    """The ``number``th dump callgrind writes (``cg.<pid>.<n>``), once it is there: ``callgrind_control -d``
    only asks for it, and valgrind writes it when the process next runs, so an idle ``serve`` is sent a request
    (``poke``; instrumentation is off by then, so it is not counted)."""
    path = directory / f"cg.{pid}.{number}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        poke()
        if path.exists() and path.stat().st_size > 0:
            time.sleep(0.5)  # let it finish writing
            return path
        time.sleep(0.2)
    names = sorted(path.name for path in directory.iterdir())
    raise RuntimeError(f"callgrind wrote no dump {number} in {directory}: {names}")


@dataclass
class ServeBed:
    """A running ``serve`` (the nginx upstream and the demo AS behind it) with every one of ``tokens`` cached."""

    serve: Child
    tokens: list[str]
    token_file: Path
    url: str

    def loads(self) -> list[tuple[str, Callable[[float], WrkResult]]]:
        """``wrk -t1 -c50`` with one token, then round robin over every token (bench/run.py's scale rows)."""
        return [
            ("1 token", lambda seconds: wrk(self.url, seconds, token=self.tokens[0])),
            (f"{len(self.tokens)} tokens", lambda seconds: wrk(self.url, seconds, token_file=self.token_file,
                                                               token_count=len(self.tokens))),
        ]


def start_bed(procs: Processes, tmp: Path, tokens: int, wrapper: Sequence[str] = ()) -> ServeBed:
    """Starts the upstream, the demo AS and ``serve`` (under ``wrapper``, e.g. valgrind), issues ``tokens`` tokens
    and sends each once, so that both loads are cache hits."""
    env = {"INTROSPECTION_SECRET": INTROSPECTION_SECRET, "PYTHONPATH": str(REPO / "src"), "PYTHONHASHSEED": "0"}
    upstream, auth, port = free_port(), free_port(), free_port()
    up = procs.nginx("upstream", UPSTREAM_CONF.format(dir=tmp, name="upstream", port=upstream))
    server = procs.start("auth", auth_command(auth), env=env)
    wait_listening(up, upstream)
    wait_listening(server, auth)
    serve = procs.start("serve", [*wrapper, *serve_command(serve_config(tmp, upstream, auth), port)], env=env)
    wait_listening(serve, port, timeout=180)
    issued = asyncio.run(_issue(auth, tokens))
    token_file = tmp / "tokens.txt"
    token_file.write_text("\n".join(issued) + "\n")
    url = f"http://127.0.0.1:{port}/api/bench"
    asyncio.run(_send_each(url, issued))
    return ServeBed(serve, issued, token_file, url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000, help="distinct tokens of the second load")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of wrk per load")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep its configs, logs and callgrind files")
    args = parser.parse_args(argv)
    with _work_dir(args.keep) as tmp, Processes(tmp) as procs:
        out = tmp / "callgrind"
        out.mkdir(exist_ok=True)
        bed = start_bed(procs, tmp, args.tokens, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                                 f"--callgrind-out-file={out}/cg.%p"])
        serve, tokens, url = bed.serve, bed.tokens, bed.url
        pid = str(serve.process.pid)
        results: list[tuple[str, int, int, dict[str, int]]] = []

        def poke() -> object:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {tokens[0]}"})  # noqa: S310
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 -- our own serve on 127.0.0.1
                return answer.read()

        for name, load in bed.loads():
            load(3)  # warm-up, not counted
            subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            result = load(args.seconds)
            subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
            if result.bad_status or result.socket_errors:
                raise RuntimeError(f"{name}: {result.bad_status} bad answers, {result.socket_errors} socket errors")
            total, functions = annotate(_dump(out, pid, len(results) + 1, poke))
            results.append((name, result.requests, total, functions))
            print(f"{name}: {total / result.requests:,.0f} instructions per request ({result.requests} requests)",
                  flush=True)
        (_, first_n, _, first), (_, second_n, _, second) = results
        print(f"\ninclusive instructions per request: growth, {results[0][0]}, {results[1][0]}")
        for grown, a, b, name in growth(first, first_n, second, second_n, args.top):
            print(f"{grown:9,.0f} {a:9,.0f} {b:9,.0f}  {name[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
