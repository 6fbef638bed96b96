"""bench/cycles.py: its reading of ``perf script`` output and its report (always) and, where ``perf`` can sample
the whole machine, one short real run of ``serve`` (the demo AS, the nginx upstream, wrk)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from cycles import Profile, report, samples  # noqa: E402

SCRIPT = """\
   4242 ffffffff81a0b0c0 tcp_sendmsg_locked+0x1d ([kernel.kallsyms])
   4242     7f3c2a1b2c3d CPyList_GetItemInt64+0x4 (/work/main/src/phantom_token__mypyc.cpython-311-x86_64-linux-gnu.so)
   4243     7f3c2a1b2c3d CPyList_GetItemInt64+0x9 (/work/main/src/phantom_token__mypyc.cpython-311-x86_64-linux-gnu.so)
   4242     7f00000029ad [unknown] (/usr/lib/x86_64-linux-gnu/libcrypto.so.3)
   9999 ffffffff81a0b0c0 tcp_sendmsg_locked+0x1d ([kernel.kallsyms])
   4242 ffffffff81a0b0c0 tcp_sendmsg_locked+0x30 ([kernel.kallsyms])
not a sample line
"""
MYPYC = "phantom_token__mypyc.cpython-311-x86_64-linux-gnu.so"


def test_samples_are_counted_per_function_for_the_processes_asked_only() -> None:
    assert samples(SCRIPT, {4242, 4243}) == Counter({
        ("[kernel.kallsyms]", "tcp_sendmsg_locked"): 2,
        (MYPYC, "CPyList_GetItemInt64"): 2,
        ("libcrypto.so.3", "[unknown]"): 1,
    })
    assert samples(SCRIPT, {9999}) == Counter({("[kernel.kallsyms]", "tcp_sendmsg_locked"): 1})
    assert samples(SCRIPT, set()) == Counter()


def test_a_functions_share_of_the_samples_is_its_share_of_the_cpu_time() -> None:
    profile = Profile(1000, 20.0, Counter({("k", "a"): 3, ("k", "b"): 1, ("lib", "c"): 4}))
    assert profile.per_request() == {("k", "a"): 7.5, ("k", "b"): 2.5, ("lib", "c"): 10.0}
    assert profile.by_object() == {"k": 10.0, "lib": 10.0}
    assert Profile(0, 0.0, Counter()).per_request() == {}


def test_the_report_lists_objects_by_the_second_load_and_functions_by_growth() -> None:
    first = Profile(100, 10.0, Counter({("k", "a"): 5, ("lib", "c"): 5}))
    second = Profile(100, 16.0, Counter({("k", "a"): 4, ("lib", "c"): 8, ("lib", "new"): 4}))
    lines = report("one", first, "many", second, top=2).splitlines()
    assert lines[0].startswith("CPU us per request: one 10.00, many 16.00 (+6.00)")
    objects = [line.split()[-1] for line in lines[2:4]]
    assert objects == ["lib", "k"]  # lib: 12 us in the second load, k: 4
    growth = [line.split()[3] for line in lines[5:]]
    assert growth == ["new", "c"]  # +4.0 and +3.0; a (-1.0) is not among the top 2
    assert "+4.000" in lines[5]
    assert "+3.000" in lines[6]


def _perf_samples_here() -> bool:
    if shutil.which("perf") is None or not shutil.which("wrk"):
        return False
    done = subprocess.run(["perf", "record", "-e", "cpu-clock", "-a", "-o", "/dev/null", "--", "true"],
                          capture_output=True, timeout=60, check=False)
    return done.returncode == 0


@pytest.mark.bench
@pytest.mark.skipif(not _perf_samples_here() or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()),
                    reason="needs perf (allowed to sample the machine), wrk and nginx")
def test_a_short_real_run_profiles_both_loads_of_serve() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "cycles.py"), "serve", "--tokens", "200",
                           "--seconds", "2", "--top", "5"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"^CPU us per request: 1 token ([\d.]+), 200 tokens ([\d.]+)", done.stdout, re.M)
    assert found is not None, done.stdout
    assert all(float(value) > 1 for value in found.groups()), done.stdout
    assert re.search(r"^ +[\d.]+ +[\d.]+ +[-+][\d.]+  phantom_token__mypyc|^ +[\d.]+ +[\d.]+ +[-+][\d.]+  "
                     r"libpython", done.stdout, re.M), done.stdout  # our process's own code was sampled
    assert len(re.findall(r"^ +[\d.]+ +[\d.]+ +[-+][\d.]+  \S.*  \[", done.stdout, re.M)) == 5, done.stdout
