"""Where a rollout's wall time goes: start-up, the engine, and tear-down, from its own JSON log.

``wall`` alone cannot say whether time over ``T_min`` was lost in the engine (pacing, polling) or
around it (interpreter start-up, plan and fleet loading, journal creation, writing the report). The
rollout logs ``rollout.started`` and ``rollout.finished`` with ISO timestamps; set beside the wall clock
read just before the process was spawned and its measured wall time, they split ``wall`` in three:

- ``setup_s``: spawn → ``rollout.started``;
- ``engine_s``: ``rollout.started`` → ``rollout.finished``;
- ``teardown_s``: ``rollout.finished`` → exit.

The exit is taken as the spawn time plus the monotonic wall time, so the three add up to ``wall_s``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["FINISHED_EVENT", "STARTED_EVENT", "Phases", "event_times", "rollout_phases"]

STARTED_EVENT = "rollout.started"
FINISHED_EVENT = "rollout.finished"


@dataclass(frozen=True)
class Phases:
    """One rollout's wall time in three parts, seconds."""

    setup_s: float
    engine_s: float
    teardown_s: float


def _record(line: str) -> dict[str, Any] | None:
    """One JSON log record, or ``None`` for anything else a process may print on stderr."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def event_times(lines: Iterable[str]) -> dict[str, float]:
    """Unix time of the last record of each event that carries an ISO ``timestamp``."""
    times: dict[str, float] = {}
    for line in lines:
        record = _record(line)
        if record is None or not isinstance(record.get("timestamp"), str):
            continue
        times[str(record.get("event"))] = datetime.fromisoformat(record["timestamp"]).timestamp()
    return times


def rollout_phases(lines: Iterable[str], *, started_at_s: float, wall_s: float) -> Phases:
    """Split ``wall_s`` at the rollout's start and finish events; ``ValueError`` if one is missing.

    ``started_at_s`` is the Unix time just before the process was spawned.
    """
    times = event_times(lines)
    missing = [name for name in (STARTED_EVENT, FINISHED_EVENT) if name not in times]
    if missing:
        raise ValueError(f"the rollout's log has no {' or '.join(missing)} event")
    engine_started_s, engine_finished_s = times[STARTED_EVENT], times[FINISHED_EVENT]
    return Phases(
        setup_s=engine_started_s - started_at_s,
        engine_s=engine_finished_s - engine_started_s,
        teardown_s=started_at_s + wall_s - engine_finished_s,
    )
