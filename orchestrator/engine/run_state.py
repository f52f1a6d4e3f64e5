"""What the runner, the submitter and the tracker of one rollout share.

:class:`RunState` holds the phones' :class:`~orchestrator.engine.states.StateTable`, the stop (if
any), the events that wake the loops, the progress counters, and the few services every loop needs:
journal writes that stop the run when they fail, tasks whose crash stops it, and waits on the
injected clock that end when the run does. :class:`PhoneOutcomes` is what the submitter and tracker
call back into the runner when a phone's attempt ended. Everything runs in one event loop, so
nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog

from orchestrator.clock import Clock
from orchestrator.cph.errors import ApiError
from orchestrator.engine.journal import Journal
from orchestrator.engine.options import EngineOptions
from orchestrator.engine.rate import Budget
from orchestrator.engine.states import PhoneRecord, PhoneState, StateTable
from orchestrator.errors import FencedError, OrchestratorError

__all__ = [
    "MIN_REQUEST_FAILURES",
    "REQUEST_FAILURES_PER_ATTEMPT",
    "PhoneOutcomes",
    "Progress",
    "RunState",
    "StopKind",
    "log_retry_scheduled",
    "note_throttled",
]

log = structlog.get_logger("orchestrator.engine")

MIN_REQUEST_FAILURES = 6
REQUEST_FAILURES_PER_ATTEMPT = 2
"""Whole-request failures a phone may see, per attempt it is allowed, before it fails; as many
requests in a row without any answer mean the cloud cannot be reached, and the run stops."""


class StopKind(StrEnum):
    """Why a run stopped sending before every phone was done."""

    ABORT = "abort"
    """The abort gate or a cancel: unsent phones are cancelled, running jobs tracked to their end."""
    INTERRUPT = "interrupt"
    """A signal: stop sending, track what is in flight until the grace period ends."""
    FATAL = "fatal"
    """Credentials, the account, the journal or a bug: nothing more can be done."""


@dataclass(slots=True)
class Progress:
    """Counters shown in progress events and the report."""

    batches: int = 0
    resends_outcome_unknown: int = 0
    splits: int = 0
    show_job_calls: int = 0
    timeouts: int = 0


class PhoneOutcomes(Protocol):
    """The runner's verdicts on a phone whose attempt ended, called by the submitter and tracker."""

    def succeed(self, record: PhoneRecord) -> None:
        """The phone's job succeeded: it is done, or goes on to its restart stage."""
        ...

    def fail_or_retry(
        self, record: PhoneRecord, code: str, message: str, *, request_id: str | None
    ) -> None:
        """The attempt failed with ``code``: retry later if the policy allows, else fail."""
        ...

    def fail(self, record: PhoneRecord, code: str, message: str, request_id: str | None) -> None:
        """The phone failed for good."""
        ...


