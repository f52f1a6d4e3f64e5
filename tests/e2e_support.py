"""Helpers for the engine's end-to-end tests: fast profiles and options, targets, one-call rollouts.

The engine talks to a real simulator over loopback HTTP with a real :class:`CphClient`, both on the
real clock; everything that takes time in production (job durations, backoff, first poll) is shrunk
here so that a rollout of a few hundred phones ends in a second or two. Targets, the intent
journal and the end-state checks are shared with the behaviour tests, which run the engine on
:class:`~orchestrator.testing.FakeCphApi` (:mod:`tests.fake_support`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import SecretStr

from orchestrator.clock import Clock, SystemClock
from orchestrator.cph import CphClient, PropertyUpdate, StaticTokenAuth
from orchestrator.engine.journal import Journal
from orchestrator.engine.options import EngineOptions
from orchestrator.engine.policy import RetryPolicy
from orchestrator.engine.runner import RolloutEngine, RolloutResult
from orchestrator.engine.states import TERMINAL_STATES, PhoneRecord, PhoneState, Stage
from orchestrator.plan import DEFAULT_RETRY_CODES, PhoneTarget
from orchestrator.simulator import (
    PROFILES,
    FaultProfile,
    SimState,
    SimulatorConfig,
    SimulatorServer,
    apply_overrides,
)
from tests.conftest import SimulatorFactory

__all__ = [
    "FAST_JOBS",
    "Cloud",
    "IntentJournal",
    "Run",
    "assert_end_state",
    "assert_one_request_per_phone",
    "desired_properties",
    "fast_options",
    "fast_profile",
    "fast_retry",
    "made_up_phone_ids",
    "make_targets",
    "oversize",
    "run_rollout",
    "start_simulator",
]

FAST_JOBS: dict[str, Any] = {
    "job_duration": "uniform:0.02:0.1",
    "restart_duration": "uniform:0.02:0.1",
    "latency_spike": "fixed:0.05",
}
"""Overrides that keep every profile's faults but make its jobs and latency spikes short."""

PROJECT_ID = "proj123"
TOKEN = "e2e-token"


def fast_profile(name: str, **overrides: Any) -> FaultProfile:
    """A named profile with short jobs and spikes, plus any knob overrides."""
    return apply_overrides(PROFILES[name], {**FAST_JOBS, **overrides})


def fast_retry(
    *, max_attempts: int = 8, retry_codes: Iterable[str] = DEFAULT_RETRY_CODES
) -> RetryPolicy:
    """A retry policy with millisecond backoff (full jitter, capped at 0.1 s)."""
    return RetryPolicy(
        max_attempts=max_attempts,
        retry_codes=frozenset(retry_codes),
        base_s=0.01,
        slow_base_s=0.02,
        cap_s=0.1,
    )


def fast_options(**changes: Any) -> EngineOptions:
    """Engine options sized for loopback tests; any field may be overridden by keyword."""
    defaults: dict[str, Any] = {
        "retry": fast_retry(),
        "batch_size": 50,
        "submit_rate_per_s": 100.0,
        "query_rate_per_s": 100.0,
        "first_poll_s": 0.05,
        "progress_interval_s": 0.2,
        "stop_grace_s": 5.0,
        "seed": 7,
    }
    return EngineOptions(**{**defaults, **changes})


async def start_simulator(
    simulator: SimulatorFactory, *, phones: int, profile: FaultProfile, **fields: Any
) -> SimulatorServer:
    """A simulator on the real clock (no credentials unless ``token=`` is given)."""
    config = SimulatorConfig(phones=phones, profile=profile, project_id=PROJECT_ID, **fields)
    return await simulator(config, clock=SystemClock())


def desired_properties(index: int, phone_id: str) -> dict[str, Any]:
    """What the plan writes to one phone: a per-phone value and a common one."""
    return {"ro.product.name": f"phone-{index}-{phone_id[:6]}", "persist.sys.timezone": "UTC"}


def make_targets(
    phone_ids: Sequence[str],
    properties: Callable[[int, str], Mapping[str, Any]] = desired_properties,
) -> list[PhoneTarget]:
    """One size-checked target per phone, in order."""
    targets = []
    for index, phone_id in enumerate(phone_ids):
        values = dict(properties(index, phone_id))
        update = PropertyUpdate.build(phone_id, values)
        targets.append(
            PhoneTarget(index=index, phone_id=phone_id, properties=values, update=update)
        )
    return targets


def oversize(targets: list[PhoneTarget], position: int) -> PhoneTarget:
    """Replace the target at ``position`` with one whose update the cloud refuses as too large
    (a whole-batch 400); returns the new target."""
    target = targets[position]
    oversized = json.dumps({"ro.product.name": "x" * 8000})
    targets[position] = PhoneTarget(
        index=target.index,
        phone_id=target.phone_id,
        properties=json.loads(oversized),
        update=PropertyUpdate(phone_id=target.phone_id, property=oversized),
    )
    return targets[position]


