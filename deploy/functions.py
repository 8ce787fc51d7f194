"""Function deployments built from the composed config (pipeline, regime, storage, backend).

The deploy package imports no pipeline code: the function names, memory and stage configs
come from ``cfg.pipeline.functions``, and each function runs as ``python -m pipeline.serve
NAME``. What a function process reads from its environment is fixed by the config schema
(``VS_STAGE_CONFIG``, ``VS_MEMORY_LIMIT_MB``, ``max_inflight``, the ``VS_STORE*`` or
``VS_S3_*`` store variables, ``VS_GATEWAY_URL``).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.errors import DeploymentInvalidError
from deploy.models import LABEL_SCALE_TARGET, FunctionDeployment
from deploy.regimes import labels_for

logger = logging.getLogger(__name__)

BACKEND_KINDS = ("local", "openfaas")

S3_ACCESS_KEY_SECRET = "s3-access-key"
S3_SECRET_KEY_SECRET = "s3-secret-key"
"""Names of the OpenFaaS secrets that carry the S3 keys on a cluster."""

OPENFAAS_SECRETS_DIR = "/var/openfaas/secrets"
"""Folder where OpenFaaS mounts a function's secrets, one file per secret."""

ENV_S3_ACCESS_KEY_FILE = "VS_S3_ACCESS_KEY_FILE"
ENV_S3_SECRET_KEY_FILE = "VS_S3_SECRET_KEY_FILE"
"""Paths of files that hold the S3 keys, read in place of ``VS_S3_ACCESS_KEY`` and
``VS_S3_SECRET_KEY``."""

SECRET_ENV_VARS: dict[str, tuple[str, str]] = {
    "VS_S3_ACCESS_KEY": (S3_ACCESS_KEY_SECRET, ENV_S3_ACCESS_KEY_FILE),
    "AWS_ACCESS_KEY_ID": (S3_ACCESS_KEY_SECRET, ENV_S3_ACCESS_KEY_FILE),
    "VS_S3_SECRET_KEY": (S3_SECRET_KEY_SECRET, ENV_S3_SECRET_KEY_FILE),
    "AWS_SECRET_ACCESS_KEY": (S3_SECRET_KEY_SECRET, ENV_S3_SECRET_KEY_FILE),
}
"""Environment variables whose values are credentials, never logged or written to stack.yml,
mapped to the OpenFaaS secret and the ``*_FILE`` variable that replace them on a cluster."""

READY_PATH_ANNOTATION = "com.openfaas.ready.http.path"
HEALTH_PATH_ANNOTATION = "com.openfaas.health.http.path"

