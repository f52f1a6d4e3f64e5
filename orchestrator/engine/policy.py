"""Pure rollout policy: retry decisions, backoff, what a failed submit means, and the abort gate.

No I/O and no clock reads here: callers pass the random source and the numbers, so each rule is
unit-tested directly (as in stamina's backoff and procrastinate's ``get_retry_decision``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from orchestrator.plan.model import BUSY_ERROR_CODE

__all__ = [
    "ACCOUNT_LEVEL_CODES",
    "JOB_TIMEOUT_CODE",
    "MISSING_FROM_ANSWER_CODE",
    "AbortThresholds",
    "RetryAction",
    "RetryDecision",
    "RetryPolicy",
    "SubmitAction",
    "SubmitDecision",
    "abort_reason",
    "decide_submit_error",
    "full_jitter_backoff_s",
]

JOB_TIMEOUT_CODE = "JOB_TIMEOUT"
"""Our own code for a job still running past ``job_timeout_s``."""
MISSING_FROM_ANSWER_CODE = "MISSING_FROM_ANSWER"
"""Our own code for a phone that a batch answer did not mention."""
JOB_VANISHED_CODE = "JOB_VANISHED"
"""Our own code for a job that neither ListJobs nor ShowJob can find any more."""
REQUEST_FAILED_CODE = "REQUEST_FAILED"
"""Our code for a batch whose request failed as a whole (5xx, timeout, dropped connection)."""
JOB_FAILED_CODE = "JOB_FAILED"
"""Our code for a job that ended -1 without an error code; not retried (the cause is unknown)."""
OUR_RETRYABLE_CODES = frozenset(
    {JOB_TIMEOUT_CODE, MISSING_FROM_ANSWER_CODE, JOB_VANISHED_CODE, REQUEST_FAILED_CODE}
)

ACCOUNT_LEVEL_CODES = frozenset({"CPS.0001", "CPS.0006", "CPS.0007", "CPS.0008"})
"""Whole-request rejections that no split can fix: permissions, arrears, frozen, unverified."""
SPLITTABLE_STATUSES = frozenset({400, 413})
"""HTTP statuses of a whole-batch rejection that one of its phones may be causing."""

DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_CAP_S = 60.0
DEFAULT_SLOW_BACKOFF_BASE_S = 5.0
"""Codes that heal only when something else finishes wait longer between tries: CPS.0005 (the
phone is still being created) and the busy code (another job on the phone must end first)."""
DEFAULT_SLOW_CODES = frozenset({"CPS.0005", BUSY_ERROR_CODE})


def full_jitter_backoff_s(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random
) -> float:
    """AWS's "full jitter": uniform in ``[0, min(cap, base·2^(attempt-1))]``; safe for huge attempts."""
    if attempt < 1:
        return 0.0
    exponent = min(attempt - 1, 62)
    ceiling = min(cap_s, base_s * math.pow(2.0, exponent))
    return rng.uniform(0.0, ceiling)


