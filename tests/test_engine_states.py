"""The per-phone state machine: legal paths, refused moves, and counts that always add up."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.engine.states import (
    LIVE_STATES,
    TERMINAL_STATES,
    IllegalTransitionError,
    PhoneRecord,
    PhoneState,
    StateTable,
)

P = PhoneState

LEGAL: dict[PhoneState, frozenset[PhoneState]] = {
    P.PENDING: frozenset({P.SUBMITTING, P.FAILED, P.CANCELLED}),
    P.SUBMITTING: frozenset({P.RUNNING, P.PENDING, P.RETRY_WAIT, P.FAILED, P.CANCELLED}),
    P.RUNNING: frozenset({P.SUCCEEDED, P.RETRY_WAIT, P.PENDING, P.FAILED, P.CANCELLED}),
    P.RETRY_WAIT: frozenset({P.PENDING, P.FAILED, P.CANCELLED}),
    P.SUCCEEDED: frozenset(),
    P.FAILED: frozenset(),
    P.CANCELLED: frozenset(),
}
"""The design's state machine, written out independently of the module under test."""


def _table(size: int) -> StateTable:
    return StateTable(PhoneRecord(index=i, phone_id=f"phone{i}") for i in range(size))


def _assert_consistent(table: StateTable) -> None:
    recount = Counter(record.state for record in table)
    assert sum(table.counts.values()) == len(table)
    assert {state: table.counts[state] for state in PhoneState} == {
        state: recount[state] for state in PhoneState
    }
    summary = table.count_summary()
    assert summary["total"] == len(table)
    assert summary["succeeded"] + summary["failed"] + summary["cancelled"] + summary[
        "pending"
    ] == len(table)
    assert table.terminal_count == sum(1 for record in table if record.terminal)


def test_live_and_terminal_states_split_every_state() -> None:
    assert frozenset(PhoneState) == LIVE_STATES | TERMINAL_STATES
    assert not LIVE_STATES & TERMINAL_STATES
    assert {P.SUCCEEDED, P.FAILED, P.CANCELLED} == TERMINAL_STATES


def test_the_happy_path() -> None:
    table = _table(3)
    record = table["phone1"]
    assert record.state is P.PENDING
    for state in (P.SUBMITTING, P.RUNNING, P.SUCCEEDED):
        table.move(record, state)
        assert record.state is state
        _assert_consistent(table)
    assert record.terminal
    assert table.count_summary() == {
        "total": 3,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "pending": 2,
    }


def test_a_retry_goes_round_through_retry_wait() -> None:
    table = _table(1)
    record = table["phone0"]
    for state in (P.SUBMITTING, P.RUNNING, P.RETRY_WAIT, P.PENDING, P.SUBMITTING, P.RUNNING):
        table.move(record, state)
    table.move(record, P.SUCCEEDED)
    _assert_consistent(table)


def test_a_throttled_batch_goes_back_to_pending() -> None:
    table = _table(1)
    record = table["phone0"]
    table.move(record, P.SUBMITTING)
    table.move(record, P.PENDING)
    assert record.state is P.PENDING
    _assert_consistent(table)


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ((), P.RUNNING),
        ((), P.SUCCEEDED),
        ((), P.RETRY_WAIT),
        ((), P.PENDING),
        ((P.SUBMITTING,), P.SUBMITTING),
        ((P.SUBMITTING,), P.SUCCEEDED),
        ((P.SUBMITTING, P.RUNNING), P.SUBMITTING),
        ((P.SUBMITTING, P.RUNNING, P.RETRY_WAIT), P.RUNNING),
        ((P.SUBMITTING, P.RUNNING, P.SUCCEEDED), P.PENDING),
        ((P.SUBMITTING, P.RUNNING, P.SUCCEEDED), P.FAILED),
        ((P.SUBMITTING, P.RUNNING, P.SUCCEEDED), P.CANCELLED),
    ],
)
def test_illegal_moves_are_refused_and_change_nothing(
    path: tuple[PhoneState, ...], refused: PhoneState
) -> None:
    table = _table(2)
    record = table["phone0"]
    for state in path:
        table.move(record, state)
    before_state, before_counts = record.state, dict(table.counts)
    with pytest.raises(IllegalTransitionError, match="phone0"):
        table.move(record, refused)
    assert record.state is before_state
    assert dict(table.counts) == before_counts
    _assert_consistent(table)


@pytest.mark.parametrize("terminal", [P.FAILED, P.CANCELLED])
@pytest.mark.parametrize("start", [P.PENDING, P.SUBMITTING, P.RUNNING, P.RETRY_WAIT])
def test_terminal_states_are_final(terminal: PhoneState, start: PhoneState) -> None:
    record = PhoneRecord(index=0, phone_id="p", state=start)
    table = StateTable([record])
    table.move(record, terminal)
    for target in PhoneState:
        with pytest.raises(IllegalTransitionError):
            table.move(record, target)
    assert record.state is terminal
    _assert_consistent(table)


@pytest.mark.parametrize("start", list(PhoneState))
def test_every_move_follows_the_design(start: PhoneState) -> None:
    for target in PhoneState:
        record = PhoneRecord(index=0, phone_id="p", state=start)
        table = StateTable([record])
        if target in LEGAL[start]:
            table.move(record, target)
            assert record.state is target
        else:
            with pytest.raises(IllegalTransitionError):
                table.move(record, target)
            assert record.state is start
        _assert_consistent(table)


def test_duplicate_phone_ids_are_refused() -> None:
    records = [PhoneRecord(index=0, phone_id="a"), PhoneRecord(index=1, phone_id="a")]
    with pytest.raises(ValueError, match="twice"):
        StateTable(records)


def test_a_table_counts_records_in_whatever_state_they_resume() -> None:
    records = [
        PhoneRecord(index=0, phone_id="a", state=P.RUNNING),
        PhoneRecord(index=1, phone_id="b", state=P.SUCCEEDED),
        PhoneRecord(index=2, phone_id="c", state=P.FAILED),
        PhoneRecord(index=3, phone_id="d"),
    ]
    table = StateTable(records)
    assert len(table) == 4
    assert table.terminal_count == 2
    assert table.count_summary() == {
        "total": 4,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        "pending": 2,
    }
    _assert_consistent(table)


def test_lookup_by_phone_id() -> None:
    table = _table(2)
    assert table["phone1"].index == 1
    assert table.get("phone0") is table["phone0"]
    assert table.get("nope") is None
    with pytest.raises(KeyError):
        table["nope"]
    assert [record.phone_id for record in table] == ["phone0", "phone1"]


def test_an_empty_table() -> None:
    table = StateTable([])
    assert len(table) == 0
    assert table.count_summary() == {
        "total": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "pending": 0,
    }


@given(
    size=st.integers(min_value=1, max_value=30),
    moves=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0)), max_size=200),
)
def test_counts_always_add_up_over_random_legal_moves(
    size: int, moves: list[tuple[int, int]]
) -> None:
    table = _table(size)
    records = list(table)
    for pick_record, pick_target in moves:
        record = records[pick_record % size]
        allowed = sorted(LEGAL[record.state])
        if not allowed:
            with pytest.raises(IllegalTransitionError):
                table.move(record, P.PENDING)
            continue
        table.move(record, allowed[pick_target % len(allowed)])
        _assert_consistent(table)
    _assert_consistent(table)
