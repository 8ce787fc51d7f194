"""Typed schemas of the Hydra config, registered in Hydra's ConfigStore.

``conf/config.yaml`` starts its defaults list with ``base_config`` (:class:`Config`). The
files of the groups whose options differ in shape (workload, backend, storage) start with
their own schema (``schema_workload_steady`` and so on). So a wrong type or a misspelt key
fails at composition. Hydra lets ``+key=value`` add keys even to a structured config, so
:func:`check_config` rejects every key that no schema declares before a job touches the
platform, and validates each stage's ``config`` against the stage's own config dataclass.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deploy.errors import DeploymentInvalidError
from deploy.regimes import RegimeConfig, validate_regime
from experiments.errors import ConfigError
from experiments.pricing import PriceSheet

logger = logging.getLogger(__name__)

FUNCTION_NAMES: tuple[str, ...] = (
    "ffmpeg-0",
    "librosa",
    "ffmpeg-1",
    "ffmpeg-2",
    "asr",
    "ffmpeg-3",
    "object-detector",
    "orchestrator",
)
"""The eight functions every pipeline config must define, in pipeline order."""

SECRET_KEYS: frozenset[str] = frozenset({"password", "secret_key", "access_key"})
"""Config keys whose values are masked in logs, saved configs and MLflow params."""

MASK = "***"
URL_PASSWORD = re.compile(r"://[^/@\s:]*:([^@/\s]+)@")
"""The password of a URL written as ``scheme://user:password@host``."""


class WorkloadKind(enum.Enum):
    STEADY = "steady"
    BURST = "burst"


class BackendKind(enum.Enum):
    LOCAL = "local"
    OPENFAAS = "openfaas"


class StorageKind(enum.Enum):
    LOCAL = "local"
    MINIO = "minio"


@dataclass
class WorkloadConfig:
    """Fields common to all workloads. ``request_timeout_s`` bounds one end-to-end request."""

    kind: str = MISSING
    request_timeout_s: float = 180.0


@dataclass
class SteadyWorkloadConfig(WorkloadConfig):
    """Open-loop arrivals at ``rate_per_s`` requests per second for ``duration_s`` seconds."""

    kind: str = WorkloadKind.STEADY.value
    rate_per_s: float = 0.2
    duration_s: float = 30.0


@dataclass
class BurstWorkloadConfig(WorkloadConfig):
    """``idle_before_s`` of silence, ``burst_size`` requests at once, then ``idle_after_s``."""

    kind: str = WorkloadKind.BURST.value
    idle_before_s: float = 5.0
    burst_size: int = 4
    idle_after_s: float = 10.0


@dataclass
class FunctionConfig:
    """One function: its memory limit, its in-flight limit per replica and its stage config."""

    memory_mb: int = 1024
    max_inflight: int = 1
    target_inflight: int | None = None
    """In-flight requests per replica before the platform adds one
    (``com.openfaas.scale.target``); None takes the regime's ``target_inflight``."""
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    """Stage variants. Images are ``{image_prefix}-{function}:{image_tag}``."""

    image_prefix: str = "videosearcher"
    image_tag: str = "latest"
    functions: dict[str, FunctionConfig] = field(default_factory=dict)


@dataclass
class BackendConfig:
    kind: str = MISSING


@dataclass
class LocalBackendConfig(BackendConfig):
    """The embedded runtime on this machine. ``port: 0`` picks a free port."""

    kind: str = BackendKind.LOCAL.value
    host: str = "127.0.0.1"
    port: int = 0
    ready_timeout_s: float = 120.0
    scale_from_zero_timeout_s: float = 180.0


@dataclass
class OpenFaasBackendConfig(BackendConfig):
    """A running OpenFaaS gateway. ``password_file`` wins over ``password`` when set."""

    kind: str = BackendKind.OPENFAAS.value
    url: str = "http://127.0.0.1:8080"
    username: str = "admin"
    password: str = "${oc.env:OPENFAAS_PASSWORD,''}"
    password_file: str = ""
    timeout_s: float = 30.0
    function_gateway_url: str = ""
    """The gateway URL as the functions see it from inside the cluster; empty means ``url``."""


@dataclass
class StorageConfig:
    kind: str = MISSING


