"""Read the Kong declarative configuration file into frozen ``Settings``: the entry points.

The file is Kong's declarative format (``_format_version`` '1.1', '2.1' or '3.0'; ``services`` with nested or
top-level ``routes`` and ``plugins``) plus this project's own ``phantom_token:`` section. The reference of
every field is ``docs/configuration.md``. The work is split by concern (docs/design.md lists where each rule lives):

- ``yaml_source``: the YAML text, with keys repeated in one mapping found;
- ``fields``: the typed readers every field goes through, and ``{vault://env/...}`` references;
- ``kong`` and ``kong_routes``: Kong's entities, the references between them and which plugin applies;
- ``options``: how an option is declared once (kind, bounds, documentation; the default is the settings field's);
- ``plugin_options`` and ``process_options``: the plugin's ``config`` options and the ``phantom_token:`` section;
- ``material``: the key and TLS files they name, read in one step after parsing.

``load_configuration`` (and ``parse_configuration``, for a document already read) gives the ``Settings`` with the
``Material`` loaded for them: ``phantom-token check`` and start-up call it once, and the gateway uses its keys and
SSL contexts. ``load_settings`` and ``parse_settings`` check the same and keep only the ``Settings``.

Invariants:
- Every problem in the file is collected, then all are raised together as one ``ConfigError``; a returned
  ``Settings`` is fully valid and nothing downstream re-checks it. A problem with a key or TLS file comes in the
  place the option naming the file is read (``Need.at``), so ``check`` prints problems in the file's order.
- No value read from the file or the environment ever appears in a message: problems name files, services,
  routes, plugins, fields, types and environment variable names, never a value (a secret could be any value).
- ``{vault://env/NAME}`` references are resolved while reading, so no reference survives into ``Settings``.
- Warnings (fields Kong honours that this gateway ignores) go to the ``phantom_token.config`` logger.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from phantom_token.config.errors import ConfigError, ConfigProblem
from phantom_token.config.fields import Context
from phantom_token.config.kong import FORMAT_VERSIONS, parse_document
from phantom_token.config.kong_routes import PLUGIN_NAME
from phantom_token.config.material import Material, load_needs
from phantom_token.config.process_options import LOG_LEVELS
from phantom_token.config.settings import RESPONSE_MODES, Settings
from phantom_token.config.yaml_source import parse_yaml

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "FORMAT_VERSIONS",
    "LOG_LEVELS",
    "PLUGIN_NAME",
    "RESPONSE_MODES",
    "Configuration",
    "format_problems",
    "load_configuration",
    "load_settings",
    "parse_configuration",
    "parse_settings",
    "resolve_config_path",
]

DEFAULT_CONFIG_FILE = "phantom-token.yml"
CONFIG_ENV = "PHANTOM_TOKEN_CONFIG"


@dataclass(frozen=True, slots=True)
class Configuration:
    """A valid file: its ``Settings``, and the key and TLS ``Material`` they name, already loaded."""

    settings: Settings
    material: Material


# --------------------------------------------------------------------------------------------- entry points


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> str:
    """Which file to read: ``-c/--config``, else ``$PHANTOM_TOKEN_CONFIG``, else ``phantom-token.yml``."""
    return cli_value or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE


def load_settings(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    require_upstream: bool = True,
) -> Settings:
    """``load_configuration``'s ``Settings`` (the files they name are checked, and the material is dropped)."""
    return load_configuration(path, environ=environ, require_upstream=require_upstream).settings


def load_configuration(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    require_upstream: bool = True,
) -> Configuration:
    """Read, parse and validate one file, and load the files it names; raise ``ConfigError`` listing every problem
    found."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError([ConfigProblem(source, "", "", f"cannot read the file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(source, "", "", "the file is not UTF-8 text")]) from exc
    document, duplicates = parse_yaml(source, text)
    problems = [
        ConfigProblem(source, f"line {line}", key, "duplicate key (YAML would keep only the last one)")
        for key, line in duplicates
    ]
    try:
        loaded = parse_configuration(document, source=source, environ=environ, require_upstream=require_upstream)
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:
        raise ConfigError(problems)
    return loaded


def parse_settings(
    document: object,
    *,
    source: str,
    environ: Mapping[str, str] | None = None,
    require_upstream: bool = True,
) -> Settings:
    """``parse_configuration``'s ``Settings`` (the files they name are checked, and the material is dropped)."""
    return parse_configuration(document, source=source, environ=environ, require_upstream=require_upstream).settings


def parse_configuration(
    document: object,
    *,
    source: str,
    environ: Mapping[str, str] | None = None,
    require_upstream: bool = True,
) -> Configuration:
    """Validate an already-parsed YAML document and load the files it names (see ``load_configuration``);
    ``source`` names it in messages.

    ``require_upstream=False`` (the ``authz`` and ``check`` commands) makes a service's upstream optional. The files
    are read even when the document has other problems, so that ``check`` reports every problem at once.
    """
    ctx = Context(source, os.environ if environ is None else environ, require_upstream)
    settings = parse_document(ctx, document)
    material, file_problems = load_needs(source, ctx.needs)
    problems = list(ctx.problems)
    for at, problem in reversed(sorted(file_problems, key=lambda placed: placed[0])):
        problems.insert(at, problem)  # from the last backwards, so every earlier ``at`` (and the order) holds
    if problems:
        raise ConfigError(problems)
    assert settings is not None  # every path that returns None records a problem
    return Configuration(settings, material)


def format_problems(err: ConfigError) -> str:
    """One line per problem, ``file: where: field: why``, as ``phantom-token check`` prints them."""
    return "\n".join(str(problem) for problem in err.problems)
