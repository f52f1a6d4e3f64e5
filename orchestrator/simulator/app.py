"""The aiohttp application: routes, the gateway middleware and thin handlers.

The middleware puts :class:`~orchestrator.simulator.gateway.Gateway` in front of the handlers
(authentication, project check, throttling, transient errors, latency, dropped answers; see there).
A submit request's phones are counted as in flight from the moment its body is read until its
answer is written, which is how the stats catch a phone sent in two concurrent requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from orchestrator.clock import Clock
from orchestrator.simulator.auth import IamFailure, ReceivedRequest, iam_token_body
from orchestrator.simulator.config import SimulatorConfig
from orchestrator.simulator.gateway import (
    OPERATION_FAMILY,
    QUERY,
    SUBMIT,
    Gateway,
    WireAnswer,
    cph_answer,
    error_answer,
)
from orchestrator.simulator.state import JobKind, SimState
from orchestrator.simulator.wire import (
    INVALID_PARAMETER_ERROR_CODE,
    NOT_FOUND_ERROR_CODE,
    Rejection,
    format_iam_time,
)

__all__ = ["OPERATION_FAMILY", "QUERY", "SUBMIT", "SimulatorApp"]

CONTROL_OPERATIONS = frozenset({"SimStats", "SimResetStats"})
"""Simulator control routes, left out of the request counts they report."""

REQUEST_ID = web.RequestKey("sim_request_id", str)
BODY_JSON = web.RequestKey("sim_body_json", object)
_UNREADABLE = object()


def _response(answer: WireAnswer) -> web.Response:
    response = web.Response(
        status=answer.status, body=answer.body, content_type=answer.content_type
    )
    response.headers.update(answer.headers)
    return response


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _decode_json(raw: bytes) -> object:
    try:
        return json.loads(raw) if raw else _UNREADABLE
    except ValueError:
        return _UNREADABLE


def _batch_phone_ids(body: object) -> list[str]:
    """Phone ids of a submit body, best effort (for in-flight tracking before validation)."""
    phones = body.get("phones") if isinstance(body, dict) else None
    if not isinstance(phones, list):
        return []
    ids = (item.get("phone_id") for item in phones if isinstance(item, dict))
    return [pid for pid in ids if isinstance(pid, str)]


class SimulatorApp:
    """Wires a :class:`SimState` behind a :class:`Gateway` to HTTP."""

    def __init__(self, state: SimState, config: SimulatorConfig, clock: Clock) -> None:
        self.state = state
        self.config = config
        self.clock = clock
        self.gateway = Gateway(config, clock, state.counters)
        self.auth = self.gateway.auth
        self.profile = config.profile

    def build(self) -> web.Application:
        """The ``aiohttp`` application serving the CPH, IAM and ``/_sim`` routes."""
        app = web.Application(middlewares=[self._middleware()], client_max_size=8 * 1024 * 1024)
        cph = "/v1/{project_id}/cloud-phone"
        routes = app.router
        routes.add_post(
            f"{cph}/phones/batch-update-property",
            self.update_property,
            name="UpdateCloudPhoneProperty",
        )
        routes.add_post(f"{cph}/phones/batch-restart", self.restart, name="RestartCloudPhone")
        routes.add_get(f"{cph}/jobs/{{job_id}}", self.show_job, name="ShowJob")
        routes.add_get(f"{cph}/jobs", self.list_jobs, name="ListJobs")
        routes.add_get(f"{cph}/phones", self.list_phones, name="ListCloudPhones")
        routes.add_get(f"{cph}/phones/{{phone_id}}", self.show_phone, name="ShowCloudPhoneDetail")
        routes.add_post(
            "/v3/auth/tokens", self.iam_tokens, name="KeystoneCreateUserTokenByPassword"
        )
        routes.add_get("/_sim/stats", self.sim_stats, name="SimStats")
        routes.add_post("/_sim/reset-stats", self.sim_reset_stats, name="SimResetStats")
        return app

    # -- gateway ---------------------------------------------------------------------------------

    def _middleware(self) -> Any:
        @web.middleware
        async def gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
            request_id = self.state.new_id()
            request[REQUEST_ID] = request_id
            operation = request.match_info.route.name
            if operation not in CONTROL_OPERATIONS:
                self.state.counters.requests[operation or "Unknown"] += 1
            with self.state.counters.request_in_flight():
                response = await self._route(request, handler, operation)
            response.headers["X-Request-Id"] = request_id
            return response

        return gateway

    async def _route(
        self, request: web.Request, handler: Handler, operation: str | None
    ) -> web.StreamResponse:
        if request.match_info.http_exception is not None or operation is None:
            status = (
                request.match_info.http_exception.status
                if request.match_info.http_exception
                else 404
            )
            rejection = Rejection(
                status, NOT_FOUND_ERROR_CODE, "The API does not exist or has not been published."
            )
            return _response(error_answer(rejection, request[REQUEST_ID]))
        family = OPERATION_FAMILY.get(operation)
        if family is None:
            return await handler(request)
        body = await request.read()
        request[BODY_JSON] = _decode_json(body) if family == SUBMIT else None
        with self._phones_held(request, family):
            return await self._guarded(request, handler, family, body)

    @contextmanager
    def _phones_held(self, request: web.Request, family: str) -> Iterator[None]:
        phone_ids = _batch_phone_ids(request[BODY_JSON]) if family == SUBMIT else []
        with self.state.counters.phones_in_flight(phone_ids):
            yield

    async def _guarded(
        self, request: web.Request, handler: Handler, family: str, body: bytes
    ) -> web.StreamResponse:
        project_id = request.match_info.get("project_id")
        refusal = self.gateway.check(
            _received(request, body), project_id, family, request[REQUEST_ID]
        )
        if refusal is not None:
            return _response(refusal)
        spike_s = self.gateway.latency_spike_s()
        if spike_s > 0.0:
            await self.clock.sleep(spike_s)
        response = await handler(request)
        if self.gateway.drops_answer(family, response.status):
            self._drop(request)
        return response

    @staticmethod
    def _drop(request: web.Request) -> None:
        """Close the connection with no answer although the jobs were created (outcome unknown)."""
        if request.transport is not None:
            request.transport.close()

    # -- CPH handlers ----------------------------------------------------------------------------

    def _answer(self, request: web.Request, result: dict[str, Any] | Rejection) -> web.Response:
        where = f"{request.method} {request.rel_url}"
        return _response(cph_answer(self.state.counters, result, request[REQUEST_ID], where))

    async def _submit(self, request: web.Request, kind: JobKind) -> web.Response:
        body = request[BODY_JSON]
        if body is _UNREADABLE:
            rejection = Rejection(
                400,
                INVALID_PARAMETER_ERROR_CODE,
                "Parameter: body is invalid: not JSON.",
                "malformed_request",
            )
            return self._answer(request, rejection)
        return self._answer(request, self.state.submit_body(body, request[REQUEST_ID], kind))

    async def update_property(self, request: web.Request) -> web.Response:
        """UpdateCloudPhoneProperty: ``POST …/phones/batch-update-property``."""
        return await self._submit(request, JobKind.PROPERTY)

    async def restart(self, request: web.Request) -> web.Response:
        """RestartCloudPhone: ``POST …/phones/batch-restart``."""
        return await self._submit(request, JobKind.RESTART)

    async def show_job(self, request: web.Request) -> web.Response:
        """ShowJob: ``GET …/jobs/{job_id}``."""
        return self._answer(request, self.state.show_job(request.match_info["job_id"]))

    async def list_jobs(self, request: web.Request) -> web.Response:
        """ListJobs: ``GET …/jobs?request_id=…|request_ids=…``."""
        return self._answer(request, self.state.list_jobs(dict(request.query)))

    async def list_phones(self, request: web.Request) -> web.Response:
        """ListCloudPhones: ``GET …/phones``."""
        return self._answer(request, self.state.list_phones(dict(request.query)))

    async def show_phone(self, request: web.Request) -> web.Response:
        """ShowCloudPhoneDetail: ``GET …/phones/{phone_id}``."""
        return self._answer(request, self.state.show_phone(request.match_info["phone_id"]))

    # -- IAM and simulator control ---------------------------------------------------------------

    async def iam_tokens(self, request: web.Request) -> web.Response:
        """IAM ``POST /v3/auth/tokens`` (password method); the token travels in ``X-Subject-Token``."""
        login = self.auth.login(_decode_json(await request.read()))
        if isinstance(login, IamFailure):
            title = "Unauthorized" if login.status == 401 else "Bad Request"
            error = {"code": login.status, "message": login.message, "title": title}
            return _json(login.status, {"error": error})
        body = iam_token_body(
            login, format_iam_time(login.issued_wall_s), format_iam_time(login.expires_wall_s)
        )
        response = _json(201, body)
        response.headers["X-Subject-Token"] = login.token
        return response

    async def sim_stats(self, request: web.Request) -> web.Response:
        """``GET /_sim/stats[?phones=0]``: what the simulator saw (no auth)."""
        include_phones = request.query.get("phones", "1") not in ("0", "false", "no")
        return _json(200, self.state.stats_dict(include_phones=include_phones))

    async def sim_reset_stats(self, request: web.Request) -> web.Response:
        """``POST /_sim/reset-stats``: zero the counters (fleet and jobs are kept)."""
        self.state.counters.reset()
        return _json(200, {"reset": True})


def _received(request: web.Request, body: bytes) -> ReceivedRequest:
    headers = {name.lower(): value for name, value in request.headers.items()}
    return ReceivedRequest(
        method=request.method,
        path=request.rel_url.raw_path,
        query=list(request.rel_url.query.items()),
        headers=headers,
        body=body,
    )
