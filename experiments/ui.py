"""``python -m experiments ui``: the MLflow UI on the project's tracking store.

It runs ``mlflow server`` (UI and REST API) as a child process bound to 127.0.0.1 by
default. A ``sqlite:///`` store is passed as an absolute path, so the server finds it
whatever its working folder.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from experiments.tracking import TrackingError, sqlite_path

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.25
STOP_TIMEOUT_S = 10.0
WORKERS = 1


class UiError(TrackingError):
    """The MLflow UI could not be started, or did not become ready."""


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
                    f"{' '.join(self.process.args)}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=READY_POLL_S * 4).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(READY_POLL_S)
        raise UiError(f"The MLflow UI at {self.url} was not ready within {timeout_s} s.")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Send SIGTERM to the server's process group, then SIGKILL after ``timeout_s``."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("MLflow UI (pid %d) ignored SIGTERM; killing it", self.process.pid)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout_s)
        logger.info("Stopped the MLflow UI at %s", self.url)

    def __enter__(self) -> UiServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def start_ui(
    tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, quiet: bool = False
) -> UiServer:
    """Start ``mlflow server`` in its own process group and return it (not yet ready).

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
    """Serve the MLflow UI until it exits or Ctrl-C is pressed; return its exit code."""
    server = start_ui(tracking_uri, host, port)
    try:
        return server.process.wait()
    except KeyboardInterrupt:
        server.stop()
        return 0


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
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    args = parser.parse_args(argv)
    if (
        sqlite_path(args.tracking_uri) is not None
        and not Path(sqlite_path(args.tracking_uri)).is_file()
    ):
        print(
            f"note: {args.tracking_uri} does not exist yet; the UI will show no runs.",
            file=sys.stderr,
        )
    print(f"MLflow UI on http://{_url_host(args.host)}:{args.port} (Ctrl-C stops it)")
    try:
        return serve_ui(args.tracking_uri, args.host, args.port)
    except UiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
