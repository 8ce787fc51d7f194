"""HTTP routes of the OpenFaaS gateway API under ``/system``, plus ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import json
import logging
import platform
from typing import Any, cast

from aiohttp import web

from deploy.auth import Credentials
from deploy.errors import DeploymentInvalidError
from deploy.local.auth import check_basic_auth
from deploy.local.metrics import GatewayMetrics
from deploy.local.scaler import FunctionExistsError, Scaler
from deploy.local.settings import DEFAULT_NAMESPACE
from deploy.models import FunctionDeployment

logger = logging.getLogger(__name__)

PROVIDER_NAME = "videosearcher-local"
PROVIDER_ORCHESTRATION = "local-process"
PROVIDER_RELEASE = "0.1.0"

SCALER_KEY = web.AppKey("scaler", Scaler)
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
CREDENTIALS_KEY = web.AppKey("credentials", Credentials)


def error_response(status: int, message: str, field: str | None = None) -> web.Response:
    """Build a JSON error body ``{"message": ..., "field": ...}`` with the given status."""
    body: dict[str, Any] = {"message": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def function_label(name: str) -> str:
    return f"{name}.{DEFAULT_NAMESPACE}"


def split_namespace(name: str) -> tuple[str, str]:
    """Split ``NAME.NAMESPACE``; the namespace is empty when there is no dot."""
    base, _, namespace = name.partition(".")
    return base, namespace


def _namespace_error(namespace: str, field: str = "namespace") -> web.Response | None:
    if namespace in ("", DEFAULT_NAMESPACE):
        return None
    return error_response(
        400,
        f"Namespace {namespace!r} is not served; this runtime has only {DEFAULT_NAMESPACE!r}.",
        field,
    )


@web.middleware
async def basic_auth_middleware(request: web.Request, handler):
    """Require basic auth on ``/system/*`` when credentials are configured."""
    credentials = request.app.get(CREDENTIALS_KEY)
    protected = credentials is not None and request.path.startswith("/system/")
    if protected and not check_basic_auth(
        request.headers.get("Authorization"), cast(Credentials, credentials)
    ):
        logger.warning(
            "Rejected %s %s from %s: missing or invalid basic auth credentials",
            request.method,
            request.path,
            request.remote,
        )
        response = error_response(
            401, "Invalid or missing basic auth credentials for /system.", "Authorization"
        )
        response.headers["WWW-Authenticate"] = 'Basic realm="Restricted"'
        return response
    return await handler(request)


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeploymentInvalidError(f"The request body is not valid JSON: {exc}.") from exc
    except RecursionError as exc:
        raise DeploymentInvalidError(
            "The request body is nested too deeply to parse; send a flatter JSON document."
        ) from exc


_DEPLOYMENT_FIELDS = (
    "service",
    "image",
    "envProcess",
    "envVars",
    "labels",
    "annotations",
    "secrets",
    "constraints",
    "limits",
    "requests",
    "namespace",
)


def _field_in_message(message: str) -> str | None:
    """Return the deployment field that the message names first, or None.

    The first mention counts because a message quotes the bad value after the field, and
    that value may itself look like a field name.
    """
    mentions = []
    for candidate in _DEPLOYMENT_FIELDS:
        for marker in (f"'{candidate}'", f"{candidate}."):
            position = message.find(marker)
            if position >= 0:
                mentions.append((position, candidate))
    position = message.find("Label '")
    if position >= 0:
        mentions.append((position, "labels"))
    return min(mentions)[1] if mentions else None


def _invalid(exc: DeploymentInvalidError) -> web.Response:
    message = str(exc)
    logger.warning("Rejected a deployment: %s", message)
    return error_response(400, message, _field_in_message(message))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def metrics(request: web.Request) -> web.Response:
    scaler = request.app[SCALER_KEY]
    counts = [(function_label(fn.name), len(fn.live())) for fn in scaler.functions.values()]
    text = request.app[METRICS_KEY].render(counts)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def info(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "provider": PROVIDER_NAME,
            "orchestration": PROVIDER_ORCHESTRATION,
            "version": {"sha": "", "release": PROVIDER_RELEASE},
            "arch": platform.machine(),
        }
    )


async def namespaces(request: web.Request) -> web.Response:
    return web.json_response([DEFAULT_NAMESPACE])


async def list_functions(request: web.Request) -> web.Response:
    namespace = request.query.get("namespace", "")
    if (bad := _namespace_error(namespace)) is not None:
        return bad
    scaler = request.app[SCALER_KEY]
    body = [fn.status(with_usage=False).to_json() for fn in scaler.functions.values()]
    return web.json_response(body)


async def function_status(request: web.Request) -> web.Response:
    name, suffix = split_namespace(request.match_info["name"])
    namespace = request.query.get("namespace", "") or suffix
    if (bad := _namespace_error(namespace)) is not None:
        return bad
    fn = request.app[SCALER_KEY].functions.get(name)
    if fn is None:
        return error_response(404, f"Function {name!r} not found.", "name")
    with_usage = request.query.get("usage", "true").lower() not in ("false", "0")
    return web.json_response(fn.status(with_usage=with_usage).to_json())


async def deploy(request: web.Request) -> web.Response:
    try:
        deployment = FunctionDeployment.from_json(await _read_json(request))
        fn = await request.app[SCALER_KEY].deploy(deployment)
    except FunctionExistsError as exc:
        logger.warning("Rejected a deploy: %s", exc)
        return error_response(400, str(exc), "service")
    except DeploymentInvalidError as exc:
        return _invalid(exc)
    return web.json_response({"message": f"Deployed {fn.name!r}."}, status=202)


async def update(request: web.Request) -> web.Response:
    try:
        deployment = FunctionDeployment.from_json(await _read_json(request))
        fn = await request.app[SCALER_KEY].update(deployment)
    except KeyError as exc:
        return error_response(
            404,
            f"Function {exc.args[0]!r} not found; deploy it with POST /system/functions.",
            "service",
        )
    except DeploymentInvalidError as exc:
        return _invalid(exc)
    return web.json_response({"message": f"Updated {fn.name!r}."}, status=200)


async def remove(request: web.Request) -> web.Response:
    try:
        body = await _read_json(request)
    except DeploymentInvalidError as exc:
        return error_response(400, str(exc))
    name = body.get("functionName") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return error_response(
            400, 'The body must be {"functionName": NAME} with a non-empty name.', "functionName"
        )
    name, _ = split_namespace(name)
    scaler = request.app[SCALER_KEY]
    if name not in scaler.functions:
        return error_response(404, f"Function {name!r} not found.", "functionName")
    await scaler.remove(name)
    return web.json_response({"message": f"Removed {name!r}."}, status=200)


async def scale(request: web.Request) -> web.Response:
    name, suffix = split_namespace(request.match_info["name"])
    namespace = request.query.get("namespace", "") or suffix
    if (bad := _namespace_error(namespace)) is not None:
        return bad

    try:
        body = await _read_json(request)
    except DeploymentInvalidError as exc:
        return error_response(400, str(exc))
    if not isinstance(body, dict):
        return error_response(400, 'The body must be {"serviceName": NAME, "replicas": N}.')

    replicas = body.get("replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        return error_response(
            400, f"Field 'replicas' must be a whole number 0 or more, got {replicas!r}.", "replicas"
        )

    service, service_namespace = split_namespace(str(body.get("serviceName") or name))
    if service != name:
        return error_response(
            400,
            f"Field 'serviceName' ({service!r}) does not match the function in the path "
            f"({name!r}).",
            "serviceName",
        )
    if (bad := _namespace_error(service_namespace, "serviceName")) is not None:
        return bad

    scaler = request.app[SCALER_KEY]
    if name not in scaler.functions:
        return error_response(404, f"Function {name!r} not found.", "serviceName")

    fn = scaler.scale(name, replicas)
    message = f"Scaling {name!r} to {fn.desired}."
    if fn.desired < replicas:
        message = (
            f"Scaling {name!r} to {fn.desired}: the request for {replicas} replicas was capped "
            f"at its maximum of {fn.policy.max_replicas}."
        )
    return web.json_response({"message": message}, status=202)


def add_system_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/system/info", info)
    app.router.add_get("/system/namespaces", namespaces)
    app.router.add_get("/system/functions", list_functions)
    app.router.add_post("/system/functions", deploy)
    app.router.add_put("/system/functions", update)
    app.router.add_delete("/system/functions", remove)
    app.router.add_get("/system/function/{name}", function_status)
    app.router.add_post("/system/scale-function/{name}", scale)
