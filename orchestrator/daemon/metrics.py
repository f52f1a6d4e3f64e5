"""The daemon's Prometheus metrics, in a registry of its own.

Counts that already live elsewhere (phones per state, API calls, adaptive rates) are read when
``/metrics`` is scraped, through a collector, so they can never drift from their source. Only what
exists nowhere else is recorded as it happens: journal write latency and job durations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.clock import Clock
from orchestrator.engine.journal import Journal
from orchestrator.engine.states import PhoneRecord, PhoneState

__all__ = ["DaemonMetrics", "MetricsView", "TimedJournal"]

JOURNAL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JOB_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
ENDED_STATES = frozenset({PhoneState.SUCCEEDED, PhoneState.FAILED})


@dataclass(slots=True)
class MetricsView:
    """What one scrape reports, gathered by the daemon just before rendering."""

    phones: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """rollout_id → phones per state."""
    api_calls: Mapping[str, int] = field(default_factory=dict)
    """The clients' ``calls`` keys (``submit.ok``, ``query.throttled`` …) → count since start."""
    rates: Mapping[str, float] = field(default_factory=dict)
    """Budget family → its current adaptive rate (requests per second)."""
    running: int = 0


class _ViewCollector(Collector):
    def __init__(self, view: Callable[[], MetricsView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        phones = GaugeMetricFamily(
            "cph_rollout_phones", "Phones of a rollout per state", labels=["rollout_id", "state"]
        )
        for rollout_id, counts in view.phones.items():
            for state in PhoneState:
                phones.add_metric([rollout_id, str(state)], counts.get(state, 0))
        yield phones
        calls = CounterMetricFamily(
            "cph_api_calls", "CPH API calls by family and outcome", labels=["family", "outcome"]
        )
        throttles = CounterMetricFamily(
            "cph_api_throttles", "Throttled CPH calls by family", labels=["family"]
        )
        for key, count in sorted(view.api_calls.items()):
            family, _, outcome = key.partition(".")
            calls.add_metric([family, outcome], count)
            if outcome == "throttled":
                throttles.add_metric([family], count)
        yield calls
        yield throttles
        rates = GaugeMetricFamily(
            "cph_budget_rate_per_second", "Current adaptive rate of a budget", labels=["family"]
        )
        for family, rate in sorted(view.rates.items()):
            rates.add_metric([family], rate)
        yield rates
        yield GaugeMetricFamily("cph_rollouts_running", "Rollouts running now", value=view.running)


class DaemonMetrics:
    """The registry and the instruments recorded as events happen."""

    def __init__(self, view: Callable[[], MetricsView]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ViewCollector(view))
        self.journal_write_s = Histogram(
            "cph_journal_write_seconds",
            "Time to write one batch of phone records to the journal",
            buckets=JOURNAL_BUCKETS_S,
            registry=self.registry,
        )
        self.job_duration_s = Histogram(
            "cph_job_duration_seconds",
            "From a phone's submit to its job's observed end (succeeded or failed)",
            buckets=JOB_BUCKETS_S,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class TimedJournal:
    """A journal that times each write and notes each job's end as the engine records it.

    A phone's end is observed once per run (``_ended``), from its last submit to the write.
    """

    def __init__(self, inner: Journal, metrics: DaemonMetrics, clock: Clock) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock
        self._ended: set[str] = set()

    async def save(self, records: Sequence[PhoneRecord]) -> None:
        """Write through, timing the write."""
        started = self._clock.monotonic()
        await self._inner.save(records)
        now = self._clock.monotonic()
        self._metrics.journal_write_s.observe(now - started)
        self._observe_ends(records, now)

    def _observe_ends(self, records: Iterable[PhoneRecord], now: float) -> None:
        for record in records:
            ended = record.state in ENDED_STATES and record.job_id is not None
            if ended and 0 < record.submitted_at <= now and record.phone_id not in self._ended:
                self._ended.add(record.phone_id)
                self._metrics.job_duration_s.observe(now - record.submitted_at)
