"""How an option is declared, once: the plugin's ``config`` options, the ``phantom_token:`` section's, and the
fields of Kong's services, routes and plugin entities.

Internal to ``phantom_token.config``. An ``Option`` gives a YAML key (the same name as its settings dataclass
field, when there is one), its kind and bounds, how the documentation shows its type and default when the kind
does not say it, and its one-line meaning. An ``OptionTable`` is the options of one mapping, in documentation
order: of one settings dataclass, or (Kong's entities, which no dataclass mirrors) standing alone.

Derived from the tables, never written again: the loader's known-field sets (``OptionTable.names``), the value a
missing option falls back to, the range checks of integers and numbers, and the field and option tables of
``docs/configuration.md`` (``render``; ``python -m phantom_token.config.docs`` rewrites them).

Invariants:
- A default is written in one place: the settings dataclass field (``config/settings.py``, compiled by mypyc as
  plain literals), which ``OptionTable`` reads; ``Option.default`` only for a table without a dataclass.
- An ``OptionTable`` covers its dataclass exactly: every declared option is a field, and every field except the
  ones named in ``not_options`` is declared; no option of such a table has its own default. Building a table that
  breaks this raises at import, so neither side can drift without every test failing.
- Readers keep ``Block``'s rules: a problem is recorded and the default returned; values never reach a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import MISSING, dataclass, fields
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal

from phantom_token.config.fields import Block

__all__ = ["Option", "OptionTable", "kong_field", "render", "show_choices"]

# How the value is read: ``OptionTable.text``/``word``, ``flag``, ``integer``, ``number``; 'custom': by its own code
# (lists, URLs, references to other entities); 'section': a nested mapping with a table of its own.
Kind = Literal["text", "flag", "integer", "number", "custom", "section"]


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its key, kind, bounds and documentation; its default is the settings field's (see ``kong_field``)."""

    name: str
    kind: Kind
    doc: str  # the documentation's meaning column (Markdown, one line)
    low: int | None = None  # integer: the smallest allowed value
    high: int | None = None  # integer: the largest allowed value; None: no upper bound
    non_empty: bool = False  # text: blank is refused
    choices: tuple[str, ...] = ()  # text: the allowed values (checked by the section's parser, in its order)
    shown_type: str = ""  # the documentation's type column when kind, bounds and choices do not say it
    shown_default: str = ""  # the documentation's default column when the field's default does not say it
    table: OptionTable | None = None  # kind 'section': the options of the nested mapping
    also: tuple[str, ...] = ()  # more keys that share this declaration (and its documentation row)
    default: object = None  # only in a table without a settings dataclass (Kong's entities); see has_default
    has_default: bool = False  # True when ``default`` is meant (None can be a default)

    def type_text(self) -> str:
        """The documentation's type column."""
        if self.shown_type:
            return self.shown_type
        if self.choices:
            return show_choices(self.choices)
        if self.kind == "flag":
            return "bool"
        if self.kind == "number":
            return "number > 0"
        if self.kind == "integer":
            return f"int ≥ {self.low}" if self.high is None else f"int {self.low}..{self.high}"
        if self.kind == "text":
            return "non-empty string" if self.non_empty else "string"
        return ""  # 'custom' without a shown_type: any type (fields accepted and ignored)


def kong_field(name: str, kind: Kind, doc: str, *, default: object = MISSING, **more: Any) -> Option:
    """A field of a Kong entity (no settings dataclass): its default, if any, is declared here."""
    return Option(name, kind, doc, default=default, has_default=default is not MISSING, **more)


def show_choices(choices: Iterable[str]) -> str:
    """Allowed values as the documentation lists them: `a`, `b`, `c`."""
    return ", ".join(f"`{choice}`" for choice in choices)


class OptionTable:
    """The options of one mapping; with a settings dataclass, the defaults are read from its fields."""

    def __init__(
        self,
        settings: type | None,
        prefix: str,
        options: Iterable[Option],
        *,
        not_options: Iterable[str] = (),
        header: str = "option",
    ) -> None:
        self.prefix = prefix  # how the documentation names them: '' or 'cache.'
        self.header = header  # the documentation's first column: 'option' or (Kong's entities) 'field'
        self.options = tuple(options)
        self.by_name = {name: option for option in self.options for name in (option.name, *option.also)}
        self.names = frozenset(self.by_name)  # the known fields of the mapping
        if len(self.by_name) != sum(1 + len(option.also) for option in self.options):
            raise RuntimeError(f"{prefix or header}: a name is declared twice")
        if settings is None:
            self.defaults: dict[str, object] = {
                name: option.default if option.has_default else MISSING for name, option in self.by_name.items()
            }
            return
        declared = {f.name: f.default for f in fields(settings)}
        missing = set(declared) - self.names - set(not_options)
        extra = self.names - set(declared)
        if missing or extra:
            raise RuntimeError(f"{settings.__name__}: undeclared {sorted(missing)}, not fields {sorted(extra)}")
        if any(option.has_default for option in self.options):
            raise RuntimeError(f"{settings.__name__}: a default is the dataclass field's, not the option's")
        self.defaults = {name: declared[name] for name in self.names}

    def default(self, name: str) -> object:
        """The settings field's default (``dataclasses.MISSING`` for a required field)."""
        return self.defaults[name]

    def text(self, block: Block, name: str, *, required: bool = False) -> str | None:
        """A string option; missing (or blank with a non-blank default): the default."""
        option = self.by_name[name]
        value = block.text(name, required=required, non_empty=option.non_empty)
        default = self.defaults[name]
        if value or not isinstance(default, str):
            return value
        return default

    def word(self, block: Block, name: str) -> str:
        """A string option with a string default: missing or blank gives the default."""
        value = self.text(block, name)
        assert value is not None, f"{name} has no string default"
        return value

    def flag(self, block: Block, name: str) -> bool:
        default = self.defaults[name]
        assert isinstance(default, bool)
        return block.flag(name, default)

    def integer(self, block: Block, name: str) -> int:
        option = self.by_name[name]
        default = self.defaults[name]
        assert isinstance(default, int)
        assert option.low is not None
        return block.integer(name, default, option.low, option.high)

    def number(self, block: Block, name: str) -> float:
        default = self.defaults[name]
        assert isinstance(default, float)
        return block.number(name, default)

    def rows(self) -> Iterator[tuple[tuple[str, ...], Option, object]]:
        """(documented names, option, default) in documentation order, nested tables in their place."""
        for option in self.options:
            if option.table is not None:
                yield from option.table.rows()
            else:
                names = tuple(self.prefix + name for name in (option.name, *option.also))
                yield names, option, self.defaults[option.name]


def _show_default(option: Option, default: object) -> str:
    if option.shown_default:
        return option.shown_default
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, int):
        return str(default)
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, str):
        return f"`{default}`"
    if isinstance(default, tuple) and default and all(isinstance(n, IPv4Network | IPv6Network) for n in default):
        return "`[" + ", ".join(str(network) for network in default) + "]`"
    if default is MISSING:
        return ""
    if default is None or default == ():
        return "none"
    raise ValueError(f"{option.name}: no way to show its default; declare shown_default")


def render(table: OptionTable) -> str:
    """The Markdown table of ``docs/configuration.md`` for these options (no trailing newline)."""
    lines = [f"| {table.header} | type | default | meaning |", "|---|---|---|---|"]
    for names, option, default in table.rows():
        shown = ", ".join(f"`{name}`" for name in names)
        cells = (shown, option.type_text(), _show_default(option, default), option.doc)
        lines.append("|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|")
    return "\n".join(lines)
