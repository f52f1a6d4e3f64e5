"""Rate budgets: the user's ``asyncio_throttle.Throttler`` plus an in-flight cap, steered by an
adaptive rate that backs off on throttling and regrows on success.

:class:`AdaptiveRate` is the pure rule (multiplicative decrease, additive increase per second, never
above the configured ceiling); :class:`Budget` applies it to the throttler before each request.
:class:`ClockThrottler` is the throttler reading the injected :class:`~orchestrator.clock.Clock`, so a
:class:`~orchestrator.clock.FakeClock` drives the pacing like every other wait.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from asyncio_throttle.throttler import Throttler

from orchestrator.clock import Clock
from orchestrator.cph.api import ApiFamily

__all__ = ["AdaptiveRate", "Budget", "ClockThrottler"]

DEFAULT_DECREASE_FACTOR = 0.7
DEFAULT_MIN_RATE_PER_S = 0.2
DEFAULT_REGROWTH_FRACTION_PER_S = 0.05
"""Each second without throttling, the rate regains this fraction of the rate it was cut from.

Scaling by the level that drew the throttle (not by the ceiling) keeps the probing gentle when the
server's real limit lies far below the configured ceiling."""
WINDOW_EPSILON_S = 1e-9
"""Slack when deciding that a request has left the window, so that a sleep computed to end exactly
at the window's edge is not undone by floating-point rounding (which would spin at the edge)."""


@dataclass(slots=True)
class AdaptiveRate:
    """The current request rate of one API family.

    A throttled answer cuts the rate once per burst: answers to requests sent before the last cut
    do not cut again (they were sent at the old rate). Success regrows the rate linearly in time,
    like TCP's congestion avoidance, so the rate hovers just under the server's real limit.
    """

    ceiling_per_s: float
    rate_per_s: float = 0.0
    min_rate_per_s: float = DEFAULT_MIN_RATE_PER_S
    decrease_factor: float = DEFAULT_DECREASE_FACTOR
    regrowth_fraction_per_s: float = DEFAULT_REGROWTH_FRACTION_PER_S
    regrowth_per_s: float = 0.0
    """Fixed regrowth in requests/s per second; 0 scales it with the rate each cut started from."""
    last_cut_at: float = -math.inf
    paused_until: float = -math.inf
    cuts: int = 0
    _last_growth_at: float | None = field(default=None, repr=False)
    _scaled_regrowth: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0:
            self.rate_per_s = self.ceiling_per_s
        if self.regrowth_per_s <= 0:
            self._scaled_regrowth = True
            self.regrowth_per_s = self.ceiling_per_s * self.regrowth_fraction_per_s
        self.min_rate_per_s = min(self.min_rate_per_s, self.ceiling_per_s)

    def on_throttled(self, *, now: float, sent_at: float, retry_after_s: float | None) -> bool:
        """Record a throttled answer; returns True when it cut the rate."""
        if retry_after_s is not None:
            self.paused_until = max(self.paused_until, now + retry_after_s)
        if sent_at < self.last_cut_at:
            return False
        if self._scaled_regrowth:
            self.regrowth_per_s = self.rate_per_s * self.regrowth_fraction_per_s
        self.rate_per_s = max(self.min_rate_per_s, self.rate_per_s * self.decrease_factor)
        self.last_cut_at = now
        self._last_growth_at = now
        self.cuts += 1
        return True

    def on_success(self, *, now: float) -> None:
        """Regrow the rate in proportion to the time since the last growth or cut."""
        if self._last_growth_at is None:
            self._last_growth_at = now
            return
        elapsed = max(0.0, now - self._last_growth_at)
        self._last_growth_at = now
        grown = self.rate_per_s + self.regrowth_per_s * elapsed
        self.rate_per_s = min(self.ceiling_per_s, grown)

    def pause_left_s(self, now: float) -> float:
        """How long a ``Retry-After`` still asks us to wait."""
        return max(0.0, self.paused_until - now)


