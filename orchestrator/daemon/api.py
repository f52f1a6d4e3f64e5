"""The daemon's HTTP control API: routes, bearer-token check, and errors as JSON answers.

Every ``/v1`` route needs ``Authorization: Bearer <token>`` when a token is configured; ``/healthz``,
``/readyz`` and ``/metrics`` are open (they carry no plan data and no secrets). Request bodies are
limited to :data:`MAX_BODY_BYTES` (413 beyond).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr

from orchestrator.cph.errors import ApiError
from orchestrator.daemon.manager import (
    DaemonError,
    InvalidRequestError,
    NotRunningError,
    RolloutManager,
    ShuttingDownError,
)
from orchestrator.errors import ConfigError
from orchestrator.plan import PlanError
from orchestrator.store.base import RolloutExistsError, RolloutNotFoundError

__all__ = ["MANAGER", "MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 1024 * 1024
MANAGER = web.AppKey("manager", RolloutManager)
API_PREFIX = "/v1/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (InvalidRequestError, 400),
    (RolloutNotFoundError, 404),
    (RolloutExistsError, 409),
    (NotRunningError, 409),
    (ShuttingDownError, 503),
    (ConfigError, 500),
    (ApiError, 502),
    (DaemonError, 500),
)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The orchestrator's errors (and aiohttp's own, such as 413) as ``{"error": …}`` answers."""
    try:
        return await handler(request)
    except PlanError as error:
        problems = [
            {"where": p.where, "field": p.field, "message": p.message} for p in error.problems
        ]
        return _error(400, "invalid plan", problems=problems, total=error.total)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error(error.status, error.reason)
    except (DaemonError, ConfigError, ApiError, RolloutNotFoundError, RolloutExistsError) as error:
        status = next(code for kind, code in _STATUS_OF if isinstance(error, kind))
        return _error(status, str(error))


def _bearer_check(token: SecretStr | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = token.get_secret_value().encode() if token is not None else None

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or not request.path.startswith(API_PREFIX):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            response = _error(401, "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return check


def create_app(manager: RolloutManager, *, token: SecretStr | None) -> web.Application:
    """The application; ``token`` None leaves ``/v1`` open (only allowed on loopback)."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json, _bearer_check(token)]
    )
    app[MANAGER] = manager
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/v1/rollouts", _submit)
    app.router.add_get("/v1/rollouts", _list)
    app.router.add_get("/v1/rollouts/{rollout_id}", _status)
    app.router.add_get("/v1/rollouts/{rollout_id}/phones", _phones)
    app.router.add_post("/v1/rollouts/{rollout_id}/{action:pause|resume|cancel}", _control)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[MANAGER].ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "recovering"}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    await manager.refresh_metrics()
    return web.Response(
        body=manager.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _submit(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequestError(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object (a plan)")
    rollout_id = await request.app[MANAGER].submit(body)
    location = f"/v1/rollouts/{rollout_id}"
    return web.json_response({"rollout_id": rollout_id}, status=201, headers={"Location": location})


async def _list(request: web.Request) -> web.Response:
    return web.json_response({"rollouts": await request.app[MANAGER].list_all()})


async def _status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MANAGER].status(request.match_info["rollout_id"]))


def _int_param(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer") from None


async def _phones(request: web.Request) -> web.Response:
    page = await request.app[MANAGER].phones(
        request.match_info["rollout_id"],
        state=request.query.get("state"),
        error_code=request.query.get("error_code") or None,
        offset=_int_param(request, "offset") or 0,
        limit=_int_param(request, "limit"),
    )
    return web.json_response(page)


async def _control(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    rollout_id = request.match_info["rollout_id"]
    actions = {"pause": manager.pause, "resume": manager.resume, "cancel": manager.cancel}
    return web.json_response(await actions[request.match_info["action"]](rollout_id))