@dataclass
class LocalStorageConfig(StorageConfig):
    kind: str = StorageKind.LOCAL.value
    root: str = "runs/store"


@dataclass
class MinioStorageConfig(StorageConfig):
    """A MinIO or S3 server; the keys come from the environment unless set."""

    kind: str = StorageKind.MINIO.value
    endpoint: str = "127.0.0.1:9000"
    bucket: str = "videosearcher"
    access_key: str = "${oc.env:AWS_ACCESS_KEY_ID,''}"
    secret_key: str = "${oc.env:AWS_SECRET_ACCESS_KEY,''}"
    secure: bool = False


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///runs/mlflow.db"
    experiment_name: str = "videosearcher-regimes"


@dataclass
class DatasetConfig:
    """Videos sent by the load, each a path or a ``file://`` or ``s3://`` URI.

    A relative path is looked up in the current folder first, then in the project folder.
    """

    files: list[str] = field(default_factory=lambda: ["pipeline/samples/sample.mp4"])


@dataclass
class LoadConfig:
    """Locust settings. ``workers: 0`` runs one process, N runs a master and N local workers."""

    workers: int = 0
    progress_interval_s: float = 5.0
    sample_interval_s: float = 1.0
    max_users: int = 64
    startup_timeout_s: float = 60.0
    locust_log_level: str = "WARNING"


@dataclass
class Config:
    """The whole job config; ``conf/config.yaml`` sets the group defaults."""

    regime: RegimeConfig = MISSING
    workload: WorkloadConfig = MISSING
    pipeline: PipelineConfig = MISSING
    backend: BackendConfig = MISSING
    storage: StorageConfig = MISSING
    tracking: TrackingConfig = MISSING
    dataset: DatasetConfig = MISSING
    prices: PriceSheet = field(default_factory=PriceSheet)
    load: LoadConfig = field(default_factory=LoadConfig)
    seed: int = 0
    repeat: int = 1
    keep_deployed: bool = False
    settle_timeout_s: float = 600.0


SCHEMAS: dict[str, type] = {
    "base_config": Config,
    "schema_workload_steady": SteadyWorkloadConfig,
    "schema_workload_burst": BurstWorkloadConfig,
    "schema_backend_local": LocalBackendConfig,
    "schema_backend_openfaas": OpenFaasBackendConfig,
    "schema_storage_local": LocalStorageConfig,
    "schema_storage_minio": MinioStorageConfig,
}
"""ConfigStore name -> schema. Stored at the root, not in a group, so ``--help`` lists none."""


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore; safe to call more than once."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)


def check_config(cfg: DictConfig) -> Config:
    """Validate a composed config and return it as typed dataclasses.

    Raises :class:`ConfigError` naming the key in these cases: a key no schema declares (such
    as one added with ``+``), a wrong type, a missing or unknown function, a stage config
    field the stage does not know, a workload value out of range, or fields that contradict
    each other (a regime's min_replicas or prescale_replicas above its max_replicas, a
    function's target_inflight above its max_inflight), an empty image name part, or
    storage=minio without its keys. So nothing is tracked or started for a config that
    would fail later.
    """
    _reject_unknown_keys(cfg, "")
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "the config"
        raise ConfigError(f"Invalid value for {key}: {getattr(exc, 'msg', exc)}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid config: {exc}") from exc
    assert isinstance(config, Config)

    _check_ranges(config)
    _check_regime(config)
    _check_functions(config.pipeline)
    _check_deployment_fields(config)
    _check_urls(config)
    return config


def _check_urls(config: Config) -> None:
    """Reject credentials written into a URL, which would be logged and saved in clear."""
    for key, section, field_name in (
        ("backend.url", config.backend, "url"),
        ("backend.function_gateway_url", config.backend, "function_gateway_url"),
        ("storage.endpoint", config.storage, "endpoint"),
    ):
        value = getattr(section, field_name, "")
        if isinstance(value, str) and URL_PASSWORD.search(value):
            raise ConfigError(
                f"{key} carries a password (user:password@host); remove it from the URL and "
                "give it as backend.password (or OPENFAAS_PASSWORD) or storage.secret_key."
            )


