"""``python -m experiments ui``: the MLflow UI on the project's tracking store.

It runs ``mlflow server`` (UI and REST API) as a child process bound to 127.0.0.1 by
default. A ``sqlite:///`` store is passed as an absolute path, so the server finds it
whatever its working folder. The child runs in its own session, and Ctrl-C, SIGTERM and
SIGHUP of this command stop its whole process group (the server and its workers).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import httpx

from experiments.tracking import TrackingError, sqlite_path

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.25
STOP_TIMEOUT_S = 10.0
STOP_POLL_S = 0.1
WORKERS = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
MAX_PORT = 65535


class UiError(TrackingError):
    """The MLflow UI could not be started, did not become ready, or exited on its own."""


class StopRequested(Exception):
    """A stop signal (SIGTERM or SIGHUP) reached the ``ui`` command."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def absolute_uri(tracking_uri: str) -> str:
    """Return ``tracking_uri`` with a relative sqlite path made absolute."""
    database = sqlite_path(tracking_uri)
    if database is None:
        return tracking_uri
    return f"sqlite:///{database.resolve()}"


def ui_command(tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """Return the ``mlflow server`` argument list for the UI on ``tracking_uri``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        absolute_uri(tracking_uri),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(WORKERS),
    ]


class UiServer:
    """A running ``mlflow server`` child process; :meth:`stop` ends it and its workers."""

    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process = process
        self.url = url

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``/health`` until the server returns 200.

        Raises:
            UiError: the process exited, or ``timeout_s`` passed first.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UiError(
                    f"mlflow server exited with code {self.process.returncode} before it was "
                    f"ready at {self.url}; run the command by hand to see its output: "
                    f"{' '.join(cast(list[str], self.process.args))}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=READY_POLL_S * 4).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(READY_POLL_S)
        raise UiError(f"The MLflow UI at {self.url} was not ready within {timeout_s} s.")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """End the server's process group: SIGTERM, then SIGKILL after ``timeout_s``.

        The group is signalled even when the server itself has exited, because its workers
        may outlive it.
        """
        group = self.process.pid
        if not _group_alive(group, self.process):
            return
        os.killpg(group, signal.SIGTERM)
        if not _wait_group_gone(group, self.process, timeout_s):
            logger.warning("MLflow UI (process group %d) ignored SIGTERM; killing it", group)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            _wait_group_gone(group, self.process, timeout_s)
        logger.info("Stopped the MLflow UI at %s", self.url)

    def __enter__(self) -> UiServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def check_port_free(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Bind ``host``:``port`` once and release it, to find a taken port before starting.

    Raises:
        UiError: the port is in use, or the address cannot be bound on this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR keeps connections in TIME_WAIT from an earlier server from making a
        # free port look taken. On Linux a listening socket still makes the bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UiError(
                    f"Port {port} on {host} is already in use; stop the program that listens "
                    f"there or choose another port with --port."
                ) from error
            raise UiError(
                f"Cannot bind {host}:{port} ({error.strerror or error}); check --host and --port."
            ) from error


def start_ui(
    tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, quiet: bool = False
) -> UiServer:
    """Start ``mlflow server`` in its own session and process group; return it, not yet ready.

    A host that is not a loopback address is allowed but logged as a warning, because the
    UI has no authentication. With ``quiet``, the server's output is discarded.
    """
    if not _is_loopback(host):
        logger.warning("The MLflow UI listens on %s, beyond this machine, without a login", host)
    database = sqlite_path(tracking_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    command = ui_command(tracking_uri, host, port)
    output = subprocess.DEVNULL if quiet else None
    try:
        process = subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True)
    except OSError as error:
        raise UiError(f"Could not start mlflow server ({command[0]}): {error}") from error
    url = f"http://{_url_host(host)}:{port}"
    logger.info("Started the MLflow UI (pid %d) at %s on %s", process.pid, url, tracking_uri)
    return UiServer(process, url)


def serve_ui(tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Serve the MLflow UI until Ctrl-C, SIGTERM or SIGHUP, then stop it and return 0.

    Raises:
        UiError: the port is taken, or the server exits before it is ready or while it
            serves (for example because it failed to bind).
    """
    check_port_free(host, port)
    server: UiServer | None = None
    with _stop_signals_raise():
        try:
            server = start_ui(tracking_uri, host, port)
            server.wait_ready()
            logger.info("The MLflow UI is ready at %s", server.url)
            code = server.process.wait()
        except (KeyboardInterrupt, StopRequested) as stop:
            logger.info("Stopping the MLflow UI on %s", str(stop) or "Ctrl-C")
            return 0
        finally:
            if server is not None:
                server.stop()
    raise UiError(
        f"mlflow server at {server.url} exited on its own with code {code}; run the command "
        f"by hand to see its output: {' '.join(cast(list[str], server.process.args))}"
    )


def ui_main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m experiments ui``; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments ui",
        description="Open the MLflow UI on the experiments' tracking store.",
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or %(default)s)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="TCP port (default %(default)s)"
    )
    args = parser.parse_args(argv)
    database = sqlite_path(args.tracking_uri)
    if database is not None and not Path(database).is_file():
        print(
            f"note: {args.tracking_uri} does not exist yet; the UI will show no runs.",
            file=sys.stderr,
        )
    print(f"MLflow UI on http://{_url_host(args.host)}:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        return serve_ui(args.tracking_uri, args.host, args.port)
    except UiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """Turn the first SIGTERM or SIGHUP into :class:`StopRequested`; ignore later ones.

    Later signals are only logged, so that they cannot interrupt the stop they asked for.
    Outside the main thread, where Python cannot install handlers, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handle(signum: int, _frame) -> None:
        if received:
            logger.info("Already stopping the MLflow UI; ignoring %s", signal.Signals(signum).name)
            return
        received.append(signum)
        raise StopRequested(signum)

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _group_alive(group: int, leader: subprocess.Popen) -> bool:
    """Tell whether any process of ``group`` is left, after reaping the group's leader."""
    leader.poll()
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(group: int, leader: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_alive(group, leader):
        if time.monotonic() >= deadline:
            return False
        time.sleep(STOP_POLL_S)
    return True


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-{MAX_PORT}")
    return port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
