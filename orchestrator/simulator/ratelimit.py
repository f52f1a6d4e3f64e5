"""The API gateway's per-family request budgets: token buckets on an injected clock.

A throttled request must have no effect, so the bucket only answers "allowed" or "wait this long";
the caller decides what to do (answer 429 with or without ``Retry-After``).
"""

from __future__ import annotations

from orchestrator.clock import Clock

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate_per_s`` tokens a second, holding at most ``max(1, rate_per_s)`` (one second's burst)."""

    __slots__ = ("_clock", "_stamp_s", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, clock: Clock) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive; use no bucket for unlimited")
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, rate_per_s)
        self._clock = clock
        self._tokens = self.burst
        self._stamp_s = clock.monotonic()

    def _refill(self) -> None:
        now_s = self._clock.monotonic()
        elapsed_s = max(0.0, now_s - self._stamp_s)
        self._tokens = min(self.burst, self._tokens + elapsed_s * self.rate_per_s)
        self._stamp_s = now_s

    def try_acquire(self) -> float:
        """Take a token and return 0.0, or take nothing and return the seconds until one frees."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s
