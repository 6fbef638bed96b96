"""The options tables of ``docs/configuration.md``, generated from the option declarations.

``python -m phantom_token.config.docs`` rewrites the tables in place; ``--check`` only says whether they differ
(exit 1), as ``tests/unit/test_config_docs.py`` does. Each table sits between two markers in the Markdown::

    <!-- generated from phantom_token.config.plugin_options: python -m phantom_token.config.docs -->
    | option | type | default | meaning |
    ...
    <!-- end of generated table -->

Invariants: only the text between a table's two markers is ever rewritten; every table in ``TABLES`` has its
markers exactly once, else ``generate`` raises instead of writing anything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from phantom_token.config.options import OptionTable, render
from phantom_token.config.plugin_options import PLUGIN_OPTIONS
from phantom_token.config.process_options import SECTION_OPTIONS

__all__ = ["DEFAULT_PATH", "TABLES", "generate", "main"]

TABLES: dict[str, OptionTable] = {
    "phantom_token.config.plugin_options": PLUGIN_OPTIONS,
    "phantom_token.config.process_options": SECTION_OPTIONS,
}
END = "<!-- end of generated table -->"
# In a source checkout: src/phantom_token/config/docs.py -> docs/configuration.md.
DEFAULT_PATH = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def begin_marker(module: str) -> str:
    return f"<!-- generated from {module}: python -m phantom_token.config.docs -->"


def generate(text: str) -> str:
    """``text`` with every generated table replaced by what the declarations give now."""
    for module, table in TABLES.items():
        begin = begin_marker(module)
        if text.count(begin) != 1:
            raise ValueError(f"expected the marker {begin!r} exactly once")
        head, rest = text.split(begin, 1)
        if END not in rest:
            raise ValueError(f"no {END!r} after {begin!r}")
        _, tail = rest.split(END, 1)
        text = f"{head}{begin}\n{render(table)}\n{END}{tail}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phantom_token.config.docs", description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="exit 1 if the tables differ; change nothing")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = generate(text)
    if new == text:
        return 0
    if args.check:
        print(f"{args.path}: the options tables differ from the declarations", file=sys.stderr)
        return 1
    args.path.write_text(new, encoding="utf-8")
    print(f"{args.path}: options tables regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