FUNCTION_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A Kubernetes DNS-1123 label: what OpenFaaS accepts as a function (service) name."""


def deployments_from_config(
    cfg: Any,
    *,
    gateway_url: str,
    python: str = sys.executable,
    backend_kind: str = "local",
    functions: Sequence[str] | None = None,
) -> list[FunctionDeployment]:
    """Build one deployment per function of ``cfg.pipeline.functions``, in config order.

    ``cfg`` is the composed config (an OmegaConf DictConfig or a plain dict). ``gateway_url``
    becomes ``VS_GATEWAY_URL``, the address at which the orchestrator calls the stages.
    On ``backend_kind="local"`` the envProcess is ``{python} -m pipeline.serve NAME`` and the
    S3 keys go into envVars. On ``"openfaas"`` the image's own entry runs, and the keys come
    from the OpenFaaS secrets ``s3-access-key`` and ``s3-secret-key`` through
    ``VS_S3_ACCESS_KEY_FILE`` and ``VS_S3_SECRET_KEY_FILE``.
    ``functions`` restricts and orders the names; each must be in the config.

    Every function gets the regime's ``com.openfaas.scale.*`` labels, except that a
    function's own ``target_inflight`` (when set) replaces the regime's ``.target``.

    Raise :class:`DeploymentInvalidError` naming the function and field for a missing
    function, a memory_mb, max_inflight or target_inflight that is not a positive integer,
    an invalid name, or missing image or storage settings.
    """
    if backend_kind not in BACKEND_KINDS:
        raise DeploymentInvalidError(
            f"backend_kind {backend_kind!r} is unknown; choose one of: {', '.join(BACKEND_KINDS)}."
        )
    pipeline = _section(cfg, "pipeline")
    image_prefix = _required_str(pipeline, "image_prefix", "pipeline.image_prefix")
    image_tag = _required_str(pipeline, "image_tag", "pipeline.image_tag")
    specs = _section(pipeline, "functions", "pipeline.functions")
    labels = labels_for(_section(cfg, "regime"), backend_kind=backend_kind)
    store_env, secrets = _store_env(_section(cfg, "storage"), backend_kind)

    names = list(functions) if functions is not None else [str(key) for key in specs]
    if not names:
        raise DeploymentInvalidError(
            "pipeline.functions is empty; choose a pipeline option such as pipeline=default."
        )
    deployments = []
    for name in names:
        spec = _function_spec(specs, name)
        env_vars = {
            "VS_STAGE_CONFIG": json.dumps(spec["config"], sort_keys=True),
            "VS_MEMORY_LIMIT_MB": str(spec["memory_mb"]),
            "max_inflight": str(spec["max_inflight"]),
            "VS_GATEWAY_URL": gateway_url.rstrip("/"),
            "PYTHONUNBUFFERED": "1",
            **store_env,
        }
        function_labels = dict(labels)
        if spec["target_inflight"] is not None:
            function_labels[LABEL_SCALE_TARGET] = str(spec["target_inflight"])
        memory = f"{spec['memory_mb']}Mi"
        env_process = ""
        if backend_kind == "local":
            env_process = shlex.join([python, "-m", "pipeline.serve", name])
        deployments.append(
            FunctionDeployment(
                service=name,
                image=f"{image_prefix}-{name}:{image_tag}",
                env_process=env_process,
                env_vars=env_vars,
                labels=function_labels,
                annotations={
                    READY_PATH_ANNOTATION: "/_/ready",
                    HEALTH_PATH_ANNOTATION: "/_/health",
                },
                limits={"memory": memory},
                requests={"memory": memory},
                secrets=list(secrets),
            )
        )
    logger.info(
        "Built %d deployment(s) for backend %s: %s",
        len(deployments),
        backend_kind,
        ", ".join(d.service for d in deployments),
    )
    return deployments


def _section(parent: Any, key: str, path: str | None = None) -> Any:
    path = path or key
    value = _get(parent, key, path)
    if value is None or not _is_mapping(value):
        raise DeploymentInvalidError(
            f"The config has no mapping at {path!r}; compose it from conf/ (config group "
            f"{path.split('.')[0]!r}) or pass a dict with that key."
        )
    return value


def _is_mapping(value: Any) -> bool:
    from omegaconf import DictConfig

    return isinstance(value, (Mapping, DictConfig))


def _get(parent: Any, key: str, path: str) -> Any:
    """Read one key, resolving OmegaConf interpolations and converting their errors."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return parent.get(key)
    except OmegaConfBaseException as exc:
        raise DeploymentInvalidError(
            f"Config value {path!r} cannot be read: {exc}. Set it or the environment "
            "variable it refers to."
        ) from exc


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _required_str(parent: Any, key: str, path: str) -> str:
    value = _get(parent, key, path)
    if not isinstance(value, str) or not value.strip():
        raise DeploymentInvalidError(
            f"Config value {path!r} is {value!r}; it must be a non-empty string."
        )
    return value.strip()


def _credential(storage: Any, key: str, env_name: str) -> str:
    value = _get(storage, key, f"storage.{key}")
    if not isinstance(value, str) or not value:
        raise DeploymentInvalidError(
            f"Config value 'storage.{key}' is empty; set the environment variable {env_name} "
            f"or the override storage.{key}=..."
        )
    return value