class ClockThrottler(Throttler):
    """``asyncio_throttle.Throttler`` on an injected clock: at most ``rate_limit`` acquisitions in any
    ``period`` seconds.

    The upstream class reads :func:`time.monotonic` and polls with :func:`asyncio.sleep` every
    ``retry_interval``; this one keeps its sliding window (``_task_logs``, ``rate_limit``,
    ``period``) but reads :meth:`Clock.monotonic` and sleeps with :meth:`Clock.sleep` exactly until
    the oldest request leaves the window, so that no time is wasted polling and a fake clock can
    drive it.
    """

    def __init__(self, rate_limit: int, period: float, *, clock: Clock) -> None:
        super().__init__(rate_limit=rate_limit, period=period)
        self._clock = clock

    def flush(self) -> None:
        """Forget the requests that have left the window."""
        now = self._clock.monotonic()
        logs = self._task_logs
        while logs and logs[0] + self.period <= now + WINDOW_EPSILON_S:
            logs.popleft()

    async def acquire(self) -> None:
        """Wait until the window has room, then take a place in it."""
        while True:
            self.flush()
            if len(self._task_logs) < self.rate_limit:
                break
            wait_s = self._task_logs[0] + self.period - self._clock.monotonic()
            await self._clock.sleep(max(wait_s, WINDOW_EPSILON_S))
        self._task_logs.append(self._clock.monotonic())


class Budget:
    """One API family's allowance: a throttler at the adaptive rate and a cap on requests in flight.

    ``family`` names it in logs and metrics (``name`` is its string value, ``"submit"`` or
    ``"query"``).
    """

    def __init__(
        self,
        family: ApiFamily,
        rate: AdaptiveRate,
        *,
        max_in_flight: int,
        clock: Clock,
    ) -> None:
        self.family = family
        self.name = str(self.family)
        self.rate = rate
        self._clock = clock
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._throttler = ClockThrottler(rate_limit=1, period=1.0, clock=clock)
        self._acquire: Callable[[], Awaitable[None]] = self._throttler.acquire
        self.throttled = 0
        self._apply_rate()

    def _apply_rate(self) -> None:
        """Express the rate as the throttler's ``rate_limit`` requests per ``period`` seconds."""
        per_window = max(1, math.floor(self.rate.rate_per_s))
        self._throttler.rate_limit = per_window
        self._throttler.period = per_window / self.rate.rate_per_s

    async def acquire(self) -> float:
        """Wait for a free in-flight place, any Retry-After pause, and the rate; returns the send time.

        The caller must :meth:`release` once the request has ended.
        """
        await self._in_flight.acquire()
        try:
            await self.pace()
        except BaseException:
            self._in_flight.release()
            raise
        return self._clock.monotonic()

    async def pace(self) -> None:
        """Wait for the rate alone, for a follow-up call made while already holding a place."""
        while (pause := self.rate.pause_left_s(self._clock.monotonic())) > 0:
            await self._clock.sleep(pause)
        await self._acquire()

    def release(self) -> None:
        """Give back the in-flight place taken by :meth:`acquire`."""
        self._in_flight.release()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """:meth:`acquire` and :meth:`release` around a block; yields the send time."""
        sent_at = await self.acquire()
        try:
            yield sent_at
        finally:
            self.release()

    def on_throttled(self, *, sent_at: float, retry_after_s: float | None) -> bool:
        """Cut the rate (once per burst) and honour Retry-After; True when the rate was cut."""
        self.throttled += 1
        cut = self.rate.on_throttled(
            now=self._clock.monotonic(), sent_at=sent_at, retry_after_s=retry_after_s
        )
        self._apply_rate()
        return cut

    def on_success(self) -> None:
        """Let the rate regrow."""
        self.rate.on_success(now=self._clock.monotonic())
        self._apply_rate()
