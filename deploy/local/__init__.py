"""The embedded FaaS runtime: the OpenFaaS gateway API served on loopback, replicas as processes.

Start it with ``python -m deploy.local --port PORT`` or ``LocalRuntime(RuntimeSettings(...))``.
"""

from deploy.local.runtime import LocalRuntime, ReplicaSnapshot, RuntimeServer
from deploy.local.settings import RuntimeSettings

__all__ = ["LocalRuntime", "ReplicaSnapshot", "RuntimeServer", "RuntimeSettings"]
