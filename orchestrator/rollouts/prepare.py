"""From a plan to what the engine runs: its phones (targets) and its options.

The command line and the daemon both turn a plan into targets and engine options; doing it here
keeps the two from drifting apart. Settings give defaults, the plan's policy overrides them,
command-line flags override both.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from orchestrator.clock import Clock, SystemClock
from orchestrator.cph.client import CphClient
from orchestrator.cph.errors import ThrottledError, TransientError
from orchestrator.cph.models import ListPhonesResponse
from orchestrator.engine.options import EngineOptions, RestartMode
from orchestrator.engine.policy import (
    AbortThresholds,
    RetryPolicy,
    full_jitter_backoff_s,
)
from orchestrator.plan import (
    FleetQuery,
    LoadedPlan,
    PhoneTarget,
    PlanError,
    Policy,
    wave_sizes,
)
from orchestrator.plan.loader import NO_PHONES
from orchestrator.settings import RolloutSettings

T = TypeVar("T")
log = structlog.get_logger("orchestrator.rollouts")

READ_ATTEMPTS = 8
READ_BACKOFF_BASE_S = 0.5
READ_BACKOFF_CAP_S = 20.0

__all__ = [
    "Overrides",
    "batch_count",
    "engine_options",
    "estimate_duration_s",
    "new_rollout_id",
    "query_phone_ids",
    "resolve_targets",
    "with_overrides",
]


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line flags that take precedence over the plan and the settings (None: not given)."""

    batch_size: int | None = None
    submit_rate_per_s: float | None = None
    query_rate_per_s: float | None = None
    max_attempts: int | None = None


def new_rollout_id(now: datetime | None = None) -> str:
    """A sortable, unique rollout ID such as ``ro-20261128-140512-3fa9``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"ro-{stamp}-{secrets.token_hex(2)}"


def engine_options(
    policy: Policy,
    defaults: RolloutSettings,
    overrides: Overrides = Overrides(),
    *,
    seed: int | None = None,
) -> EngineOptions:
    """Merge settings, the plan's policy and the flags into the engine's options."""
    retry = RetryPolicy(
        max_attempts=overrides.max_attempts or policy.max_attempts,
        retry_codes=policy.retry_codes,
        base_s=policy.backoff_base_s,
        slow_base_s=policy.backoff_slow_base_s,
        cap_s=policy.backoff_cap_s,
    )
    abort = AbortThresholds(
        max_failure_percent=policy.abort.max_failure_percent,
        max_failures=policy.abort.max_failures,
        min_executed=policy.abort.min_executed,
    )
    return EngineOptions(
        retry=retry,
        batch_size=overrides.batch_size or policy.batch_size or defaults.batch_size,
        submit_rate_per_s=overrides.submit_rate_per_s or defaults.submit_rate_per_s,
        query_rate_per_s=overrides.query_rate_per_s or defaults.query_rate_per_s,
        max_submits_in_flight=defaults.max_submits_in_flight,
        max_queries_in_flight=defaults.max_queries_in_flight,
        abort=abort,
        waves=policy.waves,
        bake_s=policy.bake_s,
        job_timeout_s=policy.job_timeout_s,
        restart=RestartMode(policy.restart_after.value),
        progress_interval_s=defaults.progress_interval_s,
        stop_grace_s=defaults.stop_grace_s,
        first_poll_s=defaults.first_poll_s,
        seed=seed,
    )


def with_overrides(options: EngineOptions, overrides: Overrides) -> EngineOptions:
    """A journaled rollout's stored options, changed by the flags given to this run of it."""
    changes: dict[str, Any] = {}
    if overrides.batch_size:
        changes["batch_size"] = overrides.batch_size
    if overrides.submit_rate_per_s:
        changes["submit_rate_per_s"] = overrides.submit_rate_per_s
    if overrides.query_rate_per_s:
        changes["query_rate_per_s"] = overrides.query_rate_per_s
    if overrides.max_attempts:
        changes["retry"] = dataclasses.replace(options.retry, max_attempts=overrides.max_attempts)
    return dataclasses.replace(options, **changes)


async def _read_with_retries(read: Callable[[], Awaitable[T]], *, clock: Clock) -> T:
    """Retry an idempotent read through throttling and transient failures, with backoff."""
    rng = random.Random()
    for attempt in itertools.count(1):
        try:
            return await read()
        except (ThrottledError, TransientError) as error:
            if attempt >= READ_ATTEMPTS:
                raise
            wait = getattr(error, "retry_after_s", None) or full_jitter_backoff_s(
                attempt, base_s=READ_BACKOFF_BASE_S, cap_s=READ_BACKOFF_CAP_S, rng=rng
            )
            log.warning(
                "api.error", retry_in_s=round(wait, 3), attempt=attempt, **error.log_fields()
            )
            await clock.sleep(wait)
    raise AssertionError("unreachable")


async def query_phone_ids(client: CphClient, query: FleetQuery, *, clock: Clock) -> list[str]:
    """Every phone ID matching the plan's query, through the client's paging, each page retried
    on its own (a throttled page late in a large fleet must not restart the listing)."""

    async def retried(read: Callable[[], Awaitable[ListPhonesResponse]]) -> ListPhonesResponse:
        return await _read_with_retries(read, clock=clock)

    pages = client.iter_phones(
        server_id=query.server_id, status=query.status, phone_name=query.phone_name, read=retried
    )
    return [phone.phone_id async for page in pages for phone in page]


async def resolve_targets(
    loaded: LoadedPlan, client: CphClient | None, *, clock: Clock | None = None
) -> list[PhoneTarget]:
    """Render every phone of the plan, looking the plan's ``query`` up through ListCloudPhones."""
    query = loaded.plan.fleet.query
    queried: list[str] = []
    if query is None or client is None:
        return loaded.targets(queried)
    queried = await query_phone_ids(client, query, clock=clock or SystemClock())
    targets = loaded.targets(queried)
    if not targets:
        raise PlanError(f"{loaded.source}: fleet.query: {NO_PHONES} (the query matched none)")
    return targets


def estimate_duration_s(phones: int, options: EngineOptions, *, job_duration_s: float) -> float:
    """The shortest time the cloud allows: ``N/(R·B) + D`` per wave, plus the bakes between waves.

    Waves run one after another, so each pays the job duration once.
    """
    sizes = wave_sizes(options.waves, phones)
    per_request = options.batch_size * options.submit_rate_per_s
    submit_s = sum(size / per_request for size in sizes)
    return submit_s + len(sizes) * job_duration_s + max(0, len(sizes) - 1) * options.bake_s


def batch_count(wave_sizes_: Sequence[int], batch_size: int) -> int:
    """Requests needed to send every wave once (waves do not share batches)."""
    return sum(-(-size // batch_size) for size in wave_sizes_)
