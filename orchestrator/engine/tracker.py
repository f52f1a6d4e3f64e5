"""The tracker: watches the jobs of submitted batches until each has ended.

Each accepted batch request is polled (ListJobs, several requests a call, paged) when its jobs
should have ended, as :class:`~orchestrator.engine.polling.PollTiming` learns from finished jobs,
then at growing intervals. A job seen finished becomes the phone's success or failure; a job past
``job_timeout_s`` times out; a job ListJobs keeps leaving out is asked for by ID (ShowJob). Polls
run under the query budget, each in its own task.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from orchestrator.cph.api import LIST_JOBS_MAX_REQUEST_IDS, LIST_JOBS_PAGE_LIMIT, CphApi
from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from orchestrator.cph.models import Job, JobStatus
from orchestrator.engine.options import SHOW_JOB_AFTER_MISSES
from orchestrator.engine.policy import JOB_FAILED_CODE, JOB_TIMEOUT_CODE, JOB_VANISHED_CODE
from orchestrator.engine.polling import PollTiming
from orchestrator.engine.rate import Budget
from orchestrator.engine.run_state import PhoneOutcomes, RunState, note_throttled
from orchestrator.engine.states import PhoneRecord, PhoneState

__all__ = ["Tracker"]

log = structlog.get_logger("orchestrator.engine")

POLL_RETRY_S = 1.0
"""Wait before polling again requests whose poll failed or was throttled without Retry-After."""
LEARN_PER_POLL = 8
"""Job durations learnt from one poll's answer: a sample is enough, and parsing all costs CPU."""


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


