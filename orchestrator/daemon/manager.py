"""The rollouts a daemon runs: accepting plans, resuming the journal's unfinished work, control.

One :class:`RolloutManager` per daemon. Every rollout gets its own CPH client (so its API calls are
its own in the journal) but all share one account's :class:`~orchestrator.engine.runner.Budgets`:
each engine waits for an in-flight place of the shared submit or query budget, and places are
handed out first come, first served, so concurrent rollouts take turns and none starves another.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from orchestrator.clock import Clock, SystemClock
from orchestrator.cph.client import CphClient
from orchestrator.cph.connect import open_client
from orchestrator.daemon.metrics import DaemonMetrics, MetricsView, TimedJournal
from orchestrator.engine.options import EngineOptions, options_from_data
from orchestrator.engine.runner import (
    Budgets,
    RolloutEngine,
    RolloutResult,
    RolloutStatus,
    Target,
)
from orchestrator.engine.states import PhoneRecord, PhoneState
from orchestrator.errors import OrchestratorError
from orchestrator.plan import Policy, load_plan_data
from orchestrator.rollouts.journaled import (
    Prepare,
    compact_journal,
    create_rollout,
    ended,
    load_for_resume,
    merged_calls,
    run_journaled,
)
from orchestrator.rollouts.outputs import ROLLOUT_ID_RULE, is_rollout_id
from orchestrator.rollouts.prepare import engine_options, new_rollout_id, resolve_targets
from orchestrator.rollouts.report import phone_row
from orchestrator.rollouts.status import status_row
from orchestrator.settings import Settings
from orchestrator.store.base import (
    LeaseHeldError,
    RolloutExistsError,
    RolloutMeta,
    RolloutNotFoundError,
    RolloutStore,
)

__all__ = [
    "DaemonError",
    "InvalidRequestError",
    "NotRunningError",
    "RolloutManager",
    "ShuttingDownError",
]

log = structlog.get_logger("orchestrator.daemon")

DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1000
SHUTDOWN_MARGIN_S = 10.0
"""Beyond the engines' stop grace, how long a stop waits for runs to record how they ended."""
RECOVERY_WAIT_S = 30.0
"""How long readiness waits for recovered rollouts to take their leases."""


class DaemonError(OrchestratorError):
    """The daemon cannot do what a request asked."""


class InvalidRequestError(DaemonError):
    """The request is malformed (bad ID, unknown state filter, bad paging)."""


class NotRunningError(DaemonError):
    """The rollout exists but is not running in this daemon (it ended, or another process runs it)."""


class ShuttingDownError(DaemonError):
    """The daemon is stopping and takes no new rollouts."""


@dataclass(slots=True)
class _Run:
    """A rollout this daemon is running (or about to: ``engine`` is None until it holds the lease)."""

    rollout_id: str
    client: CphClient
    engine: RolloutEngine | None = None
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str | None = None
    calls_before: Mapping[str, int] = field(default_factory=dict)
    """The journal's call totals when this run started (the run's own calls are added live)."""

    def stop(self, reason: str) -> None:
        """Stop submitting (now, or as soon as the engine exists)."""
        self.stop_reason = reason
        if self.engine is not None:
            self.engine.request_stop(reason)


