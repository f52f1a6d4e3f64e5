"""The submitter: sends a rollout's phones in batches, wave by wave, under the submit budget.

Within a wave it takes batches from :class:`~orchestrator.engine.queues.SendQueues` whenever the
budget grants a place, journals each batch's intent, sends it (UpdatePhoneProperty, or
RestartPhone for the restart stage) in its own task, and turns the answer into running jobs for the
tracker and failed phones for the runner's retry policy. A request that raised is handled as
:func:`~orchestrator.engine.policy.decide_submit_error` says: resend, retry with backoff, split
the batch in two, fail its one phone, or stop the rollout. Between waves it waits ``bake_s``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence

import structlog

from orchestrator.cph.api import CphApi
from orchestrator.cph.errors import ApiError, TransientError
from orchestrator.cph.models import BatchJobsResponse, PropertyUpdate
from orchestrator.engine.policy import (
    MISSING_FROM_ANSWER_CODE,
    REQUEST_FAILED_CODE,
    SubmitAction,
    SubmitDecision,
    decide_submit_error,
    full_jitter_backoff_s,
)
from orchestrator.engine.queues import SendQueues
from orchestrator.engine.rate import Budget
from orchestrator.engine.run_state import (
    PhoneOutcomes,
    RunState,
    StopKind,
    log_retry_scheduled,
    note_throttled,
)
from orchestrator.engine.states import PhoneRecord, PhoneState, Stage
from orchestrator.engine.tracker import Tracker

__all__ = ["Submitter"]

log = structlog.get_logger("orchestrator.engine")


class Submitter:
    """Feeds one rollout's phones to the cloud, batch by batch, and hands accepted jobs on."""

    def __init__(
        self,
        *,
        run: RunState,
        client: CphApi,
        budget: Budget,
        updates: Mapping[str, PropertyUpdate],
        waves: Sequence[Sequence[PhoneRecord]],
        outcomes: PhoneOutcomes,
        tracker: Tracker,
    ) -> None:
        self._run = run
        self._table = run.table
        self._options = run.options
        self._client = client
        self._submit = budget
        self._updates = updates
        self._waves = waves
        self._outcomes = outcomes
        self._tracker = tracker
        self.queues = SendQueues()
        self._request_failures: Counter[str] = Counter()
        self._max_request_failures = run.max_request_failures

    # -- feeding the queues ----------------------------------------------------------------------

    def enqueue(self, record: PhoneRecord) -> None:
        """Queue a pending phone to be sent in its turn."""
        self.queues.push(record)
        self._run.wake_submit.set()

    def schedule_retry(self, record: PhoneRecord, delay_s: float) -> None:
        """Send this phone (now in ``retry_wait``) again once ``delay_s`` has passed."""
        record.retry_at = self._run.clock.monotonic() + delay_s
        self.queues.schedule_retry(record, record.retry_at)
        self._run.wake_submit.set()

    def _release_due_retries(self) -> None:
        for record in self.queues.release_due(self._run.clock.monotonic()):
            self._table.move(record, PhoneState.PENDING)
            self.enqueue(record)

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Send every wave in turn, baking between waves, until done or stopped."""
        run = self._run
        for number, wave in enumerate(self._waves):
            if run.stop is not None:
                return
            if run.wave_left[number] == 0:
                continue
            log.info("wave.started", wave=number, phones=len(wave))
            for record in wave:
                if record.state is PhoneState.PENDING:
                    self.enqueue(record)
            await self._drive_wave(number)
            if run.stop is None and number + 1 < len(self._waves):
                log.info("wave.completed", wave=number, bake_s=self._options.bake_s)
                await run.wait(asyncio.Event(), self._options.bake_s)

    async def _drive_wave(self, number: int) -> None:
        run = self._run
        while run.stop is None and run.wave_left[number] > 0:
            if not run.running.is_set():
                await run.wait(run.running, None)
                continue
            self._release_due_retries()
            if not self.queues.has_ready():
                run.wake_submit.clear()
                await run.wait(run.wake_submit, self.queues.next_due_in(run.clock.monotonic()))
                continue
            sent_at = await self._submit.acquire()
            batch = self.queues.take_batch(self._options.batch_size)
            if not batch or run.stop is not None or not run.running.is_set():  # paused meanwhile
                self._submit.release()
                self.queues.requeue_front(batch)
                continue
            run.spawn(self._send_batch(batch, sent_at), name="submit")

    # -- one batch -------------------------------------------------------------------------------

    async def _send_batch(self, batch: list[PhoneRecord], sent_at: float) -> None:
        batch_id = uuid.uuid4().hex
        try:
            for record in batch:
                self._table.move(record, PhoneState.SUBMITTING)
                record.batch_id = batch_id
                record.submitted_at = sent_at
            if not await self._run.persist(batch):
                return  # the intent is not on record: do not send
            if self._run.stop is not None:  # stopped while the intent was being written
                self.back_to_pending(batch)
                await self._run.persist(batch)
                return
            await self._submit_and_handle(batch, batch_id, sent_at)
            await self._run.persist(batch)
        finally:
            self._submit.release()
            self._run.wake_submit.set()
            self._run.check_done()

    async def _submit_and_handle(
        self, batch: list[PhoneRecord], batch_id: str, sent_at: float
    ) -> None:
        try:
            answer = await self._call_submit(batch, batch[0].stage)
        except ApiError as error:
            if _unanswered(error) and self._run.note_unanswered(error):
                self.back_to_pending(batch)  # nothing is known of them: resend on resume
                return
            if not _unanswered(error):
                self._run.note_answered()
            self._on_submit_error(batch, error, sent_at)
        else:
            self._run.note_answered()
            self._submit.on_success()
            self._on_answer(batch, batch_id, answer)

    async def _call_submit(self, batch: list[PhoneRecord], stage: Stage) -> BatchJobsResponse:
        if stage is Stage.RESTART:
            return await self._client.restart_phones([r.phone_id for r in batch])
        return await self._client.update_properties([self._updates[r.phone_id] for r in batch])

    def _on_answer(
        self, batch: list[PhoneRecord], batch_id: str, answer: BatchJobsResponse
    ) -> None:
        self._run.progress.batches += 1
        by_phone = {job.phone_id: job for job in answer.jobs}
        jobs: dict[str, PhoneRecord] = {}
        rejected = 0
        for record in batch:
            record.attempts += 1
            job = by_phone.get(record.phone_id)
            if job is not None and job.job_id and not job.error_code:
                self._start_running(record, job.job_id, answer.request_id)
                jobs[job.job_id] = record
                continue
            rejected += 1
            code = (job.error_code if job else None) or MISSING_FROM_ANSWER_CODE
            message = (job.error_msg if job else None) or "the batch answer did not mention it"
            self._outcomes.fail_or_retry(record, code, message, request_id=answer.request_id)
        if jobs:
            job_total = sum(1 for job in answer.jobs if job.job_id)
            self._tracker.watch(answer.request_id, batch[0].submitted_at, jobs, job_total)
        log.info(
            "batch.submitted",
            batch_id=batch_id,
            request_id=answer.request_id,
            stage=str(batch[0].stage),
            phones=len(batch),
            accepted=len(batch) - rejected,
            rejected=rejected,
        )

    def _start_running(self, record: PhoneRecord, job_id: str, request_id: str) -> None:
        self._table.move(record, PhoneState.RUNNING)
        record.job_id = job_id
        record.request_id = request_id
        record.error_code = record.error_msg = None
        record.job_deadline = record.submitted_at + self._options.job_timeout_s

    # -- a request that raised -------------------------------------------------------------------

    def _on_submit_error(self, batch: list[PhoneRecord], error: ApiError, sent_at: float) -> None:
        decision = decide_submit_error(error, batch_size=len(batch))
        if decision.rejected:
            log.warning("api.error", phones=len(batch), **error.log_fields())
        match decision.action:
            case SubmitAction.RESEND_AFTER_WAIT:
                retry_after_s = decision.retry_after_s
                note_throttled(self._submit, error, sent_at, retry_after_s, phones=len(batch))
                self.back_to_pending(batch)
                self.queues.requeue_front(batch)
            case SubmitAction.RETRY_WITH_BACKOFF:
                self._on_request_failed(batch, error, decision)
            case SubmitAction.BISECT:
                self._bisect(batch, error)
            case SubmitAction.FAIL_PHONE:
                record = batch[0]
                record.attempts += 1
                message = error.error_msg or str(error)
                self._outcomes.fail(record, error.error_code, message, error.request_id)
            case SubmitAction.STOP:
                self._stop_fatal(error, batch)

    def back_to_pending(self, batch: Sequence[PhoneRecord]) -> None:
        """Unsent phones wait again, or are cancelled when the rollout is aborting."""
        aborting = self._run.stop is StopKind.ABORT
        for record in batch:
            if record.state is not PhoneState.SUBMITTING:
                continue
            if aborting:
                self._table.move(record, PhoneState.CANCELLED)
                self._run.phone_terminal(record)
            else:
                self._table.move(record, PhoneState.PENDING)

    def _on_request_failed(
        self, batch: list[PhoneRecord], error: ApiError, decision: SubmitDecision
    ) -> None:
        """The request failed as a whole: resend the phones, without charging their attempts.

        A 5xx, timeout or dropped connection says nothing about the phones, so they keep their
        attempts (and their last real error); a separate budget bounds such resends.
        """
        unknown = decision.outcome_unknown
        if unknown:
            self._run.progress.resends_outcome_unknown += len(batch)
        log.warning("api.error", phones=len(batch), outcome_unknown=unknown, **error.log_fields())
        message = f"{error.error_code or REQUEST_FAILED_CODE}: {error}"
        for record in batch:
            self._request_failures[record.phone_id] += 1
            failures = self._request_failures[record.phone_id]
            if failures > self._max_request_failures:
                record.attempts += 1
                self._outcomes.fail(record, REQUEST_FAILED_CODE, message, error.request_id or None)
                continue
            self._table.move(record, PhoneState.RETRY_WAIT)
            retry = self._options.retry
            delay = full_jitter_backoff_s(
                failures, base_s=retry.base_s, cap_s=retry.cap_s, rng=self._run.rng
            )
            self.schedule_retry(record, delay)
            log_retry_scheduled(record, REQUEST_FAILED_CODE, message, delay, error.request_id)

    def _bisect(self, batch: list[PhoneRecord], error: ApiError) -> None:
        """Send each half on its own: the phone behind a whole-batch 400 ends up alone."""
        self._run.progress.splits += 1
        half = len(batch) // 2
        log.info("batch.split", phones=len(batch), error_code=error.error_code)
        self.back_to_pending(batch)
        self.queues.force_next([batch[:half], batch[half:]])

    def _stop_fatal(self, error: ApiError, batch: Sequence[PhoneRecord]) -> None:
        log.error("api.error", fatal=True, phones=len(batch), **error.log_fields())
        self.back_to_pending(batch)
        self._run.stop_fatal(str(error))


def _unanswered(error: ApiError) -> bool:
    """No HTTP answer came back at all: the request may never have reached the cloud."""
    return isinstance(error, TransientError) and error.unreachable