def _reject_unknown_keys(node: Any, path: str) -> None:
    if isinstance(node, ListConfig):
        return
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = {item.name for item in dataclasses.fields(schema)}
        for key in node:
            if key not in known:
                name = str(key)
                where = f"{path}.{name}" if path else name
                raise ConfigError(
                    f"Unknown config key {where!r}: {schema.__name__} has the fields "
                    f"{', '.join(sorted(known))}. Remove it or fix its spelling."
                )
    for key in node:
        if path == "" and key == "hydra":
            continue
        if isinstance(key, str) and key == "config" and path.startswith("pipeline.functions."):
            continue
        child = node._get_node(key)
        name = str(key)
        _reject_unknown_keys(child, f"{path}.{name}" if path else name)


def _check_ranges(config: Config) -> None:
    _check_kinds(config)
    workload = config.workload
    positive: list[tuple[str, float]] = [
        ("workload.request_timeout_s", workload.request_timeout_s),
        ("repeat", config.repeat),
        ("load.progress_interval_s", config.load.progress_interval_s),
        ("load.sample_interval_s", config.load.sample_interval_s),
        ("load.max_users", config.load.max_users),
        ("settle_timeout_s", config.settle_timeout_s),
    ]
    if isinstance(workload, SteadyWorkloadConfig):
        positive += [
            ("workload.rate_per_s", workload.rate_per_s),
            ("workload.duration_s", workload.duration_s),
        ]
    elif isinstance(workload, BurstWorkloadConfig):
        positive.append(("workload.burst_size", workload.burst_size))
        for name, value in (
            ("workload.idle_before_s", workload.idle_before_s),
            ("workload.idle_after_s", workload.idle_after_s),
        ):
            if value < 0:
                raise ConfigError(f"{name} must be >= 0 seconds, got {value}.")
    for name, value in positive:
        if value <= 0:
            raise ConfigError(f"{name} must be greater than 0, got {value}.")
    if isinstance(workload, SteadyWorkloadConfig) and workload.rate_per_s * workload.duration_s < 1:
        raise ConfigError(
            f"workload.rate_per_s={workload.rate_per_s} for workload.duration_s="
            f"{workload.duration_s} sends no request; raise the rate or the duration."
        )
    if config.load.workers < 0:
        raise ConfigError(
            f"load.workers must be 0 (one process) or more, got {config.load.workers}."
        )


def _check_kinds(config: Config) -> None:
    for section in ("workload", "backend", "storage"):
        value = getattr(config, section)
        if type(value) in (WorkloadConfig, BackendConfig, StorageConfig):
            raise ConfigError(
                f"{section}.kind={value.kind!r} has no schema; choose an option of the "
                f"{section} group ({section}=OPTION)."
            )
        schema_kind = _schema_kind(value)
        if value.kind != schema_kind:
            raise ConfigError(
                f"{section}.kind={value.kind!r} does not match the chosen {section} file; "
                f"choose {section}={value.kind} instead of overriding {section}.kind."
            )


def _schema_kind(section: Any) -> str:
    defaults = {item.name: item.default for item in dataclasses.fields(section)}
    return str(defaults["kind"])


def _check_functions(pipeline: PipelineConfig) -> None:
    missing = [name for name in FUNCTION_NAMES if name not in pipeline.functions]
    if missing:
        raise ConfigError(
            f"pipeline.functions misses {', '.join(missing)}; every pipeline config defines "
            f"the functions {', '.join(FUNCTION_NAMES)}."
        )
    unknown = sorted(set(pipeline.functions) - set(FUNCTION_NAMES))
    if unknown:
        raise ConfigError(
            f"pipeline.functions has unknown function(s) {', '.join(unknown)}; the functions "
            f"are {', '.join(FUNCTION_NAMES)}."
        )
    for name, function in pipeline.functions.items():
        if function.memory_mb <= 0:
            raise ConfigError(
                f"pipeline.functions.{name}.memory_mb must be greater than 0, "
                f"got {function.memory_mb}."
            )
        if function.max_inflight <= 0:
            raise ConfigError(
                f"pipeline.functions.{name}.max_inflight must be greater than 0, "
                f"got {function.max_inflight}."
            )
        _check_target_inflight(name, function)
        check_stage_config(name, function.config)


