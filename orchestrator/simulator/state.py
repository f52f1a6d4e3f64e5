"""The simulated account: fleet, jobs and their lazy completion on an injected clock.

No background tasks: every job gets an end time when created and is settled (status fixed, properties
applied) by the first request or stats read that happens at or after it, in end-time order, through a
heap. That keeps the state deterministic under :class:`~orchestrator.clock.FakeClock` and every request
O(batch size) (amortised O(log jobs) per job).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrator.clock import Clock
from orchestrator.simulator.config import SimulatorConfig
from orchestrator.simulator.fleet import (
    PHONE_RESTART_FAILED,
    PHONE_RESTARTING,
    PHONE_RUNNING,
    PHONE_STATUSES,
    FleetShape,
    Phone,
    generate_fleet,
    hex_id,
)
from orchestrator.simulator.stats import SimStats
from orchestrator.simulator.validation import (
    BatchItem,
    parse_paging,
    valid_phone_id,
    validate_batch,
)
from orchestrator.simulator.wire import (
    BUSY_ERROR_CODE,
    BUSY_ERROR_MSG,
    INTERNAL_ERROR_CODE,
    INTERNAL_ERROR_MSG,
    INVALID_PARAMETER_ERROR_CODE,
    INVALID_PROPERTY_MSG,
    INVALID_STATUS_ERROR_CODE,
    JOB_FAILED,
    JOB_NOT_FOUND_ERROR_CODE,
    JOB_NOT_FOUND_MSG,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    PHONE_NOT_FOUND_ERROR_CODE,
    PHONE_NOT_FOUND_MSG,
    Rejection,
    format_utc,
    phone_detail_view,
    phone_list_view,
)

__all__ = ["MAX_REQUEST_IDS", "Job", "JobKind", "SimState"]

MAX_REQUEST_IDS = 20
"""ListJobs accepts at most this many ids in ``request_ids`` (cph-api.md §5)."""
LIST_JOBS_MAX_LIMIT = 100
LIST_PHONES_MAX_LIMIT = 200
LIST_PHONES_DEFAULT_LIMIT = 100


class JobKind(StrEnum):
    """What a job does when it succeeds."""

    PROPERTY = "property"
    RESTART = "restart"


@dataclass(slots=True, eq=False)
class Job:
    """One asynchronous cloud job; ``properties`` is dropped once applied to save memory."""

    job_id: str
    request_id: str
    phone: Phone
    kind: JobKind
    begin_wall_s: float
    end_wall_s: float
    end_mono_s: float
    fail_code: str | None
    fail_msg: str | None
    properties: dict[str, Any] | None
    custom_property: dict[str, str] | None
    status: int = JOB_RUNNING


class SimState:
    """The account's fleet and jobs, plus what the simulator saw (:attr:`counters`)."""

    def __init__(self, config: SimulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.profile = config.profile
        shape = FleetShape(
            size=config.phones,
            seed=config.seed,
            abnormal_rate=config.abnormal_phone_rate,
            stopped_rate=config.stopped_phone_rate,
            trial_rate=config.trial_phone_rate,
            per_server_min=config.phones_per_server_min,
            per_server_max=config.phones_per_server_max,
        )
        self.fleet = generate_fleet(shape, self.profile, clock.time())
        self.counters = SimStats(violations_kept=config.violations_kept)
        self.jobs: dict[str, Job] = {}
        self.jobs_by_request: dict[str, list[Job]] = {}
        self.changed_phones: dict[str, Phone] = {}
        self.jobs_created = 0
        self.jobs_succeeded = 0
        self.jobs_failed = 0
        self._due: list[tuple[float, int, Job]] = []
        self._order = itertools.count()
        self._ids = random.Random(f"{config.seed}:ids")
        self._draws = random.Random(f"{config.seed}:jobs")

    # -- reading ---------------------------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh 32-hex request or job id from the seeded stream."""
        return hex_id(self._ids)

    def phone_ids(self) -> list[str]:
        """Every fleet phone id in creation order (including phones that never exist)."""
        return self.fleet.ids()

    def missing_phone_ids(self) -> list[str]:
        """Fleet ids that always answer CPS.0005 and are never listed (``missing_phone_rate``)."""
        return [p.phone_id for p in self.fleet.by_id.values() if not p.exists]

    def phone(self, phone_id: str) -> dict[str, Any]:
        """A phone's current state as plain data (properties, status, job counts); KeyError if unknown."""
        self.settle()
        phone = self.fleet.by_id[phone_id]
        return {
            "phone_id": phone.phone_id,
            "phone_name": phone.phone_name,
            "server_id": phone.server_id,
            "status": phone.status,
            "exists": phone.exists,
            "properties": dict(phone.properties or {}),
            "custom_property": dict(phone.custom_property or {}),
            "running_jobs": phone.running_jobs,
        }

    def properties(self, phone_id: str) -> dict[str, Any]:
        """A phone's applied properties (after settling due jobs); KeyError if unknown."""
        self.settle()
        return dict(self.fleet.by_id[phone_id].properties or {})

    def stats_dict(self, *, include_phones: bool = True) -> dict[str, Any]:
        """The body of ``GET /_sim/stats``; settles due jobs first so counts are current."""
        self.settle()
        body = self.counters.as_dict()
        body["phones"] = len(self.fleet.by_id)
        body["profile"] = self.profile.name
        body["jobs"] = {
            "created": self.jobs_created,
            "succeeded": self.jobs_succeeded,
            "failed": self.jobs_failed,
            "running": self.jobs_created - self.jobs_succeeded - self.jobs_failed,
        }
        if include_phones:
            body.update(self.counters.phone_maps())
            body["properties_per_phone"] = {
                pid: dict(p.properties or {}) for pid, p in self.changed_phones.items()
            }
        return body

    def stats(self, *, include_phones: bool = True) -> dict[str, Any]:
        """Same as :meth:`stats_dict`; the name tests use (``sim.state.stats()``)."""
        return self.stats_dict(include_phones=include_phones)

    # -- settling --------------------------------------------------------------------------------

    def settle(self) -> None:
        """Finish every job whose end time has come, in end-time order."""
        now_s = self.clock.monotonic()
        while self._due and self._due[0][0] <= now_s:
            _, _, job = heapq.heappop(self._due)
            self._finish(job)

    def _finish(self, job: Job) -> None:
        phone = job.phone
        phone.running_jobs -= 1
        succeeded = job.fail_code is None
        job.status = JOB_SUCCEEDED if succeeded else JOB_FAILED
        if succeeded:
            self.jobs_succeeded += 1
            self._apply(job)
        else:
            self.jobs_failed += 1
        if job.kind is JobKind.RESTART:
            phone.running_restarts -= 1
            if phone.running_restarts == 0:
                phone.status = PHONE_RUNNING if succeeded else PHONE_RESTART_FAILED
        job.properties = job.custom_property = None

    def _apply(self, job: Job) -> None:
        phone = job.phone
        if job.properties is None and job.custom_property is None:
            return
        if job.properties:
            phone.properties = {**(phone.properties or {}), **job.properties}
        if job.custom_property:
            phone.custom_property = {**(phone.custom_property or {}), **job.custom_property}
        phone.update_wall_s = job.end_wall_s
        self.changed_phones[phone.phone_id] = phone

    # -- submitting ------------------------------------------------------------------------------

    def submit_body(self, body: Any, request_id: str, kind: JobKind) -> dict[str, Any] | Rejection:
        """A batch request's answer from its decoded JSON body: validated as a whole, then one job
        (or per-phone error) per phone."""
        items = validate_batch(
            body, max_batch=self.config.max_batch, property_required=kind is JobKind.PROPERTY
        )
        if isinstance(items, Rejection):
            return items
        return {"jobs": self.submit(items, request_id, kind)}

    def submit(
        self, items: list[BatchItem], request_id: str, kind: JobKind
    ) -> list[dict[str, Any]]:
        """Create one job per valid item; the ``jobs`` list of the 200 answer, in request order."""
        self.settle()
        counter = self.counters.submissions if kind is JobKind.PROPERTY else self.counters.restarts
        answers = []
        for item in items:
            counter[item.phone_id] += 1
            answers.append(self._submit_one(item, request_id, kind))
        return answers

    def _submit_one(self, item: BatchItem, request_id: str, kind: JobKind) -> dict[str, Any]:
        refusal = self._refusal(item.phone_id)
        if refusal is not None:
            return self._item_error(item.phone_id, *refusal)
        job = self._create_job(self.fleet.by_id[item.phone_id], item, request_id, kind)
        return {
            "phone_id": item.phone_id,
            "job_id": job.job_id,
            "error_code": None,
            "error_msg": None,
        }

    def _refusal(self, phone_id: str) -> tuple[str, str] | None:
        """Why the cloud refuses this phone in this request, or None to create a job."""
        if not valid_phone_id(phone_id):
            return INVALID_PARAMETER_ERROR_CODE, "Parameter: phone_id is invalid."
        phone = self.fleet.by_id.get(phone_id)
        if phone is None or not phone.exists:
            return PHONE_NOT_FOUND_ERROR_CODE, PHONE_NOT_FOUND_MSG
        if phone.late_submissions_left > 0:
            phone.late_submissions_left -= 1
            return PHONE_NOT_FOUND_ERROR_CODE, PHONE_NOT_FOUND_MSG
        if phone.running_jobs > 0 and self._chance(self.profile.busy_rate):
            return BUSY_ERROR_CODE, BUSY_ERROR_MSG
        return None

    def _item_error(self, phone_id: str, code: str, msg: str) -> dict[str, Any]:
        item: dict[str, Any] = {"phone_id": phone_id}
        style = self.config.failed_item_job_id
        if style != "omit":
            item["job_id"] = None if style == "null" else ""
        item["error_code"] = code
        item["error_msg"] = msg
        return item

    def _chance(self, rate: float) -> bool:
        """A seeded coin flip that draws nothing when the outcome is certain."""
        if rate <= 0.0:
            return False
        return rate >= 1.0 or self._draws.random() < rate

    def _create_job(self, phone: Phone, item: BatchItem, request_id: str, kind: JobKind) -> Job:
        dist = (
            self.profile.job_duration if kind is JobKind.PROPERTY else self.profile.restart_duration
        )
        duration_s = dist.sample(self._draws)
        fail = self._job_failure(phone, kind)
        begin_wall_s = self.clock.time()
        job = Job(
            job_id=self.new_id(),
            request_id=request_id,
            phone=phone,
            kind=kind,
            begin_wall_s=begin_wall_s,
            end_wall_s=begin_wall_s + duration_s,
            end_mono_s=self.clock.monotonic() + duration_s,
            fail_code=fail[0] if fail else None,
            fail_msg=fail[1] if fail else None,
            properties=item.properties,
            custom_property=item.custom_property,
        )
        self._start(job)
        return job

    def _job_failure(self, phone: Phone, kind: JobKind) -> tuple[str, str] | None:
        if kind is JobKind.PROPERTY and phone.rejects_properties:
            return INVALID_PARAMETER_ERROR_CODE, INVALID_PROPERTY_MSG
        if self._chance(self.profile.job_fail_rate):
            return INTERNAL_ERROR_CODE, INTERNAL_ERROR_MSG
        return None

    def _start(self, job: Job) -> None:
        self.jobs[job.job_id] = job
        self.jobs_by_request.setdefault(job.request_id, []).append(job)
        heapq.heappush(self._due, (job.end_mono_s, next(self._order), job))
        self.jobs_created += 1
        job.phone.running_jobs += 1
        if job.kind is JobKind.RESTART:
            job.phone.running_restarts += 1
            job.phone.status = PHONE_RESTARTING

    # -- jobs queries ----------------------------------------------------------------------------

    def show_job(self, job_id: str) -> dict[str, Any] | Rejection:
        """ShowJob's body (empty error fields are ``null``, as in the doc example).

        A malformed ID is a 400 CPS.0004; a well-formed one the account does not hold is a 404
        CPS.0011, the answer for a job that vanished.
        """
        if not valid_phone_id(job_id):  # job IDs have the shape of phone IDs
            return Rejection(400, INVALID_PARAMETER_ERROR_CODE, "Parameter: job_id is invalid.")
        self.settle()
        job = self.jobs.get(job_id)
        if job is None:
            return Rejection(404, JOB_NOT_FOUND_ERROR_CODE, JOB_NOT_FOUND_MSG)
        return _job_view(job, empty=None)

    def list_jobs(self, query: dict[str, str]) -> dict[str, Any] | Rejection:
        """ListJobs' body: jobs of the given request ids, paged (empty error fields are ``""``)."""
        request_ids = _request_ids(query)
        if isinstance(request_ids, Rejection):
            return request_ids
        paging = parse_paging(
            query, max_limit=LIST_JOBS_MAX_LIMIT, default_limit=LIST_JOBS_MAX_LIMIT
        )
        if isinstance(paging, Rejection):
            return paging
        self.settle()
        offset, limit = paging
        matching = [job for rid in request_ids for job in self.jobs_by_request.get(rid, ())]
        body: dict[str, Any] = {
            "jobs": [_job_view(j, empty="") for j in matching[offset : offset + limit]]
        }
        if self.config.list_jobs_count:
            body["count"] = len(matching)
        return body

    # -- phone queries ---------------------------------------------------------------------------

    def list_phones(self, query: dict[str, str]) -> dict[str, Any] | Rejection:
        """ListCloudPhones' body: newest first, ``count`` = all matching; O(page) when unfiltered."""
        paging = parse_paging(
            query, max_limit=LIST_PHONES_MAX_LIMIT, default_limit=LIST_PHONES_DEFAULT_LIMIT
        )
        if isinstance(paging, Rejection):
            return paging
        candidates = self._phone_candidates(query)
        if isinstance(candidates, Rejection):
            return candidates
        self.settle()
        offset, limit = paging
        image_id = self.fleet.image_id
        page = [phone_list_view(p, image_id) for p in candidates[offset : offset + limit]]
        return {"phones": page, "count": len(candidates)}

    def _phone_candidates(self, query: dict[str, str]) -> list[Phone] | Rejection:
        status = _int_filter(query, "status", PHONE_STATUSES, INVALID_STATUS_ERROR_CODE)
        if isinstance(status, Rejection):
            return status
        phone_type = _int_filter(query, "type", frozenset({0, 1}), INVALID_PARAMETER_ERROR_CODE)
        if isinstance(phone_type, Rejection):
            return phone_type
        server_id = query.get("server_id")
        base = self.fleet.by_server.get(server_id, []) if server_id else self.fleet.listed
        name = query.get("phone_name")
        if status is None and phone_type is None and not name:
            return base
        self.settle()
        return [
            p
            for p in base
            if (status is None or p.status == status)
            and (phone_type is None or p.type == phone_type)
            and (not name or name in p.phone_name)
        ]

    def show_phone(self, phone_id: str) -> dict[str, Any] | Rejection:
        """ShowCloudPhoneDetail's body; unknown phones are 404 CPS.0005 (current doc)."""
        if not valid_phone_id(phone_id):
            return Rejection(400, INVALID_PARAMETER_ERROR_CODE, "Parameter: phone_id is invalid.")
        self.settle()
        phone = self.fleet.by_id.get(phone_id)
        if phone is None or not phone.exists:
            return Rejection(404, PHONE_NOT_FOUND_ERROR_CODE, PHONE_NOT_FOUND_MSG)
        return phone_detail_view(phone, self.fleet.image_id)


def _job_view(job: Job, *, empty: str | None) -> dict[str, Any]:
    finished = job.status != JOB_RUNNING
    return {
        "job_id": job.job_id,
        "phone_id": job.phone.phone_id,
        "server_id": job.phone.server_id,
        "begin_time": format_utc(job.begin_wall_s),
        "end_time": format_utc(job.end_wall_s) if finished else empty,
        "status": job.status,
        "error_code": job.fail_code if finished and job.fail_code else empty,
        "error_msg": job.fail_msg if finished and job.fail_msg else empty,
        "execute_msg": empty,
    }


def _request_ids(query: dict[str, str]) -> list[str] | Rejection:
    """``request_ids`` (comma list, ≤20) wins over ``request_id``; one of them is mandatory."""
    if "request_ids" in query:
        ids = [rid.strip() for rid in query["request_ids"].split(",") if rid.strip()]
        if not 1 <= len(ids) <= MAX_REQUEST_IDS:
            msg = f"Parameter: request_ids is invalid: 1 to {MAX_REQUEST_IDS} ids are allowed."
            return Rejection(400, INVALID_PARAMETER_ERROR_CODE, msg, "bad_query")
        return ids
    if query.get("request_id"):
        return [query["request_id"]]
    msg = "Parameter: request_id is invalid: request_id or request_ids is required."
    return Rejection(400, INVALID_PARAMETER_ERROR_CODE, msg, "bad_query")


def _int_filter(
    query: dict[str, str], name: str, allowed: frozenset[int], code: str
) -> int | Rejection | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value not in allowed:
        return Rejection(400, code, f"Parameter: {name} is invalid.", "bad_query")
    return value
