"""Time as an injected dependency.

Policies (backoff, rate budgets, job deadlines, token expiry) and the simulator read time only through a
:class:`Clock`, so tests drive them with :class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """The three questions code may ask about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; for intervals and deadlines."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch; for wire timestamps such as ``X-Sdk-Date``."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """Return :func:`time.time`."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop."""
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to; sleepers wake when :meth:`advance` passes their time.

    ``time()`` is ``epoch + monotonic()`` so both views stay consistent.
    """

    def __init__(self, *, start: float = 0.0, epoch: float = 1_704_067_200.0) -> None:
        self._now = start
        self._epoch = epoch
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        """Return the fake monotonic time."""
        return self._now

    def time(self) -> float:
        """Return the fake wall time (2024-01-01T00:00:00Z plus elapsed fake seconds by default)."""
        return self._epoch + self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by at least ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def next_deadline(self) -> float | None:
        """When the earliest task still sleeping on this clock wakes, or None when none sleeps.

        Lets a driver jump time straight to the next thing that can happen
        (:func:`orchestrator.testing.run_on_fake_clock`).
        """
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # its task was cancelled
        return self._sleepers[0][0] if self._sleepers else None

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock (lets tests advance only once work is parked)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())