def _check_target_inflight(name: str, function: FunctionConfig) -> None:
    target = function.target_inflight
    if target is None:
        return
    if target <= 0:
        raise ConfigError(
            f"pipeline.functions.{name}.target_inflight must be greater than 0 or null "
            f"(the regime's), got {target}."
        )
    if target > function.max_inflight:
        # A replica rejects calls past max_inflight, so its load never reaches the target
        # and the platform would not add replicas.
        raise ConfigError(
            f"pipeline.functions.{name}.target_inflight ({target}) is above its max_inflight "
            f"({function.max_inflight}), so the function would never scale up; lower it or "
            "raise max_inflight."
        )


def _check_regime(config: Config) -> None:
    try:
        validate_regime(config.regime)
    except DeploymentInvalidError as exc:
        raise ConfigError(str(exc)) from exc


def _check_deployment_fields(config: Config) -> None:
    """Reject what the deploy step would reject only after the run has started."""
    for name in ("image_prefix", "image_tag"):
        value = getattr(config.pipeline, name)
        if not value.strip():
            raise ConfigError(f"pipeline.{name} is empty; set it to a non-empty string.")
    storage = config.storage
    if isinstance(storage, MinioStorageConfig):
        for key, env_name in (
            ("access_key", "AWS_ACCESS_KEY_ID"),
            ("secret_key", "AWS_SECRET_ACCESS_KEY"),
        ):
            if not getattr(storage, key):
                raise ConfigError(
                    f"storage.{key} is empty, but storage=minio needs it to upload the "
                    f"dataset; set the environment variable {env_name} or storage.{key}=..."
                )


def check_stage_config(name: str, values: dict[str, Any]) -> None:
    """Validate one function's ``config`` against its stage's config dataclass.

    Unknown fields and values of the wrong type raise :class:`ConfigError` naming
    ``pipeline.functions.<name>.config.<field>``.
    """
    # NOTE: values that only the stage's load() checks, such as an unknown asr engine name,
    # pass here and make every request of the run fail at that stage instead.
    from pipeline.stages import stage_class

    where = f"pipeline.functions.{name}.config"
    try:
        stage = stage_class(name)
    except ImportError as exc:
        raise ConfigError(
            f"Cannot import the stage of function {name!r} to check {where}: {exc}."
        ) from exc
    config_class = stage.config_class
    known = {item.name for item in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; the {name} stage takes "
            f"{', '.join(sorted(known))}."
        )
    try:
        schema = OmegaConf.structured(config_class)
    except (OmegaConfBaseException, TypeError, ValueError):
        # The stage's config uses types OmegaConf cannot check; the stage validates at start.
        schema = None
    try:
        if schema is not None:
            checked = OmegaConf.to_object(OmegaConf.merge(schema, values))
        else:
            checked = stage.config_from_mapping(dict(values))
        validate = getattr(checked, "validate", None)
        if callable(validate):
            validate()
    except OmegaConfBaseException as exc:
        key = f"{where}.{exc.full_key}" if getattr(exc, "full_key", None) else where
        raise ConfigError(f"Invalid value for {key}: {getattr(exc, 'msg', exc)}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid value in {where}: {exc}") from exc


def masked_container(cfg: DictConfig | Config) -> dict[str, Any]:
    """Return the resolved config as plain containers with every secret replaced by ``***``."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return _mask(container)


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: (MASK if key in SECRET_KEYS and item else _mask(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask(item) for item in value]
    return value


def secret_values(config: Config) -> list[str]:
    """Return the non-empty secret strings of a config, for masking saved files."""
    found: list[str] = []
    for section in (config.backend, config.storage):
        for key in SECRET_KEYS:
            value = getattr(section, key, "")
            if isinstance(value, str) and value:
                found.append(value)
    return found


def raw_secret_values(cfg: DictConfig) -> list[str]:
    """Return the secrets written literally in an unchecked config, for masking saved files.

    Used when :func:`check_config` fails, so the job's saved ``.hydra`` files are masked
    too. Interpolations such as ``${oc.env:OPENFAAS_PASSWORD}`` are left unresolved, as
    Hydra saves them.
    """
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_KEYS and isinstance(value, str) and value:
                    if not value.startswith("${"):
                        found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.extend(URL_PASSWORD.findall(node))

    walk(OmegaConf.to_container(cfg, resolve=False))
    return found
