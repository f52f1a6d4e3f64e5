"""The pure rollout policy: full-jitter backoff, retry decisions, the abort gate, wave sizes, and
what a failed submit request means for its batch."""

from __future__ import annotations

import inspect
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    MalformedResponseError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from orchestrator.engine.policy import (
    ACCOUNT_LEVEL_CODES,
    JOB_FAILED_CODE,
    JOB_TIMEOUT_CODE,
    JOB_VANISHED_CODE,
    MISSING_FROM_ANSWER_CODE,
    REQUEST_FAILED_CODE,
    AbortThresholds,
    RetryAction,
    RetryPolicy,
    SubmitAction,
    SubmitDecision,
    abort_reason,
    decide_submit_error,
    full_jitter_backoff_s,
)
from orchestrator.plan import wave_sizes

SEEDS = range(200)
OUR_CODES = (JOB_TIMEOUT_CODE, MISSING_FROM_ANSWER_CODE, JOB_VANISHED_CODE, REQUEST_FAILED_CODE)


# --- backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [0, -1, -10_000])
def test_backoff_is_zero_before_the_first_attempt(attempt: int) -> None:
    rng = random.Random(1)
    assert full_jitter_backoff_s(attempt, base_s=1.0, cap_s=60.0, rng=rng) == 0.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 7, 8])
def test_backoff_stays_within_the_full_jitter_window(attempt: int) -> None:
    ceiling = min(60.0, 1.5 * 2 ** (attempt - 1))
    delays = [
        full_jitter_backoff_s(attempt, base_s=1.5, cap_s=60.0, rng=random.Random(seed))
        for seed in SEEDS
    ]
    assert all(0.0 <= delay <= ceiling for delay in delays)
    # Full jitter spreads over the whole window, not only its top.
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9


def test_backoff_clamps_at_the_cap() -> None:
    delays = [
        full_jitter_backoff_s(30, base_s=1.0, cap_s=7.0, rng=random.Random(seed)) for seed in SEEDS
    ]
    assert all(0.0 <= delay <= 7.0 for delay in delays)
    assert max(delays) > 6.0


def test_backoff_does_not_overflow_for_huge_attempts() -> None:
    for seed in SEEDS:
        delay = full_jitter_backoff_s(10_000, base_s=1.0, cap_s=60.0, rng=random.Random(seed))
        assert 0.0 <= delay <= 60.0


def test_backoff_is_deterministic_for_a_seeded_random() -> None:
    first = [full_jitter_backoff_s(n, base_s=1, cap_s=60, rng=random.Random(7)) for n in range(9)]
    again = [full_jitter_backoff_s(n, base_s=1, cap_s=60, rng=random.Random(7)) for n in range(9)]
    assert first == again


