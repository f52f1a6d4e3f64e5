"""The catalogue of log events: each name, its level, and the fields it carries.

Log-based monitoring relies on these names and fields; they change only with a note in the README.
Every event also carries ``timestamp``, ``level`` and, inside a rollout, ``rollout_id``. A test runs
rollouts in every fault profile and checks that nothing outside this catalogue is emitted.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOGUE", "Event"]


@dataclass(frozen=True, slots=True)
class Event:
    """One documented log event."""

    level: str
    fields: tuple[str, ...]
    meaning: str


CATALOGUE: dict[str, Event] = {
    "rollout.started": Event(
        "info",
        ("name", "phones", "waves", "batch_size", "submit_rate_per_s", "query_rate_per_s"),
        "a rollout begins (or resumes)",
    ),
    "rollout.progress": Event(
        "info",
        (
            "pending",
            "submitting",
            "running",
            "retry_wait",
            "succeeded",
            "failed",
            "cancelled",
            "total",
            "elapsed_s",
            "phones_per_s",
            "eta_s",
            "submit_rate_per_s",
            "query_rate_per_s",
        ),
        "periodic counts per state, throughput, ETA and the current adaptive rates",
    ),
    "rollout.finished": Event(
        "info",
        (
            "status",
            "reason",
            "total",
            "succeeded",
            "failed",
            "cancelled",
            "pending",
            "submit",
            "query",
            "throttled",
        ),
        "the run ended; status is succeeded, completed_with_failures, aborted or interrupted",
    ),
    "rollout.aborted": Event(
        "error",
        ("reason", "cancelled_now", "succeeded", "failed", "cancelled", "total"),
        "the abort gate tripped (or a cancel was asked): no more submits",
    ),
    "rollout.paused": Event(
        "info",
        ("pending", "running", "succeeded", "failed", "total"),
        "no new batches until resumed",
    ),
    "rollout.resumed": Event(
        "info", ("pending", "running", "succeeded", "failed", "total"), "batches are sent again"
    ),
    "wave.started": Event("info", ("wave", "phones"), "a wave of the canary ramp begins"),
    "wave.completed": Event(
        "info", ("wave", "bake_s"), "every phone of the wave is terminal; baking before the next"
    ),
    "batch.submitted": Event(
        "info",
        ("batch_id", "request_id", "stage", "phones", "accepted", "rejected"),
        "a batch request was answered; successes are summed here, not logged per phone",
    ),
    "batch.split": Event(
        "info", ("phones", "error_code"), "a whole batch was refused (400): it is bisected"
    ),
    "jobs.finished": Event("info", ("request_ids", "succeeded", "failed"), "a poll saw jobs end"),
    "job.timed_out": Event("warning", ("phone_id", "job_id"), "a job ran past job_timeout_s"),
    "phone.retry_scheduled": Event(
        "info",
        ("phone_id", "error_code", "error_msg", "attempts", "delay_s", "request_id", "stage"),
        "a phone's attempt failed with a retryable code; it is tried again after delay_s",
    ),
    "phone.failed": Event(
        "warning",
        ("phone_id", "error_code", "error_msg", "attempts", "request_id", "job_id", "stage"),
        "a phone ended failed, with the reason",
    ),
    "api.throttled": Event(
        "warning",
        ("family", "request_id", "retry_after_s", "rate_per_s", "rate_cut"),
        "the gateway answered 429/APIG.0308; the family's rate was cut (once per burst)",
    ),
    "api.error": Event(
        "warning",
        (
            "operation",
            "status",
            "error_code",
            "error_msg",
            "request_id",
            "error_class",
            "phones",
            "outcome_unknown",
        ),
        "a request failed as a whole (level error when fatal: auth, account, endpoint)",
    ),
    "auth.token_refreshed": Event(
        "info", ("username", "generation"), "a new IAM token was obtained"
    ),
    "journal.failed": Event(
        "error", ("error", "phones"), "the journal cannot be written: submitting stops at once"
    ),
    "journal.compacted": Event(
        "info",
        ("rollout_id", "folded", "elapsed_s"),
        "an ended rollout's change log was folded into its phones' rows (reads are faster)",
    ),
    "daemon.started": Event(
        "info",
        ("listen", "state_path", "resumed"),
        "the daemon listens; resumed lists the unfinished rollouts it took up from the journal",
    ),
    "daemon.open_access": Event(
        "warning", ("listen",), "no bearer token is configured: /v1 is open (loopback only)"
    ),
    "daemon.stopping": Event(
        "info", ("running",), "SIGTERM: no more requests; rollouts stop submitting (grace)"
    ),
    "daemon.stopped": Event("info", (), "every rollout recorded how it ended; journal closed"),
    "daemon.rollout_accepted": Event(
        "info", ("rollout_id", "name", "phones"), "a plan was accepted over the API and started"
    ),
    "daemon.rollout_skipped": Event(
        "warning",
        ("rollout_id", "reason"),
        "an unfinished rollout is run by another live process (its lease is held): not resumed",
    ),
    "daemon.rollout_failed": Event(
        "error", ("rollout_id", "error"), "a rollout's run stopped on an unexpected error"
    ),
    "engine.task_failed": Event(
        "error", ("task", "error"), "an internal error stopped the rollout (a bug: please report)"
    ),
    "daemon.request_refused": Event(
        "warning",
        ("error_class",),
        "the HTTP layer refused a malformed or oversized request with a 400 before the API saw it"
        " (debug when the first bytes of a connection are not HTTP at all)",
    ),
    "daemon.request_failed": Event(
        "error",
        ("method", "route", "error_class"),
        "an API request hit an unexpected error and was answered 500 (a bug: please report)",
    ),
}
