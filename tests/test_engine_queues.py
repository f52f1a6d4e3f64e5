"""The send queues: batch order, the restart stage first, bisected halves as split, due retries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.engine.queues import SendQueues
from orchestrator.engine.states import PhoneRecord, PhoneState, Stage


def _phones(
    count: int,
    *,
    start: int = 0,
    stage: Stage = Stage.UPDATE,
    state: PhoneState = PhoneState.PENDING,
) -> list[PhoneRecord]:
    return [
        PhoneRecord(index=i, phone_id=f"phone{i}", stage=stage, state=state)
        for i in range(start, start + count)
    ]


def _ids(records: list[PhoneRecord]) -> list[str]:
    return [r.phone_id for r in records]


def _queued(phones: list[PhoneRecord]) -> SendQueues:
    queues = SendQueues()
    for record in phones:
        queues.push(record)
    return queues


def test_batches_take_phones_in_queue_order_up_to_the_size() -> None:
    phones = _phones(7)
    queues = _queued(phones)
    assert queues.take_batch(3) == phones[:3]
    assert queues.take_batch(3) == phones[3:6]
    assert queues.take_batch(3) == phones[6:]
    assert queues.take_batch(3) == []
    assert not queues.has_ready()


def test_restart_stage_phones_go_first_and_never_share_a_batch_with_updates() -> None:
    """A restart is a different call from an update, and finishing a started phone comes first."""
    updates = _phones(3)
    restarts = _phones(2, start=10, stage=Stage.RESTART)
    queues = _queued([updates[0], restarts[0], updates[1], restarts[1], updates[2]])
    assert queues.take_batch(10) == restarts
    assert queues.take_batch(10) == updates


def test_phones_that_moved_on_while_queued_are_skipped() -> None:
    phones = _phones(4)
    queues = _queued(phones)
    phones[1].state = PhoneState.CANCELLED  # an abort cancelled it while it waited
    assert queues.take_batch(3) == [phones[0], phones[2], phones[3]]


def test_a_batch_put_back_is_taken_again_first_in_its_order() -> None:
    phones = _phones(6)
    queues = _queued(phones)
    batch = queues.take_batch(3)
    queues.requeue_front(batch)
    assert queues.take_batch(6) == phones


def test_put_back_phones_return_to_their_own_stage_queue() -> None:
    update = _phones(1)[0]
    restart = _phones(1, start=1, stage=Stage.RESTART)[0]
    later = _phones(1, start=2)[0]
    queues = _queued([later])
    queues.requeue_front([update, restart])
    assert queues.take_batch(5) == [restart]
    assert queues.take_batch(5) == [update, later]


def test_bisected_halves_are_sent_first_as_split_whatever_the_batch_size() -> None:
    waiting = _phones(3, start=100)
    queues = _queued(waiting)
    batch = _phones(6)
    queues.force_next([batch[:3], batch[3:]])
    assert queues.has_ready()
    assert queues.take_batch(2) == batch[:3]  # not regrouped to the batch size
    assert queues.take_batch(2) == batch[3:]
    assert queues.take_batch(2) == waiting[:2]


def test_halves_split_again_are_sent_before_the_other_half() -> None:
    """Bisecting depth first: the first half's halves go before the second half."""
    batch = _phones(8)
    queues = SendQueues()
    queues.force_next([batch[:4], batch[4:]])
    first = queues.take_batch(100)
    queues.force_next([first[:2], first[2:]])
    assert [_ids(queues.take_batch(100)) for _ in range(3)] == [
        _ids(batch[:2]),
        _ids(batch[2:4]),
        _ids(batch[4:]),
    ]


def test_a_forced_half_drops_phones_no_longer_pending() -> None:
    batch = _phones(4)
    queues = SendQueues()
    queues.force_next([batch])
    batch[2].state = PhoneState.CANCELLED
    assert queues.take_batch(100) == [batch[0], batch[1], batch[3]]


def test_retries_are_released_once_due_in_due_order() -> None:
    a, b, c = _phones(3, state=PhoneState.RETRY_WAIT)
    queues = SendQueues()
    queues.schedule_retry(a, 30.0)
    queues.schedule_retry(b, 10.0)
    queues.schedule_retry(c, 20.0)
    assert not queues.has_ready()  # waiting retries are not ready
    assert queues.release_due(9.9) == []
    assert queues.release_due(20.0) == [b, c]
    assert queues.release_due(25.0) == []
    assert queues.release_due(100.0) == [a]
    assert queues.release_due(1000.0) == []


def test_retries_due_together_keep_the_order_they_were_scheduled_in() -> None:
    phones = _phones(5, state=PhoneState.RETRY_WAIT)
    queues = SendQueues()
    for record in phones:
        queues.schedule_retry(record, 5.0)
    assert queues.release_due(5.0) == phones


def test_a_retry_no_longer_waiting_is_dropped_and_none_is_released_twice() -> None:
    stale, twice = _phones(2, state=PhoneState.RETRY_WAIT)
    queues = SendQueues()
    queues.schedule_retry(stale, 1.0)
    queues.schedule_retry(twice, 1.0)
    queues.schedule_retry(twice, 2.0)
    stale.state = PhoneState.CANCELLED
    assert queues.release_due(3.0) == [twice]


def test_next_due_in_counts_from_the_given_time() -> None:
    queues = SendQueues()
    assert queues.next_due_in(0.0) is None
    record = _phones(1, state=PhoneState.RETRY_WAIT)[0]
    queues.schedule_retry(record, 12.5)
    queues.schedule_retry(record, 40.0)
    assert queues.next_due_in(10.0) == 2.5
    assert queues.next_due_in(50.0) == 0.0  # overdue: now
    queues.release_due(50.0)
    assert queues.next_due_in(50.0) is None


@given(
    stages=st.lists(st.sampled_from(Stage), max_size=60),
    size=st.integers(min_value=1, max_value=25),
)
def test_every_queued_phone_is_taken_exactly_once_by_stage_then_in_order(
    stages: list[Stage], size: int
) -> None:
    phones = [
        PhoneRecord(index=i, phone_id=f"phone{i}", stage=stage) for i, stage in enumerate(stages)
    ]
    queues = _queued(phones)
    batches: list[list[PhoneRecord]] = []
    while queues.has_ready():
        batches.append(queues.take_batch(size))
    assert all(1 <= len(batch) <= size for batch in batches)
    assert all(len({r.stage for r in batch}) == 1 for batch in batches)
    taken = [record for batch in batches for record in batch]
    restarts = [r for r in phones if r.stage is Stage.RESTART]
    updates = [r for r in phones if r.stage is Stage.UPDATE]
    assert taken == restarts + updates
