"""The CPH client against the simulator over real HTTP: answers, paging and every error class.

Nothing in the client is patched: the simulator plays the cloud (and its faults), the assertions read
what the simulator recorded, and time moves only when a test advances the :class:`FakeClock`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from orchestrator.clock import FakeClock
from orchestrator.cph import (
    ApiError,
    AuthError,
    CphClient,
    JobStatus,
    PermanentError,
    Phone,
    PropertyUpdate,
    StaticTokenAuth,
    ThrottledError,
    TransientError,
)
from orchestrator.simulator import PROFILES, FaultProfile, SimulatorServer, apply_overrides
from tests.conftest import SimulatorFactory

TOKEN = "static-token-for-client-tests-7f3a"
UNKNOWN_PHONE = "0" * 32
MALFORMED_PHONE = "not-a-phone!"


def profile(**knobs: Any) -> FaultProfile:
    """The ``none`` profile with some knobs changed (validated)."""
    return apply_overrides(PROFILES["none"], knobs)


def client_for(
    sim: SimulatorServer, *, token: str = TOKEN, endpoint: str | None = None
) -> CphClient:
    """A client with a static token, reading the simulator's clock for ``Retry-After`` dates."""
    return CphClient(
        endpoint=endpoint or sim.url,
        project_id=sim.config.project_id,
        auth=StaticTokenAuth(SecretStr(token)),
        clock=sim.clock,
    )


def fake_clock(sim: SimulatorServer) -> FakeClock:
    assert isinstance(sim.clock, FakeClock)
    return sim.clock


def updates(phone_ids: list[str], **props: Any) -> list[PropertyUpdate]:
    return [PropertyUpdate.build(pid, props or {"ro.install.auto": 1}) for pid in phone_ids]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text


async def start(simulator: SimulatorFactory, **fields: Any) -> SimulatorServer:
    return await simulator(token=TOKEN, **fields)


# -- update_properties and the job it starts -------------------------------------------------------


async def test_update_properties_starts_jobs_that_apply_the_property(
    simulator: SimulatorFactory,
) -> None:
    sim = await start(simulator, phones=10, profile=profile(job_duration="fixed:0.5"))
    phone_ids = sim.state.phone_ids()[:3]
    async with client_for(sim) as client:
        answer = await client.update_properties(updates(phone_ids, **{"persist.sys.locale": "fr"}))

        assert answer.request_id
        assert [job.phone_id for job in answer.jobs] == phone_ids
        assert all(job.job_id and job.error_code is None for job in answer.jobs)
        job_id = answer.jobs[0].job_id
        assert job_id is not None
        running = await client.show_job(job_id)
        assert running.status == JobStatus.RUNNING
        assert not running.finished
        assert (await client.show_phone(phone_ids[0])).properties() == {}

        fake_clock(sim).advance(0.6)

        done = await client.show_job(job_id)
        assert done.status == JobStatus.SUCCEEDED
        assert done.finished
        assert done.error_code is None
        assert done.request_id
        listed = await client.list_jobs([answer.request_id])
        assert sorted(job.phone_id or "" for job in listed) == sorted(phone_ids)
        assert {job.status for job in listed} == {JobStatus.SUCCEEDED}
        assert all(job.error_code is None and job.error_msg is None for job in listed)
        detail = await client.show_phone(phone_ids[0])
        assert detail.properties() == {"persist.sys.locale": "fr"}
        assert detail.phone_id == phone_ids[0]
    assert sim.state.properties(phone_ids[2]) == {"persist.sys.locale": "fr"}
    assert client.calls == {"submit.ok": 1, "query.ok": 5}