class RunState:
    """One run's shared state and the services its loops share."""

    def __init__(
        self,
        *,
        table: StateTable,
        options: EngineOptions,
        clock: Clock,
        journal: Journal,
        wave_left: list[int],
    ) -> None:
        self.table = table
        self.options = options
        self.clock = clock
        self.journal = journal
        self.rng = random.Random(options.seed)
        self.wave_left = wave_left
        """Phones of each wave that are not terminal yet."""
        self.progress = Progress()
        self.stop: StopKind | None = None
        self.reason: str | None = None
        self.running = asyncio.Event()
        """Set unless paused."""
        self.running.set()
        self.finished = asyncio.Event()
        self.wake_submit = asyncio.Event()
        self.wake_track = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.max_request_failures = max(
            MIN_REQUEST_FAILURES, REQUEST_FAILURES_PER_ATTEMPT * options.retry.max_attempts
        )
        self.unanswered_in_a_row = 0
        """Requests in a row that got no HTTP answer at all; any answer resets it."""

    @property
    def stopping(self) -> bool:
        """True once an abort or a fatal error stopped the run: no phone may be sent again."""
        return self.stop in (StopKind.ABORT, StopKind.FATAL)

    def set_stop(self, kind: StopKind, reason: str) -> None:
        """Record the stop and wake both loops so that they see it."""
        self.stop = kind
        self.reason = reason
        self.wake_submit.set()
        self.wake_track.set()

    def stop_fatal(self, reason: str) -> None:
        """Stop the run at once: nothing more can be done."""
        self.set_stop(StopKind.FATAL, reason)
        self.finished.set()

    def note_answered(self) -> None:
        """A request got an HTTP answer (any status): the cloud is reachable."""
        self.unanswered_in_a_row = 0

    def note_unanswered(self, error: ApiError) -> bool:
        """A request got no answer at all; True (and the run stopped) when the cloud has been
        unreachable for too many requests in a row.

        Phones keep their state: a network that is down is not a phone failure, and the
        rollout stays resumable once the cloud can be reached again.
        """
        self.unanswered_in_a_row += 1
        if self.unanswered_in_a_row < self.max_request_failures:
            return False
        if self.stop is not StopKind.FATAL:
            log.error("api.error", fatal=True, phones=0, **error.log_fields())
            self.stop_fatal(
                f"the CPH API cannot be reached: {self.unanswered_in_a_row} requests in a row"
                f" got no answer (last: {error}); resume the rollout once it can be reached"
            )
        return True

    def check_done(self) -> None:
        """Finish when every phone is terminal, or when stopped and nothing is in flight."""
        if self.finished.is_set():
            return
        if self.table.terminal_count == len(self.table):
            self.finished.set()
            return
        counts = self.table.counts
        in_flight = counts[PhoneState.SUBMITTING] + counts[PhoneState.RUNNING]
        if self.stop is not None and in_flight == 0:
            self.finished.set()

    def phone_terminal(self, record: PhoneRecord) -> None:
        """A phone reached a terminal state: its wave may be done, and so may the run."""
        self.wave_left[record.wave] -= 1
        self.wake_submit.set()
        self.check_done()

    async def persist(self, records: Sequence[PhoneRecord]) -> bool:
        """Journal these records; on failure stop the rollout (nothing unrecorded is sent).

        Called with no records too: the journal then records only the API calls made since
        its last write, so the rollout's call counts survive a crash.
        """
        try:
            await self.journal.save(records)
        except OrchestratorError as error:
            if self.stop is not StopKind.FATAL:
                log.error("journal.failed", error=str(error), phones=len(records))
                fenced = isinstance(error, FencedError)
                self.stop_fatal(str(error) if fenced else f"the journal cannot be written: {error}")
            return False
        return True

    def spawn(self, coroutine: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run ``coroutine`` as a task of this run; a crash in it stops the run."""
        task = asyncio.create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.task_done)

    def task_done(self, task: asyncio.Task[None]) -> None:
        """Forget an ended task; if it raised, log it and stop the run (fatal)."""
        self.tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("engine.task_failed", task=task.get_name(), error=repr(error))
        self.stop_fatal(f"internal error in {task.get_name()}: {error!r}")

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> None:
        """Wait for ``event`` or ``timeout_s`` on the injected clock, or the run's end."""
        if event.is_set():
            return
        waiter = asyncio.create_task(event.wait())
        sleeper = (
            asyncio.create_task(self.clock.sleep(timeout_s)) if timeout_s is not None else None
        )
        pending = {waiter} | ({sleeper} if sleeper else set())
        stop_waiter = asyncio.create_task(self.finished.wait())
        try:
            await asyncio.wait(pending | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper, stop_waiter):
                if task is not None:
                    task.cancel()


def note_throttled(
    budget: Budget, error: ApiError, sent_at: float, retry_after_s: float | None, **fields: int
) -> None:
    """Tell the budget (it cuts its rate once per burst) and log ``api.throttled``."""
    cut = budget.on_throttled(sent_at=sent_at, retry_after_s=retry_after_s)
    log.warning(
        "api.throttled",
        family=str(budget.name),
        request_id=error.request_id,
        retry_after_s=retry_after_s,
        rate_per_s=round(budget.rate.rate_per_s, 3),
        rate_cut=cut,
        **fields,
    )


def log_retry_scheduled(
    record: PhoneRecord, code: str, message: str, delay_s: float, request_id: str | None
) -> None:
    """Log ``phone.retry_scheduled`` for a phone that waits ``delay_s`` before its next try."""
    log.info(
        "phone.retry_scheduled",
        phone_id=record.phone_id,
        error_code=code,
        error_msg=message,
        attempts=record.attempts,
        delay_s=round(delay_s, 3),
        request_id=request_id,
        stage=str(record.stage),
    )
