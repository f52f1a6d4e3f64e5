"""The rollout's lifecycle: set up its phones and waves, run the submitter and the tracker, stop,
pause or cancel on request, and turn the end state into a :class:`RolloutResult`.

Two long-lived tasks share one :class:`~orchestrator.engine.run_state.RunState`: the
:class:`~orchestrator.engine.submitter.Submitter` sends batches of ready phones whenever the submit
budget allows, and the :class:`~orchestrator.engine.tracker.Tracker` polls ListJobs for requests
whose jobs should have ended. Both report each phone's ended attempt back to the engine
(:class:`~orchestrator.engine.run_state.PhoneOutcomes`), which applies the retry policy and the
abort gate. Each request runs in its own task and releases its budget place when it ends. All
state lives in this single event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog

from orchestrator.clock import Clock, SystemClock
from orchestrator.cph.api import ApiFamily, CphApi
from orchestrator.cph.models import PropertyUpdate
from orchestrator.engine.journal import Journal, MemoryJournal
from orchestrator.engine.options import EngineOptions, RestartMode
from orchestrator.engine.policy import RetryAction, abort_reason
from orchestrator.engine.polling import PollTiming
from orchestrator.engine.rate import AdaptiveRate, Budget
from orchestrator.engine.run_state import RunState, StopKind, log_retry_scheduled
from orchestrator.engine.states import PhoneRecord, PhoneState, Stage, StateTable
from orchestrator.engine.submitter import Submitter
from orchestrator.engine.tracker import Tracker
from orchestrator.plan import wave_sizes

__all__ = [
    "Budgets",
    "RolloutEngine",
    "RolloutResult",
    "RolloutStatus",
    "Target",
    "summarize_calls",
]

log = structlog.get_logger("orchestrator.engine")

SHUTDOWN_FLUSH_S = 5.0
"""How long in-flight requests and journal writes may take to finish once a run has ended."""


class Target(Protocol):
    """One phone to update: its ID and the size-checked wire item to send."""

    @property
    def phone_id(self) -> str: ...

    @property
    def update(self) -> PropertyUpdate: ...


@dataclass(frozen=True, slots=True)
class Budgets:
    """An account's submit and query budgets, shared by every rollout that runs on it.

    Each rollout's submitter waits for one in-flight place at a time, and the places are handed
    out first come, first served (``asyncio.Semaphore`` is FIFO), so rollouts sharing a budget
    take turns: none can starve another.
    """

    submit: Budget
    query: Budget

    @classmethod
    def for_account(cls, options: EngineOptions, clock: Clock) -> Budgets:
        """Budgets sized by ``options`` (rates and in-flight caps)."""
        return cls(
            _own_budget(ApiFamily.SUBMIT, options, clock),
            _own_budget(ApiFamily.QUERY, options, clock),
        )

    def __getitem__(self, family: ApiFamily) -> Budget:
        """The budget of one API family."""
        return self.submit if family is ApiFamily.SUBMIT else self.query


def _own_budget(family: ApiFamily, options: EngineOptions, clock: Clock) -> Budget:
    submit = family is ApiFamily.SUBMIT
    return Budget(
        family,
        AdaptiveRate(options.submit_rate_per_s if submit else options.query_rate_per_s),
        max_in_flight=options.max_submits_in_flight if submit else options.max_queries_in_flight,
        clock=clock,
    )


class RolloutStatus(StrEnum):
    """How a rollout ended (the report's ``status``)."""

    SUCCEEDED = "succeeded"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class RolloutResult:
    """What a finished run tells the command line and the report."""

    rollout_id: str
    name: str
    status: RolloutStatus
    reason: str | None
    fatal: bool
    counts: dict[str, int]
    api_calls: dict[str, int]
    records: Sequence[PhoneRecord]
    elapsed_s: float


class RolloutEngine:
    """Runs one rollout to its end: every phone succeeded, failed (with a reason) or cancelled.

    ``request_stop()`` (a signal) stops submitting and tracks what is in flight until
    ``stop_grace_s``; the abort gate stops submitting, cancels the phones not yet sent, and lets
    running jobs end. ``pause()`` and ``unpause()`` hold and release the submitter. A rollout
    continued from the journal (*resumed*) is a new engine given the journal's ``records``.
    """

    def __init__(
        self,
        *,
        rollout_id: str,
        name: str,
        targets: Sequence[Target],
        client: CphApi,
        options: EngineOptions,
        clock: Clock | None = None,
        journal: Journal | None = None,
        records: Sequence[PhoneRecord] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.rollout_id = rollout_id
        self.name = name
        self.options = options
        self._client = client
        self._clock = clock or SystemClock()
        self._on_progress = on_progress
        self._updates = {t.phone_id: t.update for t in targets}
        self._waves = self._assign_waves(records or self._fresh_records(targets))
        self.table = StateTable(itertools.chain.from_iterable(self._waves))
        self._run = RunState(
            table=self.table,
            options=options,
            clock=self._clock,
            journal=journal or MemoryJournal(),
            wave_left=[sum(1 for r in wave if not r.terminal) for wave in self._waves],
        )
        self.progress = self._run.progress
        own = budgets or Budgets.for_account(options, self._clock)
        self._submit = own[ApiFamily.SUBMIT]
        self._query = own[ApiFamily.QUERY]
        self._timing = PollTiming(first_poll_s=options.first_poll_s)
        self._grace: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._tracker = Tracker(
            run=self._run, client=client, budget=self._query, timing=self._timing, outcomes=self
        )
        self._submitter = Submitter(
            run=self._run,
            client=client,
            budget=self._submit,
            updates=self._updates,
            waves=self._waves,
            outcomes=self,
            tracker=self._tracker,
        )

    # -- set-up ------------------------------------------------------------------------------

    @staticmethod
    def _fresh_records(targets: Sequence[Target]) -> list[PhoneRecord]:
        return [PhoneRecord(index=i, phone_id=t.phone_id) for i, t in enumerate(targets)]

    def _assign_waves(self, records: Sequence[PhoneRecord]) -> list[list[PhoneRecord]]:
        ordered = sorted(records, key=lambda r: r.index)
        waves: list[list[PhoneRecord]] = []
        start = 0
        for number, size in enumerate(wave_sizes(self.options.waves, len(ordered))):
            wave = ordered[start : start + size]
            for record in wave:
                record.wave = number
            waves.append(wave)
            start += size
        return waves

    def _restore_live_records(self) -> None:
        """Phones restored from a journal: re-track running jobs, requeue what was never sent."""
        running: list[PhoneRecord] = []
        for record in self.table:
            if record.state in (PhoneState.SUBMITTING, PhoneState.RETRY_WAIT):
                self.table.move(record, PhoneState.PENDING)  # resent in its wave
            if record.state is PhoneState.RUNNING and not (record.request_id and record.job_id):
                self.table.move(record, PhoneState.RETRY_WAIT)
                self.table.move(record, PhoneState.PENDING)
            if record.state is PhoneState.RUNNING:
                running.append(record)
        self._tracker.adopt(running)

    # -- public --------------------------------------------------------------------------------

    async def run(self) -> RolloutResult:
        """Drive the rollout until every phone is terminal, it aborts, or a stop's grace ends."""
        structlog.contextvars.bind_contextvars(rollout_id=self.rollout_id)
        self._started_at = self._clock.monotonic()
        log.info(
            "rollout.started",
            name=self.name,
            phones=len(self.table),
            waves=[len(w) for w in self._waves],
            batch_size=self.options.batch_size,
            submit_rate_per_s=self.options.submit_rate_per_s,
            query_rate_per_s=self.options.query_rate_per_s,
        )
        self._restore_live_records()
        loops = [
            asyncio.create_task(self._submitter.run(), name="submitter"),
            asyncio.create_task(self._tracker.run(), name="tracker"),
            asyncio.create_task(self._progress_loop(), name="progress"),
        ]
        for loop_task in loops:
            loop_task.add_done_callback(self._run.task_done)
        self._run.check_done()
        try:
            await self._run.finished.wait()
        finally:
            await self._shutdown(loops)
        return self._result()

    def request_stop(self, reason: str = "interrupted by signal") -> None:
        """Stop submitting; keep tracking in-flight jobs until the grace period ends."""
        if self._run.stop is not None:
            return
        self._run.set_stop(StopKind.INTERRUPT, reason)
        self._grace = asyncio.create_task(self._grace_timer(), name="grace")

    def halt(self, reason: str) -> None:
        """Stop at once, sending and tracking nothing more (the lease was lost to another
        runner, which carries on from the journal)."""
        if self._run.stop is not StopKind.FATAL:
            self._run.stop_fatal(reason)

    def cancel(self, reason: str = "cancelled") -> None:
        """Abort on request: as the abort gate does."""
        self._abort(reason)

    def pause(self) -> None:
        """Stop sending new batches; jobs in flight are still tracked to their end."""
        if self._run.running.is_set():
            self._run.running.clear()
            log.info("rollout.paused", **self._count_fields())

    def unpause(self) -> None:
        """Send again after :meth:`pause`."""
        if not self._run.running.is_set():
            self._run.running.set()
            self._run.wake_submit.set()
            log.info("rollout.resumed", **self._count_fields())

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`unpause`."""
        return not self._run.running.is_set()

    # -- per-phone outcomes (called by the submitter and the tracker) ----------------------------

    def fail_or_retry(
        self, record: PhoneRecord, code: str, message: str, *, request_id: str | None
    ) -> None:
        """The attempt failed with ``code``: retry after a backoff if the policy allows, else fail.

        A phone that may retry is cancelled instead once the rollout aborted or failed fatally.
        """
        record.error_code, record.error_msg = code, message
        decision = self.options.retry.decide(code, record.attempts, self._run.rng)
        if decision.action is RetryAction.FAIL:
            self.fail(record, code, message, request_id)
            return
        if self._run.stopping:
            self.table.move(record, PhoneState.CANCELLED)
            self._run.phone_terminal(record)
            return
        self.table.move(record, PhoneState.RETRY_WAIT)
        self._submitter.schedule_retry(record, decision.delay_s)
        log_retry_scheduled(record, code, message, decision.delay_s, request_id)

    def fail(self, record: PhoneRecord, code: str, message: str, request_id: str | None) -> None:
        """The phone failed for good; the abort gate may now trip."""
        record.error_code, record.error_msg = code, message
        self.table.move(record, PhoneState.FAILED)
        log.warning(
            "phone.failed",
            phone_id=record.phone_id,
            error_code=code,
            error_msg=message,
            attempts=record.attempts,
            request_id=request_id,
            job_id=record.job_id,
            stage=str(record.stage),
        )
        self._run.phone_terminal(record)
        self._check_abort_gate()

    def succeed(self, record: PhoneRecord) -> None:
        """The phone's job succeeded: done, or on to its restart stage when one is wanted."""
        record.error_code = record.error_msg = None
        if record.stage is Stage.UPDATE and self._restart_wanted(record):
            self._begin_restart(record)
            return
        self.table.move(record, PhoneState.SUCCEEDED)
        self._run.phone_terminal(record)
        self._check_abort_gate()  # a success can bring the executed count up to min_executed

    def _restart_wanted(self, record: PhoneRecord) -> bool:
        if self.options.restart is RestartMode.ALWAYS:
            return True
        if self.options.restart is RestartMode.NEVER:
            return False
        names = self._property_names(record.phone_id)
        return not names.isdisjoint(self.options.restart_properties)

    def _property_names(self, phone_id: str) -> frozenset[str]:
        try:
            decoded = json.loads(self._updates[phone_id].property)
        except (KeyError, ValueError):
            return frozenset()
        return frozenset(decoded) if isinstance(decoded, dict) else frozenset()

    def _begin_restart(self, record: PhoneRecord) -> None:
        """The update took; now the restart stage, with its own attempts."""
        record.stage = Stage.RESTART
        record.attempts = 0
        record.job_id = None
        if self._run.stopping:
            record.error_msg = "properties updated, but the restart was not sent: rollout stopped"
            self.table.move(record, PhoneState.CANCELLED)
            self._run.phone_terminal(record)
            return
        self.table.move(record, PhoneState.PENDING)
        if self._run.stop is None:
            self._submitter.enqueue(record)

    def _check_abort_gate(self) -> None:
        counts = self.table.counts
        reason = abort_reason(
            succeeded=counts[PhoneState.SUCCEEDED],
            failed=counts[PhoneState.FAILED],
            thresholds=self.options.abort,
        )
        if reason is not None:
            self._abort(reason)

    def _abort(self, reason: str) -> None:
        if self._run.stopping:
            return
        self._run.set_stop(StopKind.ABORT, reason)
        cancelled = 0
        for record in self.table:
            if record.state in (PhoneState.PENDING, PhoneState.RETRY_WAIT):
                self.table.move(record, PhoneState.CANCELLED)
                record.error_msg = f"not sent: {reason}"
                self._run.wave_left[record.wave] -= 1
                cancelled += 1
        log.error("rollout.aborted", reason=reason, cancelled_now=cancelled, **self._count_fields())
        terminal = [r for r in self.table if r.terminal]
        self._run.spawn(self._persist_quietly(terminal), name="journal")
        self._run.check_done()

    async def _persist_quietly(self, records: Sequence[PhoneRecord]) -> None:
        await self._run.persist(records)

    # -- progress and the end ------------------------------------------------------------------

    async def _grace_timer(self) -> None:
        await self._clock.sleep(self.options.stop_grace_s)
        self._run.finished.set()

    async def _progress_loop(self) -> None:
        finished = self._run.finished
        while not finished.is_set():
            await self._run.wait(finished, self.options.progress_interval_s)
            snapshot = self.snapshot()
            log.info("rollout.progress", **snapshot)
            if self._on_progress is not None:
                try:
                    self._on_progress(snapshot)
                except Exception as error:  # a display must not stop a rollout
                    log.warning("engine.task_failed", task="on_progress", error=repr(error))

    def snapshot(self) -> dict[str, Any]:
        """Counts, rates and ETA for progress displays and the daemon's status."""
        elapsed = max(1e-9, self._clock.monotonic() - self._started_at)
        done = self.table.terminal_count
        rate = done / elapsed
        left = len(self.table) - done
        return {
            **self._count_fields(),
            "elapsed_s": round(elapsed, 1),
            "phones_per_s": round(rate, 2),
            "eta_s": round(left / rate, 1) if rate > 0 else None,
            "submit_rate_per_s": round(self._submit.rate.rate_per_s, 2),
            "query_rate_per_s": round(self._query.rate.rate_per_s, 2),
        }

    def _count_fields(self) -> dict[str, int]:
        return {str(state): self.table.counts[state] for state in PhoneState} | {
            "total": len(self.table)
        }

    def api_calls(self) -> dict[str, int]:
        """Calls by family, as the report shows them."""
        return summarize_calls(self._client.calls)

    async def _shutdown(self, loops: list[asyncio.Task[None]]) -> None:
        """Stop the loops; let in-flight work finish its journal writes for a moment, then cancel.

        When the last phone turns terminal, the task that moved it is still writing that to
        the journal: cancelling it would lose the write.
        """
        if self._grace is not None:
            loops = [*loops, self._grace]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        tasks = self._run.tasks
        if tasks:
            await asyncio.wait(set(tasks), timeout=SHUTDOWN_FLUSH_S)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()

    def _result(self) -> RolloutResult:
        for record in self.table:
            if record.state is PhoneState.SUBMITTING:  # the answer never came: resend on resume
                self.table.move(record, PhoneState.PENDING)
        counts = self.table.count_summary()
        status = self._status(counts)
        result = RolloutResult(
            rollout_id=self.rollout_id,
            name=self.name,
            status=status,
            reason=self._run.reason,
            fatal=self._run.stop is StopKind.FATAL,
            counts=counts,
            api_calls=self.api_calls(),
            records=list(self.table),
            elapsed_s=self._clock.monotonic() - self._started_at,
        )
        event = "rollout.finished"
        log.info(event, status=str(status), reason=self._run.reason, **counts, **result.api_calls)
        return result

    def _status(self, counts: dict[str, int]) -> RolloutStatus:
        """Aborted only by the abort gate or a cancel; phones left open make it resumable."""
        if self._run.stop is StopKind.ABORT:
            return RolloutStatus.ABORTED
        if counts["pending"]:
            return RolloutStatus.INTERRUPTED
        if counts["failed"]:
            return RolloutStatus.COMPLETED_WITH_FAILURES
        return RolloutStatus.SUCCEEDED


def summarize_calls(calls: Mapping[str, int]) -> dict[str, int]:
    """A client's call counter (``"submit.ok"``, ``"query.throttled"`` …) as the report shows it:
    calls per API family, and how many of them were throttled."""
    by_family = {
        str(family): sum(n for key, n in calls.items() if key.startswith(f"{family}."))
        for family in ApiFamily
    }
    return by_family | {
        "throttled": sum(n for key, n in calls.items() if key.endswith(".throttled"))
    }
