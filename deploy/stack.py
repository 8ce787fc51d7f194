"""faas-cli ``stack.yml`` files from function deployments, for people who deploy by hand.

The file follows the faas-cli stack format version 1.0: a provider with the gateway URL and
one entry per function with its image, environment, labels, annotations, memory limits
and secrets. Secret values never reach the file: a secret environment variable is replaced
by an OpenFaaS secret that the function reads from ``/var/openfaas/secrets/<name>``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deploy.errors import DeploymentInvalidError
from deploy.functions import OPENFAAS_SECRETS_DIR, SECRET_ENV_VARS
from deploy.models import FunctionDeployment

logger = logging.getLogger(__name__)

STACK_VERSION = 1.0


def _function_entry(deployment: FunctionDeployment) -> dict[str, Any]:
    environment: dict[str, str] = {}
    secrets = list(deployment.secrets)
    for key, value in deployment.env_vars.items():
        if key in SECRET_ENV_VARS:
            secret, file_var = SECRET_ENV_VARS[key]
            environment[file_var] = f"{OPENFAAS_SECRETS_DIR}/{secret}"
            if secret not in secrets:
                secrets.append(secret)
            continue
        environment[key] = str(value)

    entry: dict[str, Any] = {
        "image": deployment.image,
        "environment": environment,
        "labels": dict(deployment.labels),
        "annotations": dict(deployment.annotations),
        # faas-netes mounts a writable emptyDir at /tmp when the root filesystem is read-only.
        "readonly_root_filesystem": True,
    }
    if deployment.limits:
        entry["limits"] = dict(deployment.limits)
    if deployment.requests:
        entry["requests"] = dict(deployment.requests)
    if secrets:
        entry["secrets"] = secrets
    if deployment.constraints:
        entry["constraints"] = list(deployment.constraints)
    if deployment.namespace:
        entry["namespace"] = deployment.namespace
    return entry


def stack_yaml(deployments: Sequence[FunctionDeployment], gateway_url: str) -> str:
    """Return the text of a faas-cli stack.yml for ``deployments`` on ``gateway_url``.

    The envProcess is left out because the images start the function themselves. Raise
    :class:`DeploymentInvalidError` for an empty list, an empty gateway URL or a function
    named twice.
    """
    if not gateway_url or not gateway_url.strip():
        raise DeploymentInvalidError(
            "The stack needs a gateway URL, such as http://127.0.0.1:8080."
        )
    if not deployments:
        raise DeploymentInvalidError("The stack needs at least one function deployment.")
    functions: dict[str, Any] = {}
    for deployment in deployments:
        if deployment.service in functions:
            raise DeploymentInvalidError(
                f"Function {deployment.service!r} appears twice in the stack; give each "
                "function one deployment."
            )
        functions[deployment.service] = _function_entry(deployment)
    document = {
        "version": STACK_VERSION,
        "provider": {"name": "openfaas", "gateway": gateway_url.strip().rstrip("/")},
        "functions": functions,
    }
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def write_stack(
    deployments: Sequence[FunctionDeployment], gateway_url: str, path: str | Path
) -> Path:
    """Write :func:`stack_yaml` to ``path`` (parent folders are created) and return the path."""
    target = Path(path)
    text = stack_yaml(deployments, gateway_url)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    logger.info("Wrote stack file %s with %d function(s)", target, len(deployments))
    return target
