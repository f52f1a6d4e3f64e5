"""Every log event a rollout emits is in the documented catalogue, with its fields and rollout_id.

Log-based monitoring breaks silently when an event is renamed or loses a field; this test runs
rollouts through the faults of the ``hostile`` profile and holds the logs to the catalogue.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from orchestrator.clock import SystemClock
from orchestrator.cph import CphClient, PropertyUpdate, StaticTokenAuth
from orchestrator.engine.options import EngineOptions, RestartMode
from orchestrator.engine.policy import AbortThresholds, RetryPolicy
from orchestrator.engine.runner import RolloutEngine
from orchestrator.events import CATALOGUE
from orchestrator.logging import configure_logging
from orchestrator.simulator import PROFILES, SimulatorServer, apply_overrides

StartSimulator = Callable[..., Awaitable[SimulatorServer]]
README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass(frozen=True)
class _Target:
    phone_id: str
    update: PropertyUpdate


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=stream)
    yield stream
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


async def _run(sim: SimulatorServer, options: EngineOptions, extra_ids: list[str]) -> None:
    ids = sim.state.phone_ids()[:300] + extra_ids
    targets = [_Target(p, PropertyUpdate.build(p, {"com.cph.mainkeys": 1})) for p in ids]
    auth = StaticTokenAuth(SecretStr("t"))
    async with CphClient(endpoint=sim.url, project_id="proj123", auth=auth) as client:
        engine = RolloutEngine(
            rollout_id="r-events", name="events", targets=targets, client=client, options=options
        )
        await engine.run()


async def test_emitted_events_match_the_catalogue(
    simulator: StartSimulator, log_lines: io.StringIO
) -> None:
    profile = apply_overrides(
        PROFILES["hostile"],
        {"job_duration": "uniform:0.01:0.05", "latency_spike": "fixed:0.02"},
    )
    sim = await simulator(phones=400, profile=profile, clock=SystemClock(), submit_rate_per_s=50.0)
    options = EngineOptions(
        retry=RetryPolicy(
            max_attempts=3, retry_codes={"CPS.0005", "CPS.0003"}, base_s=0.01, cap_s=0.05
        ),
        batch_size=20,
        submit_rate_per_s=200.0,
        query_rate_per_s=200.0,
        waves=(10, "100%"),
        first_poll_s=0.02,
        progress_interval_s=0.05,
        job_timeout_s=5.0,
        restart=RestartMode.WHEN_NEEDED,
        abort=AbortThresholds(max_failures=5),
    )
    await _run(sim, options, extra_ids=[f"{n:032x}" for n in range(8)])
    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert records, "the rollout logged nothing"
    seen = {record["event"] for record in records}
    assert seen <= CATALOGUE.keys(), f"undocumented events: {seen - CATALOGUE.keys()}"
    assert {"rollout.started", "rollout.finished", "batch.submitted", "phone.failed"} <= seen
    assert "rollout.aborted" in seen
    for record in records:
        documented = CATALOGUE[record["event"]]
        assert record["rollout_id"] == "r-events"
        missing = [f for f in documented.fields if f not in record]
        if record["event"] not in ("api.error",):  # api.error fields vary with the failure
            assert not missing, f"{record['event']} lacks {missing}"


def test_the_readme_documents_every_event() -> None:
    text = README.read_text(encoding="utf-8")
    undocumented = [name for name in CATALOGUE if f"`{name}`" not in text and name not in text]
    assert not undocumented
