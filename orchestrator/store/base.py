"""The journal's interface: what the engine and the commands need from durable storage.

Shaped so that a PostgreSQL implementation can follow the SQLite one: every method is a unit of
work (one transaction), phones are addressed by ``(rollout_id, phone_id)``, and nothing leaks the
storage's own types. Errors derive from :class:`StoreError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from orchestrator.engine.states import PhoneRecord, PhoneState
from orchestrator.errors import FencedError, OrchestratorError
from orchestrator.store.lease import LeaseToken

__all__ = [
    "LeaseHeldError",
    "LeaseLostError",
    "LeaseToken",
    "RolloutExistsError",
    "RolloutMeta",
    "RolloutNotFoundError",
    "RolloutStore",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
    "StoredPhone",
]


class StoreError(OrchestratorError):
    """The journal could not do what was asked."""


class StoreUnavailableError(StoreError):
    """The journal cannot be written or read (read-only file, full disk, I/O error)."""


class StoreCorruptError(StoreError):
    """The file is not a journal of this tool, is damaged, or is from a newer version."""


class RolloutNotFoundError(StoreError):
    """No rollout with that ID in this journal."""


class RolloutExistsError(StoreError):
    """A rollout with that ID already exists in this journal."""


class LeaseHeldError(StoreError):
    """Another live process is running this rollout."""


class LeaseLostError(LeaseHeldError, FencedError):
    """Our lease was taken over by another runner: we must not write or send anything more.

    Its exit code is :class:`FencedError`'s (4): no base between them sets another."""


class StoredPhone(NamedTuple):
    """What is written once per phone when a rollout is created: its position and its payload.

    A named tuple: 100,000 of them are built per rollout, and tuples are the cheapest to build.
    """

    position: int
    """The phone's index in the fleet order (``tuple.index`` is taken)."""
    phone_id: str
    property: str
    """The ``property`` JSON string sent for this phone."""
    custom_property: Mapping[str, str] | None = None


@dataclass(slots=True)
class RolloutMeta:
    """One rollout's header row."""

    rollout_id: str
    name: str
    status: str
    """``running``, then the report's status once it ends."""
    created_at: str
    """ISO-8601 UTC."""
    updated_at: str
    options: Mapping[str, Any]
    """The engine's options as JSON-able data, to resume with the same policy."""
    plan_source: str = ""
    reason: str | None = None
    api_calls: Mapping[str, int] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    """Phones per state (every :class:`PhoneState` value); filled by the store on read."""


class RolloutStore(Protocol):
    """A durable journal of rollouts and their phones."""

    async def create_rollout(
        self, meta: RolloutMeta, phones: Sequence[StoredPhone], records: Sequence[PhoneRecord]
    ) -> None:
        """Write a new rollout, its phones' payloads and their initial records, all at once.

        Raises :class:`RolloutExistsError` when the ID is taken.
        """
        ...

    async def save(
        self,
        rollout_id: str,
        records: Sequence[PhoneRecord],
        *,
        fence: LeaseToken | None = None,
        api_calls: Mapping[str, int] | None = None,
    ) -> None:
        """Write these phones' current fields in one transaction.

        With ``fence``, the write happens only if that token still holds the rollout's lease
        (checked in the same transaction), else :class:`LeaseLostError`. ``api_calls`` are
        calls made since the previous save, added to the rollout's totals in the same
        transaction, so the counts survive a crash together with the work they did.
        """
        ...

    async def compact(self, rollout_id: str) -> int:
        """Fold what ``save`` logged into the phones' rows (reads are exact either way; this
        makes them cheaper and the journal smaller); returns the log entries folded."""
        ...

    async def update_rollout(
        self,
        rollout_id: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        api_calls: Mapping[str, int] | None = None,
        options: Mapping[str, Any] | None = None,
        fence: LeaseToken | None = None,
    ) -> None:
        """Change the rollout's header (and its ``updated_at``); ``fence`` as for :meth:`save`.

        ``api_calls`` replaces the totals; :meth:`save` adds to them.
        """
        ...

    async def get_rollout(self, rollout_id: str) -> RolloutMeta:
        """The header with live per-state counts; :class:`RolloutNotFoundError` if unknown."""
        ...

    async def list_rollouts(self) -> list[RolloutMeta]:
        """Every rollout, newest first, with counts."""
        ...

    async def load_phones(self, rollout_id: str) -> tuple[list[StoredPhone], list[PhoneRecord]]:
        """Everything needed to resume: payloads and records, in fleet order."""
        ...

    async def phones(
        self,
        rollout_id: str,
        *,
        state: PhoneState | None = None,
        error_code: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[PhoneRecord]:
        """Records filtered and paged, in fleet order (for reports and the daemon's API)."""
        ...

    async def acquire_lease(self, rollout_id: str, *, owner: str, ttl_s: float) -> LeaseToken:
        """Become the one runner of this rollout; :class:`LeaseHeldError` if another live one is.

        The rules are :func:`orchestrator.store.lease.may_take`'s: a holder of this host is taken
        over once its process is gone (never while it runs), a remote one once its expiry has
        passed. Returns the token that fences our writes.
        """
        ...

    async def renew_lease(self, rollout_id: str, *, owner: str, ttl_s: float) -> None:
        """Extend our lease; :class:`LeaseLostError` if it was taken over meanwhile."""
        ...

    async def release_lease(self, rollout_id: str, *, owner: str) -> None:
        """Give the rollout up (no error if we do not hold it)."""
        ...

    async def close(self) -> None:
        """Flush and close."""
        ...
