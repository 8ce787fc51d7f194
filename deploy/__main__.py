"""Command line of the deploy package: ``python -m deploy stack [--output stack.yml] [overrides]``.

The config is composed from the repository's ``conf/`` folder with Hydra's compose API, so
the same overrides as ``python -m experiments run`` apply (``pipeline=light``,
``storage=minio``, ``regime=cold``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from deploy.errors import DeployError
from deploy.functions import deployments_from_config
from deploy.stack import write_stack

logger = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The repository's Hydra config folder, beside this package in a source checkout."""

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"

IN_CLUSTER_GATEWAY_URL = "http://gateway.openfaas:8080"
"""The gateway's address from inside an OpenFaaS cluster (the Helm chart's service name)."""


def _schema_names(config_dir: Path) -> set[str]:
    """Return the defaults-list entries of ``config_dir`` that name no file in it."""
    names: set[str] = set()
    for path in [config_dir / "config.yaml", *config_dir.glob("*/*.yaml")]:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DeployError(f"Cannot read config file {path}: {exc}") from exc
        defaults = document.get("defaults") if isinstance(document, dict) else None
        for entry in defaults or []:
            if not isinstance(entry, str) or entry == "_self_":
                continue
            name = entry.split("@", 1)[0].lstrip("/")
            if not (config_dir / f"{name}.yaml").is_file():
                names.add(name)
    return names


def _register_missing_schemas(config_dir: Path) -> None:
    """Store an empty node for each schema that the defaults lists name but the store lacks.

    The typed schemas live in ``experiments.config``, which the deploy package must not
    import. Composed without them, the config is untyped; :func:`deployments_from_config`
    checks every field it reads.
    """
    from hydra.core.config_store import ConfigStore
    from hydra.plugins.config_source import ConfigLoadError

    store = ConfigStore.instance()
    for name in sorted(_schema_names(config_dir)):
        try:
            store.load(f"{name}.yaml")
        except ConfigLoadError:
            logger.debug("Composing without the schema %s", name)
            store.store(name=name, node={})


def compose_config(overrides: list[str], config_dir: Path = CONF_DIR) -> Any:
    """Compose ``config.yaml`` from ``config_dir`` with Hydra's compose API and ``overrides``.

    Raise :class:`DeployError` when the folder is missing or the composition fails.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    if not (config_dir / "config.yaml").is_file():
        raise DeployError(
            f"No config.yaml in {config_dir}; run from a source checkout or pass --config-dir."
        )
    _register_missing_schemas(config_dir)
    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base=None):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
            # Without the schemas a group option has no ``kind``; its option name is the kind.
            for group in ("storage", "backend"):
                if group in cfg and cfg[group].get("kind") is None and group in choices:
                    cfg[group]["kind"] = choices[group]
    except (HydraException, OmegaConfBaseException) as exc:
        raise DeployError(f"Cannot compose the config from {config_dir}: {exc}") from exc
    return cfg


def _backend_url(cfg: Any) -> str:
    backend = cfg.get("backend") or {}
    if backend.get("kind") == "openfaas" and backend.get("url"):
        return str(backend.get("url"))
    return DEFAULT_GATEWAY_URL


def run_stack(args: argparse.Namespace) -> Path:
    cfg = compose_config(args.overrides, Path(args.config_dir))
    deployments = deployments_from_config(
        cfg, gateway_url=args.function_gateway_url, backend_kind="openfaas"
    )
    gateway = args.gateway or _backend_url(cfg)
    return write_stack(deployments, gateway, args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy", description="Deployment tools for the VideoSearcher functions."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    stack = commands.add_parser(
        "stack",
        help="write a faas-cli stack.yml from the composed config",
        description="Write a faas-cli stack.yml for the functions of the composed config. "
        "Secret values are not written: the S3 secret key comes from the OpenFaaS secret "
        "s3-secret-key.",
    )
    stack.add_argument("--output", "-o", default="stack.yml", help="file to write (stack.yml)")
    stack.add_argument(
        "--gateway",
        default=None,
        help="gateway URL faas-cli talks to (default: backend.url when backend=openfaas, "
        f"else {DEFAULT_GATEWAY_URL})",
    )
    stack.add_argument(
        "--function-gateway-url",
        default=IN_CLUSTER_GATEWAY_URL,
        help="gateway URL the orchestrator calls from inside the platform, set as "
        f"VS_GATEWAY_URL (default {IN_CLUSTER_GATEWAY_URL})",
    )
    stack.add_argument(
        "--config-dir", default=str(CONF_DIR), help=f"Hydra config folder (default {CONF_DIR})"
    )
    stack.add_argument("overrides", nargs="*", help="Hydra overrides, such as storage=minio")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = run_stack(args)
    except (DeployError, ValueError) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
