"""Rate budgets and poll timing: the adaptive rate rule, the budget on a fake clock, and when to poll.

``AdaptiveRate`` is driven with explicit ``now`` values; ``Budget`` and its throttler run on a
:class:`FakeClock`, so nothing here sleeps on the wall clock.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from orchestrator.clock import FakeClock
from orchestrator.cph.api import ApiFamily
from orchestrator.engine.polling import (
    FIRST_POLL_QUANTILE,
    MIN_SAMPLES_TO_TRUST,
    POLL_MARGIN_S,
    DurationEstimator,
    PollTiming,
    whole_batch_quantile,
)
from orchestrator.engine.rate import (
    DEFAULT_REGROWTH_FRACTION_PER_S,
    AdaptiveRate,
    Budget,
    ClockThrottler,
)
from orchestrator.testing import run_on_fake_clock

FAST_RATE_PER_S = 1_000_000.0
"""High enough that the throttler inside a Budget never holds back the tests of other waits."""

# --- AdaptiveRate ----------------------------------------------------------------------------


def test_a_fresh_rate_starts_at_its_ceiling_with_defaults_derived_from_it() -> None:
    rate = AdaptiveRate(50.0)
    assert rate.rate_per_s == 50.0
    assert rate.regrowth_per_s == pytest.approx(50.0 * DEFAULT_REGROWTH_FRACTION_PER_S)
    assert rate.pause_left_s(0.0) == 0.0
    assert AdaptiveRate(0.1).min_rate_per_s == 0.1  # the floor never exceeds the ceiling


def test_a_throttle_cuts_the_rate_by_the_factor() -> None:
    rate = AdaptiveRate(100.0, decrease_factor=0.5)
    assert rate.on_throttled(now=10.0, sent_at=9.9, retry_after_s=None) is True
    assert rate.rate_per_s == 50.0
    assert rate.cuts == 1
    assert rate.last_cut_at == 10.0


def test_the_rate_never_falls_below_its_floor() -> None:
    rate = AdaptiveRate(10.0, min_rate_per_s=2.0, decrease_factor=0.5)
    for second in range(50):
        rate.on_throttled(now=float(second), sent_at=float(second), retry_after_s=None)
        assert rate.rate_per_s >= 2.0
    assert rate.rate_per_s == 2.0


def test_answers_to_requests_sent_before_the_cut_do_not_cut_again() -> None:
    rate = AdaptiveRate(100.0, decrease_factor=0.5)
    assert rate.on_throttled(now=10.0, sent_at=9.5, retry_after_s=None)
    # The rest of the burst was sent at the old rate, before the cut: no second cut.
    assert not rate.on_throttled(now=10.2, sent_at=9.6, retry_after_s=None)
    assert not rate.on_throttled(now=10.4, sent_at=9.99, retry_after_s=None)
    assert rate.rate_per_s == 50.0
    assert rate.cuts == 1
    # A request sent after the cut, at the new rate, was still too much: cut again.
    assert rate.on_throttled(now=11.0, sent_at=10.5, retry_after_s=None)
    assert rate.rate_per_s == 25.0
    assert rate.cuts == 2


def test_retry_after_sets_a_pause_even_without_a_cut() -> None:
    rate = AdaptiveRate(100.0)
    rate.on_throttled(now=10.0, sent_at=9.0, retry_after_s=3.0)
    assert rate.pause_left_s(10.0) == 3.0
    assert rate.pause_left_s(12.0) == 1.0
    assert rate.pause_left_s(13.0) == 0.0
    assert rate.pause_left_s(20.0) == 0.0
    # A stale answer does not cut, but its Retry-After is honoured; a shorter one never shortens.
    assert not rate.on_throttled(now=10.5, sent_at=9.5, retry_after_s=5.0)
    assert rate.pause_left_s(10.5) == 5.0
    rate.on_throttled(now=11.0, sent_at=9.5, retry_after_s=0.5)
    assert rate.pause_left_s(11.0) == 4.5


def test_success_regrows_linearly_with_elapsed_time() -> None:
    rate = AdaptiveRate(100.0, decrease_factor=0.5, regrowth_per_s=2.0)
    rate.on_throttled(now=0.0, sent_at=0.0, retry_after_s=None)
    assert rate.rate_per_s == 50.0
    rate.on_success(now=1.0)
    assert rate.rate_per_s == pytest.approx(52.0)
    rate.on_success(now=1.5)
    rate.on_success(now=3.0)
    assert rate.rate_per_s == pytest.approx(56.0)
    # Many answers at the same instant grow nothing more.
    for _ in range(100):
        rate.on_success(now=3.0)
    assert rate.rate_per_s == pytest.approx(56.0)


def test_success_never_grows_past_the_ceiling() -> None:
    rate = AdaptiveRate(100.0, decrease_factor=0.5, regrowth_per_s=2.0)
    rate.on_throttled(now=0.0, sent_at=0.0, retry_after_s=None)
    rate.on_success(now=1_000.0)
    assert rate.rate_per_s == 100.0
    rate.on_success(now=2_000.0)
    assert rate.rate_per_s == 100.0


def test_the_first_success_only_starts_the_growth_clock() -> None:
    rate = AdaptiveRate(100.0, rate_per_s=10.0, regrowth_per_s=1.0)
    rate.on_success(now=500.0)
    assert rate.rate_per_s == 10.0
    rate.on_success(now=505.0)
    assert rate.rate_per_s == pytest.approx(15.0)


def test_time_going_backwards_never_shrinks_the_rate() -> None:
    rate = AdaptiveRate(100.0, rate_per_s=10.0, regrowth_per_s=1.0)
    rate.on_success(now=5.0)
    rate.on_success(now=4.0)
    assert rate.rate_per_s == 10.0


def _simulate(rate: AdaptiveRate, *, server_limit: int, seconds: int, seed: int = 0) -> list[float]:
    """Each second the client sends ``rate`` requests; the server accepts ``server_limit`` of them.

    Answers of one second's burst arrive half a second later, in a shuffled order. Returns the rate
    at the start of every second.
    """
    rng = random.Random(seed)
    history: list[float] = []
    for second in range(seconds):
        history.append(rate.rate_per_s)
        sent = max(1, int(rate.rate_per_s))
        accepted = min(sent, server_limit)
        answers = [True] * accepted + [False] * (sent - accepted)
        rng.shuffle(answers)
        now = second + 0.5
        for ok in answers:
            if ok:
                rate.on_success(now=now)
            else:
                rate.on_throttled(now=now, sent_at=float(second), retry_after_s=None)
    return history


@pytest.mark.parametrize(
    ("ceiling", "server_limit"),
    [
        (100.0, 40),
        (50.0, 45),
        (100.0, 20),
        # A ceiling far above the real limit: regrowth scales with the level cut from, so the
        # rate still settles near the limit.
        (1000.0, 20),
    ],
)
def test_the_rate_settles_near_the_servers_limit(ceiling: float, server_limit: int) -> None:
    rate = AdaptiveRate(ceiling)
    history = _simulate(rate, server_limit=server_limit, seconds=600)
    settled = history[300:]
    assert min(settled) >= 0.5 * server_limit
    assert max(settled) <= 1.2 * server_limit
    # It keeps probing upwards rather than sticking to the floor.
    assert max(settled) > server_limit
    assert rate.cuts < 600


def _simulate_paced(
    rate: AdaptiveRate, *, server_limit: int, seconds: int, latency_s: float = 0.1
) -> tuple[list[float], float]:
    """Requests leave one by one at the current rate; the server accepts ``server_limit`` per
    calendar second. Answers come ``latency_s`` later, so requests sent after a cut can cut again.

    Returns the rate at each whole second and the share of requests that were throttled.
    """
    now = 0.0
    answers: list[tuple[float, float, bool]] = []  # (arrives_at, sent_at, accepted), in order
    per_second: dict[int, int] = {}
    history: list[float] = []
    sent = throttled = 0
    while now < seconds:
        while answers and answers[0][0] <= now:
            arrives_at, sent_at, accepted = answers.pop(0)
            if accepted:
                rate.on_success(now=arrives_at)
            else:
                rate.on_throttled(now=arrives_at, sent_at=sent_at, retry_after_s=None)
        if len(history) <= now:
            history.append(rate.rate_per_s)
        window = per_second[int(now)] = per_second.get(int(now), 0) + 1
        sent += 1
        throttled += window > server_limit
        answers.append((now + latency_s, now, window <= server_limit))
        now += 1.0 / rate.rate_per_s
    return history, throttled / sent


@pytest.mark.parametrize(("ceiling", "server_limit"), [(100.0, 40), (50.0, 45), (100.0, 20)])
def test_a_paced_client_settles_near_the_servers_limit(ceiling: float, server_limit: int) -> None:
    history, throttled_share = _simulate_paced(
        AdaptiveRate(ceiling), server_limit=server_limit, seconds=300
    )
    settled = history[150:]
    assert min(settled) >= 0.5 * server_limit
    assert max(settled) <= 1.2 * server_limit
    assert throttled_share < 0.05


def test_below_the_servers_limit_the_rate_stays_at_its_ceiling() -> None:
    rate = AdaptiveRate(30.0)
    history = _simulate(rate, server_limit=40, seconds=100)
    assert set(history) == {30.0}
    assert rate.cuts == 0


# --- Budget ----------------------------------------------------------------------------------


async def _spin(times: int = 5) -> None:
    """Let the event loop run ready tasks without letting any real time pass."""
    for _ in range(times):
        await asyncio.sleep(0)


def _budget(clock: FakeClock, *, max_in_flight: int = 2) -> Budget:
    return Budget(
        ApiFamily.SUBMIT, AdaptiveRate(FAST_RATE_PER_S), max_in_flight=max_in_flight, clock=clock
    )


async def test_acquire_respects_the_in_flight_cap() -> None:
    budget = _budget(FakeClock(), max_in_flight=2)
    await budget.acquire()
    await budget.acquire()
    third = asyncio.create_task(budget.acquire())
    await _spin()
    assert not third.done()
    budget.release()
    await _spin()
    assert third.done()
    budget.release()
    budget.release()


async def test_acquire_returns_the_send_time_on_the_injected_clock() -> None:
    clock = FakeClock(start=42.0)
    budget = _budget(clock)
    assert await budget.acquire() == 42.0
    budget.release()


async def test_slot_releases_its_place_even_when_the_block_fails() -> None:
    clock = FakeClock(start=3.0)
    budget = _budget(clock, max_in_flight=1)
    seen: list[float] = []

    async def failing_request() -> None:
        async with budget.slot() as sent_at:
            seen.append(sent_at)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_request()
    assert seen == [3.0]
    waiter = asyncio.create_task(budget.acquire())
    await _spin()
    assert waiter.done()
    budget.release()


async def test_retry_after_makes_acquire_wait_on_the_fake_clock() -> None:
    clock = FakeClock()
    budget = _budget(clock)
    assert budget.on_throttled(sent_at=0.0, retry_after_s=5.0) is True
    waiter = asyncio.create_task(budget.acquire())
    await _spin()
    assert not waiter.done()
    assert clock.sleepers == 1
    clock.advance(4.9)
    await _spin()
    assert not waiter.done()
    clock.advance(0.1)
    await _spin()
    assert waiter.done()
    assert waiter.result() == 5.0
    budget.release()


async def test_a_longer_retry_after_during_the_pause_extends_the_wait() -> None:
    clock = FakeClock()
    budget = _budget(clock)
    budget.on_throttled(sent_at=0.0, retry_after_s=2.0)
    waiter = asyncio.create_task(budget.acquire())
    await _spin()
    clock.advance(1.0)
    budget.on_throttled(sent_at=0.0, retry_after_s=3.0)  # now paused until t=4
    clock.advance(1.0)
    await _spin()
    assert not waiter.done()
    clock.advance(2.0)
    await _spin()
    assert waiter.done()
    budget.release()


async def test_cancelling_a_paused_acquire_gives_its_place_back() -> None:
    clock = FakeClock()
    budget = _budget(clock, max_in_flight=1)
    budget.on_throttled(sent_at=0.0, retry_after_s=10.0)
    waiter = asyncio.create_task(budget.acquire())
    await _spin()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.advance(10.0)
    again = asyncio.create_task(budget.acquire())
    await _spin()
    assert again.done()
    budget.release()


async def test_on_throttled_counts_every_throttle_but_cuts_once_per_burst() -> None:
    clock = FakeClock(start=10.0)
    budget = _budget(clock)
    sent_before = 9.0
    cuts = [budget.on_throttled(sent_at=sent_before, retry_after_s=None) for _ in range(3)]
    assert cuts == [True, False, False]
    assert budget.throttled == 3
    assert budget.rate.cuts == 1
    assert budget.rate.rate_per_s == pytest.approx(FAST_RATE_PER_S * 0.7)


async def test_on_success_regrows_the_budgets_rate_on_its_clock() -> None:
    clock = FakeClock()
    budget = Budget(
        ApiFamily.QUERY,
        AdaptiveRate(FAST_RATE_PER_S, decrease_factor=0.5, regrowth_per_s=1000.0),
        max_in_flight=1,
        clock=clock,
    )
    budget.on_throttled(sent_at=0.0, retry_after_s=None)
    clock.advance(2.0)
    budget.on_success()
    assert budget.rate.rate_per_s == pytest.approx(FAST_RATE_PER_S * 0.5 + 2000.0)
    assert budget.throttled == 1


async def test_pace_waits_for_a_pause_without_taking_a_place() -> None:
    clock = FakeClock()
    budget = _budget(clock, max_in_flight=1)
    await budget.acquire()  # the only place is held
    budget.on_throttled(sent_at=0.0, retry_after_s=1.0)
    follow_up = asyncio.create_task(budget.pace())
    await _spin()
    assert not follow_up.done()
    clock.advance(1.0)
    await _spin()
    assert follow_up.done()
    budget.release()


# --- pacing on the injected clock ---------------------------------------------------------------
# run_on_fake_clock raises DeadlockError if anything waits on the real clock (asyncio.sleep with a
# delay has no fake sleeper), so these runs also prove that the throttler never sleeps for real.


async def _acquire_times(budget: Budget, clock: FakeClock, count: int) -> list[float]:
    times: list[float] = []

    async def take() -> None:
        for _ in range(count):
            times.append(await budget.acquire())
            budget.release()

    await run_on_fake_clock(take(), clock)
    return times


async def test_a_budget_paces_acquisitions_at_its_rate_on_the_fake_clock() -> None:
    clock = FakeClock()
    budget = Budget(ApiFamily.SUBMIT, AdaptiveRate(4.0), max_in_flight=1, clock=clock)
    times = await _acquire_times(budget, clock, 20)
    assert times == [float(n // 4) for n in range(20)]


async def test_a_fractional_rate_is_paced_over_a_shorter_window() -> None:
    clock = FakeClock()
    budget = Budget(ApiFamily.QUERY, AdaptiveRate(2.5), max_in_flight=1, clock=clock)
    times = await _acquire_times(budget, clock, 10)
    assert times == pytest.approx([0.8 * (n // 2) for n in range(10)])
    assert len(times) / times[-1] == pytest.approx(10 / 3.2)  # ~2.5/s, never faster


async def test_a_rate_cut_slows_the_pacing() -> None:
    clock = FakeClock(start=100.0)
    budget = Budget(ApiFamily.SUBMIT, AdaptiveRate(10.0), max_in_flight=1, clock=clock)
    budget.on_throttled(sent_at=100.0, retry_after_s=None)  # 10/s -> 7/s
    times = await _acquire_times(budget, clock, 15)
    assert times == pytest.approx([100.0 + n // 7 for n in range(15)])


async def test_concurrent_acquirers_share_the_window() -> None:
    """Tasks acquiring at once never exceed ``rate_limit`` in any ``period``-long window."""
    clock = FakeClock()
    throttler = ClockThrottler(rate_limit=3, period=2.0, clock=clock)
    times: list[float] = []

    async def one() -> None:
        await throttler.acquire()
        times.append(clock.monotonic())

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(10)))

    await run_on_fake_clock(many(), clock)
    assert sorted(times) == [0.0] * 3 + [2.0] * 3 + [4.0] * 3 + [6.0]
    assert clock.monotonic() == 6.0


def test_a_budget_is_named_by_its_family() -> None:
    budget = Budget(ApiFamily.QUERY, AdaptiveRate(1.0), max_in_flight=1, clock=FakeClock())
    assert budget.family is ApiFamily.QUERY
    assert budget.name == "query"


# --- DurationEstimator and PollTiming --------------------------------------------------------


def test_an_empty_estimator_knows_no_quantile() -> None:
    estimator = DurationEstimator()
    assert len(estimator) == 0
    assert estimator.quantile(0.5) is None


def test_quantiles_of_known_samples() -> None:
    estimator = DurationEstimator()
    for duration in [5.0, 1.0, 4.0, 2.0, 3.0]:
        estimator.add(duration)
    assert estimator.quantile(0.0) == 1.0
    assert estimator.quantile(0.5) == 3.0
    assert estimator.quantile(1.0) == 5.0
    assert estimator.quantile(0.75) == 4.0
    assert estimator.quantile(-1.0) == 1.0  # out-of-range q clamps
    assert estimator.quantile(2.0) == 5.0


def test_the_sliding_sample_drops_the_oldest() -> None:
    estimator = DurationEstimator(size=3)
    for duration in [100.0, 1.0, 2.0, 3.0]:
        estimator.add(duration)
    assert len(estimator) == 3
    assert estimator.quantile(1.0) == 3.0  # the 100 s outlier was the oldest and is gone
    assert estimator.quantile(0.0) == 1.0
    estimator.add(0.5)
    assert estimator.quantile(0.0) == 0.5
    assert estimator.quantile(1.0) == 3.0
    assert len(estimator) == 3


def test_the_sliding_sample_handles_repeated_values() -> None:
    estimator = DurationEstimator(size=2)
    for duration in [1.0, 1.0, 2.0, 2.0]:
        estimator.add(duration)
    assert estimator.quantile(0.0) == 2.0
    assert estimator.quantile(1.0) == 2.0


def test_first_poll_uses_the_default_until_enough_is_learnt() -> None:
    timing = PollTiming(first_poll_s=7.0)
    for _ in range(MIN_SAMPLES_TO_TRUST - 1):
        timing.estimator.add(1.0)
        assert timing.first_delay_s() == 7.0
    timing.estimator.add(1.0)
    assert timing.first_delay_s() == pytest.approx(1.0 + POLL_MARGIN_S)


def test_first_poll_comes_just_after_a_high_quantile() -> None:
    rng = random.Random(11)
    timing = PollTiming()
    for _ in range(500):
        timing.estimator.add(rng.uniform(1.0, 3.0))
    delay = timing.first_delay_s()
    assert 2.8 <= delay <= 3.5
    learnt = timing.estimator.quantile(FIRST_POLL_QUANTILE)
    assert learnt is not None
    assert delay == pytest.approx(learnt + POLL_MARGIN_S)


def test_a_big_batch_is_first_polled_when_its_last_job_has_likely_ended() -> None:
    rng = random.Random(12)
    timing = PollTiming()
    for _ in range(500):
        timing.estimator.add(rng.uniform(1.0, 3.0))
    single, hundred = timing.first_delay_s(1), timing.first_delay_s(100)
    q98 = timing.estimator.quantile(FIRST_POLL_QUANTILE)
    q999 = timing.estimator.quantile(whole_batch_quantile(100))
    assert q98 is not None
    assert q999 is not None
    assert single == pytest.approx(q98 + POLL_MARGIN_S)
    assert hundred == pytest.approx(q999 + POLL_MARGIN_S)
    assert hundred > single
    # batches of 100 jobs drawn from the same durations: most have ended by the first poll
    # (0.9 asked, less for a 500-duration sample's estimate of its 0.999 quantile); at the
    # single-job quantile almost none had
    lasts = [max(rng.uniform(1.0, 3.0) for _ in range(100)) for _ in range(1000)]
    assert sum(last <= hundred - POLL_MARGIN_S for last in lasts) >= 700
    assert sum(last <= single - POLL_MARGIN_S for last in lasts) <= 250


def test_first_poll_is_never_sooner_than_the_minimum_interval() -> None:
    timing = PollTiming(min_interval_s=0.5)
    for _ in range(MIN_SAMPLES_TO_TRUST):
        timing.estimator.add(0.1)
    assert timing.first_delay_s() == 0.5


def test_first_poll_trusts_jobs_that_end_at_once() -> None:
    """Jobs learnt to take 0 s: the first poll is at the minimum interval, not the default.

    Exposes ``estimator.quantile(...) or self.first_poll_s`` in ``PollTiming.first_delay_s``: a
    learnt quantile of 0.0 is falsy, so the untrained default is used instead.
    """
    timing = PollTiming(first_poll_s=2.0, min_interval_s=0.5)
    for _ in range(MIN_SAMPLES_TO_TRUST):
        timing.estimator.add(0.0)
    assert timing.first_delay_s() == 0.5


@pytest.mark.parametrize(
    ("elapsed_s", "expected_s"),
    [(0.0, 0.5), (1.0, 0.5), (2.0, 0.5), (4.0, 1.0), (20.0, 5.0), (60.0, 15.0), (1e6, 15.0)],
)
def test_next_poll_grows_with_age_within_its_bounds(elapsed_s: float, expected_s: float) -> None:
    timing = PollTiming(min_interval_s=0.5, max_interval_s=15.0)
    assert timing.next_delay_s(elapsed_s) == expected_s


def test_next_poll_never_shrinks_as_jobs_age() -> None:
    timing = PollTiming()
    delays = [timing.next_delay_s(age / 10) for age in range(2000)]
    assert delays == sorted(delays)
    assert all(timing.min_interval_s <= delay <= timing.max_interval_s for delay in delays)
