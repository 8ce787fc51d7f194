"""Exceptions raised by the deploy package.

The client converts httpx failures to these at the boundary, with the cause chained.
"""

from __future__ import annotations


class DeployError(Exception):
    """Root of every error raised by the deploy package."""


class DeploymentInvalidError(DeployError, ValueError):
    """A deployment or scale request is malformed; the message names the field."""


class GatewayError(DeployError):
    """A call to a gateway failed.

    Attributes:
        url: the URL that was called.
        status_code: the HTTP status, or None when no response arrived.
    """

    def __init__(self, message: str, *, url: str = "", status_code: int | None = None):
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class GatewayUnreachableError(GatewayError):
    """No connection to the gateway could be made, or it timed out."""


class GatewayAuthError(GatewayError):
    """The gateway rejected the credentials (401 or 403)."""


class FunctionNotFoundError(GatewayError):
    """The gateway has no function of that name (404)."""


class GatewayServerError(GatewayError):
    """The gateway or a function returned a 5xx status."""


class ReadinessTimeoutError(DeployError):
    """A function did not reach the expected replica count within its timeout."""


class ReplicaStartError(DeployError):
    """A replica of the embedded runtime exited or never became healthy while starting.

    Attributes:
        function: the function name.
        replica_id: the replica that failed.
        exit_code: the process exit code, or None when it was still running (not healthy).
        stderr_tail: the last lines the process wrote to stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        function: str = "",
        replica_id: str = "",
        exit_code: int | None = None,
        stderr_tail: str = "",
    ):
        super().__init__(message)
        self.function = function
        self.replica_id = replica_id
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
