"""A small Dockerfile reader for tests/deploy: instructions with their stage, continuation lines joined."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    stage: str      # the FROM ... AS name (or its index) the instruction belongs to
    keyword: str    # upper case
    value: str      # the rest, continuations joined with a space

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, else None."""
        found = re.search(r"(\[.*\])\s*$", self.value)
        if not found:
            return None
        try:
            value = json.loads(found.group(1))
        except ValueError:
            return None
        return [str(v) for v in value] if isinstance(value, list) else None


def parse(path: Path) -> list[Instruction]:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not pending:
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        joined = (pending + stripped).strip()
        pending = ""
        if joined:
            lines.append(joined)
    result: list[Instruction] = []
    stage = "-"
    for index, line in enumerate(lines):
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            named = re.search(r"\s+AS\s+(\S+)\s*$", value, re.IGNORECASE)
            stage = named.group(1) if named else str(index)
        result.append(Instruction(stage, keyword, value.strip()))
    return result
