"""The daemon end to end: its HTTP API in this process, on a real port, against a real simulator.

Every test starts a :class:`Daemon` on ``127.0.0.1:0`` with a fresh journal and talks to it over
HTTP with the bearer token; jobs are short and waits poll the API with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from orchestrator.cli import cli
from orchestrator.daemon.server import Daemon, check_exposure, parse_listen
from orchestrator.engine.states import PhoneState
from orchestrator.errors import ConfigError
from orchestrator.rollouts.journaled import open_store
from orchestrator.settings import CphSettings, DaemonSettings, RolloutSettings, Settings
from orchestrator.simulator import SimulatorServer
from tests.conftest import SimulatorFactory
from tests.e2e_support import fast_profile, start_simulator

CPH_TOKEN = "daemon-e2e-cph-token"
DAEMON_TOKEN = "s3cret-daemon-token"
AUTH = {"Authorization": f"Bearer {DAEMON_TOKEN}"}
DEADLINE_S = 20.0
FAST_POLICY: dict[str, Any] = {
    "batch_size": 10,
    "max_attempts": 8,
    "backoff_base_s": 0.01,
    "backoff_slow_base_s": 0.02,
    "backoff_cap_s": 0.1,
}

StartDaemon = Callable[..., Awaitable[Daemon]]


def _settings(sim: SimulatorServer, *, submit_rate_per_s: float) -> Settings:
    return Settings(
        cph=CphSettings(
            endpoint=sim.url,
            project_id="proj123",
            auth="token",
            auth_token=SecretStr(CPH_TOKEN),
        ),
        rollout=RolloutSettings(
            submit_rate_per_s=submit_rate_per_s,
            query_rate_per_s=200.0,
            first_poll_s=0.05,
            progress_interval_s=0.2,
            stop_grace_s=0.3,
        ),
        daemon=DaemonSettings(token=SecretStr(DAEMON_TOKEN)),
    )


@pytest.fixture
async def sim(simulator: SimulatorFactory) -> SimulatorServer:
    """A simulator with 800 phones and jobs of 0.1-0.3 s, accepting ``CPH_TOKEN``."""
    profile = fast_profile("none", job_duration="uniform:0.1:0.3")
    return await start_simulator(simulator, phones=800, profile=profile, token=SecretStr(CPH_TOKEN))


@pytest.fixture
async def start_daemon(sim: SimulatorServer, tmp_path: Path) -> AsyncIterator[StartDaemon]:
    """Start daemons on one journal (``tmp_path/journal.sqlite``); stops the running ones after."""
    running: list[Daemon] = []

    async def start(*, submit_rate_per_s: float = 200.0) -> Daemon:
        daemon = Daemon(
            settings=_settings(sim, submit_rate_per_s=submit_rate_per_s),
            state_path=tmp_path / "journal.sqlite",
            host="127.0.0.1",
            port=0,
        )
        await daemon.start()
        running.append(daemon)
        return daemon

    yield start
    for daemon in running:
        if daemon.manager is not None and daemon.manager.ready:
            await daemon.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that sends the daemon's token."""
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


def _plan(phone_ids: Sequence[str], *, name: str = "daemon-test", **policy: Any) -> dict[str, Any]:
    return {
        "name": name,
        "fleet": {"phones": list(phone_ids)},
        "properties": {"persist.sys.timezone": "UTC", "sys.prop.writewifissid": "ssid_{index}"},
        "policy": {**FAST_POLICY, **policy},
    }


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any = None, *, status: int = 200
) -> Any:
    async with http.post(url, json=body) as response:
        assert response.status == status, await response.text()
        return await response.json()


async def _submit(daemon: Daemon, http: aiohttp.ClientSession, plan: dict[str, Any]) -> str:
    answer = await _post(http, f"{daemon.url}/v1/rollouts", plan, status=201)
    rollout_id: str = answer["rollout_id"]
    return rollout_id


