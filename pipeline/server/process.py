"""Start and stop ``python -m pipeline.serve`` processes on loopback, for local runs and tests.

A process started here listens on a free port (``PORT=0``). Its stdout (the JSON event
lines) and stderr go to files in a log folder, and the bound port is read from the
``listening`` event. This is not the embedded runtime of ``deploy``, because it has no
scaling and no gateway API.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
"""Time for a process to bind its port; imports alone take a few seconds on a busy machine."""
READY_TIMEOUT_S = 180.0
"""Time for a process to load its models after it listens (Whisper, numba JIT on a cold cache)."""
STOP_GRACE_S = 15.0
POLL_INTERVAL_S = 0.05


class FunctionProcessError(PipelineError):
    """A function process exited or did not become ready; the message names its log files."""


class FunctionProcess:
    """One function server process on 127.0.0.1."""

    def __init__(self, stage: str, process: subprocess.Popen, log_dir: Path, name: str):
        self.stage = stage
        self.process = process
        self.name = name
        self.stdout_path = log_dir / f"{name}.out.jsonl"
        self.stderr_path = log_dir / f"{name}.err.log"
        self.port: int | None = None

    def __repr__(self) -> str:
        return f"FunctionProcess(stage={self.stage!r}, pid={self.process.pid}, port={self.port})"

    @property
    def url(self) -> str:
        if self.port is None:
            raise FunctionProcessError(f"The {self.stage} process has not reported its port yet.")
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        stage: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        name: str | None = None,
        port: int = 0,
    ) -> FunctionProcess:
        """Start ``python -m pipeline.serve STAGE`` with ``env`` added to this environment.

        ``VS_HOST`` is forced to 127.0.0.1. Returns at once; call :meth:`wait_listening`.
        """
        log_dir.mkdir(parents=True, exist_ok=True)
        name = name or stage.replace(":", "-")
        child_env = {**os.environ, **(env or {})}
        child_env.update({"PORT": str(port), "VS_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
        with (
            open(log_dir / f"{name}.out.jsonl", "wb") as stdout,
            open(log_dir / f"{name}.err.log", "wb") as stderr,
        ):
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.serve", stage],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=child_env,
                start_new_session=True,
            )
        logger.info("Started %s as pid %d", stage, process.pid)
        return cls(stage, process, log_dir, name)

    def events(self) -> list[dict]:
        """Return the JSON event lines the process has written to stdout so far."""
        try:
            lines = self.stdout_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
        return parsed

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> FunctionProcessError:
        return FunctionProcessError(
            f"The {self.stage} function process (pid {self.process.pid}) {what}. "
            f"Its log is {self.stderr_path}; last lines:\n{self.stderr_tail()}"
        )

    def wait_listening(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """Wait for the ``listening`` event and return the bound port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "listening":
                    self.port = int(event["port"])
                    return self.port
            if self.process.poll() is not None:
                raise self._fail(f"exited with code {self.process.returncode} before listening")
            time.sleep(POLL_INTERVAL_S)
        raise self._fail(f"did not listen within {timeout_s:g} s")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``GET /_/ready`` until it returns 200."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise self._fail(f"exited with code {self.process.returncode} while loading")
                try:
                    if client.get(self.url + "/_/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(POLL_INTERVAL_S * 4)
        raise self._fail(f"did not become ready within {timeout_s:g} s")

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """Send SIGTERM, wait up to ``grace_s``, then SIGKILL; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (pid %d) ignored SIGTERM for %.0f s; killing it",
                    self.stage,
                    self.process.pid,
                    grace_s,
                )
                self.process.kill()
                self.process.wait()
        return self.process.returncode
