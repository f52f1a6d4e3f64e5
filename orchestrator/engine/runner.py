"""The rollout loop: waves of batches submitted under the submit budget, jobs tracked under the
query budget, every outcome turned into a state change through the pure policies.

Two long-lived tasks share one :class:`~orchestrator.engine.states.FleetTable`: the *submitter*
forms batches from ready phones whenever the submit budget allows, and the *tracker* polls ListJobs
for requests whose jobs should have ended. Each request runs in its own task and releases its
budget place when it ends. All state lives in this single event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import structlog

from orchestrator.clock import Clock, SystemClock
from orchestrator.cph.api import CphApi
from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from orchestrator.cph.models import BatchJobsResponse, Job, JobStatus, PropertyUpdate
from orchestrator.engine.journal import Journal, MemoryJournal
from orchestrator.engine.options import SHOW_JOB_AFTER_MISSES, EngineOptions, RestartMode
from orchestrator.engine.policy import (
    JOB_FAILED_CODE,
    JOB_TIMEOUT_CODE,
    JOB_VANISHED_CODE,
    MISSING_FROM_ANSWER_CODE,
    REQUEST_FAILED_CODE,
    RetryAction,
    abort_reason,
    full_jitter_backoff_s,
)
from orchestrator.engine.polling import PollTiming
from orchestrator.engine.rate import AdaptiveRate, Budget
from orchestrator.engine.states import FleetTable, PhoneRecord, PhoneState, Stage
from orchestrator.errors import OrchestratorError
from orchestrator.plan import wave_sizes

__all__ = ["Budgets", "RolloutEngine", "RolloutResult", "RolloutStatus", "Target"]

log = structlog.get_logger("orchestrator.engine")

ACCOUNT_LEVEL_CODES = frozenset({"CPS.0001", "CPS.0006", "CPS.0007", "CPS.0008"})
"""Whole-request rejections that no split can fix: permissions, arrears, frozen, unverified."""
LIST_JOBS_MAX_IDS = 20
LIST_JOBS_PAGE = 100
POLL_RETRY_S = 1.0
LEARN_PER_POLL = 8
"""Job durations learnt from one poll's answer: a sample is enough, and parsing all costs CPU."""
SHUTDOWN_FLUSH_S = 5.0
"""How long in-flight requests and journal writes may take to finish once a run has ended."""
MIN_REQUEST_FAILURES = 6
REQUEST_FAILURES_PER_ATTEMPT = 2
"""Whole-request failures a phone may see, per attempt it is allowed, before it fails."""


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
        return cls(_own_budget("submit", options, clock), _own_budget("query", options, clock))


def _own_budget(family: str, options: EngineOptions, clock: Clock) -> Budget:
    submit = family == "submit"
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


class _Stop(StrEnum):
    ABORT = "abort"
    INTERRUPT = "interrupt"
    FATAL = "fatal"


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


@dataclass(slots=True)
class _Track:
    """The jobs of one batch request that are still being watched."""

    request_id: str
    submitted_at: float
    jobs: dict[str, PhoneRecord] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    last_polled_at: float = 0.0
    job_total: int | None = None
    """Jobs ListJobs holds for this request: those the batch answer gave an ID (finished ones
    included). None for a request restored from the journal, where it is not known."""


@dataclass(slots=True)
class _Progress:
    """Counters shown in progress events and the report."""

    batches: int = 0
    resends_outcome_unknown: int = 0
    splits: int = 0
    show_job_calls: int = 0
    timeouts: int = 0


