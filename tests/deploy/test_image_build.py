"""The image's build, without a Docker engine (none runs here): the builder stage's own RUN line, taken from the
Dockerfile, runs on a copy of the build context (what .dockerignore lets through), with its absolute paths moved
into a temporary directory. The result must be the compiled hot path, and the runtime stage's defaults must work
with it: `check` on the image's configuration, `serve` with it, and the HEALTHCHECK command against that.

What this does not cover: the base image itself (its Python, Debian's gcc in it), the COPY between stages, the
user and the read-only file system; those need `docker build`/`docker run` (docs/deploy.md says how)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerfile import parse
from tests.deploy.test_dockerfile import DEFAULT_CONFIG, DOCKERFILE, context_files, final
from tests.deploy.workloads import DEPLOY, ROOT

pytestmark = pytest.mark.e2e

IMAGE_ENV = {
    "PHANTOM_UPSTREAM_URL": "http://127.0.0.1:9",
    "PHANTOM_INTROSPECTION_ENDPOINT": "http://127.0.0.1:9/oauth/introspect",
    "PHANTOM_CLIENT_ID": "introspection-client",
    "PHANTOM_CLIENT_SECRET": "s3cret",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtualenv the builder stage makes, made here by the Dockerfile's own commands."""
    if not shutil.which(os.environ.get("CC", "cc")):
        pytest.skip("no C compiler: the image's builder stage compiles the hot path with gcc")
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    for name in context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    builder = [i for i in parse(DOCKERFILE) if i.stage == "builder"]
    run = next(i.value for i in builder if i.keyword == "RUN" and "pip wheel" in i.value)
    venv = base / "venv"
    script = (run.replace("/opt/phantom-token", str(venv)).replace("/wheels", str(base / "wheels"))
              .replace("python -m ", f"{sys.executable} -m "))
    assert not re.search(r"(^|[\s=])/(opt|wheels)\b", script), "a path of the image left in the script"
    env = {k: v for k, v in os.environ.items() if k != "PHANTOM_TOKEN_PURE_PYTHON" and not k.startswith("VIRTUAL_ENV")}
    env.update({"EXTRAS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=context, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return venv


def test_the_builder_makes_the_compiled_hot_path(built: Path) -> None:
    version = subprocess.run([str(built / "bin" / "phantom-token"), "--version"], capture_output=True, text=True,
                             check=True, env={k: v for k, v in os.environ.items() if k != "PHANTOM_TOKEN_PURE_PYTHON"})
    assert "compiled (mypyc)" in version.stdout, version.stdout
    wheels = [p.name for p in (built.parent / "wheels").glob("phantom_token-*.whl")]
    assert len(wheels) == 1, wheels
    assert "-py3-none-any" not in wheels[0], f"not a platform wheel: {wheels}"


def test_check_passes_on_the_image_and_compose_configurations(built: Path) -> None:
    phantom_token = str(built / "bin" / "phantom-token")
    for config, extra in ((DEFAULT_CONFIG, {}), (DEPLOY / "compose" / "gateway.yml",
                                                 {"PHANTOM_REDIS_URL": "redis://redis:6379/0"})):
        run = subprocess.run([phantom_token, "check", "-c", str(config)], capture_output=True, text=True,
                             env={**os.environ, **IMAGE_ENV, **extra}, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
    missing = subprocess.run([phantom_token, "check", "-c", str(DEFAULT_CONFIG)], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k not in IMAGE_ENV}, timeout=60)
    assert missing.returncode == 1
    assert "PHANTOM_CLIENT_SECRET" in missing.stdout + missing.stderr


def test_the_healthcheck_command_passes_against_serve_and_sigterm_exits_0(built: Path, tmp_path: Path) -> None:
    """`serve` with the image's configuration (its ports moved to free ones), then the HEALTHCHECK's command."""
    bin_dir = built / "bin"
    env = {**os.environ, **IMAGE_ENV, "PHANTOM_TOKEN_CONFIG": str(DEFAULT_CONFIG), "PYTHONUNBUFFERED": "1"}
    env.pop("PHANTOM_TOKEN_PURE_PYTHON", None)
    proc = subprocess.Popen([str(bin_dir / "phantom-token"), "serve", "--listen", "127.0.0.1:0", "--admin-listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"listening on http://127\.0\.0\.1:\d+ \(admin on http://127\.0\.0\.1:(\d+)\)", line)
        assert found, line + proc.stdout.read() if proc.poll() is not None else line
        check = next(i for i in final(parse(DOCKERFILE)) if i.keyword == "HEALTHCHECK").exec_form()
        assert check is not None
        command = [str(bin_dir / check[0]), *(a.replace(":9901/", f":{found.group(1)}/") for a in check[1:])]
        assert subprocess.run(command, timeout=10, env=env).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        # and the HEALTHCHECK fails once nothing answers
        assert subprocess.run(command, timeout=10, env=env, capture_output=True).returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_demo_servers_of_the_compose_file_are_in_the_image(built: Path) -> None:
    for module in ("phantom_token.demo.authorization_server", "phantom_token.demo.echo_api"):
        run = subprocess.run([str(built / "bin" / "python"), "-m", module, "--help"], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        assert "--listen" in run.stdout
