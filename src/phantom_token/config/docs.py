"""The field and options tables of ``docs/configuration.md``, generated from their declarations.

``python -m phantom_token.config.docs`` rewrites the tables in place; ``--check`` only says whether they differ
(exit 1), as ``tests/unit/test_config_docs.py`` does. Each table sits between two markers in the Markdown::

    <!-- generated table 'plugin config': python -m phantom_token.config.docs -->
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

from phantom_token.config.kong import SERVICE_FIELDS
from phantom_token.config.kong_routes import PLUGIN_FIELDS, ROUTE_FIELDS
from phantom_token.config.options import OptionTable, render
from phantom_token.config.plugin_options import PLUGIN_OPTIONS
from phantom_token.config.process_options import SECTION_OPTIONS

__all__ = ["DEFAULT_PATH", "TABLES", "generate", "main"]

TABLES: dict[str, OptionTable] = {  # the name in the marker: the declaration
    "services": SERVICE_FIELDS,  # config/kong.py
    "routes": ROUTE_FIELDS,  # config/kong_routes.py
    "plugins": PLUGIN_FIELDS,  # config/kong_routes.py
    "plugin config": PLUGIN_OPTIONS,  # config/plugin_options.py
    "phantom_token": SECTION_OPTIONS,  # config/process_options.py, with its cache and jwt tables
}
END = "<!-- end of generated table -->"
# In a source checkout: src/phantom_token/config/docs.py -> docs/configuration.md.
DEFAULT_PATH = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def begin_marker(name: str) -> str:
    return f"<!-- generated table '{name}': python -m phantom_token.config.docs -->"


def generate(text: str) -> str:
    """``text`` with every generated table replaced by what the declarations give now."""
    for name, table in TABLES.items():
        begin = begin_marker(name)
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
    parser.add_argument("--check", action="store_true", help="exit 1 if a table differs; change nothing")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = generate(text)
    if new == text:
        return 0
    if args.check:
        print(f"{args.path}: the generated tables differ from the declarations", file=sys.stderr)
        return 1
    args.path.write_text(new, encoding="utf-8")
    print(f"{args.path}: tables regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
