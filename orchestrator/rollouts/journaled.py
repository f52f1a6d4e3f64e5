"""Running rollouts against the journal: create, resume, rerun the failed, one runner at a time.

The engine knows only :class:`~orchestrator.engine.journal.Journal`; this module ties it to a
:class:`~orchestrator.store.base.RolloutStore`, holds the rollout's lease while it runs, and writes
the rollout's header (status, reason, API calls) when it ends. The command line and the daemon
both run their rollouts through :func:`run_journaled`, so a rollout started by one can be resumed
by the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from orchestrator.clock import Clock, SystemClock
from orchestrator.cph.api import CphApi
from orchestrator.cph.models import PropertyUpdate
from orchestrator.engine.journal import Journal
from orchestrator.engine.options import EngineOptions, options_to_data
from orchestrator.engine.runner import (
    Budgets,
    RolloutEngine,
    RolloutResult,
    Target,
    summarize_calls,
)
from orchestrator.engine.states import LIVE_STATES, PhoneRecord
from orchestrator.errors import ConfigError, FencedError
from orchestrator.store.base import (
    LeaseHeldError,
    RolloutMeta,
    RolloutStore,
    StoredPhone,
    StoreError,
)
from orchestrator.store.lease import LeaseToken, new_owner

__all__ = [
    "FINISHED_STATUSES",
    "LEASE_RENEW_S",
    "LEASE_TTL_S",
    "Drive",
    "JournalTarget",
    "Prepare",
    "StoreJournal",
    "compact_journal",
    "compact_rollouts",
    "create_rollout",
    "ended",
    "held_lease",
    "load_for_resume",
    "merged_calls",
    "open_store",
    "run_journaled",
    "stored_update",
]

log = structlog.get_logger("orchestrator.rollouts")

LEASE_TTL_S = 30.0
"""A crashed runner's lease lapses after this; a dead local process's lease is taken at once."""
LEASE_RENEW_S = LEASE_TTL_S / 3
"""How often a runner renews its lease: two renewals may fail before it lapses."""
RUNNING = "running"
FINISHED_STATUSES = frozenset({"succeeded", "completed_with_failures", "aborted"})


@dataclass(frozen=True, slots=True)
class JournalTarget:
    """A phone and its payload as the journal holds them."""

    phone_id: str
    update: PropertyUpdate


class StoreJournal:
    """The engine's journal, written to one rollout of a store under the runner's lease.

    Every save is fenced by the lease token (a runner that lost its lease writes nothing more)
    and carries the API calls made since the previous save, so the rollout's call counts are
    journaled with the work they did and survive a crash (``calls`` is the client's live
    counter, read at each save).
    """

    def __init__(
        self,
        store: RolloutStore,
        rollout_id: str,
        *,
        fence: LeaseToken | None = None,
        calls: Mapping[str, int] | None = None,
    ) -> None:
        self._store = store
        self._rollout_id = rollout_id
        self._fence = fence
        self._calls = calls
        self._journaled: dict[str, int] = {}

    async def save(self, records: Sequence[PhoneRecord]) -> None:
        """Write the records and the calls made since the last save in one transaction."""
        delta = self._unjournaled_calls()
        if not records and not delta:
            return
        await self._store.save(self._rollout_id, records, fence=self._fence, api_calls=delta)

    def _unjournaled_calls(self) -> dict[str, int]:
        """Calls made since the last save, counted as journaled from now on.

        Taken before the write is awaited, so that concurrent saves never count a call twice;
        a save that fails stops the run, and the run's end records the totals again.
        """
        if self._calls is None:
            return {}
        now = summarize_calls(self._calls)
        delta = {key: n - self._journaled.get(key, 0) for key, n in now.items()}
        self._journaled = now
        return {key: n for key, n in delta.items() if n}


async def open_store(path: Path, *, read_only: bool = False) -> RolloutStore:
    """Open (or create) the SQLite journal at ``path``; ``read_only`` never creates nor writes."""
    from orchestrator.store.sqlite import SqliteStore

    return await SqliteStore.open(path, read_only=read_only)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def create_rollout(
    store: RolloutStore,
    *,
    rollout_id: str,
    name: str,
    targets: Sequence[tuple[int, str, PropertyUpdate]],
    options: EngineOptions,
    plan_source: str,
) -> list[PhoneRecord]:
    """Record a new rollout with every phone pending; returns the records to run."""
    phones = [
        StoredPhone(index, phone_id, update.property, update.custom_property)
        for index, phone_id, update in targets
    ]
    records = [PhoneRecord(index=index, phone_id=phone_id) for index, phone_id, _ in targets]
    meta = RolloutMeta(
        rollout_id=rollout_id,
        name=name,
        status=RUNNING,
        created_at=_now(),
        updated_at=_now(),
        options=options_to_data(options),
        plan_source=plan_source,
    )
    await store.create_rollout(meta, phones, records)
    return records


async def load_for_resume(
    store: RolloutStore, rollout_id: str
) -> tuple[list[JournalTarget], list[PhoneRecord]]:
    """The phones a resumed run needs; refuses a rollout that has already ended.

    Called under the rollout's lease, so the check and the read see what no runner changes.
    """
    meta = await store.get_rollout(rollout_id)
    if ended(meta):
        raise ConfigError(
            f"rollout {rollout_id} already ended ({meta.status}); use rerun-failed to try"
            " its failed phones again"
        )
    stored, records = await store.load_phones(rollout_id)
    targets = [JournalTarget(p.phone_id, stored_update(p)) for p in stored]
    return targets, records


async def compact_journal(store: RolloutStore, rollout_id: str) -> int:
    """Fold an ended rollout's change log into its phones' rows, and log ``journal.compacted``."""
    started = time.perf_counter()
    folded = await store.compact(rollout_id)
    elapsed_s = round(time.perf_counter() - started, 3)
    log.info("journal.compacted", rollout_id=rollout_id, folded=folded, elapsed_s=elapsed_s)
    return folded


async def compact_rollouts(
    state_path: Path, rollout_id: str | None, *, on_folded: Callable[[str, int], None]
) -> None:
    """Compact one rollout, or every rollout that has ended; ``on_folded`` hears of each.

    Safe while other processes run rollouts in the same journal: it works in short
    transactions, and reads are exact before, during and after.
    """
    store = await open_store(state_path)
    try:
        wanted = (
            [rollout_id]
            if rollout_id
            else [meta.rollout_id for meta in await store.list_rollouts() if ended(meta)]
        )
        for wanted_id in wanted:
            on_folded(wanted_id, await compact_journal(store, wanted_id))
    finally:
        await store.close()


def ended(meta: RolloutMeta) -> bool:
    """True when nothing is left to do: an end status and no phone still open.

    A run stopped by a fatal error may have recorded an end status with phones still open;
    those can be resumed.
    """
    live = sum(meta.counts.get(state, 0) for state in LIVE_STATES)
    return meta.status in FINISHED_STATUSES and live == 0


def stored_update(phone: StoredPhone) -> PropertyUpdate:
    """The wire item the journal holds for a phone."""
    custom = dict(phone.custom_property) if phone.custom_property else None
    return PropertyUpdate(phone_id=phone.phone_id, property=phone.property, custom_property=custom)


@contextlib.asynccontextmanager
async def held_lease(
    store: RolloutStore,
    rollout_id: str,
    *,
    on_lost: Callable[[str], None],
    clock: Clock | None = None,
) -> AsyncIterator[LeaseToken]:
    """Hold the rollout's lease while the block runs, renewing it on ``clock``; release it after.

    Yields the token that fences the holder's writes. ``on_lost`` hears why when a renewal
    finds that another runner has taken the lease.
    """
    owner = new_owner()
    token = await store.acquire_lease(rollout_id, owner=owner, ttl_s=LEASE_TTL_S)
    renewer = asyncio.create_task(
        _renew_forever(store, rollout_id, owner, on_lost, clock or SystemClock())
    )
    try:
        yield token
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        with contextlib.suppress(Exception):
            await store.release_lease(rollout_id, owner=owner)


async def _renew_forever(
    store: RolloutStore,
    rollout_id: str,
    owner: str,
    on_lost: Callable[[str], None],
    clock: Clock,
) -> None:
    while True:
        await clock.sleep(LEASE_RENEW_S)
        try:
            await store.renew_lease(rollout_id, owner=owner, ttl_s=LEASE_TTL_S)
        except LeaseHeldError as error:
            on_lost(f"lease lost: {error}")
            return


def merged_calls(*counters: Mapping[str, int]) -> dict[str, int]:
    """API call counts added up key by key (earlier runs of a rollout plus this one)."""
    total: dict[str, int] = {}
    for counter in counters:
        for key, value in counter.items():
            total[key] = total.get(key, 0) + value
    return total


class _StopOnLeaseLoss:
    """Halts the engine once it exists if the lease is lost (another runner took over): it
    must send nothing more, and its writes are refused by the fence anyway."""

    def __init__(self) -> None:
        self.engine: RolloutEngine | None = None

    def __call__(self, reason: str) -> None:
        log.error("journal.failed", error=reason, phones=0)
        if self.engine is not None:
            self.engine.halt(reason)


Prepare = Callable[[], Awaitable[tuple[Sequence[Target], list[PhoneRecord]]]]
"""Loads the phones a run works on; called once the lease is held."""
Drive = Callable[[RolloutEngine], Awaitable[RolloutResult]]
"""Runs the engine to its end: as is, or with a terminal's signals and progress bar around it."""