@pytest.mark.parametrize("failed_item_job_id", ["omit", "null", "empty"])
async def test_per_phone_errors_in_a_200_are_data(
    simulator: SimulatorFactory, failed_item_job_id: str
) -> None:
    sim = await start(simulator, phones=5, failed_item_job_id=failed_item_job_id)
    good = sim.state.phone_ids()[0]
    async with client_for(sim) as client:
        answer = await client.update_properties(
            [
                PropertyUpdate.build(MALFORMED_PHONE, {"a": 1}),
                PropertyUpdate.build(good, {"a": 1}),
                PropertyUpdate.build(UNKNOWN_PHONE, {"a": 1}),
            ]
        )
    malformed, created, unknown = answer.jobs
    assert (malformed.phone_id, malformed.error_code, malformed.job_id) == (
        MALFORMED_PHONE,
        "CPS.0004",
        None,
    )
    assert malformed.error_msg
    assert (unknown.phone_id, unknown.error_code, unknown.job_id) == (
        UNKNOWN_PHONE,
        "CPS.0005",
        None,
    )
    assert created.job_id
    assert created.error_code is None
    assert created.error_msg is None
    assert sim.state.stats()["jobs"]["created"] == 1
    assert client.calls == {"submit.ok": 1}


async def test_restart_phones_sends_image_and_per_phone_property(
    simulator: SimulatorFactory,
) -> None:
    sim = await start(simulator, phones=4, profile=profile(restart_duration="fixed:1"))
    first, second = sim.state.phone_ids()[:2]
    async with client_for(sim) as client:
        answer = await client.restart_phones(
            [first, second],
            image_id="image123",
            properties={first: json.dumps({"com.cph.mainkeys": 1})},
        )
        assert [job.phone_id for job in answer.jobs] == [first, second]
        assert sim.state.phone(first)["status"] == 4
        fake_clock(sim).advance(1.5)
        jobs = await client.list_jobs([answer.request_id])
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    assert sim.state.properties(first) == {"com.cph.mainkeys": 1}
    assert sim.state.properties(second) == {}
    assert sim.state.stats()["restarts_per_phone"] == {first: 1, second: 1}


# -- paging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("list_jobs_count", [False, True])
async def test_list_jobs_follows_pages_and_returns_each_job_once(
    simulator: SimulatorFactory, list_jobs_count: bool
) -> None:
    sim = await start(simulator, phones=150, list_jobs_count=list_jobs_count)
    phone_ids = sim.state.phone_ids()
    async with client_for(sim) as client:
        request_ids = []
        created: set[str] = set()
        for start_at in (0, 50, 100):
            answer = await client.update_properties(updates(phone_ids[start_at : start_at + 50]))
            request_ids.append(answer.request_id)
            created |= {job.job_id for job in answer.jobs if job.job_id}
        jobs = await client.list_jobs(request_ids)
    assert len(created) == 150
    assert [job.job_id for job in jobs if job.job_id in created] == [job.job_id for job in jobs]
    assert len(jobs) == 150
    assert {job.job_id for job in jobs} == created
    assert sim.state.stats()["requests"]["ListJobs"] == 2


@pytest.mark.parametrize(("list_jobs_count", "pages"), [(False, 2), (True, 1)])
async def test_list_jobs_of_exactly_one_full_page(
    simulator: SimulatorFactory, list_jobs_count: bool, pages: int
) -> None:
    """A full last page costs one empty extra page unless the server says the total."""
    sim = await start(simulator, phones=100, list_jobs_count=list_jobs_count)
    async with client_for(sim) as client:
        answer = await client.update_properties(updates(sim.state.phone_ids()))
        jobs = await client.list_jobs([answer.request_id])
    assert len({job.job_id for job in jobs}) == len(jobs) == 100
    assert sim.state.stats()["requests"]["ListJobs"] == pages


async def test_list_jobs_refuses_more_than_twenty_request_ids(
    simulator: SimulatorFactory,
) -> None:
    sim = await start(simulator, phones=1)
    async with client_for(sim) as client:
        with pytest.raises(ValueError, match="1 to 20"):
            await client.list_jobs([f"r{i}" for i in range(21)])
        with pytest.raises(ValueError, match="1 to 20"):
            await client.list_jobs([])
    assert sim.state.stats()["requests"] == {}


async def collect(pages: Any) -> list[list[Phone]]:
    return [page async for page in pages]


def flat(pages: list[list[Phone]]) -> Iterator[Phone]:
    return (phone for page in pages for phone in page)


