"""One replica: a local process started from a deployment's envProcess, its health and its end."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import enum
import logging
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

import aiohttp
import psutil

from deploy.errors import ReplicaStartError
from deploy.local.settings import STDERR_TAIL_LINES

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PARENT_ONLY_ENV = ("OPENFAAS_USERNAME", "OPENFAAS_PASSWORD")
"""Runtime environment variables that replicas do not inherit."""

# libc is loaded before any fork: loading a library in a forked child of a threaded
# process can deadlock.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None


class ReplicaState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def new_replica_id(function_name: str) -> str:
    return f"{function_name}-{secrets.token_hex(4)}"


def _die_with_parent(parent_pid: int) -> None:
    """Run in the child between fork and exec: get SIGKILL when the parent thread ends.

    PR_SET_PDEATHSIG fires when the thread that forked the child exits, so a runtime killed
    with SIGKILL takes its replicas with it. The parent may have died before the prctl call,
    so the child checks its parent once more.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


class FunctionLog:
    """The log file ``<run_dir>/functions/<name>.log`` shared by a function's replicas."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8", errors="replace")

    def write(self, replica_id: str, stream: str, line: str) -> None:
        if self._file.closed:
            return
        self._file.write(f"{replica_id} {stream}: {line}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Replica:
    """A function process listening on its own port, with in-flight accounting."""

    def __init__(
        self,
        *,
        function_name: str,
        argv: list[str],
        env_vars: dict[str, str],
        ready_path: str,
        log: FunctionLog,
        generation: int,
        host: str = "127.0.0.1",
    ):
        self.function_name = function_name
        self.replica_id = new_replica_id(function_name)
        self.argv = argv
        self.env_vars = env_vars
        self.ready_path = ready_path
        self.log = log
        self.generation = generation
        self.host = host
        self.port = 0
        self.state = ReplicaState.STARTING
        self.inflight = 0
        self.started_at = time.monotonic()
        self.last_used = self.started_at
        self.exit_code: int | None = None
        self.stop_requested = False
        self.exited = asyncio.Event()
        self.ready_event = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._pumps: list[asyncio.Task[None]] = []
        self._waiter: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    def is_serving(self) -> bool:
        return self.state is ReplicaState.READY and not self.stop_requested

    async def spawn(self) -> None:
        """Start the process in its own process group; raise ReplicaStartError if exec fails.

        Exec fails on a missing or non-executable command, and on a NUL character in an
        argument or the environment.
        """
        self.port = free_port(self.host)
        env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY_ENV}
        env.update(self.env_vars)
        env["PORT"] = str(self.port)
        # HOSTNAME as on Kubernetes; VS_REPLICA_ID is the id the function reports in telemetry.
        env["HOSTNAME"] = self.replica_id
        env["VS_REPLICA_ID"] = self.replica_id
        parent_pid = os.getpid()

        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
                preexec_fn=lambda: _die_with_parent(parent_pid),
            )
        except (OSError, ValueError) as exc:
            # ValueError: exec rejects a NUL character in an argument or the environment, or
            # an environment name containing '='. Validation rejects those first; this keeps
            # the replica from staying "starting" if one gets past it.
            self.state = ReplicaState.EXITED
            self.exited.set()
            raise ReplicaStartError(
                f"Replica {self.replica_id} of function {self.function_name!r} could not "
                f"start {self.argv[0]!r}: {exc}. Check the deployment's envProcess.",
                function=self.function_name,
                replica_id=self.replica_id,
            ) from exc
        logger.info(
            "Replica %s of %s started: pid %s, port %s, command %s",
            self.replica_id,
            self.function_name,
            self._process.pid,
            self.port,
            self.argv,
        )

        assert self._process.stdout is not None and self._process.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(self._process.stdout, "stdout")),
            asyncio.create_task(self._pump(self._process.stderr, "stderr")),
        ]
        self._waiter = asyncio.create_task(self._wait_exit())

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                # A line longer than the reader's limit: read the chunk as it comes.
                raw = await stream.read(65536)
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.log.write(self.replica_id, name, line)
            if name == "stderr":
                self._stderr_tail.append(line)

    async def _wait_exit(self) -> None:
        assert self._process is not None
        self.exit_code = await self._process.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._pumps), timeout=1.0)
        self.state = ReplicaState.EXITED
        self.exited.set()

    def start_error(self, reason: str) -> ReplicaStartError:
        tail = self.stderr_tail()
        message = (
            f"Replica {self.replica_id} of function {self.function_name!r} {reason}. "
            f"Its stderr ends with: {tail or '(nothing)'}. "
            f"See {self.log.path} and check the envProcess {' '.join(self.argv)!r}."
        )
        return ReplicaStartError(
            message,
            function=self.function_name,
            replica_id=self.replica_id,
            exit_code=self.exit_code,
            stderr_tail=tail,
        )

    async def wait_ready(
        self, session: aiohttp.ClientSession, timeout_s: float, poll_interval_s: float
    ) -> None:
        """Poll the ready path until it returns 200; raise ReplicaStartError otherwise."""
        deadline = time.monotonic() + timeout_s
        url = self.base_url + self.ready_path
        probe_timeout = aiohttp.ClientTimeout(total=max(poll_interval_s * 20, 1.0))
        while True:
            if self.exited.is_set():
                raise self.start_error(f"exited with code {self.exit_code} before it was ready")
            if self.stop_requested:
                raise self.start_error("was stopped before it was ready")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url, timeout=probe_timeout) as response:
                    await response.read()
                    if response.status == 200:
                        self.state = ReplicaState.READY
                        self.last_used = time.monotonic()
                        self.ready_event.set()
                        logger.info(
                            "Replica %s of %s is ready after %.2f s",
                            self.replica_id,
                            self.function_name,
                            time.monotonic() - self.started_at,
                        )
                        return
            if time.monotonic() >= deadline:
                raise self.start_error(
                    f"did not return 200 on GET {self.ready_path} within {timeout_s:g} s"
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.exited.wait(), timeout=poll_interval_s)

    async def stop(self, grace_s: float, reason: str) -> None:
        """Send SIGTERM to the replica's process group, then SIGKILL after ``grace_s``."""
        self.stop_requested = True
        if self._process is None or self.exited.is_set():
            return
        if self.state is not ReplicaState.EXITED:
            self.state = ReplicaState.STOPPING
        logger.info("Stopping replica %s of %s: %s", self.replica_id, self.function_name, reason)
        self._signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.exited.wait(), timeout=grace_s)
        except TimeoutError:
            logger.warning(
                "Replica %s of %s ignored SIGTERM for %.1f s; sending SIGKILL",
                self.replica_id,
                self.function_name,
                grace_s,
            )
            self._signal_group(signal.SIGKILL)
            await self.exited.wait()

    def kill_now(self) -> None:
        """SIGKILL the process group without waiting (used when the event loop is gone)."""
        if self._process is not None and self._process.returncode is None:
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    def rss_bytes(self) -> int:
        """Resident memory of the process and its children, in bytes (0 once it exited)."""
        if self._process is None or self.exited.is_set():
            return 0
        try:
            root = psutil.Process(self._process.pid)
            total = root.memory_info().rss
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            return total
        except psutil.Error:
            return 0