async def _wait_for(
    daemon: Daemon,
    http: aiohttp.ClientSession,
    rollout_id: str,
    done: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """Poll the rollout's status until ``done`` says so, within :data:`DEADLINE_S`."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status: dict[str, Any] = await _get(http, f"{daemon.url}/v1/rollouts/{rollout_id}")
        if done(status):
            return status
        assert time.monotonic() < deadline, f"timed out; last status: {status}"
        await asyncio.sleep(0.02)


def _ended(status: dict[str, Any]) -> bool:
    return not status["live"] and status["status"] != "running"


def _submissions(sim: SimulatorServer, phone_ids: Sequence[str]) -> int:
    per_phone: dict[str, int] = sim.state.stats()["submissions_per_phone"]
    return sum(per_phone.get(phone_id, 0) for phone_id in phone_ids)


def _assert_applied(sim: SimulatorServer, phone_ids: Sequence[str]) -> None:
    for index, phone_id in enumerate(phone_ids):
        properties = sim.state.properties(phone_id)
        assert properties.get("sys.prop.writewifissid") == f"ssid_{index}", phone_id


# -- the API contract ----------------------------------------------------------------------------


async def test_every_v1_route_needs_the_bearer_token(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon()
    async with aiohttp.ClientSession() as anonymous:
        for method, path in [
            ("GET", "/v1/rollouts"),
            ("POST", "/v1/rollouts"),
            ("GET", "/v1/rollouts/x"),
            ("GET", "/v1/rollouts/x/phones"),
            ("POST", "/v1/rollouts/x/pause"),
            ("POST", "/v1/rollouts/x/cancel"),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": DAEMON_TOKEN}):
                async with anonymous.request(method, daemon.url + path, headers=headers) as answer:
                    assert answer.status == 401, (method, path, headers)
                    assert answer.headers["WWW-Authenticate"] == "Bearer"
        for path in ("/healthz", "/readyz", "/metrics"):
            async with anonymous.get(daemon.url + path) as answer:
                assert answer.status == 200, path


async def test_invalid_requests_answer_400_404_409_413(
    start_daemon: StartDaemon, sim: SimulatorServer, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon()
    url = f"{daemon.url}/v1/rollouts"
    invalid = {"name": "", "fleet": {"phones": ["not a phone id!"]}, "policy": {"batch_size": 0}}
    answer = await _post(http, url, invalid, status=400)
    assert answer["error"] == "invalid plan"
    fields = {problem["field"] for problem in answer["problems"]}
    assert {"name", "policy.batch_size"} <= fields, answer
    file_plan = {**_plan(["abc"]), "fleet": {"file": "/etc/fleet.csv"}}
    answer = await _post(http, url, file_plan, status=400)
    assert any(p["field"] == "fleet.file" for p in answer["problems"]), answer
    await _post(http, url, {**_plan(["abc"]), "id": "bad id!"}, status=400)
    async with http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
    async with http.post(url, json=["a", "list"]) as r:
        assert r.status == 400
    async with http.post(url, data=io.BytesIO(b"x" * (1024 * 1024 + 1))) as r:
        assert r.status == 413

    for path in ("", "/phones"):
        async with http.get(f"{url}/nope{path}") as r:
            assert r.status == 404
            assert "nope" in (await r.json())["error"]
    for action in ("pause", "resume", "cancel"):
        await _post(http, f"{url}/nope/{action}", status=404)

    ids = sim.state.phone_ids()[:5]
    rollout_id = await _submit(daemon, http, {**_plan(ids), "id": "ro-fixed-1"})
    assert rollout_id == "ro-fixed-1"
    await _post(http, url, {**_plan(ids), "id": "ro-fixed-1"}, status=409)
    await _wait_for(daemon, http, rollout_id, _ended)
    await _post(http, f"{url}/{rollout_id}/pause", status=409)


async def test_phones_are_paged_and_filtered_from_the_journal(
    start_daemon: StartDaemon, sim: SimulatorServer, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon()
    ids = sim.state.phone_ids()[:23]
    rollout_id = await _submit(daemon, http, _plan(ids))
    status = await _wait_for(daemon, http, rollout_id, _ended)
    assert status["status"] == "succeeded"
    assert status["counts"] == {
        "total": 23, "succeeded": 23, "failed": 0, "cancelled": 0, "pending": 0,
    }  # fmt: skip
    url = f"{daemon.url}/v1/rollouts/{rollout_id}/phones"
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = await _get(http, f"{url}?limit=10&offset={offset}")
        assert len(page["phones"]) <= 10
        seen.extend(phone["phone_id"] for phone in page["phones"])
        offset = page["next_offset"]
    assert seen == list(ids)
    page = await _get(http, f"{url}?state=succeeded&limit=1000")
    assert len(page["phones"]) == 23
    assert all(phone["state"] == "succeeded" and phone["job_id"] for phone in page["phones"])
    assert (await _get(http, f"{url}?state=failed"))["phones"] == []
    assert (await _get(http, f"{url}?error_code=CPS.0005"))["phones"] == []
    for query in ("state=bogus", "limit=0", "limit=x", "offset=-1"):
        async with http.get(f"{url}?{query}") as r:
            assert r.status == 400, query
    listing = await _get(http, f"{daemon.url}/v1/rollouts")
    assert [row["rollout_id"] for row in listing["rollouts"]] == [rollout_id]


# -- running rollouts ----------------------------------------------------------------------------


async def test_two_rollouts_at_once_both_progress_to_success(
    start_daemon: StartDaemon, sim: SimulatorServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    daemon = await start_daemon(submit_rate_per_s=10.0)
    first_ids, second_ids = sim.state.phone_ids()[:60], sim.state.phone_ids()[60:120]
    first = await _submit(daemon, http, _plan(first_ids, name="first", batch_size=5))
    second = await _submit(daemon, http, _plan(second_ids, name="second", batch_size=5))

    def both_moving(rows: list[dict[str, Any]]) -> bool:
        return all(int(row["counts"]["succeeded"]) > 0 for row in rows)

    deadline = time.monotonic() + DEADLINE_S
    rows = (await _get(http, f"{daemon.url}/v1/rollouts"))["rollouts"]
    while not both_moving(rows):
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.02)
        rows = (await _get(http, f"{daemon.url}/v1/rollouts"))["rollouts"]
    # Both progressed while the other still had work: neither waited for the other to end.
    assert any(row["counts"]["pending"] > 0 for row in rows), rows
    for rollout_id in (first, second):
        status = await _wait_for(daemon, http, rollout_id, _ended)
        assert status["status"] == "succeeded", status
    _assert_applied(sim, first_ids)
    _assert_applied(sim, second_ids)
    # once ended, each rollout's change log is folded into its rows (reads stay the same)
    deadline = time.monotonic() + DEADLINE_S
    while _logged_changes(tmp_path / "journal.sqlite"):
        assert time.monotonic() < deadline, "the ended rollouts' change logs were not folded"
        await asyncio.sleep(0.02)
    phones = await _get(http, f"{daemon.url}/v1/rollouts/{first}/phones?limit=1000")
    assert [p["state"] for p in phones["phones"]] == ["succeeded"] * len(first_ids)


def _logged_changes(state_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(state_path)) as conn:
        return int(conn.execute("SELECT count(*) FROM phone_changes").fetchone()[0])


async def test_pause_stops_submits_and_resume_finishes(
    start_daemon: StartDaemon, sim: SimulatorServer, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(submit_rate_per_s=5.0)
    ids = sim.state.phone_ids()[240:340]
    rollout_id = await _submit(daemon, http, _plan(ids, batch_size=5))
    url = f"{daemon.url}/v1/rollouts/{rollout_id}"
    await _wait_for(daemon, http, rollout_id, lambda s: s["live"] and s["states"]["running"] > 0)
    answer = await _post(http, f"{url}/pause")
    assert answer["paused"] is True

    def drained(status: dict[str, Any]) -> bool:
        states: dict[str, int] = status["states"]
        return states["running"] == 0 and states["submitting"] == 0

    paused = await _wait_for(daemon, http, rollout_id, drained)
    assert paused["counts"]["pending"] > 0, paused
    sent = _submissions(sim, ids)
    # A pause is the absence of submits: let another rollout run to its end meanwhile, so that
    # the daemon demonstrably kept sending, then check the paused one sent nothing.
    other = await _submit(daemon, http, _plan(sim.state.phone_ids()[:20], batch_size=5))
    await _wait_for(daemon, http, other, _ended)
    assert _submissions(sim, ids) == sent
    still = await _get(http, url)
    assert still["counts"] == paused["counts"]

    answer = await _post(http, f"{url}/resume")
    assert answer["paused"] is False
    status = await _wait_for(daemon, http, rollout_id, _ended)
    assert status["status"] == "succeeded"
    _assert_applied(sim, ids)


async def test_cancel_aborts_and_cancels_what_was_not_sent(
    start_daemon: StartDaemon, sim: SimulatorServer, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(submit_rate_per_s=5.0)
    ids = sim.state.phone_ids()[440:540]
    rollout_id = await _submit(daemon, http, _plan(ids, batch_size=5))
    await _wait_for(daemon, http, rollout_id, lambda s: s["live"] and s["states"]["running"] > 0)
    await _post(http, f"{daemon.url}/v1/rollouts/{rollout_id}/cancel")
    status = await _wait_for(daemon, http, rollout_id, _ended)
    assert status["status"] == "aborted"
    assert "cancelled" in status["reason"]
    counts = status["counts"]
    assert counts["pending"] == 0
    assert counts["cancelled"] > 0
    assert counts["succeeded"] + counts["cancelled"] + counts["failed"] == len(ids)


async def test_a_stopped_daemon_resumes_its_rollout_on_restart_and_loses_nothing(
    start_daemon: StartDaemon, sim: SimulatorServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    first = await start_daemon(submit_rate_per_s=5.0)
    ids = sim.state.phone_ids()[640:800]
    rollout_id = await _submit(first, http, _plan(ids, batch_size=5))
    await _wait_for(first, http, rollout_id, lambda s: s["counts"]["succeeded"] > 0)
    await first.stop()  # the SIGTERM path

    store = await open_store(tmp_path / "journal.sqlite")
    try:
        meta = await store.get_rollout(rollout_id)
    finally:
        await store.close()
    assert meta.status == "interrupted"
    assert meta.counts.get(PhoneState.SUBMITTING, 0) == 0
    assert sum(meta.counts.values()) == len(ids)
    assert 0 < meta.counts.get(PhoneState.SUCCEEDED, 0) < len(ids)

    second = await start_daemon(submit_rate_per_s=200.0)
    status = await _wait_for(second, http, rollout_id, _ended)
    assert status["status"] == "succeeded", status
    assert status["counts"]["succeeded"] == len(ids)
    _assert_applied(sim, ids)
    assert status["api_calls"]["submit"] >= len(ids) / 5


# -- metrics -------------------------------------------------------------------------------------


async def test_metrics_parse_and_agree_with_the_journal(
    start_daemon: StartDaemon, sim: SimulatorServer, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon()
    ids = sim.state.phone_ids()[:40]
    rollout_id = await _submit(daemon, http, _plan(ids))
    status = await _wait_for(daemon, http, rollout_id, _ended)
    async with http.get(f"{daemon.url}/metrics") as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = await answer.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    phones = {
        sample.labels["state"]: sample.value
        for sample in families["cph_rollout_phones"].samples
        if sample.labels["rollout_id"] == rollout_id
    }
    assert phones == {state: float(n) for state, n in status["states"].items()}
    assert phones["succeeded"] == len(ids)
    calls = {
        (s.labels["family"], s.labels["outcome"]): s.value
        for s in families["cph_api_calls"].samples
        if s.name == "cph_api_calls_total"
    }
    submits = sum(n for (family, _), n in calls.items() if family == "submit")
    assert submits == status["api_calls"]["submit"]
    assert calls[("submit", "ok")] >= len(ids) / FAST_POLICY["batch_size"]
    rates = {s.labels["family"]: s.value for s in families["cph_budget_rate_per_second"].samples}
    assert set(rates) == {"submit", "query"}
    assert all(rate > 0 for rate in rates.values())

    def count(name: str) -> float:
        return next(s.value for s in families[name].samples if s.name == f"{name}_count")

    assert count("cph_journal_write_seconds") > 0
    assert count("cph_job_duration_seconds") == len(ids)


# -- the process and the command line ---------------------------------------------------------


def test_listen_addresses_and_exposure() -> None:
    assert parse_listen("127.0.0.1:8740") == ("127.0.0.1", 8740)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8740", "host:", "host:port", ":80"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    check_exposure("127.0.0.1", None)
    check_exposure("localhost", None)
    check_exposure("0.0.0.0", SecretStr("t"))
    with pytest.raises(ConfigError, match="without a token"):
        check_exposure("0.0.0.0", None)


def test_the_daemon_command_refuses_a_public_address_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CPH_DAEMON_TOKEN", raising=False)
    config = tmp_path / "settings.toml"
    config.write_text('[daemon]\nlisten = "127.0.0.1:8740"\n', encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        [
            "daemon",
            "--config",
            str(config),
            "--listen",
            "0.0.0.0:0",
            "--state",
            str(tmp_path / "j"),
        ],
    )
    assert result.exit_code == 3, result.output
    assert "without a token" in result.output


async def test_submit_and_status_commands_talk_to_the_daemon(
    start_daemon: StartDaemon, sim: SimulatorServer, tmp_path: Path
) -> None:
    daemon = await start_daemon()
    ids = sim.state.phone_ids()[:7]
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(_plan(ids)), encoding="utf-8")
    runner = CliRunner(env={"CPH_DAEMON_TOKEN": DAEMON_TOKEN})

    def invoke(*args: str) -> Any:
        return asyncio.to_thread(runner.invoke, cli, list(args))

    result = await invoke("submit", str(plan_path), "--daemon", daemon.url, "--id", "ro-cli-1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"rollout_id": "ro-cli-1"}
    result = await invoke("status", "ro-cli-1", "--daemon", daemon.url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rollout_id"] == "ro-cli-1"
    result = await invoke("status", "--daemon", daemon.url)
    assert [row["rollout_id"] for row in json.loads(result.output)["rollouts"]] == ["ro-cli-1"]
    result = await invoke("status", "nope", "--daemon", daemon.url)
    assert result.exit_code == 3
    assert "404" in result.output

    (tmp_path / "fleet.csv").write_text(f"phone_id\n{ids[0]}\n", encoding="utf-8")
    file_plan = {**_plan([]), "fleet": {"file": "fleet.csv"}}
    plan_path.write_text(json.dumps(file_plan), encoding="utf-8")
    result = await invoke("submit", str(plan_path), "--daemon", daemon.url)
    assert result.exit_code == 3
    assert "fleet.file" in result.output


async def test_sigterm_stops_the_daemon_process_gracefully(
    sim: SimulatorServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[cph]\nendpoint = "{sim.url}"\nproject_id = "proj123"\nauth = "token"\n'
        f'auth_token = "{CPH_TOKEN}"\n'
        "[rollout]\nsubmit_rate_per_s = 5.0\nfirst_poll_s = 0.05\nstop_grace_s = 0.3\n"
        f'[daemon]\ntoken = "{DAEMON_TOKEN}"\n',
        encoding="utf-8",
    )
    journal = tmp_path / "journal.sqlite"
    command = ["-m", "orchestrator", "daemon", "--config", str(config)]
    command += ["--listen", "127.0.0.1:0", "--state", str(journal)]
    with (tmp_path / "daemon.log").open("w") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *command, stdout=asyncio.subprocess.PIPE, stderr=log_file
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE_S)
            url = line.decode().rsplit(" ", 1)[-1].strip()
            assert url.startswith("http://127.0.0.1:"), line
            ids = sim.state.phone_ids()[300:400]
            answer = await _post(http, f"{url}/v1/rollouts", _plan(ids, batch_size=5), status=201)
            rollout_id = answer["rollout_id"]
            deadline = time.monotonic() + DEADLINE_S
            while (await _get(http, f"{url}/v1/rollouts/{rollout_id}"))["counts"]["succeeded"] == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE_S) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log_text = (tmp_path / "daemon.log").read_text(encoding="utf-8")
    assert "daemon.stopped" in log_text
    assert DAEMON_TOKEN not in log_text
    store = await open_store(journal)
    try:
        meta = await store.get_rollout(rollout_id)
    finally:
        await store.close()
    assert meta.status == "interrupted"
    assert sum(meta.counts.values()) == len(ids)
