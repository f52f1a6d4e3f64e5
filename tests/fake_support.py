"""Helpers for the engine's behaviour tests: a simulated account in process, on a fake clock.

The engine runs against :class:`~orchestrator.testing.FakeCphApi` on a
:class:`~orchestrator.clock.FakeClock` driven by :func:`~orchestrator.testing.run_on_fake_clock`,
so durations are those of production (jobs of 1-3 s, backoff from 1 s, first poll after 2 s,
progress every 5 s, 30 s of grace, 600 s job deadline) and cost no real time. Everything is seeded:
a test sees the same run every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from orchestrator.clock import FakeClock
from orchestrator.engine.journal import Journal
from orchestrator.engine.options import EngineOptions
from orchestrator.engine.policy import RetryPolicy
from orchestrator.engine.runner import Budgets, RolloutEngine
from orchestrator.engine.states import PhoneRecord
from orchestrator.plan import DEFAULT_RETRY_CODES, PhoneTarget
from orchestrator.simulator import PROFILES, FaultProfile, SimulatorConfig, apply_overrides
from orchestrator.testing import FakeCphApi, run_on_fake_clock
from tests.e2e_support import Run

__all__ = [
    "MAX_FAKE_S",
    "ROUND_TRIP_S",
    "fake_cloud",
    "options",
    "profile",
    "retry",
    "rollout",
    "unpause",
]

ROUND_TRIP_S = 0.05
"""Every request's network round trip, on the fake clock."""
MAX_FAKE_S = 86_400.0
"""No behaviour test needs more than a fake day; past it, the run is stuck in a loop."""
PROJECT_ID = "proj123"


def profile(name: str = "none", **overrides: Any) -> FaultProfile:
    """A named profile with knob overrides; its jobs take 1-3 s unless overridden."""
    return apply_overrides(PROFILES[name], overrides)


def retry(
    *, max_attempts: int = 5, retry_codes: Iterable[str] = DEFAULT_RETRY_CODES
) -> RetryPolicy:
    """The production retry policy (backoff from 1 s, 5 s for slow codes, capped at 60 s)."""
    return RetryPolicy(max_attempts=max_attempts, retry_codes=frozenset(retry_codes))


def options(**changes: Any) -> EngineOptions:
    """The engine's production defaults with a fixed seed; any field may be overridden."""
    return EngineOptions(**{"retry": retry(), "seed": 7, **changes})


def fake_cloud(
    *,
    phones: int,
    profile: FaultProfile | None = None,
    seed: int = 0,
    presented_token: str | None = None,
    **fields: Any,
) -> FakeCphApi:
    """A simulated account of ``phones`` phones on a fresh :class:`FakeClock`; the caller presents
    ``presented_token``, else the account's own ``token`` when one is configured."""
    config = SimulatorConfig(
        phones=phones,
        profile=profile or PROFILES["none"],
        project_id=PROJECT_ID,
        seed=seed,
        **fields,
    )
    token = presented_token if presented_token is not None else config.token
    return FakeCphApi(config, clock=FakeClock(), token=token, latency_s=ROUND_TRIP_S)


def fake_clock(api: FakeCphApi) -> FakeClock:
    """The fake clock the account runs on."""
    assert isinstance(api.clock, FakeClock)
    return api.clock


async def rollout(
    api: FakeCphApi,
    targets: Sequence[PhoneTarget],
    options: EngineOptions,
    *,
    journal: Journal | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    setup: Callable[[RolloutEngine], None] | None = None,
    during: Callable[[RolloutEngine], Coroutine[Any, Any, None]] | None = None,
    records: Sequence[PhoneRecord] | None = None,
    budgets: Budgets | None = None,
    rollout_id: str = "behaviour",
) -> Run:
    """Run one rollout against ``api`` on its fake clock until it ends.

    ``setup`` sees the engine before it runs; ``during`` runs alongside it as a task of its own
    (as a daemon request would pause, unpause or cancel it) and must end by itself.
    """
    clock = fake_clock(api)
    engine = RolloutEngine(
        rollout_id=rollout_id,
        name=f"behaviour {rollout_id}",
        targets=targets,
        client=api,
        options=options,
        clock=clock,
        journal=journal,
        records=records,
        on_progress=on_progress,
        budgets=budgets,
    )
    if setup is not None:
        setup(engine)

    async def main() -> Run:
        controller = asyncio.create_task(during(engine)) if during is not None else None
        result = await engine.run()
        if controller is not None:
            await controller
        return Run(result=result, engine=engine)

    return await run_on_fake_clock(main(), clock, max_fake_s=MAX_FAKE_S)


def unpause(engine: RolloutEngine) -> None:
    """Let a paused engine send again (the one place that names the engine's method)."""
    engine.unpause()