def made_up_phone_ids(count: int, *, prefix: str = "f") -> list[str]:
    """Well-formed 32-hex phone IDs that no simulator fleet holds (seeded fleets never start so)."""
    return [f"{prefix * 8}{n:024x}" for n in range(count)]


class Cloud(Protocol):
    """A simulated account, over HTTP (:class:`SimulatorServer`) or in process (``FakeCphApi``)."""

    @property
    def state(self) -> SimState: ...


@dataclass(slots=True)
class IntentJournal:
    """A journal that checks, at each intent save, that the phones sent obey the wave order.

    The engine saves a batch as ``submitting`` just before sending it, so what this journal sees at
    that moment is exactly what the engine knew when it chose to send. Given the engine's
    ``clock``, it also notes when each phone was sent (every time) and first saved terminal.
    """

    engine: RolloutEngine | None = None
    clock: Clock | None = None
    saves: int = 0
    sent_order: list[str] = field(default_factory=list)
    sends: list[tuple[float, str]] = field(default_factory=list)
    ended_at: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    async def save(self, records: Sequence[PhoneRecord]) -> None:
        """Record intents; flag any phone sent while an earlier wave still had a live phone."""
        self.saves += 1
        now = self.clock.monotonic() if self.clock is not None else 0.0
        for record in records:
            if record.state in TERMINAL_STATES:
                self.ended_at.setdefault(record.phone_id, now)
        sending = [r for r in records if r.state is PhoneState.SUBMITTING]
        if not sending or self.engine is None:
            return
        live_waves = {r.wave for r in self.engine.table if r.state not in TERMINAL_STATES}
        for record in sending:
            self.sent_order.append(record.phone_id)
            self.sends.append((now, record.phone_id))
            earlier = sorted(w for w in live_waves if w < record.wave)
            if earlier:
                self.violations.append(
                    f"phone {record.phone_id} of wave {record.wave} sent while wave(s) "
                    f"{earlier} still had live phones"
                )


@dataclass(slots=True)
class Run:
    """A finished rollout and the engine that ran it."""

    result: RolloutResult
    engine: RolloutEngine

    def by_id(self) -> dict[str, PhoneRecord]:
        """The report's records keyed by phone ID."""
        return {r.phone_id: r for r in self.result.records}


async def run_rollout(
    sim: SimulatorServer,
    targets: Sequence[PhoneTarget],
    options: EngineOptions,
    *,
    token: str = TOKEN,
    journal: Journal | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    setup: Callable[[RolloutEngine], None] | None = None,
    rollout_id: str = "e2e",
) -> Run:
    """Run one rollout against ``sim`` with a real client; ``setup`` sees the engine before it runs."""
    async with CphClient(
        endpoint=sim.url, project_id=PROJECT_ID, auth=StaticTokenAuth(SecretStr(token))
    ) as client:
        engine = RolloutEngine(
            rollout_id=rollout_id,
            name=f"e2e {rollout_id}",
            targets=targets,
            client=client,
            options=options,
            journal=journal,
            on_progress=on_progress,
        )
        if setup is not None:
            setup(engine)
        result = await engine.run()
    return Run(result=result, engine=engine)


def assert_end_state(run: Run, sim: Cloud, targets: Sequence[PhoneTarget]) -> None:
    """Every phone of the plan ends in exactly one state, and the report agrees with the cloud.

    A ``succeeded`` phone holds the desired properties on the simulator; a ``failed`` one carries
    an error code; a ``cancelled`` one carries one too unless it was never sent (the engine gives
    phones cancelled before their first attempt no code) or had finished its update.
    """
    result = run.result
    records = run.by_id()
    assert len(records) == len(result.records) == len(targets), "a phone is missing or doubled"
    assert set(records) == {t.phone_id for t in targets}
    counts = result.counts
    assert counts["total"] == len(targets)
    parts = ("succeeded", "failed", "cancelled", "pending")
    assert sum(counts[k] for k in parts) == counts["total"], counts
    for state in ("succeeded", "failed", "cancelled"):
        assert counts[state] == sum(1 for r in result.records if r.state == state), state
    for target in targets:
        record = records[target.phone_id]
        if record.state is PhoneState.SUCCEEDED:
            assert sim.state.properties(target.phone_id) == target.properties, target.phone_id
            assert record.error_code is None
        elif record.state is PhoneState.FAILED:
            assert record.error_code, f"failed phone {target.phone_id} has no error code"
        elif record.state is PhoneState.CANCELLED:
            assert record.error_code or record.attempts == 0 or record.stage is Stage.RESTART
        else:
            raise AssertionError(f"phone {target.phone_id} left {record.state}")


def assert_one_request_per_phone(sim: Cloud, *, allowed: Iterable[str] = ()) -> None:
    """The simulator never saw a phone in two concurrent requests, nor any other protocol slip."""
    stats = sim.state.stats(include_phones=False)
    assert stats["max_concurrent_requests_per_phone"] <= 1, stats["protocol_violations"][:5]
    kinds = {v["kind"] for v in stats["protocol_violations"]}
    assert kinds <= set(allowed), stats["protocol_violations"][:5]
