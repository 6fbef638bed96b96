"""mypyc's class marks (``mypy_extensions``): ``trait``, a class a compiled class may take as a second base, and
``mypyc_attr(allow_interpreted_subclasses=True)``, a compiled class that plain Python (a test's fake) may subclass.

The compiled build reads the marks when it compiles (mypy_extensions comes with mypy, a build dependency); at run
time they do nothing, so the package does not need mypy_extensions installed. This module itself is never compiled.
"""

from __future__ import annotations

try:
    from mypy_extensions import mypyc_attr as mypyc_attr
    from mypy_extensions import trait as trait
except ImportError:  # an install without mypy: the classes are plain Python, and the marks mean nothing

    def trait(cls):  # type: ignore[no-untyped-def,misc]
        return cls

    def mypyc_attr(*attrs, **kwattrs):  # type: ignore[no-untyped-def,misc]
        return trait


__all__ = ["mypyc_attr", "trait"]
