"""Running one rollout to its end in this process: a new one from a plan, a resumed one, or a new
rollout of another's failed phones.

Each returns the engine's :class:`~orchestrator.engine.runner.RolloutResult` and prints nothing.
How the engine is driven is the caller's choice (``drive``): the command line surrounds it with a
terminal's signal handling and progress bar; tests run it as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.cph.client import CphClient
from orchestrator.cph.connect import open_client
from orchestrator.engine.options import EngineOptions, options_from_data
from orchestrator.engine.runner import RolloutEngine, RolloutResult, Target
from orchestrator.engine.states import PhoneRecord, PhoneState
from orchestrator.errors import ConfigError
from orchestrator.plan import LoadedPlan, PhoneTarget
from orchestrator.rollouts.journaled import (
    Drive,
    JournalTarget,
    Prepare,
    create_rollout,
    load_for_resume,
    open_store,
    run_journaled,
    stored_update,
)
from orchestrator.rollouts.prepare import (
    Overrides,
    engine_options,
    resolve_targets,
    with_overrides,
)
from orchestrator.settings import Settings
from orchestrator.store.base import RolloutStore, StoredPhone

__all__ = [
    "RolloutRequest",
    "execute_rollout",
    "failed_targets",
    "rerun_failed_rollout",
    "resume_rollout",
    "run_engine",
]


@dataclass(frozen=True, slots=True)
class RolloutRequest:
    """A new rollout to run: the plan, the settings, its ID, the flags, and its journal."""

    loaded: LoadedPlan
    settings: Settings
    rollout_id: str
    overrides: Overrides
    state_path: Path | None
    """The journal; None runs without one (``--no-journal``)."""


async def run_engine(engine: RolloutEngine) -> RolloutResult:
    """Drive the engine as is: no signals, no progress bar."""
    return await engine.run()


async def execute_rollout(
    request: RolloutRequest, *, drive: Drive = run_engine, client: CphClient | None = None
) -> tuple[RolloutResult, list[PhoneTarget]]:
    """Resolve the fleet, record the rollout in the journal, and run it to its end."""
    own_client = client is None
    client = client or await open_client(request.settings.cph)
    try:
        targets = await resolve_targets(request.loaded, client)
        options = engine_options(
            request.loaded.plan.policy, request.settings.rollout, request.overrides
        )
        if request.state_path is None:
            result = await _run_unjournaled(request, client, targets, options, drive)
        else:
            result = await _run_with_journal(
                request, request.state_path, client, targets, options, drive
            )
    finally:
        if own_client:
            await client.close()
    return result, targets


async def _run_with_journal(
    request: RolloutRequest,
    state_path: Path,
    client: CphClient,
    targets: list[PhoneTarget],
    options: EngineOptions,
    drive: Drive,
) -> RolloutResult:
    store = await open_store(state_path)
    try:
        records = await create_rollout(
            store,
            rollout_id=request.rollout_id,
            name=request.loaded.plan.name,
            targets=[(t.index, t.phone_id, t.update) for t in targets],
            options=options,
            plan_source=str(request.loaded.source),
        )

        async def prepare() -> tuple[Sequence[Target], list[PhoneRecord]]:
            return targets, records

        return await _run_with_client(
            store,
            request.settings,
            rollout_id=request.rollout_id,
            name=request.loaded.plan.name,
            prepare=prepare,
            options=options,
            drive=drive,
            client=client,
        )
    finally:
        await store.close()


async def _run_unjournaled(
    request: RolloutRequest,
    client: CphClient,
    targets: list[PhoneTarget],
    options: EngineOptions,
    drive: Drive,
) -> RolloutResult:
    """``--no-journal``: nothing is written, so nothing can be resumed (for benchmarks)."""
    engine = RolloutEngine(
        rollout_id=request.rollout_id,
        name=request.loaded.plan.name,
        targets=targets,
        client=client,
        options=options,
    )
    return await drive(engine)


async def _run_with_client(
    store: RolloutStore,
    settings: Settings,
    *,
    rollout_id: str,
    name: str,
    prepare: Prepare,
    options: EngineOptions,
    drive: Drive,
    calls_before: Mapping[str, int] | None = None,
    client: CphClient | None = None,
) -> RolloutResult:
    """:func:`run_journaled` with ``client``, or with one opened from ``settings`` and closed after."""
    own = client or await open_client(settings.cph)
    try:
        return await run_journaled(
            store,
            rollout_id=rollout_id,
            name=name,
            prepare=prepare,
            options=options,
            client=own,
            drive=drive,
            calls_before=calls_before,
        )
    finally:
        if client is None:
            await own.close()


async def resume_rollout(
    *,
    rollout_id: str,
    settings: Settings,
    state_path: Path,
    overrides: Overrides,
    drive: Drive = run_engine,
) -> RolloutResult:
    """Continue an interrupted or crashed rollout where its journal left it."""
    store = await open_store(state_path)
    try:
        meta = await store.get_rollout(rollout_id)
        options = with_overrides(options_from_data(meta.options), overrides)

        async def prepare() -> tuple[Sequence[Target], list[PhoneRecord]]:
            return await load_for_resume(store, rollout_id)

        return await _run_with_client(
            store,
            settings,
            rollout_id=rollout_id,
            name=meta.name,
            prepare=prepare,
            options=options,
            drive=drive,
            calls_before=meta.api_calls,
        )
    finally:
        await store.close()


def failed_targets(
    stored: Sequence[StoredPhone], records: Sequence[PhoneRecord], error_code: str | None
) -> list[JournalTarget]:
    """The phones that failed (with ``error_code``, if given), with the payloads they were sent."""
    return [
        JournalTarget(phone.phone_id, stored_update(phone))
        for phone, record in zip(stored, records, strict=True)
        if record.state is PhoneState.FAILED
        and (error_code is None or record.error_code == error_code)
    ]


async def rerun_failed_rollout(
    *,
    rollout_id: str,
    new_id: str,
    error_code: str | None,
    settings: Settings,
    state_path: Path,
    overrides: Overrides,
    drive: Drive = run_engine,
) -> RolloutResult:
    """A new rollout of the phones that failed in ``rollout_id`` (optionally with one code)."""
    store = await open_store(state_path)
    try:
        meta = await store.get_rollout(rollout_id)
        targets = failed_targets(*await store.load_phones(rollout_id), error_code)
        if not targets:
            which = f" with {error_code}" if error_code else ""
            raise ConfigError(f"rollout {rollout_id} has no failed phones{which}: nothing to rerun")
        options = with_overrides(options_from_data(meta.options), overrides)
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

        return await _run_with_client(
            store,
            settings,
            rollout_id=new_id,
            name=name,
            prepare=prepare,
            options=options,
            drive=drive,
        )
    finally:
        await store.close()
