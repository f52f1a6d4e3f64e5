"""The rollout engine end to end: a real client against a real simulator, on the real clock.

Each test runs a rollout to its end (or stops it from a callback) and then checks two accounts that
must agree: the engine's report and what the simulator recorded. Jobs, backoff and polls are shrunk
to milliseconds (:mod:`tests.e2e_support`) so that no test needs a sleep to line events up.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from orchestrator.cph import PropertyUpdate
from orchestrator.engine.options import RestartMode
from orchestrator.engine.policy import JOB_TIMEOUT_CODE, REQUEST_FAILED_CODE, AbortThresholds
from orchestrator.engine.runner import RolloutEngine, RolloutStatus
from orchestrator.engine.states import PhoneState
from orchestrator.plan import PhoneTarget
from orchestrator.simulator import SimulatorServer
from orchestrator.simulator.state import Job, JobKind
from tests.conftest import SimulatorFactory
from tests.e2e_support import (
    IntentJournal,
    Run,
    assert_end_state,
    assert_one_request_per_phone,
    fast_options,
    fast_profile,
    fast_retry,
    made_up_phone_ids,
    make_targets,
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


# -- 3: throttling -----------------------------------------------------------------------------------


async def test_submit_rate_adapts_to_a_server_limit_below_the_configured_rate(
    simulator: SimulatorFactory,
) -> None:
    """Server 10 submits/s, engine configured for 40/s: the rollout completes and no phone fails,
    and the adaptive rate ends near the server's limit S.

    The server sends no ``Retry-After`` here, so the engine's own AIMD rule is what paces it (with
    ``Retry-After`` each pause lets one burst through and the rate is cut once per pause, too few
    times in a 3 s run to say anything about the band). The band, with S = 10/s: a throttled
    batch is resent at once, so while the rate stays above S the resends keep drawing 429s and
    each one sent after the last cut cuts the rate by 0.7. The rate thus cannot stay above S/0.7
    ≈ 1.43·S while batches remain, and regrowth (5 % a second of the level cut from, ~3 s) adds at
    most ~0.15 of that: below 1.6·S. Below S a request fits the server's bucket, so a cut starts from
    about S, plus one more for a request sent just after a cut into a bucket still drained by the
    older, faster rate: at least 0.7·0.7·S ≈ 0.49·S. Hence 0.4·S … 1.6·S.
    """
    server_rate = 10.0
    profile = fast_profile("none", retry_after_fraction=0.0)
    sim = await start_simulator(
        simulator, phones=300, profile=profile, submit_rate_per_s=server_rate
    )
    targets = make_targets(sim.state.phone_ids())
    options = fast_options(batch_size=10, submit_rate_per_s=40.0, max_submits_in_flight=8)

    run = await run_rollout(sim, targets, options)

    assert_end_state(run, sim, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED, run.result.reason
    assert run.result.counts["failed"] == 0
    stats = sim.state.stats()
    assert stats["throttled"].get("submit", 0) > 0
    assert run.result.api_calls["throttled"] > 0
    assert all(r.attempts == 1 for r in run.result.records), "a throttled send cost an attempt"
    final_rate = run.engine._submit.rate.rate_per_s
    assert 0.4 * server_rate <= final_rate <= 1.6 * server_rate, final_rate
    assert stats["max_concurrent_requests_per_phone"] == 1
    assert stats["protocol_violation_count"] == 0


async def test_poll_timing_learns_job_durations_not_its_own_poll_delays(
    simulator: SimulatorFactory,
) -> None:
    """Jobs last 20-100 ms; after 120 batches the engine's estimate of how long they take must
    still be far below its 0.5 s minimum poll interval.

    The engine learns ``now - submitted_at`` at the poll that first sees a job finished, which is
    at least the poll delay it chose, and then sets the next first-poll delay to that quantile
    + 0.25 s: a ratchet that grows without bound however short the jobs are.
    """
    sim = await start_simulator(simulator, phones=1200, profile=fast_profile("none"))
    targets = make_targets(sim.state.phone_ids())
    options = fast_options(batch_size=10, submit_rate_per_s=60.0)

    run = await run_rollout(sim, targets, options)

    assert_end_state(run, sim, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED
    jobs = list(sim.state.jobs.values())
    longest_s = max(j.end_wall_s - j.begin_wall_s for j in jobs)
    assert longest_s <= 0.1 + 1e-9
    learnt_median_s = run.engine._timing.estimator.quantile(0.5)
    assert learnt_median_s is not None
    assert learnt_median_s <= 0.4, (
        f"jobs of at most {longest_s:.2f} s are believed to take {learnt_median_s:.2f} s; "
        f"first poll now {run.engine._timing.first_delay_s():.2f} s after submit"
    )


async def test_a_full_page_of_a_requests_jobs_needs_no_second_page(
    simulator: SimulatorFactory,
) -> None:
    """ListJobs gives no ``count`` by default; a page of exactly 100 jobs may or may not have a
    next one. The engine knows how many jobs each request was given, so one call per poll does:
    jobs that end at once are all found by the first poll of each 100-phone request."""
    profile = fast_profile("none", job_duration="fixed:0")
    sim = await start_simulator(simulator, phones=500, profile=profile)
    targets = make_targets(sim.state.phone_ids())
    options = fast_options(batch_size=100, first_poll_s=0.2, query_rate_per_s=1000.0)

    run = await run_rollout(sim, targets, options)

    assert_end_state(run, sim, targets)
    assert not sim.state.config.list_jobs_count
    assert sim.state.stats()["requests"]["ListJobs"] == 5


# -- 4: CPS.0005 ----------------------------------------------------------------------------------


async def test_late_phones_heal_and_missing_phones_fail_after_max_attempts(
    simulator: SimulatorFactory,
) -> None:
    """Phones answering CPS.0005 for their first two submissions succeed on the third; phones that
    never exist (in the fleet, or made up) fail with CPS.0005 once their attempts are spent.
    """
    profile = fast_profile(
        "none", late_phone_rate=1.0, late_phone_submissions=2, missing_phone_rate=0.1
    )
    sim = await start_simulator(simulator, phones=300, profile=profile)
    missing = set(sim.state.missing_phone_ids())
    made_up = set(made_up_phone_ids(5))
    assert missing
    targets = make_targets([*sim.state.phone_ids(), *sorted(made_up)])
    max_attempts = 4

    run = await run_rollout(sim, targets, fast_options(retry=fast_retry(max_attempts=max_attempts)))

    assert_end_state(run, sim, targets)
    assert run.result.status is RolloutStatus.COMPLETED_WITH_FAILURES
    doomed = missing | made_up
    for record in run.result.records:
        if record.phone_id in doomed:
            assert record.state is PhoneState.FAILED, record
            assert record.error_code == NOT_FOUND
            assert record.attempts == max_attempts
        else:
            assert record.state is PhoneState.SUCCEEDED, record
            assert record.attempts == 3
    submissions = sim.state.stats()["submissions_per_phone"]
    assert all(submissions[pid] == max_attempts for pid in doomed)
    assert_one_request_per_phone(sim)


# -- 5: job deadline ------------------------------------------------------------------------------


async def test_jobs_past_their_deadline_fail_with_job_timeout(simulator: SimulatorFactory) -> None:
    """Jobs of 5 s against a 0.2 s deadline: each phone times out twice and fails JOB_TIMEOUT."""
    profile = fast_profile("none", job_duration="fixed:5")
    sim = await start_simulator(simulator, phones=40, profile=profile)
    targets = make_targets(sim.state.phone_ids())
    options = fast_options(retry=fast_retry(max_attempts=2), job_timeout_s=0.2, batch_size=20)

    run = await run_rollout(sim, targets, options)

    assert_end_state(run, sim, targets)
    assert run.result.status is RolloutStatus.COMPLETED_WITH_FAILURES
    assert run.result.counts["failed"] == 40
    for record in run.result.records:
        assert record.error_code == JOB_TIMEOUT_CODE
        assert record.attempts == 2
    assert run.engine.progress.timeouts == 80
    assert all(n == 2 for n in sim.state.stats()["submissions_per_phone"].values())
    assert all(sim.state.properties(t.phone_id) == {} for t in targets), "no job ended yet"


# -- 6: the abort gate ----------------------------------------------------------------------------


async def _abort_run(
    simulator: SimulatorFactory,
    *,
    bad: int,
    good: int,
    waves: list[int | str],
    thresholds: AbortThresholds,
    bad_positions: list[int] | None = None,
) -> tuple[Run, list[PhoneTarget], set[str], SimulatorServer]:
    """A fleet of ``good`` real phones with ``bad`` made-up ones (CPS.0005, never retried)."""
    sim = await start_simulator(simulator, phones=good, profile=fast_profile("none"))
    bad_ids = made_up_phone_ids(bad)
    ids = list(sim.state.phone_ids())
    for position, phone_id in zip(bad_positions or range(bad), bad_ids, strict=True):
        ids.insert(position, phone_id)
    targets = make_targets(ids)
    options = fast_options(
        retry=fast_retry(retry_codes=()), abort=thresholds, waves=waves, batch_size=20
    )
    run = await run_rollout(sim, targets, options)
    assert_end_state(run, sim, targets)
    return run, targets, set(bad_ids), sim


async def test_abort_gate_allows_reaching_max_failures(simulator: SimulatorFactory) -> None:
    """k failures against max_failures=k: reaching the limit is allowed, the rollout completes."""
    k = 5
    run, _, bad, _ = await _abort_run(
        simulator, bad=k, good=100, waves=[k, "100%"], thresholds=AbortThresholds(max_failures=k)
    )
    result = run.result
    assert result.status is RolloutStatus.COMPLETED_WITH_FAILURES, result.reason
    assert result.counts == {
        "total": 105,
        "succeeded": 100,
        "failed": k,
        "cancelled": 0,
        "pending": 0,
    }
    assert {r.phone_id for r in result.records if r.state is PhoneState.FAILED} == bad


async def test_abort_gate_aborts_past_max_failures_and_sends_nothing_more(
    simulator: SimulatorFactory,
) -> None:
    """k failures against max_failures=k-1: aborted, the later wave cancelled and never sent."""
    k = 5
    run, targets, bad, sim = await _abort_run(
        simulator,
        bad=k,
        good=100,
        waves=[k, "100%"],
        thresholds=AbortThresholds(max_failures=k - 1),
    )
    result = run.result
    assert result.status is RolloutStatus.ABORTED
    assert not result.fatal
    assert result.reason
    assert "more than the limit of 4" in result.reason
    assert result.counts == {
        "total": 105,
        "succeeded": 0,
        "failed": k,
        "cancelled": 100,
        "pending": 0,
    }
    for record in result.records:
        if record.phone_id in bad:
            assert record.state is PhoneState.FAILED
            assert record.error_code == NOT_FOUND
        else:
            assert record.state is PhoneState.CANCELLED
            assert record.attempts == 0
    assert set(sim.state.stats()["submissions_per_phone"]) == bad, "a phone was sent after abort"
    assert sim.state.stats()["jobs"]["created"] == 0
    assert len(targets) == 105


async def test_abort_percentage_waits_for_min_executed(simulator: SimulatorFactory) -> None:
    """100 % failures among fewer than ``min_executed`` phones do not abort; the next failure does.

    Waves [3, 1, rest]: wave 0 holds three doomed phones (3 of 3 failed, but min_executed is 4, so
    wave 1 is sent); wave 1 holds a fourth doomed phone, which brings executed to 4 at 100 % > 50 %,
    so the rollout aborts before wave 2 and none of its phones is sent.
    """
    run, _, bad, sim = await _abort_run(
        simulator,
        bad=4,
        good=60,
        waves=[3, 1, "100%"],
        thresholds=AbortThresholds(max_failure_percent=50.0, min_executed=4),
    )
    result = run.result
    assert result.status is RolloutStatus.ABORTED
    assert result.reason
    assert "100.0% of 4 executed" in result.reason
    assert result.counts["failed"] == 4
    assert result.counts["cancelled"] == 60
    assert set(sim.state.stats()["submissions_per_phone"]) == bad


async def test_abort_percentage_is_judged_when_min_executed_is_reached_by_a_success(
    simulator: SimulatorFactory,
) -> None:
    """Three failures, then the first success brings executed to min_executed=4 at 75 % > 50 %.

    ``abort_reason`` says the percentage is judged "once min_executed phones have finished"; the
    phone that completes the quorum here is a success, and the rollout must abort then, not sail on
    at 75 % failures because no further phone happened to fail. Waves [3, 1, rest] with only good
    phones after wave 0 make the moment exact: wave 1's single success is the 4th executed phone.
    """
    run, _, bad, sim = await _abort_run(
        simulator,
        bad=3,
        good=60,
        waves=[3, 1, "100%"],
        thresholds=AbortThresholds(max_failure_percent=50.0, min_executed=4),
    )
    result = run.result
    assert result.status is RolloutStatus.ABORTED, (result.status, result.counts)
    assert result.counts["succeeded"] == 1
    assert result.counts["cancelled"] == 59
    assert len(sim.state.stats()["submissions_per_phone"]) == 4
    assert bad <= set(sim.state.stats()["submissions_per_phone"])


# -- 7: waves ---------------------------------------------------------------------------------------


async def test_waves_keep_their_sizes_and_order(simulator: SimulatorFactory) -> None:
    """[5, "10%", "100%"] over 200 phones gives waves of 5, 20 and 175, each sent only once every
    phone of the wave before is terminal (checked at each intent save, when the engine decides).
    """
    sim = await start_simulator(simulator, phones=200, profile=fast_profile("none"))
    targets = make_targets(sim.state.phone_ids())
    journal = IntentJournal()

    def attach(engine: RolloutEngine) -> None:
        journal.engine = engine

    with capture_logs() as logs:
        run = await run_rollout(
            sim,
            targets,
            fast_options(waves=[5, "10%", "100%"], batch_size=8),
            journal=journal,
            setup=attach,
        )

    assert_end_state(run, sim, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED
    started = [e for e in logs if e["event"] == "wave.started"]
    assert [(e["wave"], e["phones"]) for e in started] == [(0, 5), (1, 20), (2, 175)]
    events = [e["event"] for e in logs if e["event"] in ("wave.started", "wave.completed")]
    assert events == ["wave.started", "wave.completed"] * 2 + ["wave.started"]
    assert journal.violations == []
    expected_waves = [0] * 5 + [1] * 20 + [2] * 175
    assert [r.wave for r in sorted(run.result.records, key=lambda r: r.index)] == expected_waves
    position = {pid: n for n, pid in enumerate(journal.sent_order)}
    first_of = [min(position[t.phone_id] for t in targets[a:b]) for a, b in ((5, 25), (25, 200))]
    last_of = [max(position[t.phone_id] for t in targets[a:b]) for a, b in ((0, 5), (5, 25))]
    assert last_of[0] < first_of[0]
    assert last_of[1] < first_of[1]


# -- 8: bisecting a whole-batch 400 ---------------------------------------------------------------


async def test_whole_batch_400_is_bisected_down_to_the_bad_phone(
    simulator: SimulatorFactory,
) -> None:
    """One oversized update in a batch of 16: the engine splits until that phone fails alone."""
    sim = await start_simulator(simulator, phones=16, profile=fast_profile("none"))
    targets = make_targets(sim.state.phone_ids())
    bad = targets[11]
    oversized = json.dumps({"ro.product.name": "x" * 8000})
    targets[11] = PhoneTarget(
        index=bad.index,
        phone_id=bad.phone_id,
        properties=json.loads(oversized),
        update=PropertyUpdate(phone_id=bad.phone_id, property=oversized),
    )

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


# -- 9: restart_after ----------------------------------------------------------------------------


def _update_and_restart_jobs(sim: SimulatorServer, phone_id: str) -> tuple[list[Job], list[Job]]:
    jobs = [j for j in sim.state.jobs.values() if j.phone.phone_id == phone_id]
    return (
        [j for j in jobs if j.kind is JobKind.PROPERTY],
        [j for j in jobs if j.kind is JobKind.RESTART],
    )


async def test_restart_always_restarts_each_phone_once_after_its_update(
    simulator: SimulatorFactory,
) -> None:
    """With ``restart_after: always`` every phone's restart job starts after its update job ended."""
    sim = await start_simulator(simulator, phones=120, profile=fast_profile("none"))
    targets = make_targets(sim.state.phone_ids())

    run = await run_rollout(sim, targets, fast_options(restart=RestartMode.ALWAYS))

    assert_end_state(run, sim, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED, run.result.reason
    restarts = sim.state.stats()["restarts_per_phone"]
    assert restarts == {t.phone_id: 1 for t in targets}
    for target in targets:
        updates, (restart,) = _update_and_restart_jobs(sim, target.phone_id)
        (update,) = updates
        restart_began_mono = restart.end_mono_s - (restart.end_wall_s - restart.begin_wall_s)
        assert update.end_mono_s <= restart_began_mono + 1e-6, "restarted before the update ended"
    assert_one_request_per_phone(sim)


async def test_restart_when_needed_restarts_only_phones_with_restart_properties(
    simulator: SimulatorFactory,
) -> None:
    """``when_needed``: a phone whose update touches a restart property is restarted, others not."""
    sim = await start_simulator(simulator, phones=80, profile=fast_profile("none"))

    def properties(index: int, phone_id: str) -> dict[str, Any]:
        if index % 2:
            return {"ro.product.name": f"p{index}"}
        return {"ro.product.name": f"p{index}", "com.cph.mainkeys": 0}

    targets = make_targets(sim.state.phone_ids(), properties)

    run = await run_rollout(sim, targets, fast_options(restart=RestartMode.WHEN_NEEDED))

    assert_end_state(run, sim, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED
    restarts = sim.state.stats()["restarts_per_phone"]
    assert restarts == {t.phone_id: 1 for t in targets if t.index % 2 == 0}


# -- 10: interrupt ------------------------------------------------------------------------------


async def test_request_stop_tracks_running_jobs_to_their_end(simulator: SimulatorFactory) -> None:
    """Stop once some phones succeeded: nothing more is sent, what was sent is tracked to its end."""
    sim = await start_simulator(simulator, phones=1000, profile=fast_profile("none"))
    targets = make_targets(sim.state.phone_ids())
    engines: list[RolloutEngine] = []
    stopped_at: list[dict[str, Any]] = []

    def on_progress(snapshot: dict[str, Any]) -> None:
        if not stopped_at and snapshot["succeeded"] > 0:
            stopped_at.append(snapshot)
            engines[0].request_stop("test stop")

    options = fast_options(batch_size=20, submit_rate_per_s=20.0, progress_interval_s=0.02)
    run = await run_rollout(sim, targets, options, on_progress=on_progress, setup=engines.append)

    result = run.result
    assert stopped_at, "the rollout ended before any progress report"
    assert result.status is RolloutStatus.INTERRUPTED, result.counts
    assert result.reason == "test stop"
    states = Counter(str(r.state) for r in result.records)
    assert set(states) <= {"succeeded", "pending"}, states
    assert result.counts["succeeded"] + result.counts["pending"] == 1000
    assert 0 < result.counts["succeeded"] < 1000
    sent = set(sim.state.stats()["submissions_per_phone"])
    succeeded = {r.phone_id for r in result.records if r.state is PhoneState.SUCCEEDED}
    assert sent == succeeded, "a phone that was sent was not tracked to its end"
    for record in result.records:
        if record.state is PhoneState.SUCCEEDED:
            assert sim.state.properties(record.phone_id) == targets[record.index].properties
        else:
            assert record.attempts == 0
            assert record.job_id is None
    # Had the grace period run out, phones would be left "running": the states above say not.


async def test_cancel_aborts_cleanly_and_tracks_what_was_sent(simulator: SimulatorFactory) -> None:
    """``cancel()`` (the daemon's abort) cancels the unsent phones and lets running jobs end.

    The call is made from a task of the test's own (as a daemon request handler would make it),
    woken by the first progress report with a success, so an exception in ``cancel()`` reaches
    the test instead of dying inside the engine's progress loop.
    """
    sim = await start_simulator(simulator, phones=1000, profile=fast_profile("none"))
    targets = make_targets(sim.state.phone_ids())
    some_succeeded = asyncio.Event()
    engines: list[RolloutEngine] = []

    def on_progress(snapshot: dict[str, Any]) -> None:
        if snapshot["succeeded"] > 0:
            some_succeeded.set()

    async def cancel_when_some_succeeded() -> None:
        await some_succeeded.wait()
        engines[0].cancel("cancelled by test")

    options = fast_options(batch_size=20, submit_rate_per_s=20.0, progress_interval_s=0.02)
    with capture_logs() as logs:
        canceller = asyncio.create_task(cancel_when_some_succeeded())
        run = await run_rollout(
            sim, targets, options, on_progress=on_progress, setup=engines.append
        )
        await canceller

    assert_end_state(run, sim, targets)
    result = run.result
    assert result.status is RolloutStatus.ABORTED, result.reason
    assert not result.fatal, result.reason
    assert result.reason == "cancelled by test"
    assert result.counts["pending"] == 0
    assert result.counts["failed"] == 0
    assert 0 < result.counts["succeeded"] < 1000
    sent = set(sim.state.stats()["submissions_per_phone"])
    succeeded = {r.phone_id for r in result.records if r.state is PhoneState.SUCCEEDED}
    assert sent == succeeded
    assert all(r.attempts == 0 for r in result.records if r.state is PhoneState.CANCELLED)
    aborted = [e for e in logs if e["event"] == "rollout.aborted"]
    assert len(aborted) == 1
    assert aborted[0]["reason"] == "cancelled by test"


# -- 11: fatal auth ------------------------------------------------------------------------------


async def test_wrong_token_is_fatal_without_a_retry_storm(simulator: SimulatorFactory) -> None:
    """A refused static token stops the rollout at once: nothing applied, a handful of requests."""
    sim = await start_simulator(
        simulator, phones=200, profile=fast_profile("none"), token=SecretStr("right")
    )
    targets = make_targets(sim.state.phone_ids())
    options = fast_options(batch_size=10, max_submits_in_flight=4)

    with capture_logs() as logs:
        run = await run_rollout(sim, targets, options, token=WRONG_TOKEN)

    result = run.result
    assert result.fatal
    # Nothing was lost: the phones stay open, so the rollout can be resumed once fixed.
    assert result.status is RolloutStatus.INTERRUPTED
    assert result.counts["succeeded"] == 0
    assert result.counts["failed"] == 0
    assert result.counts["pending"] == len(targets)
    stats = sim.state.stats()
    assert stats["jobs"]["created"] == 0
    assert stats["requests_total"] <= options.max_submits_in_flight, stats["requests"]
    assert stats["auth_failures"] == stats["requests_total"]
    assert all(sim.state.properties(t.phone_id) == {} for t in targets)
    assert any(e["event"] == "api.error" and e.get("fatal") for e in logs)
    assert WRONG_TOKEN not in repr(logs), "the token leaked into a log event"
