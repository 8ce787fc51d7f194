"""Fixtures for the embedded runtime and client tests: real runtimes and real replica processes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from deploy.local import LocalRuntime, RuntimeSettings
from deploy.models import FunctionDeployment

NOOP_FUNCTION = Path(__file__).with_name("noop_function.py")
NOOP_COMMAND = f"{sys.executable} {NOOP_FUNCTION}"

FAST_SETTINGS = {
    "ready_timeout_s": 5.0,
    "scale_from_zero_timeout_s": 10.0,
    "start_check_s": 1.0,
    "stop_grace_s": 2.0,
    "scaler_interval_s": 0.05,
    "scale_down_idle_s": 1.0,
    "restart_backoff_s": 0.2,
    "upstream_timeout_s": 20.0,
}


def noop_deployment(
    name: str = "noop",
    *,
    labels: dict[str, str] | None = None,
    env_vars: dict[str, str] | None = None,
    args: str = "",
    annotations: dict[str, str] | None = None,
) -> FunctionDeployment:
    return FunctionDeployment(
        service=name,
        image=f"local/{name}:test",
        env_process=f"{NOOP_COMMAND} {args}".strip(),
        env_vars=dict(env_vars or {}),
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
    )


def noop_processes() -> list[psutil.Process]:
    """Processes on this machine running this test function file."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if any(str(NOOP_FUNCTION) == part for part in cmdline):
            found.append(process)
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Callable[..., LocalRuntime]]:
    """Start runtimes with short timeouts; each is stopped at the end of the test."""
    started: list[LocalRuntime] = []

    def make(**overrides) -> LocalRuntime:
        settings = RuntimeSettings(run_dir=tmp_path / "run", **{**FAST_SETTINGS, **overrides})
        runtime = LocalRuntime(settings).start()
        started.append(runtime)
        return runtime

    yield make
    for runtime in started:
        runtime.stop()


@pytest.fixture
def runtime(make_runtime) -> LocalRuntime:
    return make_runtime()


@pytest.fixture
def http(runtime: LocalRuntime) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime.url, timeout=30.0) as client:
        yield client


@pytest.fixture
def deploy_noop(http: httpx.Client) -> Callable[..., FunctionDeployment]:
    """Deploy a no-op function on the runtime and expect 202."""

    def deploy(name: str = "noop", **kwargs) -> FunctionDeployment:
        deployment = noop_deployment(name, **kwargs)
        response = http.post("/system/functions", json=deployment.to_json())
        assert response.status_code == 202, response.text
        return deployment

    return deploy