class RolloutManager:
    """Runs several rollouts at once on one journal and one account's budgets.

    ``store`` is the open journal (the manager closes nothing it did not open: the caller closes
    it after :meth:`shutdown`); ``settings`` gives the CPH client and the rollout defaults.
    """

    def __init__(
        self, *, store: RolloutStore, settings: Settings, clock: Clock | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock or SystemClock()
        self.budgets = Budgets.for_account(engine_options(Policy(), settings.rollout), self._clock)
        self._runs: dict[str, _Run] = {}
        self._ended_calls: Counter[str] = Counter()
        self._journal_counts: dict[str, Mapping[str, int]] = {}
        self.metrics = DaemonMetrics(self._metrics_view)
        self.ready = False
        self._accepting = True

    # -- starting rollouts ---------------------------------------------------------------------

    async def submit(self, body: Mapping[str, Any]) -> str:
        """Validate a plan (``PlanError``), record it, start it; returns its rollout ID."""
        if not self._accepting:
            raise ShuttingDownError("the daemon is stopping")
        data = dict(body)
        rollout_id = _checked_id(data.pop("id", None))
        loaded = load_plan_data(data)
        if rollout_id in self._runs or await self._exists(rollout_id):
            raise RolloutExistsError(f"rollout {rollout_id!r} already exists")
        client = await open_client(self._settings.cph, clock=self._clock)
        try:
            targets = await resolve_targets(loaded, client, clock=self._clock)
            options = engine_options(loaded.plan.policy, self._settings.rollout)
            records = await create_rollout(
                self._store,
                rollout_id=rollout_id,
                name=loaded.plan.name,
                targets=[(t.index, t.phone_id, t.update) for t in targets],
                options=options,
                plan_source="daemon request",
            )
        except BaseException:
            await client.close()
            raise

        async def prepare() -> tuple[Sequence[Target], list[PhoneRecord]]:
            return targets, records

        log.info(
            "daemon.rollout_accepted", rollout_id=rollout_id, name=loaded.plan.name,
            phones=len(targets),
        )  # fmt: skip
        self._start(rollout_id, loaded.plan.name, options, client, prepare, {})
        return rollout_id

    async def recover(self) -> list[str]:
        """Resume every unfinished rollout of the journal; ready once each holds its lease."""
        resumed = []
        for meta in await self._store.list_rollouts():
            if not ended(meta) and meta.rollout_id not in self._runs:
                await self._resume(meta)
                resumed.append(meta.rollout_id)
        waits = [run.started.wait() for run in self._runs.values()]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), RECOVERY_WAIT_S)
        self.ready = True
        return resumed

    async def _resume(self, meta: RolloutMeta) -> None:
        rollout_id = meta.rollout_id

        async def prepare() -> tuple[Sequence[Target], list[PhoneRecord]]:
            return await load_for_resume(self._store, rollout_id)

        client = await open_client(self._settings.cph, clock=self._clock)
        options = options_from_data(meta.options)
        self._start(rollout_id, meta.name, options, client, prepare, meta.api_calls)

    def _start(
        self,
        rollout_id: str,
        name: str,
        options: EngineOptions,
        client: CphClient,
        prepare: Prepare,
        calls_before: Mapping[str, int],
    ) -> None:
        run = _Run(rollout_id, client, calls_before=calls_before)
        self._runs[rollout_id] = run
        drive = self._drive(run, name, options, prepare, calls_before)
        run.task = asyncio.create_task(drive, name=f"rollout {rollout_id}")

    async def _drive(
        self,
        run: _Run,
        name: str,
        options: EngineOptions,
        prepare: Prepare,
        calls_before: Mapping[str, int],
    ) -> None:
        """Run one rollout under its lease and record how it ended; never raises."""

        async def drive(engine: RolloutEngine) -> RolloutResult:
            run.engine = engine
            run.started.set()
            if run.stop_reason is not None:
                engine.request_stop(run.stop_reason)
            return await engine.run()

        try:
            result = await run_journaled(
                self._store,
                rollout_id=run.rollout_id,
                name=name,
                prepare=prepare,
                options=options,
                client=run.client,
                drive=drive,
                calls_before=calls_before,
                budgets=self.budgets,
                wrap_journal=lambda journal: TimedJournal(journal, self.metrics, self._clock),
                clock=self._clock,
            )
            if result.status is not RolloutStatus.INTERRUPTED:  # ended: it is read, not run
                await self._compact(run.rollout_id)
        except LeaseHeldError as error:
            log.warning("daemon.rollout_skipped", rollout_id=run.rollout_id, reason=str(error))
        except Exception as error:  # one rollout's failure must not stop the daemon
            log.error("daemon.rollout_failed", rollout_id=run.rollout_id, error=repr(error))
        finally:
            run.started.set()
            self._ended_calls.update(run.client.calls)
            self._runs.pop(run.rollout_id, None)
            await run.client.close()

    async def _compact(self, rollout_id: str) -> None:
        """Fold the ended rollout's change log; a failure leaves reads exact, so only log it."""
        try:
            await compact_journal(self._store, rollout_id)
        except OrchestratorError as error:
            log.error("journal.failed", rollout_id=rollout_id, error=str(error), phones=0)

    async def _exists(self, rollout_id: str) -> bool:
        try:
            await self._store.get_rollout(rollout_id)
        except RolloutNotFoundError:
            return False
        return True

    # -- reading -------------------------------------------------------------------------------

    async def status(self, rollout_id: str) -> dict[str, Any]:
        """Status, counts per state, rate and ETA: live while running, else from the journal."""
        return self._row(await self._store.get_rollout(rollout_id))

    async def list_all(self) -> list[dict[str, Any]]:
        """Every rollout of the journal, newest first."""
        return [self._row(meta) for meta in await self._store.list_rollouts()]

    def _row(self, meta: RolloutMeta) -> dict[str, Any]:
        run = self._runs.get(meta.rollout_id)
        if run is None or run.engine is None:
            return {**status_row(meta), "live": False}
        engine = run.engine
        snapshot = engine.snapshot()
        live = dataclasses.replace(
            meta,
            counts={state: snapshot[state] for state in PhoneState},
            api_calls=merged_calls(run.calls_before, engine.api_calls()),
        )
        rate = {
            key: snapshot[key]
            for key in (
                "elapsed_s",
                "phones_per_s",
                "eta_s",
                "submit_rate_per_s",
                "query_rate_per_s",
            )
        }
        return {**status_row(live), "live": True, "paused": engine.paused, "rate": rate}

    async def phones(
        self,
        rollout_id: str,
        *,
        state: str | None,
        error_code: str | None,
        offset: int,
        limit: int | None,
    ) -> dict[str, Any]:
        """One page of a rollout's phones from the journal, in fleet order."""
        wanted = _checked_state(state)
        if offset < 0 or (limit is not None and not 1 <= limit <= MAX_PAGE_LIMIT):
            raise InvalidRequestError(f"offset must be >= 0 and limit 1..{MAX_PAGE_LIMIT}")
        page_size = limit or DEFAULT_PAGE_LIMIT
        await self._store.get_rollout(rollout_id)
        records = await self._store.phones(
            rollout_id, state=wanted, error_code=error_code, offset=offset, limit=page_size
        )
        more = len(records) == page_size
        return {
            "rollout_id": rollout_id,
            "offset": offset,
            "limit": page_size,
            "phones": [phone_row(record) for record in records],
            "next_offset": offset + len(records) if more else None,
        }

    # -- control -------------------------------------------------------------------------------

    async def _engine_of(self, rollout_id: str) -> RolloutEngine:
        run = self._runs.get(rollout_id)
        if run is not None:
            await run.started.wait()
        if run is None or run.engine is None:
            meta = await self._store.get_rollout(rollout_id)
            raise NotRunningError(f"rollout {rollout_id!r} is not running here ({meta.status})")
        return run.engine

    async def pause(self, rollout_id: str) -> dict[str, Any]:
        """No new submits; jobs in flight are tracked to their end."""
        (await self._engine_of(rollout_id)).pause()
        return await self.status(rollout_id)

    async def resume(self, rollout_id: str) -> dict[str, Any]:
        """Submit again after a pause."""
        (await self._engine_of(rollout_id)).unpause()
        return await self.status(rollout_id)

    async def cancel(self, rollout_id: str) -> dict[str, Any]:
        """Abort: phones not yet sent are cancelled, running jobs are tracked to their end."""
        (await self._engine_of(rollout_id)).cancel("cancelled through the daemon API")
        return await self.status(rollout_id)

    async def shutdown(self) -> None:
        """Take no more rollouts; stop submitting; track what is in flight until the grace ends.

        Each run records its end (``interrupted``) in the journal; a run still busy after the
        grace and a margin is cancelled, and its journal already says ``running``: the next
        start resumes it either way.
        """
        self._accepting = False
        runs = list(self._runs.values())
        for run in runs:
            run.stop("daemon stopping")
        tasks = [run.task for run in runs if run.task is not None]
        if not tasks:
            return
        grace = max((run.engine.options.stop_grace_s for run in runs if run.engine), default=0.0)
        _, late = await asyncio.wait(tasks, timeout=grace + SHUTDOWN_MARGIN_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    def running_ids(self) -> list[str]:
        """The rollouts this daemon runs now."""
        return list(self._runs)

    # -- metrics -------------------------------------------------------------------------------

    async def refresh_metrics(self) -> None:
        """Read the journal's counts of every rollout not running here (before a scrape)."""
        metas = await self._store.list_rollouts()
        self._journal_counts = {meta.rollout_id: dict(meta.counts) for meta in metas}

    def _metrics_view(self) -> MetricsView:
        phones = dict(self._journal_counts)
        live_calls = []
        for rollout_id, run in self._runs.items():
            live_calls.append(run.client.calls)
            if run.engine is not None:
                phones[rollout_id] = {state: run.engine.table.counts[state] for state in PhoneState}
        return MetricsView(
            phones=phones,
            api_calls=merged_calls(self._ended_calls, *live_calls),
            rates={
                "submit": self.budgets.submit.rate.rate_per_s,
                "query": self.budgets.query.rate.rate_per_s,
            },
            running=sum(1 for run in self._runs.values() if run.engine is not None),
        )


def _checked_id(value: Any) -> str:
    if value is None:
        return new_rollout_id()
    if not is_rollout_id(value):
        raise InvalidRequestError(f"id must be {ROLLOUT_ID_RULE}")
    return value


def _checked_state(value: str | None) -> PhoneState | None:
    if value is None or value == "":
        return None
    try:
        return PhoneState(value)
    except ValueError:
        states = ", ".join(state.value for state in PhoneState)
        raise InvalidRequestError(f"unknown state {value!r} (one of {states})") from None
