"""Client of the OpenFaaS gateway API, for a real gateway and for the embedded runtime alike.

Every httpx failure becomes an error from ``deploy.errors`` with the cause chained, and
messages name the URL and function but never the password.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from deploy.auth import PASSWORD_ENV, USER_ENV, Credentials, read_env, read_secret_files
from deploy.errors import (
    DeploymentInvalidError,
    FunctionNotFoundError,
    GatewayAuthError,
    GatewayError,
    GatewayServerError,
    GatewayUnreachableError,
    ReadinessTimeoutError,
)
from deploy.models import FunctionDeployment, FunctionStatus

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_WAIT_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.25
"""Pause between two status polls in ``wait_ready`` and ``wait_scaled_to``."""
SERVER_MESSAGE_MAX_CHARS = 500

Progress = Callable[[FunctionStatus], None]


def _server_message(response: httpx.Response) -> str:
    """Extract the server's error text: the ``message`` of a JSON body, else the raw text."""
    text = response.text.strip()
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text[:SERVER_MESSAGE_MAX_CHARS] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:SERVER_MESSAGE_MAX_CHARS]
    return text[:SERVER_MESSAGE_MAX_CHARS]


class GatewayClient:
    """Deploy, scale, inspect and invoke functions through an OpenFaaS gateway.

    ``timeout_s`` bounds each HTTP call, in seconds. Credentials go only to ``/system/*``
    calls, as basic auth.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._credentials = Credentials(username or "admin", password) if password else None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    @classmethod
    def from_env(
        cls,
        base_url: str,
        *,
        secrets_dir: Path | str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> GatewayClient:
        """Build a client with ``$OPENFAAS_USERNAME``/``$OPENFAAS_PASSWORD``, else the files
        ``basic-auth-user``/``basic-auth-password`` in ``secrets_dir``, else no credentials."""
        credentials = read_env()
        if credentials is None and secrets_dir is not None:
            credentials = read_secret_files(secrets_dir)
        if credentials is None:
            return cls(base_url, timeout_s=timeout_s)
        return cls(
            base_url,
            username=credentials.username,
            password=credentials.password,
            timeout_s=timeout_s,
        )

    @property
    def username(self) -> str | None:
        return self._credentials.username if self._credentials else None

    def __repr__(self) -> str:
        password = "'***'" if self._credentials else "None"
        return (
            f"GatewayClient(base_url={self.base_url!r}, username={self.username!r}, "
            f"password={password}, timeout_s={self.timeout_s!r})"
        )

    # Transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        action: str,
        function: str = "",
        json_body: Any = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        url = self.base_url + path
        auth = None
        if self._credentials is not None:
            auth = httpx.BasicAuth(self._credentials.username, self._credentials.password)
        try:
            response = self._http.request(method, path, json=json_body, params=params, auth=auth)
        except httpx.TimeoutException as exc:
            raise GatewayUnreachableError(
                f"{action} timed out after {self.timeout_s:g} s at {url}; check that the "
                "gateway is up or raise timeout_s.",
                url=url,
            ) from exc
        except httpx.TransportError as exc:
            raise GatewayUnreachableError(
                f"{action} failed: cannot reach the gateway at {url} ({exc}); check the URL "
                "and that the gateway is running.",
                url=url,
            ) from exc
        if response.status_code >= 400:
            raise self._error(response, action=action, function=function)
        return response

    def _error(
        self, response: httpx.Response, *, action: str, function: str
    ) -> GatewayError | DeploymentInvalidError:
        url = str(response.request.url)
        status = response.status_code
        message = _server_message(response)
        if status in (401, 403):
            who = f"user {self.username!r}" if self._credentials else "no credentials"
            return GatewayAuthError(
                f"{action} was rejected with {status} at {url} ({who}): {message}. Check "
                f"${USER_ENV}/${PASSWORD_ENV} or the basic-auth secret files.",
                url=url,
                status_code=status,
            )
        if status == 404:
            subject = f"function {function!r}" if function else "the resource"
            return FunctionNotFoundError(
                f"{action} failed: the gateway at {url} has no {subject} (404: {message}). "
                "Deploy it first or check the name.",
                url=url,
                status_code=status,
            )
        if status >= 500:
            return GatewayServerError(
                f"{action} failed with {status} at {url}: {message}. Check the gateway's log.",
                url=url,
                status_code=status,
            )
        error = DeploymentInvalidError(
            f"{action} was rejected with {status} at {url}: {message}. Fix the request."
        )
        error.status_code = status  # type: ignore[attr-defined]
        error.url = url  # type: ignore[attr-defined]
        return error

    # Gateway API

    def healthz(self) -> bool:
        """Return True when ``GET /healthz`` returns 2xx; raise a GatewayError otherwise."""
        self._request("GET", "/healthz", action="Health check")
        return True

    def deploy(self, deployment: FunctionDeployment) -> None:
        """Create the function, or update it with PUT when it already exists."""
        name = deployment.service
        try:
            self._request(
                "POST",
                "/system/functions",
                action=f"Deploying {name!r}",
                function=name,
                json_body=deployment.to_json(),
            )
        except (DeploymentInvalidError, GatewayServerError) as exc:
            status = getattr(exc, "status_code", None)
            if status == 409 or "already exists" in str(exc):
                logger.info("Function %s already exists; updating it", name)
                self.update(deployment)
                return
            raise
        logger.info("Deployed %s at %s", name, self.base_url)

    def update(self, deployment: FunctionDeployment) -> None:
        name = deployment.service
        self._request(
            "PUT",
            "/system/functions",
            action=f"Updating {name!r}",
            function=name,
            json_body=deployment.to_json(),
        )
        logger.info("Updated %s at %s", name, self.base_url)

    def remove(self, name: str) -> None:
        self._request(
            "DELETE",
            "/system/functions",
            action=f"Removing {name!r}",
            function=name,
            json_body={"functionName": name},
        )
        logger.info("Removed %s at %s", name, self.base_url)

    def list_functions(self) -> list[FunctionStatus]:
        response = self._request("GET", "/system/functions", action="Listing functions")
        return [FunctionStatus.from_json(item) for item in response.json() or []]

    def status(self, name: str, *, usage: bool = True) -> FunctionStatus:
        response = self._request(
            "GET",
            f"/system/function/{name}",
            action=f"Reading the status of {name!r}",
            function=name,
            params=None if usage else {"usage": "false"},
        )
        return FunctionStatus.from_json(response.json())

    def scale(self, name: str, replicas: int) -> None:
        """Ask for ``replicas`` replicas; OpenFaaS CE clamps the count to its own bounds."""
        self._request(
            "POST",
            f"/system/scale-function/{name}",
            action=f"Scaling {name!r} to {replicas}",
            function=name,
            json_body={"serviceName": name, "replicas": replicas},
        )
        logger.info("Asked %s to scale %s to %d", self.base_url, name, replicas)

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/system/info", action="Reading gateway info").json()

    def namespaces(self) -> list[str]:
        return self._request("GET", "/system/namespaces", action="Listing namespaces").json()

    def invoke(
        self,
        name: str,
        body: bytes | str | dict[str, Any] | list[Any] | None = None,
        *,
        path: str = "",
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """POST ``body`` to ``/function/NAME[/path]`` and return the response, whatever its
        status; a dict or list is sent as JSON. Raises GatewayUnreachableError only when no
        response arrives."""
        url_path = f"/function/{name}" + (f"/{path.lstrip('/')}" if path else "")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        kwargs: dict[str, Any] = {"timeout": timeout}
        if isinstance(body, dict | list):
            kwargs["json"] = body
        elif body is not None:
            kwargs["content"] = body
        try:
            return self._http.post(url_path, **kwargs)
        except httpx.TimeoutException as exc:
            raise GatewayUnreachableError(
                f"Invoking {name!r} at {self.base_url}{url_path} timed out after {timeout:g} s; "
                "raise timeout_s if the function is slow.",
                url=self.base_url + url_path,
            ) from exc
        except httpx.TransportError as exc:
            raise GatewayUnreachableError(
                f"Invoking {name!r} failed: cannot reach {self.base_url}{url_path} ({exc}).",
                url=self.base_url + url_path,
            ) from exc

    # Waiting

    def wait_ready(
        self,
        name: str,
        replicas: int = 1,
        *,
        timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
        progress: Progress | None = None,
    ) -> FunctionStatus:
        """Poll until at least ``replicas`` replicas are available; raise ReadinessTimeoutError."""
        return self._wait(
            name,
            lambda s: s.available_replicas >= replicas,
            f"at least {replicas} available replicas",
            timeout_s,
            progress,
        )

    def wait_scaled_to(
        self,
        name: str,
        replicas: int,
        *,
        timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
        progress: Progress | None = None,
    ) -> FunctionStatus:
        """Poll until exactly ``replicas`` replicas exist and are available (0 for scale-down)."""
        return self._wait(
            name,
            lambda s: s.replicas == replicas and s.available_replicas == replicas,
            f"exactly {replicas} replicas",
            timeout_s,
            progress,
        )

    def _wait(
        self,
        name: str,
        done: Callable[[FunctionStatus], bool],
        goal: str,
        timeout_s: float,
        progress: Progress | None,
    ) -> FunctionStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(name, usage=False)
            if progress is not None:
                progress(status)
            if done(status):
                return status
            if time.monotonic() >= deadline:
                detail = f" The runtime reports: {status.last_error}" if status.last_error else ""
                raise ReadinessTimeoutError(
                    f"Function {name!r} at {self.base_url} did not reach {goal} within "
                    f"{timeout_s:g} s (last seen: {status.replicas} replicas, "
                    f"{status.available_replicas} available).{detail} Check the function's "
                    "log or raise the timeout."
                )
            time.sleep(POLL_INTERVAL_S)

    # Lifecycle

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