def _positive_int(spec: Any, name: str, key: str) -> int:
    value = _get(spec, key, f"pipeline.functions.{name}.{key}")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DeploymentInvalidError(
            f"Function {name!r}: field {key!r} is {value!r}; it must be a positive integer "
            f"(set pipeline.functions.{name}.{key})."
        )
    return value


def _function_spec(specs: Any, name: str) -> dict[str, Any]:
    if not FUNCTION_NAME_PATTERN.match(name):
        raise DeploymentInvalidError(
            f"Function name {name!r} is invalid; use lower-case letters, digits and '-', "
            "at most 63 characters, starting and ending with a letter or digit."
        )
    spec = _get(specs, name, f"pipeline.functions.{name}")
    if spec is None:
        known = ", ".join(str(key) for key in specs) or "none"
        raise DeploymentInvalidError(
            f"Function {name!r} is missing from pipeline.functions (it has: {known}); add it "
            "to the pipeline config."
        )
    if not _is_mapping(spec):
        raise DeploymentInvalidError(
            f"Function {name!r}: pipeline.functions.{name} must be a mapping with memory_mb, "
            f"max_inflight and config, got {type(spec).__name__}."
        )
    config = _plain(_get(spec, "config", f"pipeline.functions.{name}.config"))
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise DeploymentInvalidError(
            f"Function {name!r}: field 'config' must be a mapping of stage settings, got "
            f"{type(config).__name__}."
        )
    target_inflight = None
    if _get(spec, "target_inflight", f"pipeline.functions.{name}.target_inflight") is not None:
        target_inflight = _positive_int(spec, name, "target_inflight")
    return {
        "memory_mb": _positive_int(spec, name, "memory_mb"),
        "max_inflight": _positive_int(spec, name, "max_inflight"),
        "target_inflight": target_inflight,
        "config": dict(config),
    }


def _store_env(storage: Any, backend_kind: str) -> tuple[dict[str, str], list[str]]:
    """Return the store variables of a function process and the OpenFaaS secrets it needs.

    On OpenFaaS the S3 keys never enter the environment: each is an OpenFaaS secret that
    the function reads from the file named by ``VS_S3_ACCESS_KEY_FILE`` or
    ``VS_S3_SECRET_KEY_FILE``.
    """
    kind = _required_str(storage, "kind", "storage.kind").lower()

    if kind == "local":
        root = _get(storage, "root", "storage.root") or "runs/store"
        if backend_kind == "local":
            # Replicas may start in another working folder, so they get an absolute root.
            root = str(Path(str(root)).resolve())
        else:
            logger.warning(
                "storage=local on OpenFaaS: every replica gets its own folder %s, so the "
                "functions cannot share artifacts; use storage=minio on a cluster",
                root,
            )
        return {"VS_STORE": "local", "VS_STORE_ROOT": str(root)}, []

    if kind == "minio":
        env = {
            "VS_STORE": "s3",
            "VS_S3_ENDPOINT": _required_str(storage, "endpoint", "storage.endpoint"),
            "VS_S3_BUCKET": _required_str(storage, "bucket", "storage.bucket"),
            "VS_S3_SECURE": "true" if _get(storage, "secure", "storage.secure") else "false",
        }
        if backend_kind == "local":
            env["VS_S3_ACCESS_KEY"] = _credential(storage, "access_key", "AWS_ACCESS_KEY_ID")
            env["VS_S3_SECRET_KEY"] = _credential(storage, "secret_key", "AWS_SECRET_ACCESS_KEY")
            return env, []
        for secret, file_var in (
            (S3_ACCESS_KEY_SECRET, ENV_S3_ACCESS_KEY_FILE),
            (S3_SECRET_KEY_SECRET, ENV_S3_SECRET_KEY_FILE),
        ):
            env[file_var] = f"{OPENFAAS_SECRETS_DIR}/{secret}"
        return env, [S3_ACCESS_KEY_SECRET, S3_SECRET_KEY_SECRET]

    raise DeploymentInvalidError(
        f"storage.kind {kind!r} is unknown; choose 'local' or 'minio' (storage=local|minio)."
    )
