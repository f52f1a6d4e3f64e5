"""The per-phone state machine, and the table that keeps every phone in exactly one state.

``pending → submitting → running → succeeded``; ``running → retry_wait → pending`` on a retryable
failure; ``submitting → pending`` when a request was throttled (not the phone's fault) or must be
resent; any live state → ``failed`` or ``cancelled``. With ``restart_after``, a phone whose update
succeeded goes back to ``pending`` at the ``restart`` stage and succeeds only when its restart does.
The table counts phones per state as they move, so the counts always add up to the fleet size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "LIVE_STATES",
    "TERMINAL_STATES",
    "IllegalTransitionError",
    "PhoneRecord",
    "PhoneState",
    "Stage",
    "StateTable",
]


class PhoneState(StrEnum):
    """Where one phone is in the rollout."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Stage(StrEnum):
    """Which operation the phone's current job performs."""

    UPDATE = "update"
    RESTART = "restart"


TERMINAL_STATES = frozenset({PhoneState.SUCCEEDED, PhoneState.FAILED, PhoneState.CANCELLED})
LIVE_STATES = frozenset(PhoneState) - TERMINAL_STATES

_ALLOWED: dict[PhoneState, frozenset[PhoneState]] = {
    PhoneState.PENDING: frozenset({PhoneState.SUBMITTING}),
    PhoneState.SUBMITTING: frozenset(
        {PhoneState.RUNNING, PhoneState.PENDING, PhoneState.RETRY_WAIT}
    ),
    PhoneState.RUNNING: frozenset(
        {PhoneState.SUCCEEDED, PhoneState.RETRY_WAIT, PhoneState.PENDING}
    ),
    PhoneState.RETRY_WAIT: frozenset({PhoneState.PENDING}),
    PhoneState.SUCCEEDED: frozenset(),
    PhoneState.FAILED: frozenset(),
    PhoneState.CANCELLED: frozenset(),
}
for _live in LIVE_STATES:
    _ALLOWED[_live] = _ALLOWED[_live] | {PhoneState.FAILED, PhoneState.CANCELLED}


class IllegalTransitionError(RuntimeError):
    """A bug: the engine tried a move the state machine forbids."""


@dataclass(slots=True, eq=False)
class PhoneRecord:
    """Everything the engine and the journal know about one phone of one rollout."""

    index: int
    phone_id: str
    wave: int = 0
    state: PhoneState = PhoneState.PENDING
    stage: Stage = Stage.UPDATE
    attempts: int = 0
    job_id: str | None = None
    request_id: str | None = None
    batch_id: str | None = None
    error_code: str | None = None
    error_msg: str | None = None
    retry_at: float = 0.0
    job_deadline: float = 0.0
    submitted_at: float = 0.0

    @property
    def terminal(self) -> bool:
        """True once the phone reached succeeded, failed or cancelled."""
        return self.state in TERMINAL_STATES


class StateTable:
    """Every phone's record by ID, with live per-state counts; refuses moves the machine forbids.

    Every state change goes through :meth:`move`, which enforces the state machine and keeps the
    counts; nothing else assigns ``record.state``.
    """

    def __init__(self, records: Iterable[PhoneRecord]) -> None:
        self._records: dict[str, PhoneRecord] = {}
        self.counts: Counter[PhoneState] = Counter()
        self.terminal_count = 0
        """Phones that reached succeeded, failed or cancelled (kept as they move)."""
        for record in records:
            if record.phone_id in self._records:
                raise ValueError(f"phone {record.phone_id} appears twice in the rollout")
            self._records[record.phone_id] = record
            self.counts[record.state] += 1
            self.terminal_count += record.state in TERMINAL_STATES

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[PhoneRecord]:
        return iter(self._records.values())

    def __getitem__(self, phone_id: str) -> PhoneRecord:
        return self._records[phone_id]

    def get(self, phone_id: str) -> PhoneRecord | None:
        """The phone's record, or None for a phone not in this rollout."""
        return self._records.get(phone_id)

    def move(self, record: PhoneRecord, to: PhoneState) -> None:
        """Change a phone's state, refusing moves the state machine does not allow."""
        if to not in _ALLOWED[record.state]:
            raise IllegalTransitionError(f"phone {record.phone_id}: {record.state} → {to}")
        self.counts[record.state] -= 1
        self.counts[to] += 1
        record.state = to
        self.terminal_count += to in TERMINAL_STATES

    def count_summary(self) -> dict[str, int]:
        """Counts as the report shows them: total, each terminal state, and the rest as pending."""
        live = sum(self.counts[state] for state in LIVE_STATES)
        return {
            "total": len(self._records),
            "succeeded": self.counts[PhoneState.SUCCEEDED],
            "failed": self.counts[PhoneState.FAILED],
            "cancelled": self.counts[PhoneState.CANCELLED],
            "pending": live,
        }
