"""docs/dependencies.md says why each runtime dependency earns its place: every entry of ``dependencies`` in
pyproject.toml has a row there (a dependency added without one fails here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_runtime_dependency_has_a_row_in_docs_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]}
    rows = {line.split("|")[1].split("(")[0].strip().lower()
            for line in (ROOT / "docs" / "dependencies.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and not line.startswith("| package")}
    assert names, "no dependencies read from pyproject.toml"
    assert names <= rows, f"runtime dependencies without a row in docs/dependencies.md: {sorted(names - rows)}"
