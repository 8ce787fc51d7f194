"""Deployment requests and function statuses in the OpenFaaS provider's JSON shape.

Field names follow faas-provider's ``types.FunctionDeployment`` and ``types.FunctionStatus``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploy.errors import DeploymentInvalidError

LABEL_SCALE_MIN = "com.openfaas.scale.min"
LABEL_SCALE_MAX = "com.openfaas.scale.max"
LABEL_SCALE_ZERO = "com.openfaas.scale.zero"
LABEL_SCALE_ZERO_DURATION = "com.openfaas.scale.zero-duration"
LABEL_SCALE_TARGET = "com.openfaas.scale.target"
LABEL_SCALE_TYPE = "com.openfaas.scale.type"


@dataclass
class FunctionDeployment:
    """One function to deploy: ``POST /system/functions`` body."""

    service: str
    image: str
    env_process: str = ""
    env_vars: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    namespace: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "service": self.service,
            "image": self.image,
            "envProcess": self.env_process,
            "envVars": dict(self.env_vars),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "secrets": list(self.secrets),
            "constraints": list(self.constraints),
        }
        if self.limits:
            body["limits"] = dict(self.limits)
        if self.requests:
            body["requests"] = dict(self.requests)
        if self.namespace:
            body["namespace"] = self.namespace
        return body

    @classmethod
    def from_json(cls, body: Any) -> FunctionDeployment:
        """Validate a deployment body; raise DeploymentInvalidError naming the bad field."""
        if not isinstance(body, dict):
            raise DeploymentInvalidError("The deployment must be a JSON object.")
        for required in ("service", "image"):
            value = body.get(required)
            if not isinstance(value, str) or not value.strip():
                raise DeploymentInvalidError(
                    f"The deployment is missing the field {required!r} (a non-empty string)."
                )

        def mapping(name: str) -> dict[str, str]:
            value = body.get(name) or {}
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise DeploymentInvalidError(f"Field {name!r} must map strings to strings.")
            return dict(value)

        def string_list(name: str) -> list[str]:
            value = body.get(name) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DeploymentInvalidError(f"Field {name!r} must be a list of strings.")
            return list(value)

        env_process = body.get("envProcess") or ""
        if not isinstance(env_process, str):
            raise DeploymentInvalidError("Field 'envProcess' must be a string.")
        namespace = body.get("namespace") or ""
        if not isinstance(namespace, str):
            raise DeploymentInvalidError("Field 'namespace' must be a string.")
        return cls(
            service=body["service"].strip(),
            image=body["image"].strip(),
            env_process=env_process,
            env_vars=mapping("envVars"),
            labels=mapping("labels"),
            annotations=mapping("annotations"),
            limits=mapping("limits"),
            requests=mapping("requests"),
            secrets=string_list("secrets"),
            constraints=string_list("constraints"),
            namespace=namespace,
        )


@dataclass
class FunctionStatus:
    """One function's state: ``GET /system/function/NAME`` body."""

    name: str
    image: str = ""
    replicas: int = 0
    available_replicas: int = 0
    invocation_count: float = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    env_process: str = ""
    namespace: str = ""
    created_at: str = ""
    usage_cpu: float | None = None
    usage_total_memory_bytes: float | None = None
    last_error: str = ""
    """The cause of the last failed replica start, empty once a replica is ready again.

    The embedded runtime adds this field; OpenFaaS never sends it."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "replicas": self.replicas,
            "availableReplicas": self.available_replicas,
            "invocationCount": self.invocation_count,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "envProcess": self.env_process,
            "namespace": self.namespace,
            "createdAt": self.created_at,
        }
        if self.last_error:
            body["lastError"] = self.last_error
        if self.usage_cpu is not None or self.usage_total_memory_bytes is not None:
            body["usage"] = {
                "cpu": self.usage_cpu or 0.0,
                "totalMemoryBytes": self.usage_total_memory_bytes or 0.0,
            }
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FunctionStatus:
        usage = body.get("usage") or {}
        return cls(
            name=body.get("name", ""),
            image=body.get("image", ""),
            replicas=int(body.get("replicas") or 0),
            available_replicas=int(body.get("availableReplicas") or 0),
            invocation_count=float(body.get("invocationCount") or 0),
            labels=dict(body.get("labels") or {}),
            annotations=dict(body.get("annotations") or {}),
            env_process=body.get("envProcess", "") or "",
            namespace=body.get("namespace", "") or "",
            created_at=str(body.get("createdAt", "") or ""),
            usage_cpu=usage.get("cpu"),
            usage_total_memory_bytes=usage.get("totalMemoryBytes"),
            last_error=str(body.get("lastError", "") or ""),
        )