async def run_journaled(
    store: RolloutStore,
    *,
    rollout_id: str,
    name: str,
    prepare: Prepare,
    options: EngineOptions,
    client: CphApi,
    drive: Drive,
    calls_before: Mapping[str, int] | None = None,
    budgets: Budgets | None = None,
    wrap_journal: Callable[[Journal], Journal] | None = None,
    clock: Clock | None = None,
) -> RolloutResult:
    """Take the lease, load the phones (``prepare``), run the engine journaling every change,
    and record how the run ended. Loading under the lease means no other runner can move the
    phones between our read and our first write. ``clock`` paces the lease's renewals.
    """
    on_lost = _StopOnLeaseLoss()
    async with held_lease(store, rollout_id, on_lost=on_lost, clock=clock) as fence:
        targets, records = await prepare()
        journal: Journal = StoreJournal(store, rollout_id, fence=fence, calls=client.calls)
        engine = RolloutEngine(
            rollout_id=rollout_id,
            name=name,
            targets=targets,
            client=client,
            options=options,
            journal=wrap_journal(journal) if wrap_journal else journal,
            records=records,
            budgets=budgets,
        )
        on_lost.engine = engine
        result = await drive(engine)
        calls = merged_calls(calls_before or {}, result.api_calls)
        try:
            await store.update_rollout(
                rollout_id,
                status=str(result.status),
                reason=result.reason,
                api_calls=calls,
                fence=fence,
            )
        except StoreError as error:
            log.error("journal.failed", error=str(error), phones=0)
            reason = str(error) if isinstance(error, FencedError) else _unwritable(error)
            return dataclasses.replace(result, fatal=True, reason=result.reason or reason)
    return dataclasses.replace(result, api_calls=calls)


def _unwritable(error: StoreError) -> str:
    return f"the journal cannot be written: {error}"
