"""The simulator's CPH endpoints over real HTTP: answer shapes, paging, validation, jobs, stats."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from orchestrator.clock import FakeClock
from orchestrator.simulator import PROFILES, SimulatorServer, apply_overrides
from orchestrator.simulator.validation import MAX_PROPERTY_BYTES

StartSimulator = Callable[..., Awaitable[SimulatorServer]]
HEX32 = re.compile(r"[0-9a-f]{32}")
WIRE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
FIXED_2S = apply_overrides(PROFILES["none"], {"job_duration": "fixed:2"})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def cph(sim: SimulatorServer, path: str) -> str:
    return f"{sim.url}/v1/{sim.config.project_id}/cloud-phone/{path}"


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, **kwargs) as response:
        body = await response.json()
        assert response.headers["X-Request-Id"] == body.get(
            "request_id", response.headers["X-Request-Id"]
        )
        return response.status, body


def update_body(phone_ids: list[str], props: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = json.dumps(props if props is not None else {"ro.install.auto": 1})
    return {"phones": [{"phone_id": pid, "property": raw} for pid in phone_ids]}


async def submit(
    http: aiohttp.ClientSession, sim: SimulatorServer, phone_ids: list[str], **props: Any
) -> dict[str, Any]:
    status, body = await call(
        http,
        "POST",
        cph(sim, "phones/batch-update-property"),
        json=update_body(phone_ids, props or None),
    )
    assert status == 200, body
    return body


async def test_update_property_runs_a_job_then_applies_it(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(phones=10, profile=FIXED_2S, clock=clock)
    phone_ids = sim.state.phone_ids()[:3]
    body = await submit(http, sim, phone_ids, **{"persist.sys.locale": "en-US"})
    assert HEX32.fullmatch(body["request_id"])
    assert [job["phone_id"] for job in body["jobs"]] == phone_ids
    for job in body["jobs"]:
        assert set(job) == {"phone_id", "job_id", "error_code", "error_msg"}
        assert HEX32.fullmatch(job["job_id"])
        assert job["error_code"] is None

    job_id = body["jobs"][0]["job_id"]
    status, shown = await call(http, "GET", cph(sim, f"jobs/{job_id}"))
    assert status == 200
    assert shown["status"] == 1
    assert shown["error_code"] is None
    assert shown["end_time"] is None
    assert sim.state.phone(phone_ids[0])["properties"] == {}

    clock.advance(2.0)
    status, shown = await call(http, "GET", cph(sim, f"jobs/{job_id}"))
    assert shown["status"] == 2
    assert WIRE_TIME.fullmatch(shown["begin_time"])
    assert WIRE_TIME.fullmatch(shown["end_time"])
    assert shown["phone_id"] == phone_ids[0]
    assert shown["server_id"] == sim.state.phone(phone_ids[0])["server_id"]
    assert set(shown) == {
        "request_id", "job_id", "phone_id", "server_id", "begin_time", "end_time",
        "status", "error_code", "error_msg", "execute_msg",
    }  # fmt: skip
    stats = sim.state.stats()
    assert stats["jobs"] == {"created": 3, "succeeded": 3, "failed": 0, "running": 0}
    assert stats["properties_per_phone"] == {
        pid: {"persist.sys.locale": "en-US"} for pid in phone_ids
    }


async def test_show_job_of_an_unknown_job_is_404_and_of_a_malformed_id_400(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    """A job the account never held (or that vanished) is CPS.0011 with 404, as the docs list it;
    an ID that cannot be a job's is an invalid parameter."""
    sim = await simulator(phones=1)
    status, body = await call(http, "GET", cph(sim, f"jobs/{'f' * 32}"))
    assert (status, body["error_code"]) == (404, "CPS.0011")
    status, body = await call(http, "GET", cph(sim, "jobs/not-a-job-id"))
    assert (status, body["error_code"]) == (400, "CPS.0004")


