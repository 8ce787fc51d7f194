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
from deploy.local.settings import DEFAULT_HOST, DEFAULT_RUN_DIR, RuntimeSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local",
        description="Serve the OpenFaaS gateway API on loopback, running replicas as processes.",
    )
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default loopback)")
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
        "--secrets-dir",
        type=Path,
        default=None,
        help="folder holding basic-auth-user and basic-auth-password files",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=None, help="seconds per replica start"
    )
    parser.add_argument(
        "--scale-from-zero-timeout", type=float, default=None, help="seconds a call waits"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {}
    if args.ready_timeout is not None:
        overrides["ready_timeout_s"] = args.ready_timeout
    if args.scale_from_zero_timeout is not None:
        overrides["scale_from_zero_timeout_s"] = args.scale_from_zero_timeout
    settings = RuntimeSettings(
        host=args.host,
        port=args.port,
        run_dir=args.run_dir,
        auth_enabled=args.basic_auth or args.secrets_dir is not None,
        secrets_dir=args.secrets_dir,
        **overrides,
    )
    try:
        asyncio.run(serve(settings))
    except (DeployError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
