"""Builds phantom-token; compiles the hot path (phantom_token.compiled.MODULES) to C with mypyc.

Set PHANTOM_TOKEN_PURE_PYTHON=1 to build without compiling (the same code then runs as Python, about half as fast
per request; docs/performance.md). Without a C compiler the build is pure Python too, with a warning.
"""

import json
import os
import runpy
import shutil
import sys

from setuptools import Extension, setup

compiled = runpy.run_path(os.path.join("src", "phantom_token", "compiled.py"))
ext_modules: list[Extension] = []
if os.environ.get(compiled["PURE_ENV"], "") not in ("", "0"):
    print(f"phantom-token: building pure Python ({compiled['PURE_ENV']} is set)", file=sys.stderr)
elif not shutil.which(os.environ.get("CC", "cc")):
    print("phantom-token: no C compiler found; building pure Python (the hot path runs slower)", file=sys.stderr)
else:
    from mypyc.build import mypycify

    ext_modules = mypycify(
        # only the compiled modules' own errors count; what they import is type-checked by `mypy` in CI
        ["--follow-imports=silent", "--ignore-missing-imports",
         *(str(compiled["source_of"](module).relative_to(os.getcwd())) for module in compiled["MODULES"])],
        opt_level="3",
        group_name="phantom_token",
    )
    # what was compiled, so that a process can tell when a source changed since (phantom_token/compiled.py)
    with open(os.path.join("src", "phantom_token", compiled["RECORD"]), "w") as record:
        json.dump(compiled["source_digests"](), record, indent=1)

setup(ext_modules=ext_modules)
