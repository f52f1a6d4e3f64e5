"""The rollout engine end to end: a real client against a real simulator, on the real clock.

The engine's behaviour (waves, bake, abort gate, deadlines, stop, pause, cancel, adaptive rate,
polling, restarts) is tested on the in-process fake in :mod:`tests.test_engine_behaviour`. The few
rollouts here go over loopback HTTP on purpose: they prove that the whole stack (client, request
signing and parsing, error classification of real 4xx/5xx answers, dropped connections, the
simulator's gateway) holds together, under every fault profile and for a whole-batch 400.

Each test runs a rollout to its end and then checks two accounts that must agree: the engine's
report and what the simulator recorded. Jobs, backoff and polls are shrunk to milliseconds
(:mod:`tests.e2e_support`) so that no test needs a sleep to line events up.
"""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.engine.policy import REQUEST_FAILED_CODE
from orchestrator.engine.runner import RolloutStatus
from orchestrator.engine.states import PhoneState
from tests.conftest import SimulatorFactory
from tests.e2e_support import (
    assert_end_state,
    assert_one_request_per_phone,
    fast_options,
    fast_profile,
    fast_retry,
    make_targets,
    oversize,
    run_rollout,
    start_simulator,
)

NOT_FOUND = "CPS.0005"
INVALID_PARAMETER = "CPS.0004"
WRONG_TOKEN = "wrong-e2e-token-7f3a"


# -- 1 and 2: end state in each profile, one request per phone at a time ---------------------------


@pytest.mark.parametrize(
    ("profile", "phones"),
    [("none", 1000), ("flaky", 600)],
)
async def test_every_phone_succeeds_in_healing_profiles(
    simulator: SimulatorFactory, profile: str, phones: int
) -> None:
    """Without faults, and with faults that heal on retry, every phone ends succeeded and updated."""
    sim = await start_simulator(simulator, phones=phones, profile=fast_profile(profile))
    targets = make_targets(sim.state.phone_ids())

    run = await run_rollout(sim, targets, fast_options(retry=fast_retry(max_attempts=10)))

    assert_end_state(run, sim, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED, run.result.reason
    assert run.result.counts["succeeded"] == phones
    assert not run.result.fatal
    stats = sim.state.stats()
    assert stats["max_concurrent_requests_per_phone"] == 1
    assert stats["protocol_violation_count"] == 0, stats["protocol_violations"][:5]
    assert_one_request_per_phone(sim)


async def test_hostile_profile_fails_only_the_phones_that_cannot_succeed(
    simulator: SimulatorFactory,
) -> None:
    """Under every hostile fault, only missing phones (CPS.0005) and phones whose jobs reject the
    property (CPS.0004) fail; throttling, 5xx, dropped connections, busy answers, late phones and
    failed jobs all heal with retries.

    A missing phone spends its attempts on CPS.0005, but a request-level failure (5xx, dropped
    connection) also costs an attempt and overwrites the phone's error code, so its last code may be
    ``REQUEST_FAILED`` instead (see the report: the real cause is lost).
    """
    sim = await start_simulator(simulator, phones=200, profile=fast_profile("hostile"))
    targets = make_targets(sim.state.phone_ids())
    missing = set(sim.state.missing_phone_ids())
    rejecting = {
        pid
        for pid, phone in sim.state.fleet.by_id.items()
        if phone.exists and phone.rejects_properties
    }
    assert missing, "the seed should give the fleet missing phones"
    assert rejecting, "the seed should give the fleet phones that reject properties"
    max_attempts = 10

    run = await run_rollout(sim, targets, fast_options(retry=fast_retry(max_attempts=max_attempts)))

    assert_end_state(run, sim, targets)
    result = run.result
    assert result.status is RolloutStatus.COMPLETED_WITH_FAILURES, result.reason
    assert result.counts["cancelled"] == 0
    failed = {r.phone_id: r for r in result.records if r.state is PhoneState.FAILED}
    codes = Counter(r.error_code for r in failed.values())
    assert set(failed) == missing | rejecting, codes
    for phone_id in missing:
        assert failed[phone_id].error_code in (NOT_FOUND, REQUEST_FAILED_CODE), failed[phone_id]
        assert failed[phone_id].attempts == max_attempts
    for phone_id in rejecting:
        assert failed[phone_id].error_code == INVALID_PARAMETER, failed[phone_id]
    assert not any(code and "0308" in code for code in codes), "a phone failed by throttling"
    stats = sim.state.stats()
    assert stats["throttled"]["total"] > 0, "the hostile profile should have throttled something"
    assert stats["max_concurrent_requests_per_phone"] == 1
    assert stats["protocol_violation_count"] == 0, stats["protocol_violations"][:5]


# -- 3: bisecting a whole-batch 400 ---------------------------------------------------------------


async def test_whole_batch_400_is_bisected_down_to_the_bad_phone(
    simulator: SimulatorFactory,
) -> None:
    """One oversized update in a batch of 16: the engine splits until that phone fails alone."""
    sim = await start_simulator(simulator, phones=16, profile=fast_profile("none"))
    targets = make_targets(sim.state.phone_ids())
    bad = oversize(targets, 11)

    run = await run_rollout(sim, targets, fast_options(batch_size=16))

    assert_end_state(run, sim, targets)
    result = run.result
    assert result.status is RolloutStatus.COMPLETED_WITH_FAILURES, result.reason
    assert not result.fatal
    records = run.by_id()
    assert records[bad.phone_id].state is PhoneState.FAILED
    assert records[bad.phone_id].error_code == INVALID_PARAMETER
    assert records[bad.phone_id].attempts == 1
    assert result.counts["succeeded"] == 15
    assert run.engine.progress.splits >= 1
    stats = sim.state.stats()
    kinds = Counter(v["kind"] for v in stats["protocol_violations"])
    assert set(kinds) == {"invalid_property"}
    assert kinds["invalid_property"] == 5, "16 → 8 → 4 → 2 → 1 holds the bad phone five times"
    assert run.engine.progress.splits == 4
    assert stats["submissions_per_phone"].get(bad.phone_id, 0) == 0, "400s create no submissions"
    assert stats["max_concurrent_requests_per_phone"] == 1
