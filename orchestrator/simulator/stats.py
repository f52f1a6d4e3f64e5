"""What the simulator saw, for assertions and benchmarks: counters, peaks and client protocol violations.

Tests assert on these rather than on the client's own account of what it did, so a client bug cannot
hide behind a matching bug in its bookkeeping. The per-phone in-flight count catches a phone sent in two
concurrent requests, which a correct orchestrator never does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimStats"]


@dataclass(slots=True)
class SimStats:
    """Mutable counters; :meth:`reset` zeroes them but keeps the live in-flight counts."""

    violations_kept: int = 1000
    requests: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    submissions: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    violations: list[dict[str, str]] = field(default_factory=list)
    violation_count: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    phone_in_flight: dict[str, int] = field(default_factory=dict)
    max_phone_in_flight: int = 0

    def reset(self) -> None:
        """Start a new measurement window (between benchmark runs)."""
        for counter in (
            self.requests,
            self.throttled,
            self.submissions,
            self.restarts,
            self.events,
        ):
            counter.clear()
        self.violations.clear()
        self.violation_count = 0
        self.max_in_flight = self.in_flight
        self.max_phone_in_flight = max(self.phone_in_flight.values(), default=0)

    def violation(self, kind: str, detail: str) -> None:
        """Record a client mistake; only the first ``violations_kept`` are listed, all are counted."""
        self.violation_count += 1
        if len(self.violations) < self.violations_kept:
            self.violations.append({"kind": kind, "detail": detail})

    @contextmanager
    def request_in_flight(self) -> Iterator[None]:
        """Count a request as in flight for the duration of the block."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextmanager
    def phones_in_flight(self, phone_ids: Iterable[str]) -> Iterator[None]:
        """Count each phone as part of an in-flight request; a second one at once is a violation."""
        held = list(dict.fromkeys(phone_ids))
        for phone_id in held:
            count = self.phone_in_flight.get(phone_id, 0) + 1
            self.phone_in_flight[phone_id] = count
            self.max_phone_in_flight = max(self.max_phone_in_flight, count)
            if count > 1:
                self.violation(
                    "phone_in_concurrent_requests", f"phone {phone_id} in {count} requests"
                )
        try:
            yield
        finally:
            for phone_id in held:
                left = self.phone_in_flight[phone_id] - 1
                if left:
                    self.phone_in_flight[phone_id] = left
                else:
                    del self.phone_in_flight[phone_id]

    def as_dict(self) -> dict[str, Any]:
        """The counters in the shape of ``GET /_sim/stats`` (without per-phone maps)."""
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "throttled": {"total": sum(self.throttled.values()), **self.throttled},
            "max_concurrent_requests": self.max_in_flight,
            "max_concurrent_requests_per_phone": self.max_phone_in_flight,
            "connections_dropped": self.events["connections_dropped"],
            "transient_errors": self.events["transient_errors"],
            "latency_spikes": self.events["latency_spikes"],
            "auth_failures": self.events["auth_failures"],
            "protocol_violations": list(self.violations),
            "protocol_violation_count": self.violation_count,
        }

    def phone_maps(self) -> dict[str, Any]:
        """Per-phone counters; left out for very large fleets."""
        return {
            "submissions_per_phone": dict(self.submissions),
            "restarts_per_phone": dict(self.restarts),
        }