@given(
    attempt=st.integers(min_value=-5, max_value=100_000),
    base_s=st.floats(min_value=0.0, max_value=100.0),
    cap_s=st.floats(min_value=0.0, max_value=3600.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_never_leaves_its_window(
    attempt: int, base_s: float, cap_s: float, seed: int
) -> None:
    delay = full_jitter_backoff_s(attempt, base_s=base_s, cap_s=cap_s, rng=random.Random(seed))
    assert 0.0 <= delay <= cap_s


# --- retry decisions -------------------------------------------------------------------------


def _policy(max_attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, retry_codes=frozenset({"CPS.0003", "CPS.0005"}))


def test_retryable_code_retries_until_max_attempts_then_fails() -> None:
    policy = _policy(max_attempts=4)
    rng = random.Random(3)
    actions = [policy.decide("CPS.0003", attempts, rng).action for attempts in range(1, 7)]
    assert actions == [RetryAction.RETRY] * 3 + [RetryAction.FAIL] * 3


def test_a_failed_decision_carries_no_delay() -> None:
    decision = _policy(max_attempts=2).decide("CPS.0003", 2, random.Random(0))
    assert decision.action is RetryAction.FAIL
    assert decision.delay_s == 0.0


@pytest.mark.parametrize("code", ["CPS.0004", "CPS.9999", "APIG.0308", JOB_FAILED_CODE])
def test_unknown_or_permanent_codes_fail_at_once(code: str) -> None:
    policy = _policy()
    assert not policy.retryable(code)
    assert policy.decide(code, 1, random.Random(0)).action is RetryAction.FAIL


@pytest.mark.parametrize("code", OUR_CODES)
def test_our_own_codes_retry_even_when_not_configured(code: str) -> None:
    policy = RetryPolicy(max_attempts=3, retry_codes=frozenset())
    assert policy.retryable(code)
    decision = policy.decide(code, 1, random.Random(0))
    assert decision.action is RetryAction.RETRY
    assert 0.0 <= decision.delay_s <= policy.base_s


@pytest.mark.parametrize("code", [None, ""])
def test_a_missing_code_never_retries(code: str | None) -> None:
    policy = RetryPolicy(max_attempts=10, retry_codes=frozenset({""}))
    assert policy.retryable(code) is False
    assert policy.decide(code, 1, random.Random(0)).action is RetryAction.FAIL


def test_retry_delay_follows_the_backoff_window() -> None:
    policy = RetryPolicy(max_attempts=100, retry_codes=frozenset({"CPS.0003"}), cap_s=1000.0)
    for attempts in range(1, 6):
        window = policy.base_s * 2 ** (attempts - 1)
        for seed in SEEDS:
            decision = policy.decide("CPS.0003", attempts, random.Random(seed))
            assert decision.action is RetryAction.RETRY
            assert 0.0 <= decision.delay_s <= window


def test_phone_not_found_waits_on_the_slow_base() -> None:
    policy = RetryPolicy(max_attempts=100, retry_codes=frozenset({"CPS.0005"}), cap_s=1000.0)
    assert policy.slow_base_s > policy.base_s
    for attempts in range(1, 6):
        fast_window = policy.base_s * 2 ** (attempts - 1)
        slow_window = policy.slow_base_s * 2 ** (attempts - 1)
        delays = [policy.decide("CPS.0005", attempts, random.Random(s)).delay_s for s in SEEDS]
        assert all(0.0 <= delay <= slow_window for delay in delays)
        assert any(delay > fast_window for delay in delays)


def test_slow_codes_still_respect_the_cap() -> None:
    policy = RetryPolicy(max_attempts=100, retry_codes=frozenset({"CPS.0005"}), cap_s=8.0)
    for seed in SEEDS:
        assert policy.decide("CPS.0005", 50, random.Random(seed)).delay_s <= 8.0


# --- abort gate ------------------------------------------------------------------------------


def test_failure_percent_at_the_limit_is_allowed_and_above_aborts() -> None:
    gate = AbortThresholds(max_failure_percent=10)
    assert abort_reason(succeeded=90, failed=10, thresholds=gate) is None
    reason = abort_reason(succeeded=89, failed=11, thresholds=gate)
    assert reason is not None
    assert "11.0%" in reason
    assert "10%" in reason


def test_failure_count_at_the_limit_is_allowed_and_above_aborts() -> None:
    gate = AbortThresholds(max_failures=5)
    assert abort_reason(succeeded=1000, failed=5, thresholds=gate) is None
    reason = abort_reason(succeeded=1000, failed=6, thresholds=gate)
    assert reason is not None
    assert "6 phones failed" in reason


def test_the_percentage_is_judged_only_from_min_executed() -> None:
    gate = AbortThresholds(max_failure_percent=10, min_executed=20)
    assert abort_reason(succeeded=0, failed=19, thresholds=gate) is None
    reason = abort_reason(succeeded=0, failed=20, thresholds=gate)
    assert reason is not None
    assert "100.0% of 20 executed" in reason


def test_the_failure_cap_counts_from_the_first_failure() -> None:
    """``min_executed`` protects the percentage from one early failure; a count needs no sample."""
    gate = AbortThresholds(max_failures=0, min_executed=20)
    assert abort_reason(succeeded=0, failed=0, thresholds=gate) is None
    assert abort_reason(succeeded=0, failed=1, thresholds=gate) is not None


def test_executed_counts_succeeded_and_failed_together() -> None:
    gate = AbortThresholds(max_failure_percent=50, min_executed=10)
    assert abort_reason(succeeded=5, failed=4, thresholds=gate) is None  # 9 executed: too few
    assert abort_reason(succeeded=4, failed=6, thresholds=gate) is not None  # 10 executed, 60%


def test_no_thresholds_never_abort() -> None:
    assert abort_reason(succeeded=0, failed=10_000, thresholds=AbortThresholds()) is None


def test_nothing_executed_never_aborts() -> None:
    gate = AbortThresholds(max_failure_percent=0, max_failures=0)
    assert abort_reason(succeeded=0, failed=0, thresholds=gate) is None


def test_throttling_is_not_an_input_to_the_gate() -> None:
    """Phones a 429 sent back to ``pending`` are neither failed nor executed.

    Counts of a 100-phone rollout after a storm of throttling: 9 succeeded, 1 failed, 90 back in
    ``pending``. The gate sees only finished phones; it has no parameter for throttling at all.
    """
    assert set(inspect.signature(abort_reason).parameters) == {"succeeded", "failed", "thresholds"}
    counts = {"succeeded": 9, "failed": 1, "pending": 90}
    gate = AbortThresholds(max_failure_percent=10, max_failures=3, min_executed=10)
    assert (
        abort_reason(succeeded=counts["succeeded"], failed=counts["failed"], thresholds=gate)
        is None
    )


@given(
    succeeded=st.integers(min_value=0, max_value=5000),
    failed=st.integers(min_value=0, max_value=5000),
    percent=st.none() | st.integers(min_value=0, max_value=100) | st.sampled_from([0.5, 12.5]),
    max_failures=st.none() | st.integers(min_value=0, max_value=5000),
    min_executed=st.integers(min_value=0, max_value=10_000),
)
def test_abort_exactly_when_a_threshold_is_passed(
    succeeded: int,
    failed: int,
    percent: float | None,
    max_failures: int | None,
    min_executed: int,
) -> None:
    gate = AbortThresholds(
        max_failure_percent=percent, max_failures=max_failures, min_executed=min_executed
    )
    executed = succeeded + failed
    too_many = max_failures is not None and failed > max_failures
    too_high_share = (
        percent is not None
        and executed >= max(min_executed, 1)
        and failed * 100 > percent * executed
    )
    expected = too_many or too_high_share
    reason = abort_reason(succeeded=succeeded, failed=failed, thresholds=gate)
    assert (reason is not None) is expected


# --- waves -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waves", "fleet", "expected"),
    [
        ([10, "10%", "100%"], 1000, [10, 100, 890]),
        ([1, 5], 12, [1, 5, 5, 1]),
        (["50%"], 3, [2, 1]),
        ([], 7, [7]),
        (["100%"], 1, [1]),
        ([0], 3, [1, 1, 1]),
        (["0%"], 2, [1, 1]),
        (["1%"], 250, [3] * 83 + [1]),
        ([500], 10, [10]),
        (["33.3%"], 10, [4, 4, 2]),
    ],
)
def test_wave_sizes_follow_ansible_serial(
    waves: list[int | str], fleet: int, expected: list[int]
) -> None:
    assert wave_sizes(waves, fleet) == expected


@pytest.mark.parametrize("fleet", [0, -3])
def test_an_empty_fleet_has_no_waves(fleet: int) -> None:
    assert wave_sizes([10, "50%"], fleet) == []


_WAVE_SPEC = st.integers(min_value=0, max_value=2000) | st.integers(min_value=0, max_value=200).map(
    lambda percent: f"{percent}%"
)


@given(
    waves=st.lists(_WAVE_SPEC, max_size=6),
    fleet=st.integers(min_value=1, max_value=5000),
)
def test_waves_cover_the_fleet_exactly(waves: list[int | str], fleet: int) -> None:
    sizes = wave_sizes(waves, fleet)
    assert sum(sizes) == fleet
    assert all(size >= 1 for size in sizes)
    # Every wave but the last is exactly its spec; the last may be cut short by what is left.
    for position, size in enumerate(sizes[:-1]):
        spec = waves[min(position, len(waves) - 1)] if waves else "100%"
        if isinstance(spec, int):
            assert size == max(1, spec)


# --- a submit request that raised --------------------------------------------------------------


def test_a_throttled_submit_is_resent_after_the_wait_it_asked_for() -> None:
    error = ThrottledError(status=429, error_code="APIG.0308", retry_after_s=2.5)
    decision = decide_submit_error(error, batch_size=100)
    assert decision.action is SubmitAction.RESEND_AFTER_WAIT
    assert decision.retry_after_s == 2.5
    assert not decision.rejected


def test_refused_credentials_stop_the_rollout() -> None:
    error = AuthError(status=401, error_code="APIG.0301")
    assert decide_submit_error(error, batch_size=100) == SubmitDecision(SubmitAction.STOP)


@pytest.mark.parametrize(
    ("error", "unknown"),
    [
        (TransientError(status=503), False),
        (TransientError("connection dropped", outcome_unknown=True), True),
        (MalformedResponseError("not JSON", status=200, outcome_unknown=True), True),
        (ApiError("something else"), False),
    ],
)
def test_a_request_that_failed_as_a_whole_retries_its_phones_with_backoff(
    error: ApiError, unknown: bool
) -> None:
    """5xx, timeouts, dropped connections and unreadable answers say nothing about the phones."""
    decision = decide_submit_error(error, batch_size=100)
    assert decision.action is SubmitAction.RETRY_WITH_BACKOFF
    assert decision.outcome_unknown is unknown
    assert not decision.rejected


@pytest.mark.parametrize("status", [400, 413])
def test_a_whole_batch_rejection_is_bisected(status: int) -> None:
    """One bad phone can make the server refuse its whole batch: halve until it stands alone."""
    error = PermanentError(status=status, error_code="CPS.0004")
    assert decide_submit_error(error, batch_size=2) == SubmitDecision(
        SubmitAction.BISECT, rejected=True
    )


@pytest.mark.parametrize("status", [400, 413])
def test_a_rejected_batch_of_one_fails_its_phone(status: int) -> None:
    error = PermanentError(status=status, error_code="CPS.0004")
    assert decide_submit_error(error, batch_size=1) == SubmitDecision(
        SubmitAction.FAIL_PHONE, rejected=True
    )


@pytest.mark.parametrize("code", sorted(ACCOUNT_LEVEL_CODES))
@pytest.mark.parametrize("batch_size", [1, 100])
def test_account_level_rejections_stop_the_rollout_unsplit(code: str, batch_size: int) -> None:
    """Permissions, arrears, a frozen or unverified account: no split of the batch can help."""
    error = PermanentError(status=400, error_code=code)
    decision = decide_submit_error(error, batch_size=batch_size)
    assert decision == SubmitDecision(SubmitAction.STOP, rejected=True)


@pytest.mark.parametrize("status", [403, 404, 405, 409, 422, None])
def test_other_client_errors_stop_the_rollout(status: int | None) -> None:
    error = PermanentError(status=status, error_code="CPS.0004")
    assert decide_submit_error(error, batch_size=100).action is SubmitAction.STOP


@given(
    status=st.none() | st.integers(min_value=400, max_value=499),
    code=st.sampled_from(["", "CPS.0004", "CPS.0002", *sorted(ACCOUNT_LEVEL_CODES)]),
    batch_size=st.integers(min_value=1, max_value=500),
)
def test_a_rejection_is_split_only_when_a_split_can_help(
    status: int | None, code: str, batch_size: int
) -> None:
    decision = decide_submit_error(
        PermanentError(status=status, error_code=code), batch_size=batch_size
    )
    assert decision.rejected
    splittable = status in (400, 413) and code not in ACCOUNT_LEVEL_CODES
    if not splittable:
        assert decision.action is SubmitAction.STOP
    elif batch_size == 1:
        assert decision.action is SubmitAction.FAIL_PHONE
    else:
        assert decision.action is SubmitAction.BISECT
