"""The engine's knobs, gathered from the plan's policy, the settings and the command line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.engine.policy import AbortThresholds, RetryPolicy
from orchestrator.plan.model import RestartAfter
from orchestrator.plan.properties import KNOWN_PROPERTIES

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_JOB_TIMEOUT_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_QUERY_RATE_PER_S",
    "DEFAULT_SUBMIT_RATE_PER_S",
    "EngineOptions",
    "RestartMode",
    "options_from_data",
    "options_to_data",
]

DEFAULT_BATCH_SIZE = 100
"""Phones per batch request; the real API maximum is undocumented (cph-api.md §5)."""
DEFAULT_SUBMIT_RATE_PER_S = 5.0
DEFAULT_QUERY_RATE_PER_S = 10.0
DEFAULT_MAX_SUBMITS_IN_FLIGHT = 16
DEFAULT_MAX_QUERIES_IN_FLIGHT = 8
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_JOB_TIMEOUT_S = 600.0
DEFAULT_PROGRESS_INTERVAL_S = 5.0
DEFAULT_STOP_GRACE_S = 30.0
SHOW_JOB_AFTER_MISSES = 2
"""Ask ShowJob about a job only after ListJobs left it out this many times in a row."""


RESTART_PROPERTIES = frozenset(
    name for name, spec in KNOWN_PROPERTIES.items() if spec.needs_restart
)
"""Properties that take effect only after a restart, from the plan's property table."""


RestartMode = RestartAfter
"""Whether a phone is restarted once its property update succeeded: the plan's own enum, so a
plan's ``restart_after`` is the engine's ``restart`` without any conversion."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Everything that shapes one rollout's run. Defaults are safe for a real account."""

    retry: RetryPolicy
    batch_size: int = DEFAULT_BATCH_SIZE
    submit_rate_per_s: float = DEFAULT_SUBMIT_RATE_PER_S
    query_rate_per_s: float = DEFAULT_QUERY_RATE_PER_S
    max_submits_in_flight: int = DEFAULT_MAX_SUBMITS_IN_FLIGHT
    max_queries_in_flight: int = DEFAULT_MAX_QUERIES_IN_FLIGHT
    abort: AbortThresholds = field(default_factory=AbortThresholds)
    waves: Sequence[int | str] = ("100%",)
    bake_s: float = 0.0
    job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S
    restart: RestartMode = RestartMode.NEVER
    restart_properties: frozenset[str] = RESTART_PROPERTIES
    progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S
    stop_grace_s: float = DEFAULT_STOP_GRACE_S
    first_poll_s: float = 2.0
    seed: int | None = None


def options_to_data(options: EngineOptions) -> dict[str, Any]:
    """JSON-able form, kept in the journal so that a resumed rollout keeps its policy."""
    retry = options.retry
    abort = options.abort
    return {
        "retry": {
            "max_attempts": retry.max_attempts,
            "retry_codes": sorted(retry.retry_codes),
            "slow_codes": sorted(retry.slow_codes),
            "base_s": retry.base_s,
            "slow_base_s": retry.slow_base_s,
            "cap_s": retry.cap_s,
        },
        "abort": {
            "max_failure_percent": abort.max_failure_percent,
            "max_failures": abort.max_failures,
            "min_executed": abort.min_executed,
        },
        "batch_size": options.batch_size,
        "submit_rate_per_s": options.submit_rate_per_s,
        "query_rate_per_s": options.query_rate_per_s,
        "max_submits_in_flight": options.max_submits_in_flight,
        "max_queries_in_flight": options.max_queries_in_flight,
        "waves": list(options.waves),
        "bake_s": options.bake_s,
        "job_timeout_s": options.job_timeout_s,
        "restart": str(options.restart),
        "restart_properties": sorted(options.restart_properties),
        "progress_interval_s": options.progress_interval_s,
        "stop_grace_s": options.stop_grace_s,
        "first_poll_s": options.first_poll_s,
    }


def options_from_data(data: Mapping[str, Any]) -> EngineOptions:
    """Rebuild options written by :func:`options_to_data`."""
    retry = data["retry"]
    return EngineOptions(
        retry=RetryPolicy(
            max_attempts=retry["max_attempts"],
            retry_codes=frozenset(retry["retry_codes"]),
            slow_codes=frozenset(retry["slow_codes"]),
            base_s=retry["base_s"],
            slow_base_s=retry["slow_base_s"],
            cap_s=retry["cap_s"],
        ),
        abort=AbortThresholds(**data["abort"]),
        batch_size=data["batch_size"],
        submit_rate_per_s=data["submit_rate_per_s"],
        query_rate_per_s=data["query_rate_per_s"],
        max_submits_in_flight=data["max_submits_in_flight"],
        max_queries_in_flight=data["max_queries_in_flight"],
        waves=tuple(data["waves"]),
        bake_s=data["bake_s"],
        job_timeout_s=data["job_timeout_s"],
        restart=RestartMode(data["restart"]),
        restart_properties=frozenset(data["restart_properties"]),
        progress_interval_s=data["progress_interval_s"],
        stop_grace_s=data["stop_grace_s"],
        first_poll_s=data["first_poll_s"],
    )
