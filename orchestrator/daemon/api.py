"""The daemon's HTTP control API: routes, bearer-token check, input limits, errors as JSON answers.

Every ``/v1`` route needs ``Authorization: Bearer <token>`` when a token is configured; ``/healthz``,
``/readyz`` and ``/metrics`` are open (they carry no plan data and no secrets).

Whatever a client sends, the answer is JSON and never a 500 caused by the input. The limits:

* a body of at most :data:`MAX_BODY_BYTES` (413 beyond), sent with a Content-Length (411) and
  without a Content-Encoding (415: the server decompresses nothing), parsed by orjson, which
  refuses invalid UTF-8, numbers beyond a double and nesting beyond 1024 levels without recursing
  in Python; a body nested deeper than :data:`MAX_JSON_DEPTH` or holding an integer beyond 64 bits
  is refused (400) before any other code walks it;
* a request target (path and query) of at most :data:`MAX_TARGET_BYTES` (414) and headers of at
  most :data:`MAX_HEADER_BYTES` in all (431); beyond the HTTP layer's own per-line limits (see
  :mod:`orchestrator.daemon.server`) the request never reaches this application;
* integer query parameters of at most :data:`MAX_QUERY_INT_DIGITS` digits (400);
* a bearer token is compared as bytes, so no header value can make the check fail with an error.

An unexpected error in a handler is a bug: the answer is ``500 {"error": "internal error"}`` and
``daemon.request_failed`` is logged once with the exception's type (not its text, which may quote
the request).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
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
from orchestrator.plan import PlanError, decode_json_plan
from orchestrator.store.base import RolloutExistsError, RolloutNotFoundError

__all__ = [
    "MANAGER",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_QUERY_INT_DIGITS",
    "MAX_TARGET_BYTES",
    "create_app",
]

log = structlog.get_logger("orchestrator.daemon")

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the API reads (a plan naming tens of thousands of phones fits)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a body may have (a plan needs 3)."""
MAX_TARGET_BYTES = 4096
"""Longest request target (path and query string) the API reads."""
MAX_HEADER_BYTES = 16 * 1024
"""Most bytes of header names and values, all headers together, the API reads."""
MAX_QUERY_INT_DIGITS = 18
"""Longest integer query parameter (``offset``, ``limit``): it always fits the journal's integers."""
_INT64 = range(-(2**63), 2**63)
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
    except Exception as error:  # a bug: answered as JSON, logged without the request's content
        log.error(
            "daemon.request_failed",
            method=request.method,
            route=_route_of(request),
            error_class=type(error).__name__,
        )
        return _error(500, "internal error")


def _route_of(request: web.Request) -> str:
    """The matched route's pattern (never the raw path, which is the client's text)."""
    route = request.match_info.route
    return route.resource.canonical if route.resource is not None else "unmatched"


@web.middleware
async def _bounded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse request targets and headers beyond the API's limits, before anything reads them."""
    if len(request.raw_path.encode("utf-8", "surrogatepass")) > MAX_TARGET_BYTES:
        return _error(414, f"the request target is longer than {MAX_TARGET_BYTES} bytes")
    header_bytes = sum(len(name) + len(value) for name, value in request.raw_headers)
    if header_bytes > MAX_HEADER_BYTES:
        return _error(431, f"the headers are longer than {MAX_HEADER_BYTES} bytes in all")
    return await handler(request)


def _given_token(authorization: str) -> bytes | None:
    """The bearer token of an ``Authorization`` value, as bytes; None for another scheme.

    aiohttp decodes header bytes that are not UTF-8 into lone surrogates; ``surrogatepass`` turns
    any string into bytes, so such a token is simply not equal to the expected one.
    """
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return given.strip().encode("utf-8", "surrogatepass")


def _bearer_check(token: SecretStr | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = token.get_secret_value().encode() if token is not None else None

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or not request.path.startswith(API_PREFIX):
            return await handler(request)
        given = _given_token(request.headers.get("Authorization", ""))
        if given is None or not hmac.compare_digest(given, expected):
            response = _error(401, "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return check


def create_app(manager: RolloutManager, *, token: SecretStr | None) -> web.Application:
    """The application; ``token`` None leaves ``/v1`` open (only allowed on loopback)."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[_errors_as_json, _bounded, _bearer_check(token)],
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


def _parse_json_body(raw: bytes) -> Any:
    """A request body as JSON; :class:`InvalidRequestError` names what is wrong with it.

    orjson reads UTF-8 only, keeps integers of up to 64 bits exact (larger ones become doubles),
    refuses numbers beyond a double and stops at 1024 levels of nesting, all without recursion in
    Python; the result is then held to :data:`MAX_JSON_DEPTH` and to signed 64-bit integers (what
    the journal stores) by an iterative walk. Only then is it decoded again, keeping property
    values as the sender typed them (see :func:`orchestrator.plan.decode_json_plan`).
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if str(error).startswith("depth limit exceeded"):
            raise _too_deep() from None
        raise InvalidRequestError(f"the body is not JSON: {error}") from None
    _check_nesting_and_numbers(value)
    try:  # bounded now: decode again keeping property values as typed (1.10 stays "1.10")
        return decode_json_plan(raw.decode("utf-8"))
    except ValueError as error:
        raise InvalidRequestError(f"the body is not JSON: {error}") from None


def _too_deep() -> InvalidRequestError:
    return InvalidRequestError(f"the body nests deeper than the maximum depth of {MAX_JSON_DEPTH}")


def _check_nesting_and_numbers(value: Any) -> None:
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise _too_deep()
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, int) and item not in _INT64:
            raise InvalidRequestError("the body holds an integer beyond 64 bits")


async def _read_body(request: web.Request) -> bytes:
    """The body as sent, with a Content-Length and no Content-Encoding.

    The server decompresses nothing (no decompression bombs), so an encoded body is refused (415).
    A chunked body is refused (411) before it is read: aiohttp answers broken chunk framing found
    after the first bytes as a new request, and the reading handler would wait for ever.
    """
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        raise web.HTTPUnsupportedMediaType(reason="a Content-Encoding is not accepted")
    if request.content_length is None and request.body_exists:
        raise web.HTTPLengthRequired(reason="a body needs a Content-Length (chunks are refused)")
    try:
        return await request.read()
    except (web.RequestPayloadError, ConnectionResetError):
        raise InvalidRequestError("the body cannot be read: the connection was lost") from None


async def _submit(request: web.Request) -> web.Response:
    body = _parse_json_body(await _read_body(request))
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
        if len(value) > MAX_QUERY_INT_DIGITS:
            raise ValueError(value)
        return int(value)
    except ValueError:
        raise InvalidRequestError(
            f"{name} must be an integer of at most {MAX_QUERY_INT_DIGITS} digits"
        ) from None


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
