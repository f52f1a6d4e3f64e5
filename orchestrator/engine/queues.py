"""The phones waiting to be sent, in the order the submitter takes them.

Three queues feed batches, first non-empty first: halves of a bisected batch (sent exactly as
split, so the phone behind a whole-batch rejection is found), phones at the restart stage (their
update already took, so finishing them comes first), then phones at the update stage. Phones whose
retry is due later wait in a heap keyed by the due time until :meth:`SendQueues.release_due`.

Pure: no asyncio and no clock reads; callers pass the time. A queue may hold records that have
since moved on (cancelled by an abort, say): taking a batch skips any record no longer ``pending``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Sequence

from orchestrator.engine.states import PhoneRecord, PhoneState, Stage

__all__ = ["SendQueues"]


class SendQueues:
    """The ready queues (update, restart, bisected halves) and the retry heap."""

    def __init__(self) -> None:
        self._ready: deque[PhoneRecord] = deque()
        self._restart: deque[PhoneRecord] = deque()
        self._forced: deque[list[PhoneRecord]] = deque()
        self._retries: list[tuple[float, int, PhoneRecord]] = []
        self._order = itertools.count()

    def has_ready(self) -> bool:
        """True when a batch may be taken now (some queue is non-empty)."""
        return bool(self._forced or self._ready or self._restart)

    def push(self, record: PhoneRecord) -> None:
        """Queue a pending phone at the back of its stage's queue."""
        queue = self._restart if record.stage is Stage.RESTART else self._ready
        queue.append(record)

    def take_batch(self, size: int) -> list[PhoneRecord]:
        """The next batch: a bisected half as it is, else up to ``size`` pending phones.

        Restart-stage phones go before update-stage ones and the two never share a batch (they are
        different calls). The batch may be empty when only stale records were queued.
        """
        if self._forced:
            return [r for r in self._forced.popleft() if r.state is PhoneState.PENDING]
        queue = self._restart or self._ready
        batch: list[PhoneRecord] = []
        while queue and len(batch) < size:
            record = queue.popleft()
            if record.state is PhoneState.PENDING:
                batch.append(record)
        return batch

    def requeue_front(self, batch: Sequence[PhoneRecord]) -> None:
        """Put a batch that was not sent back at the front of its queues, in its order."""
        for record in reversed(batch):
            queue = self._restart if record.stage is Stage.RESTART else self._ready
            queue.appendleft(record)

    def force_next(self, batches: Iterable[Sequence[PhoneRecord]]) -> None:
        """Send these batches, in this order, before anything else and without regrouping."""
        for batch in reversed(list(batches)):
            self._forced.appendleft(list(batch))

    def schedule_retry(self, record: PhoneRecord, due: float) -> None:
        """Hold a phone until ``due`` (a monotonic time); phones due together keep their order."""
        heapq.heappush(self._retries, (due, next(self._order), record))

    def release_due(self, now: float) -> list[PhoneRecord]:
        """Take the phones whose retry is due at ``now``, each once, in due order.

        Only phones still in ``retry_wait`` are returned; the caller moves them to ``pending`` and
        :meth:`push`-es them.
        """
        released: list[PhoneRecord] = []
        seen: set[PhoneRecord] = set()
        while self._retries and self._retries[0][0] <= now:
            _, _, record = heapq.heappop(self._retries)
            if record.state is PhoneState.RETRY_WAIT and record not in seen:
                seen.add(record)
                released.append(record)
        return released

    def next_due_in(self, now: float) -> float | None:
        """Seconds from ``now`` until the next retry is due (0 if overdue), None if none waits."""
        if not self._retries:
            return None
        return max(0.0, self._retries[0][0] - now)
