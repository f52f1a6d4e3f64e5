"""Pure rollout policy: retry decisions, backoff, the abort gate and wave sizes.

No I/O and no clock reads here: callers pass the random source and the numbers, so each rule is
unit-tested directly (as in stamina's backoff and procrastinate's ``get_retry_decision``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.plan.model import BUSY_ERROR_CODE

__all__ = [
    "JOB_TIMEOUT_CODE",
    "MISSING_FROM_ANSWER_CODE",
    "AbortThresholds",
    "RetryAction",
    "RetryDecision",
    "RetryPolicy",
    "abort_reason",
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
