"""``python -m deploy.local``: serve the embedded runtime until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from deploy.errors import DeployError
from deploy.local.runtime import RuntimeServer
from deploy.local.settings import (
    DEFAULT_HOST,
    DEFAULT_MAX_REPLICAS_PER_FUNCTION,
    DEFAULT_RUN_DIR,
    RuntimeSettings,
    is_loopback_host,
)

EXIT_USAGE = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local",
        description="Serve the OpenFaaS gateway API on loopback, running replicas as processes.",
    )

    # Where it listens and who may use the /system API.
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free)")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to bind (default loopback); any other address needs --basic-auth or "
        "--insecure-no-auth",
    )
    parser.add_argument(
        "--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="folder for functions/<name>.log"
    )

    parser.add_argument(
        "--basic-auth",
        action="store_true",
        help="require basic auth on /system/* (credentials from --secrets-dir or "
        "$OPENFAAS_USERNAME/$OPENFAAS_PASSWORD)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a --host beyond loopback without --basic-auth; anyone who can reach the "
        "port can then deploy a function and so run any command as this user",
    )
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        help="folder containing the basic-auth-user and basic-auth-password files",
    )

    # How replicas start and scale.
    parser.add_argument(
        "--ready-timeout", type=float, default=None, help="seconds per replica start"
    )
    parser.add_argument(
        "--scale-from-zero-timeout", type=float, default=None, help="seconds a call waits"
    )
    parser.add_argument(
        "--max-replicas-per-function",
        type=int,
        default=DEFAULT_MAX_REPLICAS_PER_FUNCTION,
        help="maximum replica count of any function; higher scale labels are rejected "
        f"(default {DEFAULT_MAX_REPLICAS_PER_FUNCTION})",
    )

    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def check_exposure(host: str, *, auth_enabled: bool, insecure_no_auth: bool) -> str | None:
    """Return why listening on ``host`` is rejected, or None when it is allowed.

    A deployment's envProcess is a command that the runtime executes, so an unauthenticated
    ``/system/functions`` beyond loopback lets anyone who reaches it run commands here.
    """
    if is_loopback_host(host) or auth_enabled or insecure_no_auth:
        return None
    where = f"--host {host} is beyond loopback" if host else "an empty --host binds all interfaces"
    return (
        f"{where}, and without --basic-auth anyone who can reach the port can deploy a "
        "function and so run any command as this user. Add --basic-auth (with --secrets-dir "
        "or $OPENFAAS_PASSWORD), or pass --insecure-no-auth if the network is trusted."
    )


async def serve(settings: RuntimeSettings) -> None:
    server = RuntimeServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        url = await server.start()
        print(f"Listening on {url}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth_enabled = args.basic_auth or args.secrets_dir is not None
    rejection = check_exposure(
        args.host, auth_enabled=auth_enabled, insecure_no_auth=args.insecure_no_auth
    )
    if rejection is not None:
        print(f"error: {rejection}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    overrides = {}
    if args.ready_timeout is not None:
        overrides["ready_timeout_s"] = args.ready_timeout
    if args.scale_from_zero_timeout is not None:
        overrides["scale_from_zero_timeout_s"] = args.scale_from_zero_timeout
    try:
        settings = RuntimeSettings(
            host=args.host,
            port=args.port,
            run_dir=args.run_dir,
            auth_enabled=auth_enabled,
            secrets_dir=args.secrets_dir,
            max_replicas_per_function=args.max_replicas_per_function,
            **overrides,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(serve(settings))
    except (DeployError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
