"""Exceptions raised by the deploy package; httpx failures are converted here with the cause chained."""

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
    """The gateway knows no function of that name (404)."""


class GatewayServerError(GatewayError):
    """The gateway or a function answered with a 5xx status."""


class ReadinessTimeoutError(DeployError):
    """A function did not reach the expected replica count within its timeout."""
