"""When to ask about jobs: learn how long jobs take, and poll when they are expected to be done.

Polling at a fixed fast interval wastes the query budget; polling late wastes wall time. The
estimator keeps recent job durations; a request is first polled when nearly all of its jobs should
have ended (a high quantile of the learnt durations), then at growing intervals.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

__all__ = ["DurationEstimator", "PollTiming", "whole_batch_quantile"]

DEFAULT_FIRST_POLL_S = 2.0
"""Before anything is learnt, first look this long after submitting."""
DEFAULT_MIN_POLL_INTERVAL_S = 0.5
DEFAULT_MAX_POLL_INTERVAL_S = 15.0
DEFAULT_SAMPLE_SIZE = 512
MIN_SAMPLES_TO_TRUST = 16
FIRST_POLL_QUANTILE = 0.98
"""The least quantile a first poll waits for (a batch of one phone)."""
WHOLE_BATCH_DONE_PROBABILITY = 0.9
"""How likely every job of a batch should be to have ended at its first poll.

A request's jobs are polled together, so the first poll should come when the *last* of them is
likely done: with ``n`` jobs that is the ``0.9 ** (1/n)`` quantile (0.999 for 100 jobs). At the
0.98 quantile all 100 jobs of a batch have ended only one time in eight (0.98 ** 100)."""
POLL_MARGIN_S = 0.25


@dataclass(slots=True)
class DurationEstimator:
    """A sliding sample of job durations (seconds from submit to the job's end)."""

    size: int = DEFAULT_SAMPLE_SIZE
    _recent: deque[float] = field(default_factory=deque, repr=False)
    _sorted: list[float] = field(default_factory=list, repr=False)

    def add(self, duration_s: float) -> None:
        """Learn one more duration."""
        if len(self._recent) >= self.size:
            oldest = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._recent.append(duration_s)
        bisect.insort(self._sorted, duration_s)

    def __len__(self) -> int:
        return len(self._recent)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the sample, or None before anything is known."""
        if not self._sorted:
            return None
        position = min(len(self._sorted) - 1, max(0, round(q * (len(self._sorted) - 1))))
        return self._sorted[position]


@dataclass(slots=True)
class PollTiming:
    """Turns learnt durations into poll times."""

    estimator: DurationEstimator = field(default_factory=DurationEstimator)
    first_poll_s: float = DEFAULT_FIRST_POLL_S
    min_interval_s: float = DEFAULT_MIN_POLL_INTERVAL_S
    max_interval_s: float = DEFAULT_MAX_POLL_INTERVAL_S

    def first_delay_s(self, jobs: int = 1) -> float:
        """Wait after submitting until every one of a batch's ``jobs`` has likely ended."""
        if len(self.estimator) < MIN_SAMPLES_TO_TRUST:
            return self.first_poll_s
        expected = self.estimator.quantile(whole_batch_quantile(jobs))
        if expected is None:
            return self.first_poll_s
        return max(self.min_interval_s, expected + POLL_MARGIN_S)

    def next_delay_s(self, elapsed_s: float) -> float:
        """Wait before polling again a request whose jobs were still running ``elapsed_s`` in.

        Short while jobs of this age usually end soon, longer for stragglers (a quarter of the age).
        """
        return min(self.max_interval_s, max(self.min_interval_s, elapsed_s * 0.25))


def whole_batch_quantile(jobs: int) -> float:
    """The duration quantile by which all ``jobs`` of a batch have ended, with probability 0.9."""
    return max(FIRST_POLL_QUANTILE, float(WHOLE_BATCH_DONE_PROBABILITY ** (1.0 / max(1, jobs))))
