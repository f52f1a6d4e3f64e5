"""The lease a runner holds while a rollout runs: renewed on time, and a lost lease reported.

The renewer waits on an injected clock, so these tests move time with a :class:`FakeClock` (the
SQLite journal reads its wall time from the same clock) and never sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.clock import FakeClock
from orchestrator.cph import PropertyUpdate
from orchestrator.rollouts.journaled import LEASE_RENEW_S, create_rollout, held_lease
from orchestrator.store import LeaseHeldError, SqliteStore
from tests.e2e_support import fast_options

ROLLOUT_ID = "ro-lease"
OTHER_RUNNER = "elsewhere:4242:other"
HANG_GUARD_S = 10.0
"""Real seconds before a wait that should end at once fails the test instead of hanging it."""


class RenewalLog(SqliteStore):
    """The real SQLite journal, noting when each renewal of a lease went through."""

    clock: FakeClock
    renewed_at: list[float]
    renewed: asyncio.Event

    async def renew_lease(self, rollout_id: str, *, owner: str, ttl_s: float) -> None:
        await super().renew_lease(rollout_id, owner=owner, ttl_s=ttl_s)
        self.renewed_at.append(self.clock.monotonic())
        self.renewed.set()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[RenewalLog]:
    opened = await RenewalLog.open(tmp_path / "journal.sqlite", clock=clock)
    assert isinstance(opened, RenewalLog)
    opened.clock, opened.renewed_at, opened.renewed = clock, [], asyncio.Event()
    update = PropertyUpdate.build("phone-1", {"com.cph.mainkeys": 1})
    await create_rollout(
        opened,
        rollout_id=ROLLOUT_ID,
        name="lease",
        targets=[(0, "phone-1", update)],
        options=fast_options(),
        plan_source="test",
    )
    yield opened
    await opened.close()


async def renewer_started(clock: FakeClock) -> None:
    """Let the renewer task take its first step: it then waits on the clock."""
    await asyncio.sleep(0)
    assert clock.sleepers == 1


async def test_the_lease_is_renewed_every_renewal_period_of_the_clock(
    store: RenewalLog, clock: FakeClock
) -> None:
    lost: list[str] = []
    async with held_lease(store, ROLLOUT_ID, on_lost=lost.append, clock=clock):
        await renewer_started(clock)
        clock.advance(LEASE_RENEW_S - 0.5)
        assert store.renewed_at == []
        for step in (0.5, LEASE_RENEW_S, LEASE_RENEW_S):
            clock.advance(step)
            await asyncio.wait_for(store.renewed.wait(), HANG_GUARD_S)
            store.renewed.clear()
            assert clock.sleepers == 1, "the renewer does not wait for its next renewal"

    assert store.renewed_at == [LEASE_RENEW_S, 2 * LEASE_RENEW_S, 3 * LEASE_RENEW_S]
    assert lost == []
    assert clock.sleepers == 0, "the renewer outlived the block"


async def test_a_lease_taken_by_another_runner_is_reported_once_and_renewal_stops(
    store: RenewalLog, clock: FakeClock
) -> None:
    lost: list[str] = []
    told = asyncio.Event()

    def on_lost(reason: str) -> None:
        lost.append(reason)
        told.set()

    async with held_lease(store, ROLLOUT_ID, on_lost=on_lost, clock=clock) as owner:
        await renewer_started(clock)
        # Another runner gets in between two renewals.
        await store.release_lease(ROLLOUT_ID, owner=owner.owner)
        await store.acquire_lease(ROLLOUT_ID, owner=OTHER_RUNNER, ttl_s=30)
        clock.advance(LEASE_RENEW_S)
        await asyncio.wait_for(told.wait(), HANG_GUARD_S)
        assert clock.sleepers == 0, "the renewer kept going after losing the lease"

    assert len(lost) == 1
    assert lost[0].startswith("lease lost:")
    assert store.renewed_at == []
    # Leaving the block released nothing of the other runner's.
    with pytest.raises(LeaseHeldError, match=OTHER_RUNNER):
        await store.acquire_lease(ROLLOUT_ID, owner=f"{OTHER_RUNNER}-2", ttl_s=30)
