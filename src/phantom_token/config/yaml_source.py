"""Read the YAML text of the configuration file, noting keys repeated within one mapping.

Internal to ``phantom_token.config``.

Invariants:
- Only PyYAML's safe loader runs: no tag builds anything but plain scalars, lists and mappings.
- A key repeated in one mapping is reported (PyYAML would silently keep the last one), with its line.
- A syntax error is one ``ConfigProblem`` with its line and column and PyYAML's own description of the problem.
"""

from __future__ import annotations

from typing import Any

import yaml

from phantom_token.config.errors import ConfigError, ConfigProblem

__all__ = ["parse_yaml"]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also noting keys repeated in one mapping (PyYAML silently keeps the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            loader.duplicates.append((str(key), key_node.start_mark.line + 1))
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(source: str, text: str) -> tuple[object, list[tuple[str, int]]]:
    """The document and the keys repeated in one mapping, each with its line; raise ``ConfigError`` on bad YAML."""
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        why = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
        raise ConfigError([ConfigProblem(source, where, "", why)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(source, "", "", f"invalid YAML: {type(exc).__name__}")]) from None
    finally:
        loader.dispose()