async def test_properties_merge_into_the_phone_detail(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await simulator(phones=3, profile=FIXED_2S, clock=clock)
    phone_id = sim.state.phone_ids()[0]
    await submit(http, sim, [phone_id], a=1)
    clock.advance(2.0)
    body = {
        "phones": [{"phone_id": phone_id, "property": '{"b":"x"}', "custom_property": {"k": "v"}}]
    }
    status, _ = await call(http, "POST", cph(sim, "phones/batch-update-property"), json=body)
    assert status == 200
    clock.advance(2.0)
    status, detail = await call(http, "GET", cph(sim, f"phones/{phone_id}"))
    assert status == 200
    assert json.loads(detail["property"]) == {"a": 1, "b": "x"}
    assert detail["custom_property"] == {"k": "v"}
    assert detail["phone_data_volume"]["volume_size"] > 0
    assert detail["access_infos"][0]["listen_port"] > 0
    assert detail["phone_name"] == "phone-000000"
    assert WIRE_TIME.fullmatch(detail["update_time"])


async def test_list_jobs_by_request_ids_with_paging(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=10, profile=FIXED_2S)
    ids = sim.state.phone_ids()
    first = await submit(http, sim, ids[:3])
    second = await submit(http, sim, ids[3:5])
    query = {"request_ids": f"{first['request_id']},{second['request_id']}", "request_id": "nope"}
    status, body = await call(http, "GET", cph(sim, "jobs"), params=query)
    assert status == 200
    assert [job["phone_id"] for job in body["jobs"]] == ids[:5]
    assert "count" not in body
    job = body["jobs"][0]
    assert job["status"] == 1
    assert job["error_code"] == ""
    assert job["error_msg"] == ""
    assert set(job) >= {"job_id", "phone_id", "server_id", "begin_time", "end_time", "status"}

    status, page = await call(
        http, "GET", cph(sim, "jobs"), params={**query, "offset": 1, "limit": 2}
    )
    assert [job["phone_id"] for job in page["jobs"]] == ids[1:3]
    status, only = await call(
        http, "GET", cph(sim, "jobs"), params={"request_id": second["request_id"]}
    )
    assert [job["phone_id"] for job in only["jobs"]] == ids[3:5]


async def test_list_jobs_can_send_count(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=5, list_jobs_count=True)
    request_id = (await submit(http, sim, sim.state.phone_ids()))["request_id"]
    _, body = await call(
        http, "GET", cph(sim, "jobs"), params={"request_id": request_id, "limit": 2}
    )
    assert body["count"] == 5
    assert len(body["jobs"]) == 2


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"request_id": "r", "limit": "0"}, "CPS.0002"),
        ({"request_id": "r", "limit": "101"}, "CPS.0002"),
        ({"request_id": "r", "offset": "-1"}, "CPS.0002"),
        ({"request_id": "r", "limit": "ten"}, "CPS.0002"),
        ({}, "CPS.0004"),
        ({"request_ids": ",".join(f"r{i}" for i in range(21))}, "CPS.0004"),
    ],
)
async def test_list_jobs_rejects_bad_queries(
    simulator: StartSimulator, http: aiohttp.ClientSession, query: dict[str, str], code: str
) -> None:
    sim = await simulator(phones=1)
    status, body = await call(http, "GET", cph(sim, "jobs"), params=query)
    assert status == 400
    assert body["error_code"] == code
    assert set(body) == {"request_id", "error_code", "error_msg"}
    kinds = {v["kind"] for v in sim.state.stats()["protocol_violations"]}
    assert kinds == {"bad_paging" if code == "CPS.0002" else "bad_query"}


async def test_list_phones_pages_newest_first(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=45)
    status, everything = await call(http, "GET", cph(sim, "phones"))
    assert status == 200
    assert everything["count"] == 45
    assert len(everything["phones"]) == 45
    times = [phone["create_time"] for phone in everything["phones"]]
    assert times == sorted(times, reverse=True)
    assert everything["phones"][0]["phone_name"] == "phone-000044"
    pages = []
    for offset in range(0, 45, 20):
        _, page = await call(
            http, "GET", cph(sim, "phones"), params={"offset": offset, "limit": 20}
        )
        assert page["count"] == 45
        pages.extend(page["phones"])
    assert pages == everything["phones"]
    phone = everything["phones"][0]
    assert isinstance(phone["vnc_enable"], str)
    assert isinstance(phone["status"], int)
    assert WIRE_TIME.fullmatch(phone["create_time"])


async def test_list_phones_filters(simulator: StartSimulator, http: aiohttp.ClientSession) -> None:
    sim = await simulator(phones=120, stopped_phone_rate=0.2, seed=3)
    _, named = await call(http, "GET", cph(sim, "phones"), params={"phone_name": "phone-00001"})
    assert sorted(p["phone_name"] for p in named["phones"]) == [
        f"phone-{i:06d}" for i in range(10, 20)
    ]
    assert named["count"] == 10
    server_id = sim.state.phone(sim.state.phone_ids()[0])["server_id"]
    _, on_server = await call(http, "GET", cph(sim, "phones"), params={"server_id": server_id})
    assert 30 <= on_server["count"] <= 60
    assert {p["server_id"] for p in on_server["phones"]} == {server_id}
    _, stopped = await call(http, "GET", cph(sim, "phones"), params={"status": 8, "limit": 200})
    expected = [pid for pid in sim.state.phone_ids() if sim.state.phone(pid)["status"] == 8]
    assert stopped["count"] == len(expected) > 0
    assert sorted(p["phone_id"] for p in stopped["phones"]) == sorted(expected)
    _, trial = await call(http, "GET", cph(sim, "phones"), params={"type": 1})
    assert trial["count"] == 0


