"""The shipped test doubles: ``run_on_fake_clock`` and ``FakeCphApi``.

The fake is checked against the simulator over HTTP with the real client: for the same account,
the same seed and the same calls, both must answer alike and raise the same errors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from orchestrator.clock import FakeClock
from orchestrator.cph import CphClient, PropertyUpdate, StaticTokenAuth
from orchestrator.cph.api import CphApi
from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from orchestrator.simulator import PROFILES, SimulatorConfig, apply_overrides
from orchestrator.testing import DeadlockError, FakeCphApi, run_on_fake_clock
from tests.conftest import SimulatorFactory

# -- run_on_fake_clock -----------------------------------------------------------------------------


async def test_sleepers_wake_in_deadline_order_at_their_own_fake_time() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async def main() -> str:
        await asyncio.gather(sleeper("c", 3600.0), sleeper("a", 1.0), sleeper("b", 60.0))
        return "done"

    assert await run_on_fake_clock(main(), clock) == "done"
    assert woke == [("a", 1.0), ("b", 60.0), ("c", 3600.0)]
    assert clock.monotonic() == 3600.0


async def test_work_ready_now_always_runs_before_time_moves() -> None:
    """A chain of 500 tasks, each woken by the one before, races a 1 ms timeout: the chain wins,
    because time moves only once nothing at all can run (a fixed number of yields would not do)."""
    clock = FakeClock()
    events = [asyncio.Event() for _ in range(500)]

    async def link(n: int) -> None:
        await events[n].wait()
        if n + 1 < len(events):
            events[n + 1].set()

    async def main() -> str:
        links = [asyncio.create_task(link(n)) for n in range(len(events))]
        timeout = asyncio.create_task(clock.sleep(0.001))
        events[0].set()
        done, _ = await asyncio.wait([links[-1], timeout], return_when=asyncio.FIRST_COMPLETED)
        timeout.cancel()
        return "chain" if links[-1] in done else "timeout"

    assert await run_on_fake_clock(main(), clock) == "chain"
    assert clock.monotonic() == 0.0


async def test_a_run_is_deterministic() -> None:
    async def scenario(clock: FakeClock) -> list[tuple[int, float]]:
        order: list[tuple[int, float]] = []

        async def worker(n: int) -> None:
            for step in range(3):
                await clock.sleep((n * 7 + step * 3) % 5 + 0.5)
                order.append((n, clock.monotonic()))

        await asyncio.gather(*(worker(n) for n in range(6)))
        return order

    runs = []
    for _ in range(2):
        clock = FakeClock()
        runs.append(await run_on_fake_clock(scenario(clock), clock))
    assert runs[0] == runs[1]
    assert len(runs[0]) == 18
    assert [t for _, t in runs[0]] == sorted(t for _, t in runs[0])


async def test_a_deadlock_is_reported_and_the_coroutine_cancelled() -> None:
    clock = FakeClock()
    never = asyncio.Event()
    cancelled: list[bool] = []

    async def main() -> None:
        await clock.sleep(5.0)
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(DeadlockError, match=r"deadlock at fake time 5 s"):
        await run_on_fake_clock(main(), clock)
    assert cancelled == [True]


async def test_max_fake_s_stops_a_run_that_would_go_on() -> None:
    clock = FakeClock()

    async def forever() -> None:
        while True:
            await clock.sleep(10.0)

    with pytest.raises(TimeoutError, match="past the limit"):
        await run_on_fake_clock(forever(), clock, max_fake_s=100.0)
    assert clock.monotonic() == 100.0


async def test_errors_of_the_coroutine_propagate() -> None:
    clock = FakeClock()

    async def failing() -> None:
        await clock.sleep(2.0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await run_on_fake_clock(failing(), clock)
    assert clock.monotonic() == 2.0


# -- FakeCphApi ------------------------------------------------------------------------------------


def _profile(**knobs: Any) -> Any:
    return apply_overrides(PROFILES["none"], {"job_duration": "fixed:2", **knobs})


def _updates(api: FakeCphApi, count: int, **properties: Any) -> list[PropertyUpdate]:
    return [
        PropertyUpdate.build(pid, {"n": i, **properties})
        for i, pid in enumerate(api.state.phone_ids()[:count])
    ]


async def test_the_fake_satisfies_the_engines_protocol() -> None:
    api: CphApi = FakeCphApi(SimulatorConfig(phones=1), clock=FakeClock())
    assert api.calls == {}


async def test_jobs_run_on_the_clock_and_apply_their_properties() -> None:
    clock = FakeClock()
    api = FakeCphApi(SimulatorConfig(phones=5, profile=_profile()), clock=clock)
    updates = _updates(api, 3, locale="en")
    answer = await api.update_properties(updates)
    assert [job.phone_id for job in answer.jobs] == [u.phone_id for u in updates]
    page = await api.list_jobs_page([answer.request_id])
    assert {job.status for job in page.jobs} == {1}
    assert (await api.show_phone(updates[0].phone_id)).properties() == {}
    clock.advance(2.0)
    page = await api.list_jobs_page([answer.request_id])
    assert {job.status for job in page.jobs} == {2}
    shown = await api.show_job(page.jobs[0].job_id)
    assert shown.finished
    assert (await api.show_phone(updates[0].phone_id)).properties() == {"n": 0, "locale": "en"}
    stats = api.stats()
    assert stats["submissions_per_phone"] == {u.phone_id: 1 for u in updates}
    assert stats["requests"] == {
        "UpdateCloudPhoneProperty": 1,
        "ListJobs": 2,
        "ShowCloudPhoneDetail": 2,
        "ShowJob": 1,
    }
    assert api.calls == {"submit.ok": 1, "query.ok": 5}


async def test_list_jobs_pages_and_unknown_jobs_are_404() -> None:
    clock = FakeClock()
    api = FakeCphApi(SimulatorConfig(phones=150, profile=_profile()), clock=clock)
    ids = api.state.phone_ids()
    first = await api.update_properties([PropertyUpdate.build(p, {"a": 1}) for p in ids[:100]])
    second = await api.update_properties([PropertyUpdate.build(p, {"a": 1}) for p in ids[100:]])
    request_ids = [first.request_id, second.request_id]
    page1 = await api.list_jobs_page(request_ids, offset=0, limit=100)
    page2 = await api.list_jobs_page(request_ids, offset=100, limit=100)
    assert len(page1.jobs) == 100
    assert len(page2.jobs) == 50
    assert {j.phone_id for j in [*page1.jobs, *page2.jobs]} == set(ids)
    with pytest.raises(PermanentError) as caught:
        await api.show_job("f" * 32)
    assert (caught.value.status, caught.value.error_code) == (404, "CPS.0011")
    with pytest.raises(ValueError, match="1 to 20 request IDs"):
        await api.list_jobs_page([])
    assert api.calls["query.error"] == 1


async def test_throttling_uses_the_token_buckets_on_the_clock() -> None:
    clock = FakeClock()
    config = SimulatorConfig(
        phones=3, profile=_profile(retry_after_fraction=1.0), submit_rate_per_s=1.0
    )
    api = FakeCphApi(config, clock=clock)
    updates = _updates(api, 1)
    await api.update_properties(updates)
    with pytest.raises(ThrottledError) as caught:
        await api.update_properties(updates)
    assert caught.value.retry_after_s == 1.0
    assert caught.value.status == 429
    clock.advance(1.0)
    await api.update_properties(updates)
    assert api.calls == {"submit.ok": 2, "submit.throttled": 1}
    assert api.stats()["throttled"] == {"total": 1, "submit": 1}
    assert api.stats()["submissions_per_phone"] == {updates[0].phone_id: 2}


async def test_a_5xx_has_no_effect_and_an_unknown_outcome_for_submits_only() -> None:
    api = FakeCphApi(
        SimulatorConfig(phones=2, profile=_profile(transient_error_rate=1.0)), clock=FakeClock()
    )
    with pytest.raises(TransientError) as submit:
        await api.update_properties(_updates(api, 1))
    with pytest.raises(TransientError) as query:
        await api.show_phone(api.state.phone_ids()[0])
    assert submit.value.outcome_unknown is True
    assert query.value.outcome_unknown is False
    assert submit.value.status in (502, 503)
    assert api.stats()["jobs"]["created"] == 0
    assert api.calls == {"submit.transient_error": 1, "query.transient_error": 1}


async def test_a_dropped_answer_leaves_the_jobs_created() -> None:
    api = FakeCphApi(
        SimulatorConfig(phones=2, profile=_profile(drop_after_apply_rate=1.0)), clock=FakeClock()
    )
    with pytest.raises(TransientError) as caught:
        await api.update_properties(_updates(api, 2))
    assert caught.value.outcome_unknown is True
    stats = api.stats()
    assert stats["jobs"]["created"] == 2
    assert stats["connections_dropped"] == 1


async def test_latency_spikes_hold_the_phones_on_the_clock() -> None:
    """Two requests for one phone during a 3 s spike: the cloud sees the phone in both."""
    clock = FakeClock()
    profile = _profile(latency_spike_rate=1.0, latency_spike="fixed:3")
    api = FakeCphApi(SimulatorConfig(phones=1, profile=profile), clock=clock)
    updates = _updates(api, 1)

    async def twice() -> None:
        await asyncio.gather(api.update_properties(updates), api.update_properties(updates))

    await run_on_fake_clock(twice(), clock)
    assert clock.monotonic() == 3.0
    stats = api.stats()
    assert stats["max_concurrent_requests_per_phone"] == 2
    assert stats["latency_spikes"] == 2
    assert {v["kind"] for v in stats["protocol_violations"]} == {"phone_in_concurrent_requests"}


async def test_a_wrong_token_is_an_auth_error_and_the_right_one_passes() -> None:
    config = SimulatorConfig(phones=1, token=SecretStr("right"))
    wrong = FakeCphApi(config, clock=FakeClock(), token="wrong")
    with pytest.raises(AuthError) as caught:
        await wrong.show_phone(wrong.state.phone_ids()[0])
    assert caught.value.status == 401
    assert "wrong" not in str(caught.value)
    right = FakeCphApi(config, clock=FakeClock(), token=SecretStr("right"))
    await right.show_phone(right.state.phone_ids()[0])
    assert wrong.calls == {"query.auth_error": 1}
    assert right.calls == {"query.ok": 1}


# -- the fake answers as the simulator does over HTTP -------------------------------------------------

Scenario = Callable[[CphApi, list[str]], Awaitable[object]]


async def _oversized(api: CphApi, ids: list[str]) -> object:
    huge = json.dumps({"x": "y" * 8000})
    return await api.update_properties([PropertyUpdate(ids[0], huge)])


async def _update_then_list(api: CphApi, ids: list[str]) -> object:
    answer = await api.update_properties([PropertyUpdate.build(p, {"k": 1}) for p in ids[:3]])
    return await api.list_jobs_page([answer.request_id])


async def _restart_then_show(api: CphApi, ids: list[str]) -> object:
    answer = await api.restart_phones(ids[:2], properties={ids[0]: '{"a":"1"}'})
    return await api.show_job(answer.jobs[0].job_id or "")


async def _show_unknown_job(api: CphApi, ids: list[str]) -> object:
    return await api.show_job("e" * 32)


async def _show_missing_phone(api: CphApi, ids: list[str]) -> object:
    return await api.show_phone("a" * 32)


async def _bad_paging(api: CphApi, ids: list[str]) -> object:
    answer = await api.update_properties([PropertyUpdate.build(ids[0], {"k": 1})])
    return await api.list_jobs_page([answer.request_id, "r2"], offset=0, limit=500)


async def _submit_twice(api: CphApi, ids: list[str]) -> object:
    await api.update_properties([PropertyUpdate.build(ids[0], {"k": 1})])
    return await api.update_properties([PropertyUpdate.build(ids[1], {"k": 2})])


SCENARIOS: list[tuple[str, Scenario, dict[str, Any]]] = [
    ("whole-batch 400", _oversized, {}),
    ("ok answers", _update_then_list, {}),
    ("restart", _restart_then_show, {}),
    ("unknown job", _show_unknown_job, {}),
    ("missing phone", _show_missing_phone, {}),
    ("bad paging", _bad_paging, {}),
    ("throttled", _submit_twice, {"submit_rate_per_s": 1.0}),
    ("5xx", _update_then_list, {"profile": _profile(transient_error_rate=1.0)}),
    ("wrong token", _show_missing_phone, {"token": SecretStr("right")}),
]


def _outcome(result: object) -> object:
    if isinstance(result, ApiError):
        fields = (type(result), result.status, result.error_code)
        if isinstance(result, ThrottledError):
            return (*fields, result.retry_after_s)
        if isinstance(result, TransientError):
            return (*fields, result.outcome_unknown)
        return fields
    return json.loads(result.model_dump_json(exclude={"request_id"}))  # type: ignore[attr-defined]


async def _run(scenario: Scenario, api: CphApi, ids: list[str]) -> object:
    try:
        return _outcome(await scenario(api, ids))
    except ApiError as error:
        return _outcome(error)


@pytest.mark.parametrize(("name", "scenario", "fields"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
async def test_the_fake_answers_and_fails_as_the_client_over_http_does(
    simulator: SimulatorFactory, name: str, scenario: Scenario, fields: dict[str, Any]
) -> None:
    config = SimulatorConfig(phones=4, seed=3, **{"profile": _profile(), **fields})
    sim = await simulator(config, clock=FakeClock())
    fake = FakeCphApi(config, clock=FakeClock(), token="wrong")
    ids = sim.state.phone_ids()
    assert ids == fake.state.phone_ids()
    auth = StaticTokenAuth(SecretStr("wrong"))
    async with CphClient(endpoint=sim.url, project_id=config.project_id, auth=auth) as client:
        over_http = await _run(scenario, client, ids)
    in_process = await _run(scenario, fake, ids)
    assert in_process == over_http
    assert fake.calls == client.calls
    http_stats, fake_stats = sim.state.stats(), fake.stats()
    for key in ("requests", "throttled", "submissions_per_phone", "protocol_violations", "jobs"):
        assert fake_stats[key] == http_stats[key], key
