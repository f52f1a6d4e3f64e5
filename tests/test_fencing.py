"""A runner that lost its lease writes nothing more and sends nothing more.

Another runner (on another host, after this one's lease lapsed) takes the rollout in the middle of
a run. From then on every journal write of the first runner must be refused by the lease's fence,
the first runner must stop sending at once, and it must end fatally (exit 4) naming the new holder,
leaving the journal exactly as the new holder found it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from orchestrator.cph import CphClient, PropertyUpdate, StaticTokenAuth
from orchestrator.engine.journal import Journal
from orchestrator.engine.states import PhoneRecord, PhoneState
from orchestrator.rollouts.journaled import create_rollout, load_for_resume, run_journaled
from orchestrator.rollouts.outcome import ExitCode, exit_code_for
from orchestrator.store.sqlite import SqliteStore
from tests.conftest import SimulatorFactory
from tests.e2e_support import PROJECT_ID, TOKEN, fast_options, fast_profile, start_simulator

NEW_HOLDER = "elsewhere.example:4242:1:feedbeef"
STEAL_AT_SAVE = 6
"""The journal write at which the other runner takes the lease (a few batches are in flight)."""


def _journal_rows(path: Path) -> tuple[int, str, str]:
    """What the journal holds for the rollout: change-log rows, counts and the header's calls."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        changes = conn.execute("SELECT count(*) FROM phone_changes").fetchone()[0]
        counts = conn.execute("SELECT counts_json FROM rollout_counts").fetchone()[0]
        header = conn.execute("SELECT status || api_calls_json FROM rollouts").fetchone()[0]
    return int(changes), str(counts), str(header)


def _steal_lease(path: Path) -> None:
    """Another runner takes the lease, as a store on another host does once it has lapsed."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE rollouts SET lease_owner = ?, lease_expires_at = 1e12,"
            " lease_generation = lease_generation + 1",
            (NEW_HOLDER,),
        )


@dataclass
class StealingJournal:
    """Passes saves through; at the ``STEAL_AT_SAVE``-th, the lease is taken first."""

    inner: Journal
    path: Path
    saves: int = 0
    after_steal: tuple[int, str, str] | None = None
    refused: list[str] = field(default_factory=list)

    async def save(self, records: Sequence[PhoneRecord]) -> None:
        self.saves += 1
        if self.saves == STEAL_AT_SAVE:
            _steal_lease(self.path)
            self.after_steal = _journal_rows(self.path)
        try:
            await self.inner.save(records)
        except Exception as error:
            self.refused.append(type(error).__name__)
            raise


async def test_a_runner_that_lost_its_lease_writes_and_sends_nothing_more(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await start_simulator(simulator, phones=400, profile=fast_profile("none"), token=TOKEN)
    phone_ids = sim.state.phone_ids()
    options = fast_options(batch_size=20, submit_rate_per_s=40.0, max_submits_in_flight=4)
    path = tmp_path / "journal.sqlite"
    store = await SqliteStore.open(path)
    stealing: list[StealingJournal] = []

    def wrap(journal: Journal) -> Journal:
        stealing.append(StealingJournal(journal, path))
        return stealing[0]

    try:
        targets = [(i, p, _update(p)) for i, p in enumerate(phone_ids)]
        await create_rollout(
            store, rollout_id="r1", name="fenced", targets=targets, options=options, plan_source=""
        )
        async with CphClient(
            endpoint=sim.url, project_id=PROJECT_ID, auth=StaticTokenAuth(SecretStr(TOKEN))
        ) as client:
            result = await run_journaled(
                store,
                rollout_id="r1",
                name="fenced",
                prepare=lambda: load_for_resume(store, "r1"),
                options=options,
                client=client,
                drive=lambda engine: engine.run(),
                wrap_journal=wrap,
            )
    finally:
        await store.close()

    journal = stealing[0]
    assert journal.after_steal is not None
    assert _journal_rows(path) == journal.after_steal, "the lapsed runner wrote after the take-over"
    assert "LeaseLostError" in journal.refused
    assert result.fatal
    assert exit_code_for(result) is ExitCode.API_FATAL
    assert NEW_HOLDER in (result.reason or "")
    sent = sum(sim.state.stats_dict()["submissions_per_phone"].values())
    assert sent <= STEAL_AT_SAVE * options.batch_size, "it kept sending after losing its lease"
    assert sum(1 for r in result.records if r.state is PhoneState.SUCCEEDED) < len(phone_ids)


def _update(phone_id: str) -> PropertyUpdate:
    return PropertyUpdate.build(phone_id, {"persist.sys.timezone": "UTC"})