@pytest.mark.parametrize(
    ("query", "code"),
    [({"status": "5"}, "CPS.0010"), ({"status": "x"}, "CPS.0010"), ({"limit": "201"}, "CPS.0002")],
)
async def test_list_phones_rejects_bad_queries(
    simulator: StartSimulator, http: aiohttp.ClientSession, query: dict[str, str], code: str
) -> None:
    sim = await simulator(phones=1)
    status, body = await call(http, "GET", cph(sim, "phones"), params=query)
    assert (status, body["error_code"]) == (400, code)


async def test_show_phone_detail_of_unknown_phones(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=2)
    status, body = await call(http, "GET", cph(sim, f"phones/{'0' * 32}"))
    assert (status, body["error_code"]) == (404, "CPS.0005")
    status, body = await call(http, "GET", cph(sim, "phones/not-a-phone"))
    assert (status, body["error_code"]) == (400, "CPS.0004")


def property_of_size(size_bytes: int) -> str:
    """A JSON-object string of exactly ``size_bytes`` bytes."""
    return '{"k":"' + "x" * (size_bytes - len('{"k":""}')) + '"}'


def _oversized(phone_id: str) -> dict[str, Any]:
    return {
        "phones": [{"phone_id": phone_id, "property": property_of_size(MAX_PROPERTY_BYTES + 1)}]
    }


def _custom_oversized(phone_id: str) -> dict[str, Any]:
    custom = {"k": "x" * (MAX_PROPERTY_BYTES - len('{"k":""}') - 1)}
    return {"phones": [{"phone_id": phone_id, "property": "{}", "custom_property": custom}]}


WHOLE_REQUEST_ERRORS: dict[str, tuple[Callable[[str], dict[str, Any]], str, str]] = {
    "empty": (lambda pid: {"phones": []}, "CPS.0009", "empty_batch"),
    "no_list": (lambda pid: {"phone": []}, "CPS.0004", "malformed_request"),
    "too_large": (
        lambda pid: update_body([pid, "a1", "a2", "a3"]),
        "CPS.0024",
        "batch_too_large",
    ),
    "property_object": (
        lambda pid: {"phones": [{"phone_id": pid, "property": {"a": 1}}]},
        "CPS.0004",
        "invalid_property",
    ),
    "property_not_json": (
        lambda pid: {"phones": [{"phone_id": pid, "property": "{a:1"}]},
        "CPS.0004",
        "invalid_property",
    ),
    "property_array": (
        lambda pid: {"phones": [{"phone_id": pid, "property": "[1]"}]},
        "CPS.0004",
        "invalid_property",
    ),
    "property_missing": (
        lambda pid: {"phones": [{"phone_id": pid}]},
        "CPS.0004",
        "invalid_property",
    ),
    "custom_not_strings": (
        lambda pid: {"phones": [{"phone_id": pid, "property": "{}", "custom_property": {"a": 1}}]},
        "CPS.0004",
        "invalid_property",
    ),
    "oversized": (_oversized, "CPS.0004", "invalid_property"),
    "custom_oversized": (_custom_oversized, "CPS.0004", "invalid_property"),
    "duplicates": (lambda pid: update_body([pid, pid]), "CPS.0004", "duplicate_phone_in_request"),
}


@pytest.mark.parametrize("case", sorted(WHOLE_REQUEST_ERRORS))
async def test_whole_request_validation(
    simulator: StartSimulator, http: aiohttp.ClientSession, case: str
) -> None:
    make_body, code, kind = WHOLE_REQUEST_ERRORS[case]
    sim = await simulator(phones=3, max_batch=3)
    phone_id = sim.state.phone_ids()[0]
    status, body = await call(
        http, "POST", cph(sim, "phones/batch-update-property"), json=make_body(phone_id)
    )
    assert (status, body["error_code"]) == (400, code), body
    stats = sim.state.stats()
    assert stats["jobs"]["created"] == 0
    assert [v["kind"] for v in stats["protocol_violations"]] == [kind]