async def test_iter_phones_pages_through_the_fleet_newest_first(
    simulator: SimulatorFactory,
) -> None:
    sim = await start(simulator, phones=450)
    async with client_for(sim) as client:
        pages = await collect(client.iter_phones(page_size=200))
    assert [len(page) for page in pages] == [200, 200, 50]
    listed = [phone.phone_id for phone in flat(pages)]
    assert listed == list(reversed(sim.state.phone_ids()))
    times = [phone.create_time or "" for phone in flat(pages)]
    assert times == sorted(times, reverse=True)
    assert sim.state.stats()["requests"]["ListCloudPhones"] == 3
    assert client.calls == {"query.ok": 3}


async def test_iter_phones_stops_at_the_count_after_a_full_page(
    simulator: SimulatorFactory,
) -> None:
    sim = await start(simulator, phones=400)
    async with client_for(sim) as client:
        pages = await collect(client.iter_phones(page_size=200))
    assert [len(page) for page in pages] == [200, 200]
    assert sim.state.stats()["requests"]["ListCloudPhones"] == 2


async def test_iter_phones_passes_filters(simulator: SimulatorFactory) -> None:
    sim = await start(simulator, phones=300, stopped_phone_rate=0.2)
    everyone = [sim.state.phone(pid) for pid in sim.state.phone_ids()]
    server_id = everyone[40]["server_id"]
    async with client_for(sim) as client:
        on_server = list(flat(await collect(client.iter_phones(server_id=server_id))))
        stopped = list(flat(await collect(client.iter_phones(status=8, page_size=10))))
        named = list(flat(await collect(client.iter_phones(phone_name="phone-00001"))))
        trial = await collect(client.iter_phones(phone_type=1))
    assert {p.phone_id for p in on_server} == {
        p["phone_id"] for p in everyone if p["server_id"] == server_id
    }
    assert {p.server_id for p in on_server} == {server_id}
    expected_stopped = {p["phone_id"] for p in everyone if p["status"] == 8}
    assert len(expected_stopped) > 10, "the status filter should span several pages"
    assert [p.phone_id for p in stopped] == [
        pid for pid in reversed(sim.state.phone_ids()) if pid in expected_stopped
    ]
    assert sorted(p.phone_name for p in named) == [f"phone-{i:06d}" for i in range(10, 20)]
    assert trial == []


# -- error classes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_after_fraction", "retry_after_s"), [(1.0, 1.0), (0.0, None)])
async def test_throttled_submit_carries_retry_after_when_given(
    simulator: SimulatorFactory, retry_after_fraction: float, retry_after_s: float | None
) -> None:
    sim = await start(
        simulator,
        phones=3,
        profile=profile(extra_throttle_rate=1.0, retry_after_fraction=retry_after_fraction),
    )
    async with client_for(sim) as client:
        with pytest.raises(ThrottledError) as caught:
            await client.update_properties(updates(sim.state.phone_ids()[:1]))
        with pytest.raises(ThrottledError):
            await client.show_phone(sim.state.phone_ids()[0])
    error = caught.value
    assert error.retry_after_s == retry_after_s
    assert (error.status, error.error_code, error.operation) == (
        429,
        "APIG.0308",
        "UpdateCloudPhoneProperty",
    )
    assert "throttling threshold" in error.error_msg
    assert error.request_id
    assert "UpdateCloudPhoneProperty" in str(error)
    assert error.request_id in str(error)
    assert sim.state.stats()["jobs"]["created"] == 0
    assert client.calls == {"submit.throttled": 1, "query.throttled": 1}


