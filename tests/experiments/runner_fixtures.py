"""Helpers shared by the experiments tests: an embedded runtime with a trivial orchestrator,
subprocess runs of the command line, and checks for leftover replica processes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psutil

from deploy.client import GatewayClient
from deploy.local import LocalRuntime, RuntimeSettings
from deploy.models import FunctionDeployment

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ECHO_FUNCTION = Path(__file__).with_name("echo_function.py")
TEST_USERNAME = "admin"
TEST_PASSWORD = "test-password-for-this-runtime"
CLI_TIMEOUT_S = 300


@contextmanager
def runtime_with_echo(
    tmp_path: Path, env: Mapping[str, str] | None = None, *, deploy: bool = True
) -> Iterator[tuple[LocalRuntime, GatewayClient]]:
    """Start an embedded runtime with basic auth; deploy echo_function.py as orchestrator."""
    settings = RuntimeSettings(
        run_dir=tmp_path / "runtime",
        auth_enabled=True,
        username=TEST_USERNAME,
        password=TEST_PASSWORD,
    )
    runtime = LocalRuntime(settings).start()
    client = GatewayClient(runtime.url, username=TEST_USERNAME, password=TEST_PASSWORD)
    try:
        if deploy:
            client.deploy(
                FunctionDeployment(
                    service="orchestrator",
                    image="echo:test",
                    env_process=shlex.join([sys.executable, str(ECHO_FUNCTION)]),
                    env_vars=dict(env or {}),
                    labels={"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "4"},
                    annotations={"com.openfaas.health.http.path": "/_/health"},
                )
            )
            client.wait_ready("orchestrator", 1, timeout_s=60)
        yield runtime, client
    finally:
        client.close()
        runtime.stop()


def cli_environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env


def run_cli(
    cwd: Path, *args: str, timeout_s: float = CLI_TIMEOUT_S, **env: str
) -> subprocess.CompletedProcess:
    """Run ``python -m experiments ARGS`` in ``cwd`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args],
        cwd=cwd,
        env=cli_environment(**env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def replica_processes(store_root: Path) -> list[psutil.Process]:
    """Return live function processes whose store is under ``store_root``."""
    found = []
    marker = str(store_root.resolve())
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if "pipeline.serve" not in cmdline:
            continue
        try:
            if process.environ().get("VS_STORE_ROOT", "").startswith(marker):
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found
