"""bench/serve_instructions.py: its reading of ``callgrind_annotate`` output (always) and, where valgrind is
installed, one short real run (a real ``serve`` under callgrind, the demo AS, the nginx upstream, wrk)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from serve_instructions import costs, growth  # noqa: E402

ANNOTATED = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,000,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                  file:function
--------------------------------------------------------------------------------
  600,000 (60.00%)  build/__native_phantom_token.c:CPyDef_proxy___ProxyHandler___handle_request [/x.so]
  250,000 (25.00%)  ???:EVP_DigestFinal [/usr/lib/x86_64-linux-gnu/libcrypto.so.3]
  200,000 (20.00%)  => build/__native_phantom_token.c:CPyDef_keys___ascii_digest (1,000x)
   90,000  /src/llhttp.c:llhttp__internal__run [/y.so]
"""


def test_costs_reads_the_total_and_each_function_but_not_the_call_lines() -> None:
    total, functions = costs(ANNOTATED)
    assert total == 1_000_000
    assert functions == {
        "build/__native_phantom_token.c:CPyDef_proxy___ProxyHandler___handle_request [/x.so]": 600_000,
        "???:EVP_DigestFinal [/usr/lib/x86_64-linux-gnu/libcrypto.so.3]": 250_000,
        "/src/llhttp.c:llhttp__internal__run [/y.so]": 90_000,
    }


def test_growth_is_per_request_and_largest_first() -> None:
    first = {"a": 1_000, "b": 5_000, "gone": 300}
    second = {"a": 4_000, "b": 5_000, "new": 700}
    rows = growth(first, 10, second, 20, top=3)
    assert rows == [(100.0, 100.0, 200.0, "a"), (35.0, 0.0, 35.0, "new"), (-30.0, 30.0, 0.0, "gone")]


@pytest.mark.bench
@pytest.mark.skipif(not shutil.which("valgrind") or not shutil.which("wrk")
                    or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()),
                    reason="needs valgrind, wrk and nginx")
def test_a_short_real_run_counts_both_loads() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "serve_instructions.py"), "--tokens", "200",
                           "--seconds", "2", "--top", "5"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = dict(re.findall(r"^(1 token|200 tokens): ([\d,]+) instructions per request", done.stdout, re.M))
    assert set(counts) == {"1 token", "200 tokens"}, done.stdout
    one, many = (int(counts[name].replace(",", "")) for name in ("1 token", "200 tokens"))
    assert 5_000 < one < many, done.stdout  # a token change hashes and looks up what the repeated token does not
    assert len(re.findall(r"^ +-?[\d,]+ +[\d,]+ +[\d,]+  \S", done.stdout, re.M)) == 5, done.stdout