async def test_throttled_by_the_submit_budget_then_allowed_after_waiting(
    simulator: SimulatorFactory,
) -> None:
    sim = await start(
        simulator, phones=3, submit_rate_per_s=0.5, profile=profile(retry_after_fraction=1.0)
    )
    first, second, third = sim.state.phone_ids()
    async with client_for(sim) as client:
        await client.update_properties(updates([first]))
        with pytest.raises(ThrottledError) as caught:
            await client.update_properties(updates([second]))
        assert caught.value.retry_after_s == 2.0
        await client.show_phone(first)  # queries draw from their own budget
        fake_clock(sim).advance(2.0)
        await client.update_properties(updates([third]))
    assert sim.state.stats()["submissions_per_phone"] == {first: 1, third: 1}
    assert sim.state.stats()["throttled"] == {"total": 1, "submit": 1}
    assert client.calls == {"submit.ok": 2, "submit.throttled": 1, "query.ok": 1}


async def test_html_5xx_is_transient_and_unknown_only_for_posts(
    simulator: SimulatorFactory,
) -> None:
    sim = await start(simulator, phones=3, profile=profile(transient_error_rate=1.0))
    phone_id = sim.state.phone_ids()[0]
    async with client_for(sim) as client:
        with pytest.raises(TransientError) as posted:
            await client.update_properties(updates([phone_id]))
        with pytest.raises(TransientError) as got:
            await client.show_phone(phone_id)
    for error, operation in (
        (posted.value, "UpdateCloudPhoneProperty"),
        (got.value, "ShowCloudPhoneDetail"),
    ):
        assert error.status in (502, 503)
        assert error.error_code == str(error.status)
        assert "Bad Gateway" in error.error_msg or "Unavailable" in error.error_msg
        assert error.request_id, "the gateway's X-Request-Id header is kept"
        assert error.operation == operation
        assert operation in str(error)
        assert error.request_id in str(error)
    assert posted.value.outcome_unknown is True
    assert got.value.outcome_unknown is False
    assert sim.state.stats()["transient_errors"] == 2
    assert sim.state.stats()["jobs"]["created"] == 0
    assert client.calls == {"submit.transient_error": 1, "query.transient_error": 1}


async def test_connection_dropped_after_apply_is_an_unknown_outcome(
    simulator: SimulatorFactory,
) -> None:
    sim = await start(simulator, phones=5, profile=profile(drop_after_apply_rate=1.0))
    phone_ids = sim.state.phone_ids()[:2]
    async with client_for(sim) as client:
        with pytest.raises(TransientError) as caught:
            await client.update_properties(updates(phone_ids, mark=1))
        assert caught.value.outcome_unknown is True
        assert "outcome unknown" in str(caught.value)
        assert "UpdateCloudPhoneProperty" in str(caught.value)
        # the pool recovers: the next call opens a fresh connection
        await client.show_phone(phone_ids[0])
    stats = sim.state.stats()
    assert stats["connections_dropped"] == 1
    assert stats["jobs"]["created"] == 2, "the update was applied although no answer came"
    fake_clock(sim).advance(5.0)
    assert sim.state.properties(phone_ids[1]) == {"mark": 1}
    assert client.calls == {"submit.transient_error": 1, "query.ok": 1}


def oversized_update(phone_id: str) -> PropertyUpdate:
    """An update over the 7800-byte limit, which ``PropertyUpdate.build`` would refuse to make."""
    raw = json.dumps({"sys.prop.big": "x" * 8000})
    return PropertyUpdate(phone_id=phone_id, property=raw, custom_property=None)


@pytest.mark.parametrize(
    ("case", "message"),
    [("oversized", "7800"), ("duplicate", "more than once"), ("too_many", "maximum 2")],
)
async def test_whole_batch_rejection_is_permanent(
    simulator: SimulatorFactory, case: str, message: str
) -> None:
    sim = await start(simulator, phones=5, max_batch=2)
    first, second, third = sim.state.phone_ids()[:3]
    batches = {
        "oversized": [*updates([first]), oversized_update(second)],
        "duplicate": updates([first, first]),
        "too_many": updates([first, second, third]),
    }
    async with client_for(sim) as client:
        with pytest.raises(PermanentError) as caught:
            await client.update_properties(batches[case])
    error = caught.value
    assert error.status == 400
    assert error.error_code.startswith("CPS.")
    assert message in error.error_msg
    assert error.request_id
    assert error.operation == "UpdateCloudPhoneProperty"
    assert "UpdateCloudPhoneProperty" in str(error)
    assert error.request_id in str(error)
    assert error.error_code in str(error)
    assert sim.state.stats()["jobs"]["created"] == 0
    assert client.calls == {"submit.error": 1}


