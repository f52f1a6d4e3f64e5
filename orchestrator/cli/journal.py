"""Commands that read or continue rollouts from the journal: resume, status, report, rerun-failed."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.cph.connect import open_client
from orchestrator.engine.options import EngineOptions
from orchestrator.engine.runner import RolloutResult, Target
from orchestrator.engine.states import LIVE_STATES, PhoneRecord, PhoneState
from orchestrator.errors import ConfigError
from orchestrator.journaled import (
    JournalTarget,
    Prepare,
    compact_journal,
    create_rollout,
    ended,
    load_for_resume,
    open_store,
    run_journaled,
    stored_update,
)
from orchestrator.report import build_report, write_report
from orchestrator.run import drive_engine, finish
from orchestrator.service import Overrides
from orchestrator.settings import Settings
from orchestrator.store.base import RolloutMeta, RolloutStore

__all__ = ["rerun_failed", "resume", "show_report", "show_status", "status_row"]


def _with_overrides(options: EngineOptions, overrides: Overrides) -> EngineOptions:
    """Flags given to ``resume``/``rerun-failed`` change the stored options for this run."""
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


async def _run_with_client(
    store: RolloutStore,
    settings: Settings,
    *,
    rollout_id: str,
    name: str,
    prepare: Prepare,
    options: EngineOptions,
    show_progress: bool,
    calls_before: Mapping[str, int] | None = None,
) -> RolloutResult:
    client = await open_client(settings.cph)
    try:
        return await run_journaled(
            store,
            rollout_id=rollout_id,
            name=name,
            prepare=prepare,
            options=options,
            client=client,
            drive=functools.partial(drive_engine, show_progress=show_progress),
            calls_before=calls_before,
        )
    finally:
        await client.close()


async def resume(
    *,
    rollout_id: str,
    settings: Settings,
    state_path: Path,
    overrides: Overrides,
    report_path: Path | None,
    show_progress: bool,
) -> int:
    """Continue an interrupted or crashed rollout where its journal left it."""
    store = await open_store(state_path)
    try:
        meta = await store.get_rollout(rollout_id)
        options = _with_overrides(_options(meta), overrides)

        async def prepare() -> tuple[Sequence[Target], list[PhoneRecord]]:
            return await load_for_resume(store, rollout_id)

        result = await _run_with_client(
            store,
            settings,
            rollout_id=rollout_id,
            name=meta.name,
            prepare=prepare,
            options=options,
            show_progress=show_progress,
            calls_before=meta.api_calls,
        )
    finally:
        await store.close()
    return finish(result, report_path, settings)


async def rerun_failed(
    *,
    rollout_id: str,
    new_id: str,
    error_code: str | None,
    settings: Settings,
    state_path: Path,
    overrides: Overrides,
    report_path: Path | None,
    show_progress: bool,
) -> int:
    """A new rollout of the phones that failed in ``rollout_id`` (optionally with one code)."""
    store = await open_store(state_path)
    try:
        meta = await store.get_rollout(rollout_id)
        stored, records = await store.load_phones(rollout_id)
        targets = [
            JournalTarget(phone.phone_id, stored_update(phone))
            for phone, record in zip(stored, records, strict=True)
            if record.state is PhoneState.FAILED
            and (error_code is None or record.error_code == error_code)
        ]
        if not targets:
            which = f" with {error_code}" if error_code else ""
            raise ConfigError(f"rollout {rollout_id} has no failed phones{which}: nothing to rerun")
        options = _with_overrides(_options(meta), overrides)
        name = f"{meta.name} (rerun of {rollout_id})"
        new_records = await create_rollout(
            store,
            rollout_id=new_id,
            name=name,
            targets=[(i, t.phone_id, t.update) for i, t in enumerate(targets)],
            options=options,
            plan_source=f"rerun-failed {rollout_id}",
        )

        async def prepare() -> tuple[Sequence[Target], list[PhoneRecord]]:
            return targets, new_records

        result = await _run_with_client(
            store,
            settings,
            rollout_id=new_id,
            name=name,
            prepare=prepare,
            options=options,
            show_progress=show_progress,
        )
    finally:
        await store.close()
    return finish(result, report_path, settings)


def _options(meta: RolloutMeta) -> EngineOptions:
    from orchestrator.engine.options import options_from_data

    return options_from_data(meta.options)


def _summary_counts(meta: RolloutMeta) -> dict[str, int]:
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
        "counts": _summary_counts(meta),
        "states": {str(state): meta.counts.get(state, 0) for state in PhoneState},
        "api_calls": dict(meta.api_calls),
    }


async def _read_store(state_path: Path) -> RolloutStore:
    from orchestrator.store.sqlite import SqliteStore

    return await SqliteStore.open(state_path, read_only=True)


async def show_status(*, state_path: Path, rollout_id: str | None, as_json: bool) -> int:
    """Print one rollout's counts per state and timing, or a line for every rollout."""
    store = await _read_store(state_path)
    try:
        metas = [await store.get_rollout(rollout_id)] if rollout_id else await store.list_rollouts()
    finally:
        await store.close()
    rows = [status_row(meta) for meta in metas]
    if as_json:
        json.dump(rows[0] if rollout_id else rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for row in rows:
        print(_status_line(row, detailed=rollout_id is not None))
    return 0


async def compact(*, state_path: Path, rollout_id: str | None) -> int:
    """Fold the change log of one rollout, or of every rollout that has ended, into its rows.

    Safe while other processes run rollouts in the same journal: it works in short
    transactions, and reads are exact before, during and after.
    """
    store = await open_store(state_path)
    try:
        wanted = (
            [rollout_id]
            if rollout_id
            else [meta.rollout_id for meta in await store.list_rollouts() if ended(meta)]
        )
        for wanted_id in wanted:
            folded = await compact_journal(store, wanted_id)
            print(f"{wanted_id}: folded {folded} change log entries into its phones")
    finally:
        await store.close()
    return 0


def _status_line(row: Mapping[str, Any], *, detailed: bool) -> str:
    counts = row["counts"]
    line = (
        f"{row['rollout_id']}  {row['status']:<24} {counts['succeeded']}/{counts['total']} ok,"
        f" {counts['failed']} failed, {counts['cancelled']} cancelled, {counts['pending']} open"
        f"  {row['name']}"
    )
    if not detailed:
        return line
    states = ", ".join(f"{state} {n}" for state, n in row["states"].items())
    calls = ", ".join(f"{k} {v}" for k, v in sorted(row["api_calls"].items()))
    extra = [
        f"  states: {states}",
        f"  created {row['created_at']}, updated {row['updated_at']}",
        f"  api calls: {calls or 'none yet'}",
    ]
    if row["reason"]:
        extra.append(f"  reason: {row['reason']}")
    return "\n".join([line, *extra])


async def show_report(*, state_path: Path, rollout_id: str, fmt: str, output: Path | None) -> int:
    """Write (or print) the report of a rollout from the journal."""
    store = await _read_store(state_path)
    try:
        meta = await store.get_rollout(rollout_id)
        records = await store.phones(rollout_id)
    finally:
        await store.close()
    report = build_report(
        rollout_id=meta.rollout_id,
        name=meta.name,
        status=meta.status,
        counts=_summary_counts(meta),
        api_calls=meta.api_calls,
        records=records,
        extra={"reason": meta.reason},
    )
    if output is not None:
        write_report(report, output, fmt=fmt)
        return 0
    if fmt == "json":
        json.dump(report, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        from orchestrator.report import write_csv

        write_csv(report["phones"], sys.stdout)
    return 0
