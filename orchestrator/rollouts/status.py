"""A rollout's status as a plain row: what ``status --json`` prints and the daemon answers.

One builder for both, so the command line and the control API agree on the shape and the counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.engine.states import LIVE_STATES, PhoneState
from orchestrator.rollouts.journaled import open_store
from orchestrator.store.base import RolloutMeta

__all__ = ["read_status_rows", "status_row", "summary_counts"]


def summary_counts(meta: RolloutMeta) -> dict[str, int]:
    """The report's ``counts``: total, succeeded, failed, cancelled, and still open (pending)."""
    counts = meta.counts
    return {
        "total": sum(counts.values()),
        "succeeded": counts.get(PhoneState.SUCCEEDED, 0),
        "failed": counts.get(PhoneState.FAILED, 0),
        "cancelled": counts.get(PhoneState.CANCELLED, 0),
        "pending": sum(counts.get(state, 0) for state in LIVE_STATES),
    }


def status_row(meta: RolloutMeta) -> dict[str, Any]:
    """A rollout as ``status --json`` and the daemon show it."""
    return {
        "rollout_id": meta.rollout_id,
        "name": meta.name,
        "status": meta.status,
        "reason": meta.reason,
        "created_at": meta.created_at,
        "updated_at": meta.updated_at,
        "counts": summary_counts(meta),
        "states": {str(state): meta.counts.get(state, 0) for state in PhoneState},
        "api_calls": dict(meta.api_calls),
    }


async def read_status_rows(state_path: Path, rollout_id: str | None) -> list[dict[str, Any]]:
    """The row of one rollout, or of every rollout (newest first), read from the journal."""
    store = await open_store(state_path, read_only=True)
    try:
        metas = [await store.get_rollout(rollout_id)] if rollout_id else await store.list_rollouts()
    finally:
        await store.close()
    return [status_row(meta) for meta in metas]