class RolloutEngine:
    """Runs one rollout to its end: every phone succeeded, failed (with a reason) or cancelled.

    ``request_stop()`` (a signal) stops submitting and tracks what is in flight until
    ``stop_grace_s``; the abort gate stops submitting, cancels the phones not yet sent, and lets
    running jobs end.
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
        self._journal = journal or MemoryJournal()
        self._on_progress = on_progress
        self._rng = random.Random(options.seed)
        self._updates = {t.phone_id: t.update for t in targets}
        self._waves = self._assign_waves(records or self._fresh_records(targets))
        self.table = FleetTable(itertools.chain.from_iterable(self._waves))
        self._wave_left = [sum(1 for r in wave if not r.terminal) for wave in self._waves]
        self._submit = budgets.submit if budgets else _own_budget("submit", options, self._clock)
        self._query = budgets.query if budgets else _own_budget("query", options, self._clock)
        self._running = asyncio.Event()
        self._running.set()
        self._timing = PollTiming(first_poll_s=options.first_poll_s)
        self._ready: deque[PhoneRecord] = deque()
        self._ready_restart: deque[PhoneRecord] = deque()
        self._forced: deque[list[PhoneRecord]] = deque()
        self._retry_heap: list[tuple[float, int, PhoneRecord]] = []
        self._tracks: dict[str, _Track] = {}
        self._poll_heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._grace: asyncio.Task[None] | None = None
        self._wake_submit = asyncio.Event()
        self._wake_track = asyncio.Event()
        self._finished = asyncio.Event()
        self._stop: _Stop | None = None
        self._reason: str | None = None
        self._started_at = 0.0
        self.progress = _Progress()
        self._request_failures: Counter[str] = Counter()
        self._max_request_failures = max(
            MIN_REQUEST_FAILURES, REQUEST_FAILURES_PER_ATTEMPT * options.retry.max_attempts
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
        self._resume_live_records()
        loops = [
            asyncio.create_task(self._submit_loop(), name="submitter"),
            asyncio.create_task(self._track_loop(), name="tracker"),
            asyncio.create_task(self._progress_loop(), name="progress"),
        ]
        for loop_task in loops:
            loop_task.add_done_callback(self._task_done)
        self._check_done()
        try:
            await self._finished.wait()
        finally:
            await self._shutdown(loops)
        return self._result()

    def request_stop(self, reason: str = "interrupted by signal") -> None:
        """Stop submitting; keep tracking in-flight jobs until the grace period ends."""
        if self._stop is not None:
            return
        self._set_stop(_Stop.INTERRUPT, reason)
        self._grace = asyncio.create_task(self._grace_timer(), name="grace")

    def cancel(self, reason: str = "cancelled") -> None:
        """Abort on request: as the abort gate does."""
        self._abort(reason)

    def pause(self) -> None:
        """Stop sending new batches; jobs in flight are still tracked to their end."""
        if self._running.is_set():
            self._running.clear()
            log.info("rollout.paused", **self._count_fields())

    def resume(self) -> None:
        """Send again after :meth:`pause`."""
        if not self._running.is_set():
            self._running.set()
            self._wake_submit.set()
            log.info("rollout.resumed", **self._count_fields())

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return not self._running.is_set()

    # -- the submitter -----------------------------------------------------------------------------

    async def _submit_loop(self) -> None:
        for number, wave in enumerate(self._waves):
            if self._stop is not None:
                return
            if self._wave_left[number] == 0:
                continue
            log.info("wave.started", wave=number, phones=len(wave))
            for record in wave:
                if record.state is PhoneState.PENDING:
                    self._enqueue(record)
            await self._drive_wave(number)
            if self._stop is None and number + 1 < len(self._waves):
                log.info("wave.completed", wave=number, bake_s=self.options.bake_s)
                await self._wait(self._wake_never(), self.options.bake_s)

    async def _drive_wave(self, number: int) -> None:
        while self._stop is None and self._wave_left[number] > 0:
            if not self._running.is_set():
                await self._wait(self._running, None)
                continue
            self._release_due_retries()
            if not (self._forced or self._ready or self._ready_restart):
                self._wake_submit.clear()
                await self._wait(self._wake_submit, self._next_retry_in())
                continue
            sent_at = await self._submit.acquire()
            batch = self._take_batch()
            if not batch or self._stop is not None or self.paused:  # paused while waiting
                self._submit.release()
                self._requeue_front(batch)
                continue
            self._spawn(self._send_batch(batch, sent_at), name="submit")

    def _take_batch(self) -> list[PhoneRecord]:
        if self._forced:
            return [r for r in self._forced.popleft() if r.state is PhoneState.PENDING]
        queue = self._ready_restart or self._ready
        batch: list[PhoneRecord] = []
        while queue and len(batch) < self.options.batch_size:
            record = queue.popleft()
            if record.state is PhoneState.PENDING:
                batch.append(record)
        return batch

    def _requeue_front(self, batch: Sequence[PhoneRecord]) -> None:
        for record in reversed(batch):
            queue = self._ready_restart if record.stage is Stage.RESTART else self._ready
            queue.appendleft(record)

    def _release_due_retries(self) -> None:
        now = self._clock.monotonic()
        while self._retry_heap and self._retry_heap[0][0] <= now:
            _, _, record = heapq.heappop(self._retry_heap)
            if record.state is PhoneState.RETRY_WAIT:
                self.table.move(record, PhoneState.PENDING)
                self._enqueue(record)

    def _enqueue(self, record: PhoneRecord) -> None:
        queue = self._ready_restart if record.stage is Stage.RESTART else self._ready
        queue.append(record)
        self._wake_submit.set()

    def _next_retry_in(self) -> float | None:
        if not self._retry_heap:
            return None
        return max(0.0, self._retry_heap[0][0] - self._clock.monotonic())

    async def _send_batch(self, batch: list[PhoneRecord], sent_at: float) -> None:
        batch_id = uuid.uuid4().hex
        try:
            for record in batch:
                self.table.move(record, PhoneState.SUBMITTING)
                record.batch_id = batch_id
                record.submitted_at = sent_at
            if not await self._persist(batch):
                return  # the intent is not on record: do not send
            if self._stop is not None:  # stopped while the intent was being written
                self._back_to_pending(batch)
                await self._persist(batch)
                return
            await self._submit_and_handle(batch, batch_id, sent_at)
            await self._persist(batch)
        finally:
            self._submit.release()
            self._wake_submit.set()
            self._check_done()

    async def _submit_and_handle(
        self, batch: list[PhoneRecord], batch_id: str, sent_at: float
    ) -> None:
        stage = batch[0].stage
        try:
            answer = await self._call_submit(batch, stage)
        except ThrottledError as error:
            self._on_submit_throttled(batch, error, sent_at)
        except AuthError as error:
            self._on_fatal(error, batch)
        except TransientError as error:
            self._on_request_failed(batch, error)
        except PermanentError as error:
            self._on_rejected(batch, error)
        except ApiError as error:
            self._on_request_failed(batch, error)
        else:
            self._submit.on_success()
            self._on_answer(batch, batch_id, answer)

    async def _call_submit(self, batch: list[PhoneRecord], stage: Stage) -> BatchJobsResponse:
        if stage is Stage.RESTART:
            return await self._client.restart_phones([r.phone_id for r in batch])
        return await self._client.update_properties([self._updates[r.phone_id] for r in batch])

    # -- outcomes of a submit ------------------------------------------------------------------

    def _on_answer(
        self, batch: list[PhoneRecord], batch_id: str, answer: BatchJobsResponse
    ) -> None:
        self.progress.batches += 1
        by_phone = {job.phone_id: job for job in answer.jobs}
        job_total = sum(1 for job in answer.jobs if job.job_id)
        track = _Track(answer.request_id, batch[0].submitted_at, job_total=job_total)
        rejected = 0
        for record in batch:
            record.attempts += 1
            job = by_phone.get(record.phone_id)
            if job is not None and job.job_id and not job.error_code:
                self._start_tracking(record, track, job.job_id, answer.request_id)
                continue
            rejected += 1
            code = (job.error_code if job else None) or MISSING_FROM_ANSWER_CODE
            message = (job.error_msg if job else None) or "the batch answer did not mention it"
            self._fail_or_retry(record, code, message, request_id=answer.request_id)
        if track.jobs:
            self._watch(track)
        log.info(
            "batch.submitted",
            batch_id=batch_id,
            request_id=answer.request_id,
            stage=str(batch[0].stage),
            phones=len(batch),
            accepted=len(batch) - rejected,
            rejected=rejected,
        )

    def _start_tracking(
        self, record: PhoneRecord, track: _Track, job_id: str, request_id: str
    ) -> None:
        self.table.move(record, PhoneState.RUNNING)
        record.job_id = job_id
        record.request_id = request_id
        record.error_code = record.error_msg = None
        record.job_deadline = record.submitted_at + self.options.job_timeout_s
        track.jobs[job_id] = record

    def _on_submit_throttled(
        self, batch: list[PhoneRecord], error: ThrottledError, sent_at: float
    ) -> None:
        _throttled(self._submit, error, sent_at, phones=len(batch))
        self._back_to_pending(batch)
        self._requeue_front(batch)

    def _back_to_pending(self, batch: Sequence[PhoneRecord]) -> None:
        """Unsent phones wait again, or are cancelled when the rollout is aborting."""
        aborting = self._stop is _Stop.ABORT
        for record in batch:
            if record.state is not PhoneState.SUBMITTING:
                continue
            if aborting:
                self.table.move(record, PhoneState.CANCELLED)
                self._phone_terminal(record)
            else:
                self.table.move(record, PhoneState.PENDING)

    def _on_request_failed(self, batch: list[PhoneRecord], error: ApiError) -> None:
        """The request failed as a whole: resend the phones, without charging their attempts.

        A 5xx, timeout or dropped connection says nothing about the phones, so they keep their
        attempts (and their last real error); a separate budget bounds such resends.
        """
        unknown = isinstance(error, TransientError) and error.outcome_unknown
        if unknown:
            self.progress.resends_outcome_unknown += len(batch)
        log.warning("api.error", phones=len(batch), outcome_unknown=unknown, **error.log_fields())
        message = f"{error.error_code or REQUEST_FAILED_CODE}: {error}"
        for record in batch:
            self._request_failures[record.phone_id] += 1
            failures = self._request_failures[record.phone_id]
            if failures > self._max_request_failures:
                record.attempts += 1
                self._fail(record, REQUEST_FAILED_CODE, message, error.request_id or None)
                continue
            self.table.move(record, PhoneState.RETRY_WAIT)
            delay = full_jitter_backoff_s(
                failures,
                base_s=self.options.retry.base_s,
                cap_s=self.options.retry.cap_s,
                rng=self._rng,
            )
            self._schedule_retry(record, delay)
            self._log_retry(record, REQUEST_FAILED_CODE, message, delay, error.request_id)

    def _on_rejected(self, batch: list[PhoneRecord], error: PermanentError) -> None:
        log.warning("api.error", phones=len(batch), **error.log_fields())
        if error.error_code in ACCOUNT_LEVEL_CODES or error.status not in (400, 413):
            self._on_fatal(error, batch)
            return
        if len(batch) == 1:
            record = batch[0]
            record.attempts += 1
            self._fail(record, error.error_code, error.error_msg or str(error), error.request_id)
            return
        self.progress.splits += 1
        half = len(batch) // 2
        log.info("batch.split", phones=len(batch), error_code=error.error_code)
        self._back_to_pending(batch)
        self._forced.extendleft([batch[half:], batch[:half]])

    def _on_fatal(self, error: ApiError, batch: Sequence[PhoneRecord]) -> None:
        log.error("api.error", fatal=True, phones=len(batch), **error.log_fields())
        self._back_to_pending(batch)
        self._set_stop(_Stop.FATAL, str(error))
        self._finished.set()

    # -- per-phone outcomes --------------------------------------------------------------------

    def _fail_or_retry(
        self, record: PhoneRecord, code: str, message: str, *, request_id: str | None
    ) -> None:
        record.error_code, record.error_msg = code, message
        decision = self.options.retry.decide(code, record.attempts, self._rng)
        if decision.action is RetryAction.FAIL:
            self._fail(record, code, message, request_id)
            return
        if self._stop in (_Stop.ABORT, _Stop.FATAL):
            self.table.move(record, PhoneState.CANCELLED)
            self._phone_terminal(record)
            return
        self.table.move(record, PhoneState.RETRY_WAIT)
        self._schedule_retry(record, decision.delay_s)
        self._log_retry(record, code, message, decision.delay_s, request_id)

    def _schedule_retry(self, record: PhoneRecord, delay_s: float) -> None:
        record.retry_at = self._clock.monotonic() + delay_s
        heapq.heappush(self._retry_heap, (record.retry_at, next(self._order), record))
        self._wake_submit.set()

    def _log_retry(
        self, record: PhoneRecord, code: str, message: str, delay_s: float, request_id: str | None
    ) -> None:
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

    def _fail(self, record: PhoneRecord, code: str, message: str, request_id: str | None) -> None:
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
        self._phone_terminal(record)
        self._check_abort_gate()

    def _succeed(self, record: PhoneRecord) -> None:
        record.error_code = record.error_msg = None
        if record.stage is Stage.UPDATE and self._restart_wanted(record):
            self._begin_restart(record)
            return
        self.table.move(record, PhoneState.SUCCEEDED)
        self._phone_terminal(record)
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
        if self._stop in (_Stop.ABORT, _Stop.FATAL):
            record.error_msg = "properties updated, but the restart was not sent: rollout stopped"
            self.table.move(record, PhoneState.CANCELLED)
            self._phone_terminal(record)
            return
        self.table.move(record, PhoneState.PENDING)
        if self._stop is None:
            self._enqueue(record)

    def _phone_terminal(self, record: PhoneRecord) -> None:
        self._wave_left[record.wave] -= 1
        self._wake_submit.set()
        self._check_done()

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
        if self._stop in (_Stop.ABORT, _Stop.FATAL):
            return
        self._set_stop(_Stop.ABORT, reason)
        cancelled = 0
        for record in self.table:
            if record.state in (PhoneState.PENDING, PhoneState.RETRY_WAIT):
                self.table.move(record, PhoneState.CANCELLED)
                record.error_msg = f"not sent: {reason}"
                self._wave_left[record.wave] -= 1
                cancelled += 1
        log.error("rollout.aborted", reason=reason, cancelled_now=cancelled, **self._count_fields())
        self._spawn(self._persist_quietly([r for r in self.table if r.terminal]), name="journal")
        self._check_done()

    async def _persist(self, records: Sequence[PhoneRecord]) -> bool:
        """Journal these records; on failure stop the rollout (nothing unrecorded is sent)."""
        try:
            await self._journal.save(records)
        except OrchestratorError as error:
            if self._stop is not _Stop.FATAL:
                log.error("journal.failed", error=str(error), phones=len(records))
                self._set_stop(_Stop.FATAL, f"the journal cannot be written: {error}")
                self._finished.set()
            return False
        return True

    async def _persist_quietly(self, records: Sequence[PhoneRecord]) -> None:
        await self._persist(records)

    def _set_stop(self, kind: _Stop, reason: str) -> None:
        self._stop = kind
        self._reason = reason
        self._wake_submit.set()
        self._wake_track.set()

    # -- the tracker ---------------------------------------------------------------------------

    def _watch(self, track: _Track) -> None:
        self._tracks[track.request_id] = track
        self._schedule_poll(track.request_id, self._timing.first_delay_s(len(track.jobs)))

    def _schedule_poll(self, request_id: str, delay_s: float) -> None:
        due = self._clock.monotonic() + delay_s
        heapq.heappush(self._poll_heap, (due, next(self._order), request_id))
        self._wake_track.set()

    async def _track_loop(self) -> None:
        while not self._finished.is_set():
            due = self._due_requests()
            if not due:
                self._wake_track.clear()
                await self._wait(self._wake_track, self._next_poll_in())
                continue
            for group in self._poll_groups(due):
                sent_at = await self._query.acquire()
                self._spawn(self._poll(group, sent_at), name="poll")

    def _due_requests(self) -> list[str]:
        now = self._clock.monotonic()
        due: list[str] = []
        while self._poll_heap and self._poll_heap[0][0] <= now:
            _, _, request_id = heapq.heappop(self._poll_heap)
            if request_id in self._tracks:
                due.append(request_id)
        return due

    def _next_poll_in(self) -> float | None:
        if not self._poll_heap:
            return None
        return max(0.0, self._poll_heap[0][0] - self._clock.monotonic())

    def _poll_groups(self, request_ids: list[str]) -> list[list[str]]:
        """Up to 20 request IDs a call, and about one page (100 jobs) of answers."""
        groups: list[list[str]] = []
        group: list[str] = []
        jobs = 0
        for request_id in request_ids:
            track = self._tracks[request_id]
            size = len(track.jobs) if track.job_total is None else track.job_total
            if group and (len(group) == LIST_JOBS_MAX_IDS or jobs + size > LIST_JOBS_PAGE):
                groups.append(group)
                group, jobs = [], 0
            group.append(request_id)
            jobs += size
        if group:
            groups.append(group)
        return groups

    async def _poll(self, request_ids: list[str], sent_at: float) -> None:
        try:
            jobs = await self._list_jobs(request_ids, sent_at)
        except ThrottledError as error:
            self._on_query_throttled(error, sent_at, request_ids)
            return
        except ApiError as error:
            log.warning("api.error", request_ids=request_ids, **error.log_fields())
            self._reschedule(request_ids, POLL_RETRY_S)
            if isinstance(error, AuthError):
                self._on_fatal(error, [])
            return
        finally:
            self._query.release()
        self._query.on_success()
        await self._apply_jobs(request_ids, jobs)

    async def _list_jobs(self, request_ids: list[str], sent_at: float) -> list[Job]:
        """Every job of these requests: pages until one is short, the answer's ``count`` is
        reached, or (ListJobs may give no count) as many jobs as the requests were given."""
        page = await self._client.list_jobs_page(request_ids, offset=0, limit=LIST_JOBS_PAGE)
        jobs = list(page.jobs)
        total = page.count if page.count is not None else self._known_job_total(request_ids)
        while len(page.jobs) == LIST_JOBS_PAGE and (total is None or len(jobs) < total):
            await self._query.pace()
            page = await self._client.list_jobs_page(
                request_ids, offset=len(jobs), limit=LIST_JOBS_PAGE
            )
            jobs.extend(page.jobs)
        return jobs

    def _known_job_total(self, request_ids: list[str]) -> int | None:
        totals = [self._tracks[r].job_total if r in self._tracks else None for r in request_ids]
        return None if None in totals else sum(t for t in totals if t is not None)

    def _on_query_throttled(
        self, error: ThrottledError, sent_at: float, request_ids: list[str]
    ) -> None:
        _throttled(self._query, error, sent_at, request_ids=len(request_ids))
        self._reschedule(request_ids, error.retry_after_s or POLL_RETRY_S)

    def _reschedule(self, request_ids: list[str], delay_s: float) -> None:
        for request_id in request_ids:
            if request_id in self._tracks:
                self._schedule_poll(request_id, delay_s)

    async def _apply_jobs(self, request_ids: list[str], jobs: list[Job]) -> None:
        now = self._clock.monotonic()
        changed: list[PhoneRecord] = []
        finished = {"succeeded": 0, "failed": 0}
        seen: set[str] = set()
        watched = self._watched_jobs(request_ids)
        for job in jobs:
            seen.add(job.job_id)
            record = watched.get(job.job_id)
            if record is not None and record.state is PhoneState.RUNNING and job.finished:
                if job.status == JobStatus.SUCCEEDED and finished["succeeded"] < LEARN_PER_POLL:
                    self._learn_duration(job, record, now)
                self._on_job_end(record, job, now, finished)
                changed.append(record)
        changed.extend(await self._check_unseen(request_ids, seen, now))
        for request_id in request_ids:
            track = self._tracks.get(request_id)
            self._after_poll(request_id, now)
            if track is not None:
                track.last_polled_at = now
        if changed:
            await self._persist(changed)
        if finished["succeeded"] or finished["failed"]:
            log.info("jobs.finished", request_ids=request_ids, **finished)
        self._check_done()

    def _watched_jobs(self, request_ids: list[str]) -> dict[str, PhoneRecord]:
        watched: dict[str, PhoneRecord] = {}
        for request_id in request_ids:
            track = self._tracks.get(request_id)
            if track is not None:
                watched.update(track.jobs)
        return watched

    def _on_job_end(self, record: PhoneRecord, job: Job, now: float, tally: dict[str, int]) -> None:
        self._forget_job(record)
        if job.status == JobStatus.SUCCEEDED:
            tally["succeeded"] += 1
            self._succeed(record)
            return
        tally["failed"] += 1
        code = job.error_code or JOB_FAILED_CODE
        message = job.error_msg or f"job {job.job_id} ended with status {job.status}"
        self._fail_or_retry(record, code, message, request_id=record.request_id)

    def _learn_duration(self, job: Job, record: PhoneRecord, now: float) -> None:
        """Learn how long jobs run, from what we saw and what the cloud says.

        We know the job ended between our previous look and this one; the cloud's begin/end
        times (whole seconds) say roughly how long it ran. The estimate is the middle of what
        both allow. The moment a poll *saw* the job finished is no measure on its own: it
        includes our own waiting, and learning it would make every next wait longer.
        """
        track = self._tracks.get(record.request_id or "")
        last_look = max(track.last_polled_at if track else 0.0, record.submitted_at)
        low, high = last_look - record.submitted_at, now - record.submitted_at
        reported = _server_duration_s(job)
        if reported is not None:
            low, high = max(low, reported - 1.0), min(high, reported + 1.0)
            if low > high:
                low = high = reported
        self._timing.estimator.add(max(0.0, (low + high) / 2))

    def _forget_job(self, record: PhoneRecord) -> None:
        track = self._tracks.get(record.request_id or "")
        if track is not None and record.job_id is not None:
            track.jobs.pop(record.job_id, None)
            track.misses.pop(record.job_id, None)

    async def _check_unseen(
        self, request_ids: list[str], seen: set[str], now: float
    ) -> list[PhoneRecord]:
        changed: list[PhoneRecord] = []
        for request_id in request_ids:
            track = self._tracks.get(request_id)
            for job_id, record in list(track.jobs.items()) if track else []:
                if now >= record.job_deadline:
                    self._time_out(record)
                    changed.append(record)
                elif job_id not in seen and track is not None:
                    track.misses[job_id] = track.misses.get(job_id, 0) + 1
                    if track.misses[job_id] >= SHOW_JOB_AFTER_MISSES:
                        changed.extend(await self._show_job(record))
        return changed

    def _time_out(self, record: PhoneRecord) -> None:
        self.progress.timeouts += 1
        self._forget_job(record)
        message = f"job {record.job_id} still running after {self.options.job_timeout_s:g} s"
        log.warning("job.timed_out", phone_id=record.phone_id, job_id=record.job_id)
        self._fail_or_retry(record, JOB_TIMEOUT_CODE, message, request_id=record.request_id)

    async def _show_job(self, record: PhoneRecord) -> list[PhoneRecord]:
        """ListJobs keeps leaving this job out: ask for it by ID."""
        self.progress.show_job_calls += 1
        try:
            async with self._query.slot():
                job = await self._client.show_job(record.job_id or "")
        except PermanentError as error:
            if error.status != 404:
                return []
            self._forget_job(record)
            message = f"job {record.job_id} is unknown to ListJobs and ShowJob"
            self._fail_or_retry(record, JOB_VANISHED_CODE, message, request_id=record.request_id)
            return [record]
        except ApiError:
            return []
        if job.finished and record.state is PhoneState.RUNNING:
            self._on_job_end(record, job, self._clock.monotonic(), {"succeeded": 0, "failed": 0})
            return [record]
        return []

    def _after_poll(self, request_id: str, now: float) -> None:
        track = self._tracks.get(request_id)
        if track is None:
            return
        if not track.jobs:
            del self._tracks[request_id]
            return
        self._schedule_poll(request_id, self._timing.next_delay_s(now - track.submitted_at))

    # -- lifecycle -----------------------------------------------------------------------------

    def _resume_live_records(self) -> None:
        """Phones restored from a journal: re-track running jobs, requeue what was never sent."""
        for record in self.table:
            if record.state in (PhoneState.SUBMITTING, PhoneState.RETRY_WAIT):
                self.table.move(record, PhoneState.PENDING)  # resent in its wave
            if record.state is PhoneState.RUNNING and not (record.request_id and record.job_id):
                self.table.move(record, PhoneState.RETRY_WAIT)
                self.table.move(record, PhoneState.PENDING)
            if record.state is PhoneState.RUNNING and record.request_id and record.job_id:
                track = self._tracks.setdefault(
                    record.request_id,
                    _Track(record.request_id, self._clock.monotonic()),
                )
                track.jobs[record.job_id] = record
                record.job_deadline = self._clock.monotonic() + self.options.job_timeout_s
        for request_id in self._tracks:
            self._schedule_poll(request_id, 0.0)

    def _check_done(self) -> None:
        if self._finished.is_set():
            return
        if self.table.terminal_count == len(self.table):
            self._finished.set()
            return
        counts = self.table.counts
        in_flight = counts[PhoneState.SUBMITTING] + counts[PhoneState.RUNNING]
        if self._stop is not None and in_flight == 0:
            self._finished.set()

    async def _grace_timer(self) -> None:
        await self._clock.sleep(self.options.stop_grace_s)
        self._finished.set()

    async def _progress_loop(self) -> None:
        while not self._finished.is_set():
            await self._wait(self._finished, self.options.progress_interval_s)
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
        calls = self._client.calls
        return {
            "submit": sum(n for key, n in calls.items() if key.startswith("submit.")),
            "query": sum(n for key, n in calls.items() if key.startswith("query.")),
            "throttled": sum(n for key, n in calls.items() if key.endswith(".throttled")),
        }

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
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_FLUSH_S)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

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
            reason=self._reason,
            fatal=self._stop is _Stop.FATAL,
            counts=counts,
            api_calls=self.api_calls(),
            records=list(self.table),
            elapsed_s=self._clock.monotonic() - self._started_at,
        )
        event = "rollout.finished"
        log.info(event, status=str(status), reason=self._reason, **counts, **result.api_calls)
        return result

    def _status(self, counts: dict[str, int]) -> RolloutStatus:
        """Aborted only by the abort gate or a cancel; phones left open make it resumable."""
        if self._stop is _Stop.ABORT:
            return RolloutStatus.ABORTED
        if counts["pending"]:
            return RolloutStatus.INTERRUPTED
        if counts["failed"]:
            return RolloutStatus.COMPLETED_WITH_FAILURES
        return RolloutStatus.SUCCEEDED

    # -- helpers -------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("engine.task_failed", task=task.get_name(), error=repr(error))
        self._set_stop(_Stop.FATAL, f"internal error in {task.get_name()}: {error!r}")
        self._finished.set()

    @staticmethod
    def _wake_never() -> asyncio.Event:
        return asyncio.Event()

    async def _wait(self, event: asyncio.Event, timeout_s: float | None) -> None:
        """Wait for ``event`` or ``timeout_s`` on the injected clock, whichever comes first."""
        if event.is_set():
            return
        waiter = asyncio.create_task(event.wait())
        sleeper = (
            asyncio.create_task(self._clock.sleep(timeout_s)) if timeout_s is not None else None
        )
        pending = {waiter} | ({sleeper} if sleeper else set())
        stop_waiter = asyncio.create_task(self._finished.wait())
        try:
            await asyncio.wait(pending | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper, stop_waiter):
                if task is not None:
                    task.cancel()


def _throttled(budget: Budget, error: ThrottledError, sent_at: float, **fields: int) -> None:
    """Tell the budget (it cuts its rate once per burst) and log ``api.throttled``."""
    cut = budget.on_throttled(sent_at=sent_at, retry_after_s=error.retry_after_s)
    log.warning(
        "api.throttled",
        family=budget.name,
        request_id=error.request_id,
        retry_after_s=error.retry_after_s,
        rate_per_s=round(budget.rate.rate_per_s, 3),
        rate_cut=cut,
        **fields,
    )


def _server_duration_s(job: Job) -> float | None:
    """How long the cloud says the job ran (``end_time - begin_time``), when both are readable."""
    try:
        begin = datetime.fromisoformat((job.begin_time or "").replace("Z", "+00:00"))
        end = datetime.fromisoformat((job.end_time or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (end - begin).total_seconds())
