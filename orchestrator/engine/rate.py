"""Rate budgets: the user's ``asyncio_throttle.Throttler`` plus an in-flight cap, steered by an
adaptive rate that backs off on throttling and regrows on success.

:class:`AdaptiveRate` is the pure rule (multiplicative decrease, additive increase per second, never
above the configured ceiling); :class:`Budget` applies it to the throttler before each request.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from asyncio_throttle.throttler import Throttler

from orchestrator.clock import Clock

__all__ = ["AdaptiveRate", "Budget"]

DEFAULT_DECREASE_FACTOR = 0.7
DEFAULT_MIN_RATE_PER_S = 0.2
DEFAULT_REGROWTH_FRACTION_PER_S = 0.05
"""Each second without throttling, the rate regains this fraction of the rate it was cut from.

Scaling by the level that drew the throttle (not by the ceiling) keeps the probing gentle when the
server's real limit lies far below the configured ceiling."""
THROTTLER_POLL_INTERVAL_S = 0.005


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


class Budget:
    """One API family's allowance: a throttler at the adaptive rate and a cap on requests in flight."""

    def __init__(self, name: str, rate: AdaptiveRate, *, max_in_flight: int, clock: Clock) -> None:
        self.name = name
        self.rate = rate
        self._clock = clock
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._throttler = Throttler(
            rate_limit=1, period=1.0, retry_interval=THROTTLER_POLL_INTERVAL_S
        )
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