class RetryAction(StrEnum):
    """What to do with a phone whose attempt did not succeed."""

    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """The verdict for one failed attempt, with the wait before the next one."""

    action: RetryAction
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which per-phone failures heal, and how long to wait before each new attempt."""

    max_attempts: int
    retry_codes: Collection[str]
    slow_codes: Collection[str] = DEFAULT_SLOW_CODES
    base_s: float = DEFAULT_BACKOFF_BASE_S
    slow_base_s: float = DEFAULT_SLOW_BACKOFF_BASE_S
    cap_s: float = DEFAULT_BACKOFF_CAP_S

    def retryable(self, error_code: str | None) -> bool:
        """True for codes that may heal by themselves (configured ones and our own)."""
        return bool(error_code) and (
            error_code in self.retry_codes or error_code in OUR_RETRYABLE_CODES
        )

    def decide(self, error_code: str | None, attempts: int, rng: random.Random) -> RetryDecision:
        """Retry with backoff while the code is retryable and attempts remain; else fail."""
        if not self.retryable(error_code) or attempts >= self.max_attempts:
            return RetryDecision(RetryAction.FAIL)
        base = self.slow_base_s if error_code in self.slow_codes else self.base_s
        delay = full_jitter_backoff_s(attempts, base_s=base, cap_s=self.cap_s, rng=rng)
        return RetryDecision(RetryAction.RETRY, delay)


@dataclass(frozen=True, slots=True)
class AbortThresholds:
    """When a rollout stops: too high a failure share, or too many failures, once enough ran."""

    max_failure_percent: float | None = None
    max_failures: int | None = None
    min_executed: int = 0


def abort_reason(*, succeeded: int, failed: int, thresholds: AbortThresholds) -> str | None:
    """Why the rollout must abort now, or None. Reaching a threshold is allowed; passing it is not.

    The absolute cap counts from the first failure; the percentage is judged only once
    ``min_executed`` phones have finished (as AWS IoT Jobs' ``minNumberOfExecutedThings``), so
    one early failure cannot abort a large rollout. ``executed`` counts phones that succeeded or
    failed: throttled or still-running phones never push a rollout towards abort.
    """
    if thresholds.max_failures is not None and failed > thresholds.max_failures:
        return f"{failed} phones failed, more than the limit of {thresholds.max_failures}"
    executed = succeeded + failed
    limit = thresholds.max_failure_percent
    if limit is None or executed == 0 or executed < thresholds.min_executed:
        return None
    if failed * 100.0 > limit * executed:
        share = failed * 100.0 / executed
        return f"{share:.1f}% of {executed} executed phones failed, more than {limit:g}%"
    return None


class SubmitAction(StrEnum):
    """What the submitter does with a batch whose request raised instead of answering."""

    RESEND_AFTER_WAIT = "resend_after_wait"
    """Throttled: not the phones' fault; they go back to the front of the queue, unchanged, and
    the submit budget slows down and honours any Retry-After."""
    RETRY_WITH_BACKOFF = "retry_with_backoff"
    """The request failed as a whole (5xx, timeout, dropped connection): each phone waits its
    backoff and is sent again, without being charged an attempt."""
    BISECT = "bisect"
    """A 400/413 for the whole batch: send each half on its own to find the phone behind it."""
    FAIL_PHONE = "fail_phone"
    """A 400/413 for a batch of one phone: that phone fails with the request's error code."""
    STOP = "stop"
    """Credentials refused, an account-level code, or another 4xx: no resend can work, so the
    rollout stops (fatal)."""


@dataclass(frozen=True, slots=True)
class SubmitDecision:
    """The verdict on one failed submit request."""

    action: SubmitAction
    rejected: bool = False
    """The server refused the request as such (a 4xx that is neither throttling nor auth)."""
    outcome_unknown: bool = False
    """The request may have taken effect (a POST whose answer was lost)."""
    retry_after_s: float | None = None
    """How long a throttled answer asked us to wait, when it said."""


def decide_submit_error(error: ApiError, *, batch_size: int) -> SubmitDecision:
    """What a submit request's error means for its batch of ``batch_size`` phones."""
    if isinstance(error, ThrottledError):
        return SubmitDecision(SubmitAction.RESEND_AFTER_WAIT, retry_after_s=error.retry_after_s)
    if isinstance(error, AuthError):
        return SubmitDecision(SubmitAction.STOP)
    if isinstance(error, PermanentError):
        return SubmitDecision(_rejection_action(error, batch_size), rejected=True)
    unknown = isinstance(error, TransientError) and error.outcome_unknown
    return SubmitDecision(SubmitAction.RETRY_WITH_BACKOFF, outcome_unknown=unknown)


def _rejection_action(error: PermanentError, batch_size: int) -> SubmitAction:
    if error.error_code in ACCOUNT_LEVEL_CODES or error.status not in SPLITTABLE_STATUSES:
        return SubmitAction.STOP
    return SubmitAction.FAIL_PHONE if batch_size == 1 else SubmitAction.BISECT
