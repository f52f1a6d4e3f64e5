"""Test doubles shipped with the package: the CPH API in process, and a fake clock that runs itself.

:class:`FakeCphApi` answers the engine's calls (:class:`~orchestrator.cph.api.CphApi`) from the
simulator's own account model (:class:`~orchestrator.simulator.state.SimState`) behind the
simulator's own gateway (:class:`~orchestrator.simulator.gateway.Gateway`: token buckets, fault
profiles), without HTTP, on an injected clock. It raises exactly the errors the HTTP client raises
for the same answers, so code tested against it behaves the same against the simulator or the cloud.

:func:`run_on_fake_clock` runs a coroutine on a :class:`~orchestrator.clock.FakeClock` that jumps
to the next sleeper's deadline whenever nothing else can run, so an hour of rollout (jobs, bake
times, grace periods, timeouts) takes milliseconds and happens in the same order every time::

    from orchestrator.clock import FakeClock
    from orchestrator.simulator import SimulatorConfig
    from orchestrator.testing import FakeCphApi, run_on_fake_clock

    async def test_every_phone_is_updated() -> None:
        clock = FakeClock()
        api = FakeCphApi(SimulatorConfig(phones=50, profile="flaky"), clock=clock)
        engine = RolloutEngine(..., client=api, clock=clock, options=...)
        result = await run_on_fake_clock(engine.run(), clock)
        assert api.stats()["max_concurrent_requests_per_phone"] == 1
        assert result.counts["succeeded"] == 50
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr

from orchestrator.clock import Clock, FakeClock
from orchestrator.cph.api import ApiFamily, list_jobs_query, restart_body
from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    ThrottledError,
    TransientError,
    error_from_response,
)
from orchestrator.cph.models import (
    BatchJobsResponse,
    ListJobsResponse,
    PhoneDetail,
    PropertyUpdate,
    ShowJobResponse,
)
from orchestrator.cph.signer import canonical_query_string
from orchestrator.simulator.auth import ReceivedRequest
from orchestrator.simulator.config import SimulatorConfig
from orchestrator.simulator.gateway import Gateway, WireAnswer, cph_answer
from orchestrator.simulator.state import JobKind, SimState
from orchestrator.simulator.wire import Rejection

__all__ = ["DeadlockError", "FakeCphApi", "run_on_fake_clock"]

LIST_JOBS_MAX_REQUEST_IDS = 20
LIST_JOBS_PAGE_LIMIT = 100

AnswerT = TypeVar("AnswerT", bound=BaseModel)
ResultT = TypeVar("ResultT")

Handler = Callable[[str], dict[str, Any] | Rejection]
"""Runs an admitted request on the account, given its request ID."""


@dataclass(frozen=True, slots=True)
class _Request:
    """One call as the gateway sees it: what the HTTP client would have sent."""

    operation: str
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    phone_ids: Sequence[str] = ()

    @property
    def family(self) -> ApiFamily:
        return ApiFamily.QUERY if self.method == "GET" else ApiFamily.SUBMIT


class FakeCphApi:
    """A simulated CPH account answering in process, on ``clock``.

    ``token`` is what the caller presents (``X-Auth-Token``); it matters only when ``config`` sets
    a ``token``. ``latency_s`` delays every request on the clock before the gateway sees it (a
    network round trip). :attr:`state` is the account (fleet, jobs, counters) and :meth:`stats` is
    what the simulator's ``GET /_sim/stats`` would answer.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        clock: Clock,
        token: str | SecretStr | None = None,
        latency_s: float = 0.0,
    ) -> None:
        self.config = config
        self.clock = clock
        self.state = SimState(config, clock)
        self.gateway = Gateway(config, clock, self.state.counters)
        self._token = token.get_secret_value() if isinstance(token, SecretStr) else token
        self.latency_s = latency_s
        self.calls: Counter[str] = Counter()
        """Calls made, keyed ``"<family>.<outcome>"`` as :class:`CphClient` counts them."""

    def __repr__(self) -> str:
        return f"FakeCphApi(phones={self.config.phones}, profile={self.config.profile.name!r})"

    def stats(self, *, include_phones: bool = True) -> dict[str, Any]:
        """What the "cloud" recorded: requests per operation, throttled, submissions and restarts
        per phone, the per-phone concurrency peak, properties per changed phone, violations."""
        return self.state.stats_dict(include_phones=include_phones)

    # -- the CphApi calls ----------------------------------------------------------------------

    async def update_properties(self, updates: Sequence[PropertyUpdate]) -> BatchJobsResponse:
        """Batch-update phone properties; per-phone errors come back in ``jobs``, never raised."""
        body = _as_sent({"phones": [update.wire() for update in updates]})
        request = _Request(
            "UpdateCloudPhoneProperty",
            "POST",
            "/cloud-phone/phones/batch-update-property",
            phone_ids=[update.phone_id for update in updates],
        )
        return await self._call(
            BatchJobsResponse,
            request,
            lambda request_id: self.state.submit_body(body, request_id, JobKind.PROPERTY),
        )

    async def restart_phones(
        self,
        phone_ids: Sequence[str],
        *,
        image_id: str | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> BatchJobsResponse:
        """Restart (or start) phones; ``properties`` maps a phone to a property JSON string."""
        body = _as_sent(restart_body(phone_ids, image_id=image_id, properties=properties))
        request = _Request(
            "RestartCloudPhone", "POST", "/cloud-phone/phones/batch-restart", phone_ids=phone_ids
        )
        return await self._call(
            BatchJobsResponse,
            request,
            lambda request_id: self.state.submit_body(body, request_id, JobKind.RESTART),
        )

    async def show_job(self, job_id: str) -> ShowJobResponse:
        """One job by ID (404 ``CPS.0011`` for a job the account does not hold)."""
        request = _Request("ShowJob", "GET", f"/cloud-phone/jobs/{job_id}")
        return await self._call(ShowJobResponse, request, lambda _: self.state.show_job(job_id))

    async def list_jobs_page(
        self,
        request_ids: Sequence[str],
        *,
        offset: int = 0,
        limit: int = LIST_JOBS_PAGE_LIMIT,
    ) -> ListJobsResponse:
        """One page of the jobs of up to 20 batch requests."""
        query = list_jobs_query(request_ids, offset=offset, limit=limit)
        request = _Request("ListJobs", "GET", "/cloud-phone/jobs", query)
        return await self._call(ListJobsResponse, request, lambda _: self.state.list_jobs(query))

    async def show_phone(self, phone_id: str) -> PhoneDetail:
        """One phone's details, including its current ``property`` string."""
        request = _Request("ShowCloudPhoneDetail", "GET", f"/cloud-phone/phones/{phone_id}")
        return await self._call(PhoneDetail, request, lambda _: self.state.show_phone(phone_id))

    # -- the one request path -------------------------------------------------------------------

    async def _call(self, answer: type[AnswerT], request: _Request, handle: Handler) -> AnswerT:
        try:
            raw = await self._exchange(request, handle)
        except ApiError as error:
            self.calls[f"{request.family}.{_outcome(error)}"] += 1
            raise
        self.calls[f"{request.family}.ok"] += 1
        return answer.model_validate_json(raw)

    async def _exchange(self, request: _Request, handle: Handler) -> bytes:
        """What the simulator's middleware does for one request, minus the sockets."""
        counters = self.state.counters
        request_id = self.state.new_id()
        counters.requests[request.operation] += 1
        with counters.request_in_flight(), counters.phones_in_flight(request.phone_ids):
            if self.latency_s > 0.0:
                await self.clock.sleep(self.latency_s)
            answer = await self._through_gateway(request, request_id, handle)
        if answer.status >= 400:
            raise error_from_response(
                status=answer.status,
                headers={**answer.headers, "X-Request-Id": request_id},
                body=answer.body,
                operation=request.operation,
                method=request.method,
                now_epoch_s=self.clock.time(),
            )
        return answer.body

    async def _through_gateway(
        self, request: _Request, request_id: str, handle: Handler
    ) -> WireAnswer:
        refusal = self.gateway.check(
            self._received(request), self.config.project_id, request.family, request_id
        )
        if refusal is not None:
            return refusal
        spike_s = self.gateway.latency_spike_s()
        if spike_s > 0.0:
            await self.clock.sleep(spike_s)
        where = f"{request.method} {self._target(request)}"
        answer = cph_answer(self.state.counters, handle(request_id), request_id, where)
        if self.gateway.drops_answer(request.family, answer.status):
            raise _dropped(request)
        return answer

    def _received(self, request: _Request) -> ReceivedRequest:
        headers = {"x-auth-token": self._token} if self._token else {}
        path = f"/v1/{self.config.project_id}{request.path}"
        return ReceivedRequest(request.method, path, list(request.query.items()), headers, b"")

    def _target(self, request: _Request) -> str:
        """Path and query as the HTTP client would send them (for violation details)."""
        path = f"/v1/{self.config.project_id}{request.path}"
        query = canonical_query_string(list(request.query.items()))
        return f"{path}?{query}" if query else path


def _as_sent(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the server decodes it: a fresh copy, sharing nothing with the caller's objects."""
    decoded: dict[str, Any] = json.loads(json.dumps(body))
    return decoded


def _outcome(error: ApiError) -> str:
    """The ``calls`` outcome key of an error, as the HTTP client names it."""
    if isinstance(error, ThrottledError):
        return "throttled"
    if isinstance(error, AuthError):
        return "auth_error"
    if isinstance(error, TransientError):
        return "transient_error"
    return "error"


def _dropped(request: _Request) -> TransientError:
    """What the HTTP client raises when the connection closes before the answer of a POST."""
    reason = "Server disconnected"
    return TransientError(
        f"{request.operation} failed: ServerDisconnectedError"
        f" (outcome unknown: the request may have taken effect): {reason}",
        operation=request.operation,
        error_msg=reason,
        outcome_unknown=request.method != "GET",
        unreachable=True,
    )


# -- running on a fake clock that jumps ------------------------------------------------------------


class DeadlockError(RuntimeError):
    """Nothing can run, nothing sleeps on the fake clock, and the coroutine has not finished."""


async def run_on_fake_clock(
    main: Awaitable[ResultT], clock: FakeClock, *, max_fake_s: float | None = None
) -> ResultT:
    """Await ``main`` while moving ``clock`` to the next sleeper's deadline each time the event
    loop has nothing ready to run (trio's "autojump clock"); returns ``main``'s result.

    Time never passes while any task can still run, so everything due at one instant happens
    before the clock moves, and a run is as deterministic as its code: the same seeds give the same
    order of events, at no cost in real time. Raises :class:`DeadlockError` when ``main`` waits
    for something no task and no fake sleeper will ever bring, and :class:`TimeoutError` when the
    next deadline lies more than ``max_fake_s`` fake seconds after the start.

    Idleness is read from the loop's ready queue (``loop._ready``, the callbacks the next loop
    iteration will run), not guessed by yielding a fixed number of times with
    ``asyncio.sleep(0)``: each yield lets only one "hop" run (a task setting a future that wakes
    another task that sets an event…), so any fixed count can be outrun by a longer chain, and
    time would then jump while work due now was still pending: a timeout could win a race against
    an answer that was already there. The ready queue is exact and costs one check per loop
    iteration. It is private to asyncio's own event loops (uvloop has none; a clear error says so)
    and it cannot see real I/O: code under this driver must wait only on the clock and on other
    tasks, not on sockets, threads or real-time timers.
    """
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    if not isinstance(ready, deque):
        raise RuntimeError(
            "run_on_fake_clock needs asyncio's own event loop: it reads the loop's ready queue"
        )
    task = asyncio.ensure_future(main)
    give_up_at = None if max_fake_s is None else clock.monotonic() + max_fake_s
    try:
        await _autojump(task, clock, ready, give_up_at)
    except BaseException:
        task.cancel()
        await _autojump(task, clock, ready, None, quiet=True)
        raise
    return task.result()


async def _autojump(
    task: asyncio.Future[Any],
    clock: FakeClock,
    ready: deque[Any],
    give_up_at: float | None,
    *,
    quiet: bool = False,
) -> None:
    """Yield to the loop until ``task`` is done, jumping time whenever the loop is idle."""
    while not task.done():
        await asyncio.sleep(0)
        if ready or task.done():
            continue
        deadline = clock.next_deadline()
        if deadline is None or (give_up_at is not None and deadline > give_up_at):
            if quiet:
                return
            raise _stuck(deadline, clock)
        clock.advance(max(0.0, deadline - clock.monotonic()))


def _stuck(deadline: float | None, clock: FakeClock) -> BaseException:
    if deadline is not None:
        return TimeoutError(
            f"still running at fake time {clock.monotonic():g} s; the next wake-up,"
            f" at {deadline:g} s, is past the limit"
        )
    scheduled = [
        handle
        for handle in getattr(asyncio.get_running_loop(), "_scheduled", [])
        if not handle.cancelled()
    ]
    hint = (
        f"; {len(scheduled)} real-time timer(s) are pending: the code waits on the real clock"
        if scheduled
        else ""
    )
    return DeadlockError(
        f"deadlock at fake time {clock.monotonic():g} s: no task can run, none sleeps on the"
        f" fake clock, and the coroutine has not finished{hint}"
    )