async def test_invalid_json_body_is_a_whole_request_error(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=1)
    url = cph(sim, "phones/batch-update-property")
    status, body = await call(
        http, "POST", url, data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert (status, body["error_code"]) == (400, "CPS.0004")


async def test_property_at_the_size_limit_is_accepted(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=1)
    phone_id = sim.state.phone_ids()[0]
    body = {"phones": [{"phone_id": phone_id, "property": property_of_size(MAX_PROPERTY_BYTES)}]}
    assert len(body["phones"][0]["property"].encode()) == MAX_PROPERTY_BYTES
    status, _ = await call(http, "POST", cph(sim, "phones/batch-update-property"), json=body)
    assert status == 200


async def test_per_item_errors_in_a_200_answer(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=2)
    good = sim.state.phone_ids()[0]
    body = await submit(http, sim, [good, "bad-id!", "f" * 33, "0" * 32])
    jobs = body["jobs"]
    assert jobs[0]["error_code"] is None
    assert HEX32.fullmatch(jobs[0]["job_id"])
    assert jobs[1] == {
        "phone_id": "bad-id!",
        "error_code": "CPS.0004",
        "error_msg": "Parameter: phone_id is invalid.",
    }
    assert jobs[2]["error_code"] == "CPS.0004"
    assert jobs[3]["error_code"] == "CPS.0005"
    assert "job_id" not in jobs[3]
    assert sim.state.stats()["protocol_violations"] == []


@pytest.mark.parametrize(("style", "value"), [("null", None), ("empty", "")])
async def test_failed_items_can_carry_an_empty_job_id(
    simulator: StartSimulator, http: aiohttp.ClientSession, style: str, value: str | None
) -> None:
    sim = await simulator(phones=1, failed_item_job_id=style)
    body = await submit(http, sim, ["0" * 32])
    assert body["jobs"][0]["job_id"] == value


async def test_restart_sets_restarting_then_running(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    profile = apply_overrides(PROFILES["none"], ["restart_duration=fixed:5"])
    sim = await simulator(phones=4, profile=profile, clock=clock, stopped_phone_rate=1.0)
    phone_id = sim.state.phone_ids()[0]
    assert sim.state.phone(phone_id)["status"] == 8
    body = {
        "image_id": "img",
        "phones": [{"phone_id": phone_id, "property": '{"com.cph.mainkeys":1}'}],
    }
    status, answer = await call(http, "POST", cph(sim, "phones/batch-restart"), json=body)
    assert status == 200
    assert answer["jobs"][0]["error_code"] is None
    _, detail = await call(http, "GET", cph(sim, f"phones/{phone_id}"))
    assert detail["status"] == 4
    clock.advance(5.0)
    _, detail = await call(http, "GET", cph(sim, f"phones/{phone_id}"))
    assert detail["status"] == 2
    assert json.loads(detail["property"]) == {"com.cph.mainkeys": 1}
    stats = sim.state.stats()
    assert stats["restarts_per_phone"] == {phone_id: 1}
    assert stats["requests"]["RestartCloudPhone"] == 1


async def test_restart_without_property_is_accepted(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=1)
    body = {"phones": [{"phone_id": sim.state.phone_ids()[0]}]}
    status, answer = await call(http, "POST", cph(sim, "phones/batch-restart"), json=body)
    assert status == 200
    assert answer["jobs"][0]["error_code"] is None


async def test_wrong_project_and_unknown_routes_are_404(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=1)
    status, body = await call(http, "GET", f"{sim.url}/v1/other/cloud-phone/phones")
    assert status == 404
    assert body["error_code"] == "APIG.0101"
    status, body = await call(http, "GET", f"{sim.url}/v1/proj123/nothing")
    assert status == 404
    assert set(body) == {"request_id", "error_code", "error_msg"}


async def test_stats_endpoint_and_reset(
    simulator: StartSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(phones=3)
    await submit(http, sim, sim.state.phone_ids()[:2])
    async with http.get(f"{sim.url}/_sim/stats") as response:
        stats = await response.json()
    assert stats == sim.state.stats()
    assert stats["requests"] == {"UpdateCloudPhoneProperty": 1}
    assert stats["max_concurrent_requests"] == 1
    assert stats["max_concurrent_requests_per_phone"] == 1
    assert stats["submissions_per_phone"] == dict.fromkeys(sim.state.phone_ids()[:2], 1)
    assert stats["throttled"] == {"total": 0}
    assert stats["connections_dropped"] == 0
    async with http.get(f"{sim.url}/_sim/stats", params={"phones": "0"}) as response:
        small = await response.json()
    assert "submissions_per_phone" not in small
    assert "properties_per_phone" not in small
    async with http.post(f"{sim.url}/_sim/reset-stats") as response:
        assert response.status == 200
    assert sim.state.stats()["requests"] == {}
    assert sim.state.stats()["jobs"]["created"] == 2


async def test_the_fleet_is_deterministic_per_seed(simulator: StartSimulator) -> None:
    first = await simulator(phones=50, seed=7)
    again = await simulator(phones=50, seed=7, profile="hostile")
    other = await simulator(phones=50, seed=8)
    assert first.state.phone_ids() == again.state.phone_ids()
    assert first.state.phone_ids() != other.state.phone_ids()
    assert all(HEX32.fullmatch(pid) for pid in first.state.phone_ids())
    assert len(set(first.state.phone_ids())) == 50
