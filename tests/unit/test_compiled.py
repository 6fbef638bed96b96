"""The compiled hot path (mypyc, phantom_token/compiled.py): what runs compiled, and the ways around it."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phantom_token import compiled

SHOW = ("import phantom_token.compiled as c, phantom_token.frontends.proxy as p; "
        "print(c.describe()); print(p.__file__)")


def _run(env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SHOW], env={**os.environ, **env}, capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout.splitlines()


def test_the_hot_path_runs_compiled_where_it_was_built() -> None:
    """CI builds with a C compiler (scripts/setup), so there the suite must be exercising the compiled modules."""
    if os.environ.get(compiled.PURE_ENV):
        pytest.skip(f"{compiled.PURE_ENV} is set: this run tests the pure-Python hot path")
    if compiled._compiled_library() is None and not os.environ.get("CI"):
        pytest.skip("built without a C compiler here")
    assert compiled.describe() == "compiled (mypyc)"
    assert compiled.stale_modules() == []
    for name in compiled.MODULES:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        assert not (module.__file__ or "").endswith(".py"), name


def test_the_environment_variable_runs_every_module_from_source() -> None:
    description, proxy_file = _run({compiled.PURE_ENV: "1"})
    assert description == f"pure Python ({compiled.PURE_ENV} is set)"
    assert proxy_file.endswith("proxy.py")


def test_every_compiled_module_has_its_source() -> None:
    for name in compiled.MODULES:
        assert compiled.source_of(name).is_file(), name


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the package's sources, compiled (a stand-in library) from exactly these sources."""
    root = tmp_path / "src" / "phantom_token"
    shutil.copytree(compiled.source_of("phantom_token.metrics").parent, root,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", compiled.RECORD))
    monkeypatch.setattr(compiled, "_PACKAGE", root)
    (root.parent / f"phantom_token__mypyc{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    (root / compiled.RECORD).write_text(json.dumps(compiled.source_digests()))
    return root


def test_unchanged_sources_are_not_stale(package: Path) -> None:
    assert compiled.stale_modules() == []


def test_an_edited_source_is_stale_by_content_not_by_time(package: Path) -> None:
    engine = compiled.source_of("phantom_token.core.engine")
    os.utime(engine)  # touched, same content: still the compiled one
    assert compiled.stale_modules() == []
    engine.write_text(engine.read_text() + "\n# edited\n")
    assert compiled.stale_modules() == ["phantom_token.core.engine"]


def test_a_library_without_a_record_trusts_nothing(package: Path) -> None:
    (package / compiled.RECORD).unlink()
    assert compiled.stale_modules() == list(compiled.MODULES)


def test_without_a_compiled_library_nothing_is_stale(package: Path) -> None:
    for library in package.parent.glob("phantom_token__mypyc*"):
        library.unlink()
    (package / compiled.RECORD).write_text("{}")
    assert compiled.stale_modules() == []


def test_a_stale_build_runs_from_source_with_one_warning(package: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    monkeypatch.setattr(sys, "meta_path", [finder for finder in sys.meta_path
                                           if not isinstance(finder, compiled._SourceFinder)])
    compiled.install()
    assert capsys.readouterr().err == ""  # up to date: compiled modules are used
    assert not any(isinstance(finder, compiled._SourceFinder) for finder in sys.meta_path)

    routes = compiled.source_of("phantom_token.core.routes")
    routes.write_text(routes.read_text() + "\n# edited\n")
    compiled.install()
    compiled.install()  # once only
    assert capsys.readouterr().err.count("routes.py changed after it was compiled") == 1
    finder = sys.meta_path[0]
    assert isinstance(finder, compiled._SourceFinder)
    spec = finder.find_spec("phantom_token.core.engine", None)
    assert spec is not None
    assert spec.origin == str(package / "core" / "engine.py")
    assert finder.find_spec("phantom_token.cli", None) is None  # not compiled: the usual import machinery


def test_a_compiled_build_without_librt_runs_from_source_with_a_warning(
        package: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The compiled memory cache imports librt.strings when it loads (cache/memory.py, _native.py): without it the
    build must not fail to import but run from source."""
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    monkeypatch.setattr(sys, "meta_path", [finder for finder in sys.meta_path
                                           if not isinstance(finder, compiled._SourceFinder)])
    assert compiled._runtime_present()  # installed here (a dependency)
    monkeypatch.setattr(compiled, "_runtime_present", lambda: False)
    compiled.install()
    assert "librt" in capsys.readouterr().err
    assert any(isinstance(finder, compiled._SourceFinder) for finder in sys.meta_path)


def test_the_pure_python_key_reader_matches_librt() -> None:
    from librt.strings import read_i64_le

    from phantom_token._native import int_from_bytes_i64_le

    data = bytes(range(250, 256)) + bytes(range(20))
    for index in (0, 3, 8, 18):
        assert int_from_bytes_i64_le(data, index) == read_i64_le(data, index)
    with pytest.raises(ValueError, match="cannot read"):
        int_from_bytes_i64_le(data, 19)