async def test_unknown_phone_detail_is_a_permanent_404(simulator: SimulatorFactory) -> None:
    sim = await start(simulator, phones=2)
    async with client_for(sim) as client:
        with pytest.raises(PermanentError) as caught:
            await client.show_phone(UNKNOWN_PHONE)
    error = caught.value
    assert (error.status, error.error_code, error.operation) == (
        404,
        "CPS.0005",
        "ShowCloudPhoneDetail",
    )
    assert error.error_msg
    assert error.request_id in str(error)
    assert client.calls == {"query.error": 1}


async def test_unknown_job_is_a_permanent_error(simulator: SimulatorFactory) -> None:
    sim = await start(simulator, phones=2)
    async with client_for(sim) as client:
        with pytest.raises(PermanentError) as caught:
            await client.show_job("f" * 32)
    assert (caught.value.status, caught.value.error_code) == (404, "CPS.0011")
    assert "ShowJob" in str(caught.value)


async def test_wrong_static_token_is_an_auth_error(simulator: SimulatorFactory) -> None:
    sim = await start(simulator, phones=2)
    wrong = "wrong-token-value-55aa"
    async with client_for(sim, token=wrong) as client:
        with pytest.raises(AuthError) as caught:
            await client.update_properties(updates(sim.state.phone_ids()[:1]))
        with pytest.raises(AuthError):
            await client.show_phone(sim.state.phone_ids()[0])
        client_repr = repr(client)
    error = caught.value
    assert (error.status, error.error_code) == (401, "APIG.0301")
    assert error.request_id in str(error)
    assert "UpdateCloudPhoneProperty" in str(error)
    for text in (str(error), repr(error), error.error_msg, client_repr):
        assert wrong not in text
        assert TOKEN not in text
    stats = sim.state.stats()
    assert stats["auth_failures"] == 2, "a static token is not resent after a 401"
    assert stats["jobs"]["created"] == 0
    assert client.calls == {"submit.auth_error": 1, "query.auth_error": 1}


async def test_wrong_project_is_a_permanent_404(simulator: SimulatorFactory) -> None:
    sim = await start(simulator, phones=2)
    auth = StaticTokenAuth(SecretStr(TOKEN))
    async with CphClient(endpoint=sim.url, project_id="other", auth=auth) as client:
        with pytest.raises(PermanentError) as caught:
            await client.show_phone(sim.state.phone_ids()[0])
    assert caught.value.status == 404


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but never listens: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_connection_refused_is_transient_and_never_sent(
    simulator: SimulatorFactory, refused_port: int
) -> None:
    sim = await start(simulator, phones=1)
    async with client_for(sim, endpoint=f"http://127.0.0.1:{refused_port}") as client:
        with pytest.raises(TransientError) as posted:
            await client.update_properties(updates(sim.state.phone_ids()))
        with pytest.raises(TransientError) as got:
            await client.show_job("j1")
    for error in (posted.value, got.value):
        assert error.outcome_unknown is False
        assert error.status is None
        assert error.__cause__ is not None
        assert "outcome unknown" not in str(error)
    assert "UpdateCloudPhoneProperty" in str(posted.value)
    assert "ShowJob" in str(got.value)
    assert client.calls == {"submit.transient_error": 1, "query.transient_error": 1}


async def test_every_error_is_an_api_error_with_a_clean_message(
    simulator: SimulatorFactory,
) -> None:
    """A quick sweep: whatever goes wrong, callers can catch ApiError and log it without secrets."""
    sim = await start(simulator, phones=2, profile=profile(transient_error_rate=1.0))
    async with client_for(sim) as client:
        with pytest.raises(ApiError) as caught:
            await client.list_jobs(["r1"])
        assert_no_secret(str(caught.value), repr(caught.value), repr(client))
    assert isinstance(caught.value, TransientError)