class Tracker:
    """Polls the running jobs of one rollout and turns each ended job into the phone's outcome."""

    def __init__(
        self,
        *,
        run: RunState,
        client: CphApi,
        budget: Budget,
        timing: PollTiming,
        outcomes: PhoneOutcomes,
    ) -> None:
        self._run = run
        self._clock = run.clock
        self._client = client
        self._query = budget
        self._timing = timing
        self._outcomes = outcomes
        self._tracks: dict[str, _Track] = {}
        self._poll_heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    # -- what to watch ---------------------------------------------------------------------------

    def watch(
        self, request_id: str, submitted_at: float, jobs: dict[str, PhoneRecord], job_total: int
    ) -> None:
        """Watch the ``jobs`` (by job ID) a batch answer accepted; first poll when they should end."""
        self._tracks[request_id] = _Track(request_id, submitted_at, jobs, job_total=job_total)
        self._schedule_poll(request_id, self._timing.first_delay_s(len(jobs)))

    def adopt(self, records: Iterable[PhoneRecord]) -> None:
        """Watch running jobs restored from a journal: poll them at once, time them out afresh."""
        for record in records:
            if record.request_id is None or record.job_id is None:
                continue
            track = self._tracks.setdefault(
                record.request_id, _Track(record.request_id, self._clock.monotonic())
            )
            track.jobs[record.job_id] = record
            record.job_deadline = self._clock.monotonic() + self._run.options.job_timeout_s
        for request_id in self._tracks:
            self._schedule_poll(request_id, 0.0)

    def _schedule_poll(self, request_id: str, delay_s: float) -> None:
        due = self._clock.monotonic() + delay_s
        heapq.heappush(self._poll_heap, (due, next(self._order), request_id))
        self._run.wake_track.set()

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll due requests, grouped, under the query budget, until the run has finished."""
        run = self._run
        while not run.finished.is_set():
            due = self._due_requests()
            if not due:
                run.wake_track.clear()
                await run.wait(run.wake_track, self._next_poll_in())
                continue
            for group in self._poll_groups(due):
                sent_at = await self._query.acquire()
                run.spawn(self._poll(group, sent_at), name="poll")

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
            if group and (
                len(group) == LIST_JOBS_MAX_REQUEST_IDS or jobs + size > LIST_JOBS_PAGE_LIMIT
            ):
                groups.append(group)
                group, jobs = [], 0
            group.append(request_id)
            jobs += size
        if group:
            groups.append(group)
        return groups

    # -- one poll --------------------------------------------------------------------------------

    async def _poll(self, request_ids: list[str], sent_at: float) -> None:
        try:
            jobs = await self._list_jobs(request_ids)
        except ThrottledError as error:
            note_throttled(
                self._query, error, sent_at, error.retry_after_s, request_ids=len(request_ids)
            )
            self._reschedule(request_ids, error.retry_after_s or POLL_RETRY_S)
            return
        except ApiError as error:
            log.warning("api.error", request_ids=request_ids, **error.log_fields())
            self._reschedule(request_ids, POLL_RETRY_S)
            if isinstance(error, TransientError) and error.unreachable:
                self._run.note_unanswered(error)
            else:
                self._run.note_answered()
            if isinstance(error, AuthError):
                log.error("api.error", fatal=True, phones=0, **error.log_fields())
                self._run.stop_fatal(str(error))
            else:
                await self._run.persist([])  # the failed call is counted in the journal
            return
        finally:
            self._query.release()
        self._run.note_answered()
        self._query.on_success()
        await self._apply_jobs(request_ids, jobs)

    async def _list_jobs(self, request_ids: list[str]) -> list[Job]:
        """Every job of these requests: pages until one is short, the answer's ``count`` is
        reached, or (ListJobs may give no count) as many jobs as the requests were given."""
        page_limit = LIST_JOBS_PAGE_LIMIT
        page = await self._client.list_jobs_page(request_ids, offset=0, limit=page_limit)
        jobs = list(page.jobs)
        total = page.count if page.count is not None else self._known_job_total(request_ids)
        while len(page.jobs) == page_limit and (total is None or len(jobs) < total):
            await self._query.pace()
            page = await self._client.list_jobs_page(
                request_ids, offset=len(jobs), limit=page_limit
            )
            jobs.extend(page.jobs)
        return jobs

    def _known_job_total(self, request_ids: list[str]) -> int | None:
        totals = [self._tracks[r].job_total if r in self._tracks else None for r in request_ids]
        return None if None in totals else sum(t for t in totals if t is not None)

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
                self._on_job_end(record, job, finished)
                changed.append(record)
        changed.extend(await self._check_unseen(request_ids, seen, now))
        for request_id in request_ids:
            track = self._tracks.get(request_id)
            self._after_poll(request_id, now)
            if track is not None:
                track.last_polled_at = now
        await self._run.persist(changed)  # also when nothing changed: the poll's calls count
        if finished["succeeded"] or finished["failed"]:
            log.info("jobs.finished", request_ids=request_ids, **finished)
        self._run.check_done()

    def _watched_jobs(self, request_ids: list[str]) -> dict[str, PhoneRecord]:
        watched: dict[str, PhoneRecord] = {}
        for request_id in request_ids:
            track = self._tracks.get(request_id)
            if track is not None:
                watched.update(track.jobs)
        return watched

    def _after_poll(self, request_id: str, now: float) -> None:
        track = self._tracks.get(request_id)
        if track is None:
            return
        if not track.jobs:
            del self._tracks[request_id]
            return
        self._schedule_poll(request_id, self._timing.next_delay_s(now - track.submitted_at))

    # -- job outcomes ----------------------------------------------------------------------------

    def _on_job_end(self, record: PhoneRecord, job: Job, tally: dict[str, int]) -> None:
        self._forget_job(record)
        if job.status == JobStatus.SUCCEEDED:
            tally["succeeded"] += 1
            self._outcomes.succeed(record)
            return
        tally["failed"] += 1
        code = job.error_code or JOB_FAILED_CODE
        message = job.error_msg or f"job {job.job_id} ended with status {job.status}"
        self._outcomes.fail_or_retry(record, code, message, request_id=record.request_id)

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
        self._run.progress.timeouts += 1
        self._forget_job(record)
        timeout_s = self._run.options.job_timeout_s
        message = f"job {record.job_id} still running after {timeout_s:g} s"
        log.warning("job.timed_out", phone_id=record.phone_id, job_id=record.job_id)
        self._outcomes.fail_or_retry(
            record, JOB_TIMEOUT_CODE, message, request_id=record.request_id
        )

    async def _show_job(self, record: PhoneRecord) -> list[PhoneRecord]:
        """ListJobs keeps leaving this job out: ask for it by ID."""
        self._run.progress.show_job_calls += 1
        try:
            async with self._query.slot():
                job = await self._client.show_job(record.job_id or "")
        except PermanentError as error:
            if error.status != 404:
                return []
            self._forget_job(record)
            message = f"job {record.job_id} is unknown to ListJobs and ShowJob"
            self._outcomes.fail_or_retry(
                record, JOB_VANISHED_CODE, message, request_id=record.request_id
            )
            return [record]
        except ApiError:
            return []
        if job.finished and record.state is PhoneState.RUNNING:
            self._on_job_end(record, job, {"succeeded": 0, "failed": 0})
            return [record]
        return []


def _server_duration_s(job: Job) -> float | None:
    """How long the cloud says the job ran (``end_time - begin_time``), when both are readable."""
    try:
        begin = datetime.fromisoformat((job.begin_time or "").replace("Z", "+00:00"))
        end = datetime.fromisoformat((job.end_time or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (end - begin).total_seconds())
