"""Start and stop Locust in processes of its own, and follow its per-request rows.

Locust patches the standard library with gevent when imported, so the runner never imports
it: :class:`LocustProcesses` runs ``python -m locust -f experiments/load/locustfile.py
--headless`` (one process, or one master and N workers on 127.0.0.1) with the load in
``VS_LOAD_SPEC``, and reads the JSON lines the processes write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from experiments.errors import LoadError
from experiments.load.records import JsonLinesTail
from experiments.load.schedule import ENV_LOAD_SPEC, LoadSpec

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 10.0
"""Time between SIGINT and SIGKILL when the Locust processes are stopped early."""
LOG_TAIL_LINES = 20


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocustProcesses:
    """The Locust processes of one load, and the rows they have written so far.

    ``spec.workers == 0`` runs one process; N runs a master with ``--expect-workers N`` and
    N worker processes. Logs go to ``locust.log`` (and ``locust-worker<i>.log``) in
    ``log_dir``; the per-request rows go to ``spec.requests_dir``.
    """

    def __init__(
        self,
        spec: LoadSpec,
        *,
        host: str,
        log_dir: Path,
        log_level: str = "WARNING",
        python: str = sys.executable,
    ):
        self.spec = spec
        self.host = host
        self.log_dir = log_dir
        self.log_level = log_level
        self.python = python
        self.tail = JsonLinesTail(Path(spec.requests_dir))
        self._master: subprocess.Popen | None = None
        self._workers: list[subprocess.Popen] = []

    @property
    def log_path(self) -> Path:
        return self.log_dir / "locust.log"

    def _command(self, *extra: str) -> list[str]:
        return [
            self.python,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--loglevel",
            self.log_level,
            *extra,
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env[ENV_LOAD_SPEC] = self.spec.to_json()
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if part
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen:
        log = (self.log_dir / log_name).open("ab")
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=os.getcwd(),
                start_new_session=True,
            )
        except OSError as exc:
            raise LoadError(f"Cannot start Locust ({command[0]} -m locust): {exc}") from exc
        finally:
            log.close()

    def start(self) -> None:
        """Start the Locust processes; the load begins as soon as they are connected."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        Path(self.spec.requests_dir).mkdir(parents=True, exist_ok=True)
        common = ["--headless", "--host", self.host, "--exit-code-on-error", "0"]
        # Locust takes whole seconds here; users still waiting get that long to finish.
        common += ["--stop-timeout", str(math.ceil(self.spec.request_timeout_s))]
        if self.spec.workers == 0:
            self._master = self._spawn(self._command(*common), "locust.log")
            logger.info("Started Locust (pid %d) against %s", self._master.pid, self.host)
            return

        port = _free_port()
        master = [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            str(self.spec.workers),
        ]
        self._master = self._spawn(self._command(*common, *master), "locust.log")
        for index in range(self.spec.workers):
            worker = ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
            self._workers.append(self._spawn(self._command(*worker), f"locust-worker{index}.log"))
        logger.info(
            "Started Locust master (pid %d) and %d worker(s) against %s",
            self._master.pid,
            len(self._workers),
            self.host,
        )

    def poll(self) -> int | None:
        """Return the master's exit status, or None while it runs."""
        if self._master is None:
            raise LoadError("Locust is not started; call start() first.")
        return self._master.poll()

    def wait(self, timeout_s: float) -> int:
        """Wait for the load to end and return the exit status; raise LoadError on timeout."""
        assert self._master is not None, "wait() runs only after start()"
        try:
            status = self._master.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise LoadError(
                f"Locust did not finish within {timeout_s:g} s; see {self.log_path}."
            ) from exc
        for worker in self._workers:
            try:
                worker.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("Locust worker pid %d did not exit; killing it", worker.pid)
                worker.kill()
                worker.wait()
        return status

    def check_exit(self, status: int) -> None:
        """Raise LoadError with the end of Locust's log when ``status`` is not 0."""
        if status != 0:
            raise LoadError(
                f"Locust exited with status {status}; the end of {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def stop(self) -> None:
        """Stop every Locust process: SIGINT, then SIGKILL after ``STOP_GRACE_S``."""
        processes = [p for p in (self._master, *self._workers) if p is not None]
        for process in processes:
            if process.poll() is None:
                _signal(process, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("Locust pid %d ignored SIGINT; killing it", process.pid)
                _signal(process, signal.SIGKILL)
                process.wait()


def _signal(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
