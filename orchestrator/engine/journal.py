"""The engine's view of the durable journal: one narrow interface, and an in-memory stand-in.

The engine saves a phone's record *before* sending it (the intent: ``submitting`` with its batch)
and again as soon as the answer or a poll changes it, one call per batch answer or poll result, so
that an implementation can write each call in a single transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from orchestrator.engine.states import PhoneRecord

__all__ = ["Journal", "MemoryJournal"]


class Journal(Protocol):
    """Where the engine records what it did, so that a crash loses nothing."""

    async def save(self, records: Sequence[PhoneRecord]) -> None:
        """Persist the current fields of these phones, all or nothing."""
        ...


class MemoryJournal:
    """Keeps nothing beyond the process: for dry runs and tests that do not test durability."""

    def __init__(self) -> None:
        self.saves = 0

    async def save(self, records: Sequence[PhoneRecord]) -> None:
        """Count the call; the records themselves already live in the engine's table."""
        self.saves += 1
