"""The hot path compiled to C with mypyc, and the pure-Python way around it.

``setup.py`` compiles ``MODULES`` (the per-request code: HTTP parsing and framing, the proxy and decision front
doors, the engine, the memory cache; and what a cache miss runs: the single flight, the introspection client, the
JWT reader) with mypyc, the compiler of the mypy project, which turns this
``mypy --strict`` code into C extension modules: about half the instructions per request (docs/performance.md).
Every module stays plain Python source too, and runs as such when:

- the package was built without a C compiler, or with ``PHANTOM_TOKEN_PURE_PYTHON=1`` at build time;
- ``PHANTOM_TOKEN_PURE_PYTHON=1`` is set when the process starts (to debug, profile or patch the Python);
- a module's source is not the one that was compiled (an editable checkout edited since ``scripts/setup``; told
  by the SHA-256 that setup.py records in ``compiled_from.json``): all of them then run from source, with one
  warning on stderr, so an edit always takes effect.

It is all or nothing: compiled modules call each other directly, so a mix would run stale code.
This module is imported first by ``phantom_token/__init__.py`` and must stay pure Python (it is not compiled).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

MODULES = (
    "phantom_token.cache.memory",
    "phantom_token.cache.stack",
    "phantom_token.config.settings",
    "phantom_token.core.bearer",
    "phantom_token.core.claims",
    "phantom_token.core.engine",
    "phantom_token.core.keys",
    "phantom_token.core.ports",
    "phantom_token.core.request",
    "phantom_token.core.rfc8705",
    "phantom_token.core.routes",
    "phantom_token.core.scopes",
    "phantom_token.core.single_flight",
    "phantom_token.core.ttl",
    "phantom_token.core.verdict",
    "phantom_token.frontends.decisions",
    "phantom_token.frontends.forwarding",
    "phantom_token.frontends.proxy",
    "phantom_token.http.client",
    "phantom_token.http.messages",
    "phantom_token.http.connection",
    "phantom_token.http.request_head",
    "phantom_token.http.responses",
    "phantom_token.http.server",
    "phantom_token.http.uri",
    "phantom_token.introspection.client",
    "phantom_token.introspection.rfc7662",
    "phantom_token.jose",
    "phantom_token.memo",
    "phantom_token.metrics",
)
"""The modules setup.py compiles. Anything they need must be mypyc-compatible (see docs/performance.md)."""

PURE_ENV = "PHANTOM_TOKEN_PURE_PYTHON"

_PACKAGE = Path(__file__).resolve().parent


def source_of(module: str) -> Path:
    """The .py file of one of ``MODULES``."""
    return _PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")


RECORD = "compiled_from.json"
"""Written by setup.py beside this file when it compiles: the SHA-256 of each module's source it compiled."""


def source_digests() -> dict[str, str]:
    """The SHA-256 of each of ``MODULES``'s source (modules installed without their .py are left out)."""
    return {module: hashlib.sha256(source.read_bytes()).hexdigest()
            for module in MODULES if (source := source_of(module)).exists()}


def _compiled_library() -> Path | None:
    """The shared library holding every compiled module (mypyc's group), beside the package; None: not compiled."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (library := _PACKAGE.parent / f"phantom_token__mypyc{suffix}").exists():
            return library
    return None


def stale_modules() -> list[str]:
    """Compiled modules whose source is not the one that was compiled (by content, not file times)."""
    if _compiled_library() is None:
        return []
    try:
        compiled_from = json.loads((_PACKAGE / RECORD).read_text())
    except (OSError, ValueError):
        return list(MODULES)  # compiled, but with no record of what from: trust none of it
    return [module for module, digest in source_digests().items() if compiled_from.get(module) != digest]


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads ``MODULES`` from their .py files, ahead of any compiled module beside them."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_of(fullname))


def _runtime_present() -> bool:
    """True when ``librt.strings`` (mypyc's run-time library: the compiled memory cache reads its keys with it,
    ``phantom_token/_native.py``) can be imported; a compiled module needing it would fail to import without it."""
    return importlib.util.find_spec("librt") is not None and importlib.util.find_spec("librt.strings") is not None


_reason: str | None = None


def install() -> None:
    """Choose compiled or source for this process; called once, before any of ``MODULES`` is imported."""
    global _reason
    if any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        return
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        _reason = f"{PURE_ENV} is set"
    elif stale := stale_modules():
        _reason = f"{source_of(stale[0]).name} changed after it was compiled"
        print(f"phantom-token: {_reason}; running the hot path from source (slower). "
              "Rebuild with scripts/setup (or pip install -e .).", file=sys.stderr)
    elif _compiled_library() is not None and not _runtime_present():
        _reason = "librt (mypyc's run-time library, a dependency) is not installed"
        print(f"phantom-token: {_reason}; running the hot path from source (slower). "
              "Install it: pip install librt.", file=sys.stderr)
    else:
        return
    sys.meta_path.insert(0, _SourceFinder())


def describe() -> str:
    """One line for ``--version`` and the start-up log: does this process run the compiled hot path?"""
    import phantom_token.http.server as server  # one of MODULES: where it came from tells for all of them

    if (server.__file__ or "").endswith(".py"):
        return f"pure Python ({_reason})" if _reason else "pure Python (not compiled)"
    return "compiled (mypyc)"
