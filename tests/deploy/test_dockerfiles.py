"""Static checks of the Dockerfiles in docker/ (no Docker engine runs here)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.base"]
FUNCTION_NAMES = [
    "ffmpeg-0",
    "librosa",
    "ffmpeg-1",
    "ffmpeg-2",
    "asr",
    "ffmpeg-3",
    "object-detector",
    "orchestrator",
]


def instructions(path: Path) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs with continuation lines joined."""
    result = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    assert not pending, f"{path.name} ends inside a continuation line"
    return result


def stage_instructions(path: Path) -> list[tuple[str, str]]:
    """Return the instructions of the final build stage."""
    found = instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(found) if keyword == "FROM")
    return found[last_from:]


def values(path: Path, keyword: str) -> list[str]:
    return [arguments for kw, arguments in stage_instructions(path) if kw == keyword]


def env_of(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in values(path, "ENV"):
        for item in shlex.split(arguments):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def test_dockerfiles_present():
    for path in DOCKERFILES:
        assert path.is_file(), path


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copy_sources_exist(path):
    for arguments in [a for k, a in instructions(path) if k == "COPY"]:
        parts = shlex.split(arguments)
        if any(part.startswith("--from") for part in parts):
            continue
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        assert sources, f"{path.name}: COPY without a source: {arguments}"
        for source in sources:
            assert (REPO / source).exists(), f"{path.name}: COPY source {source} is missing"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root(path):
    users = [a for k, a in instructions(path) if k == "USER"]

    assert users, f"{path.name} sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_exposes_8080(path):
    assert "8080" in values(path, "EXPOSE")


def test_base_image_and_ffmpeg():
    base = DOCKER / "Dockerfile.base"
    froms = [a for k, a in instructions(base) if k == "FROM"]

    assert all(a.split()[0] == "python:3.11-slim" for a in froms)
    assert any("apt-get install" in a and "ffmpeg" in a for a in values(base, "RUN"))
    assert any(a.strip() == "pip install ." for k, a in instructions(base) if k == "RUN")


def test_base_env_fits_read_only_root():
    env = env_of(DOCKER / "Dockerfile.base")

    assert env["PORT"] == "8080"
    assert env["VS_HOST"] == "0.0.0.0"
    for key in (
        "HOME",
        "TMPDIR",
        "XDG_CACHE_HOME",
        "NUMBA_CACHE_DIR",
        "MPLCONFIGDIR",
        "VS_STORE_ROOT",
    ):
        assert env[key].startswith("/tmp"), key


def test_function_entry_is_pipeline_serve():
    function = DOCKER / "Dockerfile"
    cmd = values(function, "CMD")

    assert len(cmd) == 1
    assert 'exec python -m pipeline.serve \\"$VS_FUNCTION\\"' in cmd[0]
    assert env_of(function)["VS_FUNCTION"] == "${FUNCTION}"
    assert "FUNCTION" in [a.split("=")[0] for a in values(function, "ARG")]


def test_base_bakes_numba_cache_at_build():
    base = DOCKER / "Dockerfile.base"
    warm = [a for a in values(base, "RUN") if "python -m pipeline warm" in a]

    assert len(warm) == 1
    assert warm[0].startswith("NUMBA_CACHE_DIR=/opt/numba-cache ")
    assert env_of(base)["NUMBA_CPU_NAME"] == "generic"


def test_function_entry_copies_numba_cache_first():
    command = values(DOCKER / "Dockerfile", "CMD")[0]
    copy = command.index('cp -R /opt/numba-cache/. \\"$NUMBA_CACHE_DIR\\"/;')

    assert copy < command.index("exec python -m pipeline.serve")


def test_readme_says_numba_cache_is_baked():
    readme = (DOCKER / "README.md").read_text()

    assert "starts empty" not in readme
    assert "python -m pipeline warm" in readme
    assert "/opt/numba-cache" in readme


def test_function_image_builds_from_base():
    froms = [a for k, a in instructions(DOCKER / "Dockerfile") if k == "FROM"]
    args = [a for k, a in instructions(DOCKER / "Dockerfile") if k == "ARG"]

    assert froms == ["${BASE_IMAGE}"]
    assert "BASE_IMAGE=videosearcher-base:latest" in args


def ignored(patterns: list[str], relative: str) -> bool:
    """Apply .dockerignore rules in order; the last matching rule wins."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rule = pattern[1:] if negate else pattern
        rule = rule.rstrip("/")
        if fnmatch.fnmatch(relative, rule) or relative.startswith(rule + "/"):
            result = not negate
    return result


def test_base_dockerignore_keeps_copy_sources():
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.base.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    assert not ignored(patterns, "pyproject.toml")
    assert not ignored(patterns, "pipeline/serve.py")
    assert ignored(patterns, ".venv/bin/python")
    assert ignored(patterns, "runs/mlflow.db")


def test_readme_build_commands_match_dockerfiles():
    readme = (DOCKER / "README.md").read_text()

    assert "docker build -f docker/Dockerfile.base -t videosearcher-base:latest ." in readme
    assert re.search(r"docker build -f docker/Dockerfile \\\n", readme)
    assert "faas-cli secret create s3-secret-key" in readme
    assert "faas-cli deploy -f stack.yml" in readme
    for name in FUNCTION_NAMES:
        assert name in readme


def test_function_names_match_stage_registry():
    from pipeline.stages import STAGE_NAMES

    assert list(STAGE_NAMES) == FUNCTION_NAMES
