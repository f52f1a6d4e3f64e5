"""The simulator's gateway and weather: authentication, token buckets and every fault of the profiles."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from yarl import URL

from orchestrator.clock import FakeClock
from orchestrator.cph.signer import (
    CanonicalParts,
    authorization_header,
    canonical_query_string,
    format_sdk_date,
)
from orchestrator.simulator import PROFILES, SimulatorServer, apply_overrides
from orchestrator.simulator.wire import BUSY_ERROR_CODE

StartSimulator = Callable[..., Awaitable[SimulatorServer]]
REPO_ROOT = Path(__file__).resolve().parents[1]
AK, SK, TOKEN = "AKSIM", "SKSIM-secret", "static-token-value"
IAM_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
THROTTLE_MSG = re.compile(
    r"The throttling threshold has been reached: policy user over ratelimit,limit:\d+,time:1 second"
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def profile(**knobs: Any) -> Any:
    """The ``none`` profile with some knobs changed (validated)."""
    return apply_overrides(PROFILES["none"], knobs)


def cph(sim: SimulatorServer, path: str) -> str:
    return f"{sim.url}/v1/{sim.config.project_id}/cloud-phone/{path}"


async def call(
    http: aiohttp.ClientSession, method: str, url: str | URL, **kwargs: Any
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.json(), response


def update_body(phone_ids: list[str]) -> dict[str, Any]:
    return {"phones": [{"phone_id": pid, "property": '{"ro.install.auto":1}'} for pid in phone_ids]}


async def submit(
    http: aiohttp.ClientSession, sim: SimulatorServer, phone_ids: list[str]
) -> tuple[int, dict[str, Any]]:
    status, body, _ = await call(
        http, "POST", cph(sim, "phones/batch-update-property"), json=update_body(phone_ids)
    )
    return status, body


async def wait_for_sleepers(clock: FakeClock, count: int) -> None:
    """Let the loop run until ``count`` tasks sleep on the fake clock (no real time passes)."""
    for _ in range(100_000):
        if clock.sleepers >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError("nothing went to sleep on the fake clock")


# -- authentication ------------------------------------------------------------------------------


async def test_static_token(simulator: StartSimulator, http: aiohttp.ClientSession) -> None:
    sim = await simulator(phones=1, token=SecretStr(TOKEN))
    status, _, _ = await call(http, "GET", cph(sim, "phones"), headers={"X-Auth-Token": TOKEN})
    assert status == 200
    for headers in ({}, {"X-Auth-Token": "wrong"}):
        status, body, _ = await call(http, "GET", cph(sim, "phones"), headers=headers)
        assert (status, body["error_code"]) == (401, "APIG.0301")
    assert sim.state.stats()["auth_failures"] == 2


def iam_body(user: str, password: str, domain: str) -> dict[str, Any]:
    identity = {
        "methods": ["password"],
        "password": {"user": {"name": user, "password": password, "domain": {"name": domain}}},
    }
    return {"auth": {"identity": identity, "scope": {"project": {"name": "cn-north-4"}}}}


async def test_iam_token_is_issued_and_expires(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(
        phones=1, iam_users={"alice": ("pw-alice", "acme")}, token_ttl_s=3600.0, clock=clock
    )
    async with http.post(
        f"{sim.url}/v3/auth/tokens", json=iam_body("alice", "pw-alice", "acme")
    ) as response:
        assert response.status == 201
        token = response.headers["X-Subject-Token"]
        body = await response.json()
        text = await response.text()
    assert token not in text
    assert "pw-alice" not in text
    assert IAM_TIME.fullmatch(body["token"]["expires_at"])
    assert IAM_TIME.fullmatch(body["token"]["issued_at"])
    assert body["token"]["expires_at"].startswith("2024-01-01T01:00:00")
    status, _, _ = await call(http, "GET", cph(sim, "phones"), headers={"X-Auth-Token": token})
    assert status == 200
    clock.advance(3600.0)
    status, body, _ = await call(http, "GET", cph(sim, "phones"), headers={"X-Auth-Token": token})
    assert (status, body["error_code"], body["error_msg"]) == (
        401,
        "APIG.0301",
        "The token must be updated.",
    )


@pytest.mark.parametrize(
    ("user", "password", "domain", "status"),
    [
        ("alice", "wrong", "acme", 401),
        ("bob", "pw-alice", "acme", 401),
        ("alice", "pw-alice", "x", 401),
    ],
)
async def test_iam_rejects_bad_credentials(
    simulator: StartSimulator,
    http: aiohttp.ClientSession,
    user: str,
    password: str,
    domain: str,
    status: int,
) -> None:
    sim = await simulator(phones=1, iam_users={"alice": ("pw-alice", "acme")})
    async with http.post(
        f"{sim.url}/v3/auth/tokens", json=iam_body(user, password, domain)
    ) as response:
        assert response.status == status
        assert "X-Subject-Token" not in response.headers
        body = await response.json()
    assert body["error"]["code"] == 401
    assert body["error"]["message"]


async def test_iam_rejects_a_malformed_body(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=1, iam_users={"alice": ("pw-alice", "acme")})
    async with http.post(f"{sim.url}/v3/auth/tokens", json={"auth": {}}) as response:
        assert response.status == 400


async def test_open_simulator_accepts_everything(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=1)
    async with http.post(f"{sim.url}/v3/auth/tokens", json=iam_body("any", "one", "d")) as response:
        assert response.status == 201
    status, _, _ = await call(http, "GET", cph(sim, "phones"), headers={"X-Auth-Token": "whatever"})
    assert status == 200


def signed(
    sim: SimulatorServer,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    body: bytes,
    *,
    sdk_date: str,
) -> tuple[URL, dict[str, str]]:
    """URL and headers of a request signed like the SDK signs it."""
    headers = {
        "Content-Type": "application/json",
        "Host": f"127.0.0.1:{sim.port}",
        "X-Project-Id": sim.config.project_id,
        "X-Sdk-Date": sdk_date,
    }
    headers["Authorization"] = authorization_header(
        AK, SK, CanonicalParts(method, path, query, headers, body)
    )
    query_string = canonical_query_string(query)
    url = URL(f"{sim.url}{path}{'?' + query_string if query_string else ''}", encoded=True)
    return url, headers


async def test_aksk_signed_requests(simulator: StartSimulator, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    sim = await simulator(phones=3, ak=AK, sk=SecretStr(SK), clock=clock)
    now = format_sdk_date(clock.time())
    path = f"/v1/{sim.config.project_id}/cloud-phone/phones"
    query = [("limit", "2"), ("phone_name", "phone 0+,x")]
    url, headers = signed(sim, "GET", path, query, b"", sdk_date=now)
    status, _, _ = await call(http, "GET", url, headers=headers)
    assert status == 200

    body = json.dumps(update_body(sim.state.phone_ids()[:1])).encode()
    post_path = f"/v1/{sim.config.project_id}/cloud-phone/phones/batch-update-property"
    url, headers = signed(sim, "POST", post_path, [], body, sdk_date=now)
    status, answer, _ = await call(http, "POST", url, headers=headers, data=body)
    assert status == 200
    assert answer["jobs"][0]["error_code"] is None

    tampered = body.replace(b"auto", b"autx")
    status, answer, _ = await call(http, "POST", url, headers=headers, data=tampered)
    assert (status, answer["error_code"]) == (401, "APIG.0303")
    assert SK not in json.dumps(answer)
    assert sim.state.stats()["jobs"]["created"] == 1


async def test_aksk_rejects_a_skewed_date_and_an_unknown_key(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(phones=1, ak=AK, sk=SecretStr(SK), clock=clock)
    path = f"/v1/{sim.config.project_id}/cloud-phone/phones"
    skewed = format_sdk_date(clock.time() - 16 * 60)
    url, headers = signed(sim, "GET", path, [], b"", sdk_date=skewed)
    status, body, _ = await call(http, "GET", url, headers=headers)
    assert (status, body["error_code"]) == (401, "APIG.0303")
    assert "15 minutes" in body["error_msg"]

    url, headers = signed(
        sim, "GET", path, [], b"", sdk_date=format_sdk_date(clock.time() + 14 * 60)
    )
    status, _, _ = await call(http, "GET", url, headers=headers)
    assert status == 200
    headers["Authorization"] = headers["Authorization"].replace(f"Access={AK}", "Access=OTHER")
    status, body, _ = await call(http, "GET", url, headers=headers)
    assert (status, body["error_code"]) == (401, "APIG.0301")


# -- throttling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after_fraction", [1.0, 0.0])
async def test_token_buckets_answer_429(
    simulator: StartSimulator, http: aiohttp.ClientSession, retry_after_fraction: float
) -> None:
    clock = FakeClock()
    sim = await simulator(
        phones=5,
        submit_rate_per_s=2.0,
        query_rate_per_s=1.0,
        profile=profile(retry_after_fraction=retry_after_fraction),
        clock=clock,
    )
    ids = sim.state.phone_ids()
    assert [(await submit(http, sim, [pid]))[0] for pid in ids[:3]] == [200, 200, 429]
    status, body, response = await call(
        http, "POST", cph(sim, "phones/batch-update-property"), json=update_body(ids[3:4])
    )
    assert status == 429
    assert body["error_code"] == "APIG.0308"
    assert THROTTLE_MSG.fullmatch(body["error_msg"])
    assert "limit:2," in body["error_msg"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert response.headers.get("Retry-After") == ("1" if retry_after_fraction else None)
    assert (await call(http, "GET", cph(sim, "phones")))[0] == 200
    assert (await call(http, "GET", cph(sim, "phones")))[0] == 429
    clock.advance(0.5)
    assert (await submit(http, sim, ids[3:4]))[0] == 200
    stats = sim.state.stats()
    assert stats["throttled"] == {"total": 3, "submit": 2, "query": 1}
    assert stats["jobs"]["created"] == 3
    assert ids[2] not in stats["submissions_per_phone"]


async def test_extra_throttling_regardless_of_buckets(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=1, profile=profile(extra_throttle_rate=1.0))
    status, body, _ = await call(http, "GET", cph(sim, "phones"))
    assert (status, body["error_code"]) == (429, "APIG.0308")


# -- faults --------------------------------------------------------------------------------------


async def test_transient_5xx_is_html_and_has_no_effect(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=2, profile=profile(transient_error_rate=1.0))
    async with http.post(
        cph(sim, "phones/batch-update-property"), json=update_body(sim.state.phone_ids())
    ) as response:
        assert response.status in (502, 503)
        assert response.content_type == "text/html"
        assert "<html>" in await response.text()
    stats = sim.state.stats()
    assert stats["jobs"]["created"] == 0
    assert stats["transient_errors"] == 1


async def test_dropped_connection_after_the_update_was_applied(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(phones=2, profile=profile(drop_after_apply_rate=1.0), clock=clock)
    phone_id = sim.state.phone_ids()[0]
    with pytest.raises(aiohttp.ClientConnectionError):
        await submit(http, sim, [phone_id])
    assert sim.state.stats()["connections_dropped"] == 1
    assert sim.state.phone(phone_id)["running_jobs"] == 1
    clock.advance(3.0)
    assert sim.state.properties(phone_id) == {"ro.install.auto": 1}
    assert sim.state.stats()["jobs"]["succeeded"] == 1


async def test_late_phones_appear_after_some_submissions(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=1, profile=profile(late_phone_rate=1.0, late_phone_submissions=2))
    phone_id = sim.state.phone_ids()[0]
    codes = [(await submit(http, sim, [phone_id]))[1]["jobs"][0]["error_code"] for _ in range(3)]
    assert codes == ["CPS.0005", "CPS.0005", None]


async def test_jobs_fail_transiently(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(phones=1, profile=profile(job_fail_rate=1.0), clock=clock)
    phone_id = sim.state.phone_ids()[0]
    _, answer = await submit(http, sim, [phone_id])
    clock.advance(3.0)
    _, job, _ = await call(http, "GET", cph(sim, f"jobs/{answer['jobs'][0]['job_id']}"))
    assert (job["status"], job["error_code"]) == (-1, "CPS.0003")
    assert job["error_msg"] == "service internal error, try again later"
    assert sim.state.phone(phone_id)["properties"] == {}
    assert sim.state.stats()["jobs"]["failed"] == 1


async def test_invalid_property_phones_fail_their_jobs(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(phones=1, profile=profile(invalid_property_phone_rate=1.0), clock=clock)
    _, answer = await submit(http, sim, sim.state.phone_ids())
    clock.advance(3.0)
    _, body, _ = await call(
        http, "GET", cph(sim, "jobs"), params={"request_id": answer["request_id"]}
    )
    assert (body["jobs"][0]["status"], body["jobs"][0]["error_code"]) == (-1, "CPS.0004")


async def test_missing_phones_never_exist(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=3, profile=profile(missing_phone_rate=1.0))
    ids = sim.state.phone_ids()
    assert sim.state.missing_phone_ids() == ids
    _, answer = await submit(http, sim, ids)
    assert {job["error_code"] for job in answer["jobs"]} == {"CPS.0005"}
    _, listing, _ = await call(http, "GET", cph(sim, "phones"))
    assert listing["count"] == 0
    assert listing["phones"] == []
    status, _, _ = await call(http, "GET", cph(sim, f"phones/{ids[0]}"))
    assert status == 404


async def test_busy_phones_refuse_a_second_job(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(phones=1, profile=profile(busy_rate=1.0), clock=clock)
    phone_ids = sim.state.phone_ids()
    assert (await submit(http, sim, phone_ids))[1]["jobs"][0]["error_code"] is None
    assert (await submit(http, sim, phone_ids))[1]["jobs"][0]["error_code"] == BUSY_ERROR_CODE
    clock.advance(3.0)
    assert (await submit(http, sim, phone_ids))[1]["jobs"][0]["error_code"] is None


async def test_latency_spikes_wait_on_the_clock_and_reveal_concurrent_phones(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    spiky = profile(latency_spike_rate=1.0, latency_spike="fixed:3")
    sim = await simulator(phones=2, profile=spiky, clock=clock)
    phone_id = sim.state.phone_ids()[0]
    requests = [asyncio.create_task(submit(http, sim, [phone_id])) for _ in range(2)]
    await wait_for_sleepers(clock, 2)
    assert not any(task.done() for task in requests)
    clock.advance(3.0)
    answers = await asyncio.gather(*requests)
    assert [status for status, _ in answers] == [200, 200]
    stats = sim.state.stats()
    assert stats["latency_spikes"] == 2
    assert stats["max_concurrent_requests"] == 2
    assert stats["max_concurrent_requests_per_phone"] == 2
    assert stats["protocol_violations"][0]["kind"] == "phone_in_concurrent_requests"


async def test_concurrent_requests_on_distinct_phones_are_fine(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(phones=2, profile=profile(latency_spike_rate=1.0), clock=clock)
    requests = [asyncio.create_task(submit(http, sim, [pid])) for pid in sim.state.phone_ids()]
    await wait_for_sleepers(clock, 2)
    clock.advance(3.0)
    await asyncio.gather(*requests)
    stats = sim.state.stats()
    assert (stats["max_concurrent_requests"], stats["max_concurrent_requests_per_phone"]) == (2, 1)
    assert stats["protocol_violations"] == []


async def _weather(http: aiohttp.ClientSession, sim: SimulatorServer) -> list[tuple[int, int]]:
    """Submit the fleet in batches of 5; per batch, the HTTP status (0 if dropped) and CPS.0005 count."""
    ids = sim.state.phone_ids()
    seen = []
    for start in range(0, len(ids), 5):
        body = update_body(ids[start : start + 5])
        try:
            async with http.post(cph(sim, "phones/batch-update-property"), json=body) as response:
                seen.append((response.status, (await response.text()).count("CPS.0005")))
        except aiohttp.ClientConnectionError:
            seen.append((0, 0))
    return seen


@pytest.mark.parametrize("name", ["flaky", "hostile"])
async def test_named_profiles_misbehave_deterministically(
    simulator: StartSimulator, http: aiohttp.ClientSession, name: str
) -> None:
    no_spikes = apply_overrides(PROFILES[name], {"latency_spike_rate": 0.0})
    outcomes = []
    for _ in range(2):
        sim = await simulator(phones=400, seed=11, profile=no_spikes)
        outcomes.append(await _weather(http, sim))
    assert outcomes[0] == outcomes[1]
    assert any(count for _, count in outcomes[0])
    assert {status for status, _ in outcomes[0]} - {200}


async def test_run_forever_serves_until_sigterm(tmp_path: Path) -> None:
    """The blocking runner behind ``cph-orchestrator simulator``: one line on start, clean exit on SIGTERM."""
    script = (
        "from orchestrator.simulator import SimulatorConfig, run_forever\n"
        "run_forever(SimulatorConfig(phones=5, profile='flaky'), '127.0.0.1', 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, env=env, cwd=tmp_path
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
    match = re.fullmatch(
        r"simulator listening on (http://127\.0\.0\.1:\d+) \(5 phones, profile flaky\)\n", line
    )
    assert match, line
    async with aiohttp.ClientSession() as http, http.get(f"{match[1]}/_sim/stats") as response:
        assert (await response.json())["phones"] == 5
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=20) == 0
