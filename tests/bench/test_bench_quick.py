"""The benchmark harness in its short mode: every row yields a number and the table is printed.

Timing is never asserted (a loaded CI machine is slow, not wrong); only that each measurement happened and that the
harness stops what it started.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = (
    "upstream nginx direct (reference)",
    "nginx proxy_pass (the limit)",
    "serve, cache hit",
    "serve, cache hit, access log on",
    "serve, cache hit, claims_to_headers (3)",
    "serve, cache hit, DPoP (fresh proofs)",
    "serve, cache miss (20 ms AS)",
    "serve, cache miss (0 ms AS)",
    "serve, cache miss (0 ms AS signing)",
    "nginx + authz (auth_request)",
    "nginx + authz + decision cache (lua)",
    "  the same, set-misc file cache",
    "  the same, njs file cache",
    "serve, JWT issuer (no introspection)",
    "nginx over TLS (reference)",
    "serve over TLS, cache hit",
)
NUMBER = r"(\d+(?:\.\d+)?)"

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) or not shutil.which("wrk"),
                       reason="needs nginx and wrk"),
]


@pytest.fixture(scope="module")
def output() -> str:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick"], capture_output=True, text=True,
                          timeout=600, check=False, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("row", ROWS)
def test_every_row_has_a_positive_rate(output: str, row: str) -> None:
    numbers = r"\s+".join([NUMBER] * 5)
    found = re.search(rf"^{re.escape(row)}\s+{numbers}", output, re.MULTILINE)
    assert found is not None, output
    requests_per_second, ratio, p50, p99, cpu = (float(value) for value in found.groups())
    assert requests_per_second > 0
    assert ratio > 0
    assert p99 >= p50 > 0
    assert cpu > 0
    line = found.group(0) + output[found.end():].split("\n", 1)[0]
    assert "non-2xx" not in line  # every request was answered 200, else the row measured something else
    assert "socket errors" not in line


@pytest.mark.parametrize("row", ["serve, cache miss (20 ms AS)", "serve, cache miss (0 ms AS)",
                                 "serve, cache miss (0 ms AS signing)"])
def test_every_miss_row_request_was_introspected(output: str, row: str) -> None:
    """A miss row measures misses only: the AS's /stats counted one introspection per request (a token sent twice
    would be a hit; a presigned token the AS did not know would be a 401)."""
    line = re.search(rf"^{re.escape(row)}\s.*$", output, re.MULTILINE)
    assert line is not None, output
    share = re.search(r"(\d+)% introspected", line.group(0))
    assert share is not None, line.group(0)
    assert int(share.group(1)) >= 99, line.group(0)


def test_the_table_and_the_memory_and_scaling_lines_are_printed(output: str) -> None:
    assert re.search(r"^row\s+req/s\s+x nginx", output, re.MULTILINE), output
    found = re.search(rf"memory per cached entry .*: {NUMBER} B for a {NUMBER} B JWT", output)
    assert found is not None, output
    assert float(found.group(1)) > 0
    scaled = re.findall(rf"^\s+(\d+)\s+{NUMBER}\s+{NUMBER}", output, re.MULTILINE)
    assert [int(tokens) for tokens, _, _ in scaled] == [1, 100, 10_000], output
    assert all(float(rate) > 0 for _, rate, _ in scaled), output
    # each size against the nginx run just before it: its own req/s and CPU ratios (the last column)
    assert re.search(r"^distinct tokens .* x nginx CPU$", output, re.MULTILINE), output
    cpu_ratios = re.findall(rf"^\s+(?:1|100|10000)\s+.*\s{NUMBER}$", output, re.MULTILINE)
    assert len(cpu_ratios) == 3, output
    assert all(float(ratio) > 0 for ratio in cpu_ratios), output
    assert "x nginx, each round against nginx's run of the same round (median of 1 rounds" in output, output
    per_round = re.search(rf"^  serve, cache hit\s+{NUMBER}\s+{NUMBER}$", output, re.MULTILINE)
    assert per_round is not None, output
    assert float(per_round.group(1)) == float(per_round.group(2)) > 0  # one round: the median is that round


ENVOY_ROWS = ("envoy direct (reference)", "envoy + authz, ext_authz HTTP", "envoy + authz, ext_authz gRPC")


@pytest.mark.parametrize("row", ENVOY_ROWS)
def test_every_envoy_row_has_a_positive_rate(output: str, row: str) -> None:
    if "no Envoy rows:" in output:
        pytest.skip("envoy or the grpc extra is not installed (scripts/setup installs both)")
    assert re.search(r"^row\s+req/s\s+x envoy", output, re.MULTILINE), output
    found = re.search(rf"^{re.escape(row)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}(.*)$", output,
                      re.MULTILINE)
    assert found is not None, output
    assert all(float(value) > 0 for value in found.groups()[:5])
    assert "non-2xx" not in found.group(6)  # the gRPC and HTTP rows measured allowed requests, not denials
    assert "socket errors" not in found.group(6)


def test_nothing_is_left_running(output: str) -> None:
    found = re.search(r"^work dir (\S+);", output, re.MULTILINE)
    assert found is not None, output
    running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert found.group(1) not in running


def test_the_hot_path_alone_is_timed_for_both_front_doors() -> None:
    """bench/hotpath.py drives the real proxy and decision protocols through in-memory transports; it checks what
    went upstream and back before timing anything."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "hotpath.py"), "--requests", "4000"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in ("serve", "authz"):
        found = re.search(rf"^{path}, cache hit\s+best\s+{NUMBER} us/request, median\s+{NUMBER}", done.stdout,
                          re.MULTILINE)
        assert found is not None, done.stdout
        assert 0 < float(found.group(1)) <= float(found.group(2))


GOAL_ROWS = ("nginx proxy_pass (the limit)", "serve, cache hit", "serve, cache miss (20 ms AS)",
             "serve, cache miss (0 ms AS)", "serve, cache miss (0 ms AS signing)",
             "nginx + authz + decision cache (lua)", "  the same, set-misc file cache")


def test_goals_only_measures_the_goal_rows_and_nothing_else() -> None:
    """``--goals-only``: issue 18's rows (hit, misses, decision caches, N tokens, memory) without Envoy, TLS, DPoP
    or the workers table, so three rounds of what the goals judge fit in the time one full run takes."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--goals-only"],
                          capture_output=True, text=True, timeout=600, check=False, cwd=REPO)
    output = done.stdout
    assert done.returncode == 0, output + done.stderr
    for row in GOAL_ROWS:
        found = re.search(rf"^{re.escape(row)}\s+{NUMBER}\s+{NUMBER}", output, re.MULTILINE)
        assert found is not None, (row, output)
        assert float(found.group(1)) > 0
    assert re.search(r"serve, cache miss \(0 ms AS\): \d+ us CPU per request, [\d.]+x a hit", output), output
    for absent in ("serve, cache hit, DPoP", "serve, cache hit, access log on", "x envoy", "over TLS",
                   "nginx + authz (auth_request)"):
        assert absent not in output, (absent, output)
    scaled = re.findall(rf"^\s+(\d+)\s+{NUMBER}\s+{NUMBER}", output, re.MULTILINE)
    assert [int(tokens) for tokens, _, _ in scaled] == [1, 100, 10_000], output
    assert re.search(rf"memory per cached entry .*: {NUMBER} B", output), output
