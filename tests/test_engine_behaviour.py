"""The rollout engine's behaviour, on the simulated cloud in process and a fake clock.

Each test runs a rollout to its end (or stops, pauses or cancels it) against
:class:`~orchestrator.testing.FakeCphApi` with production durations (jobs of 1-3 s, bake of a
minute, deadlines of ten minutes) that cost no real time, and then checks two accounts that must
agree: the engine's report and what the "cloud" recorded. Runs are seeded and deterministic, so
times are asserted exactly where the engine promises them (a bake, a grace period, a deadline).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from orchestrator.engine.options import RestartMode
from orchestrator.engine.policy import JOB_TIMEOUT_CODE, AbortThresholds
from orchestrator.engine.polling import DEFAULT_MAX_POLL_INTERVAL_S
from orchestrator.engine.runner import RolloutEngine, RolloutStatus
from orchestrator.engine.states import PhoneState, Stage
from orchestrator.plan import PhoneTarget
from orchestrator.simulator.state import Job, JobKind
from orchestrator.testing import FakeCphApi
from tests.e2e_support import (
    IntentJournal,
    Run,
    assert_end_state,
    assert_one_request_per_phone,
    made_up_phone_ids,
    make_targets,
    oversize,
)
from tests.fake_support import (
    fake_clock,
    fake_cloud,
    options,
    profile,
    retry,
    rollout,
    unpause,
)

NOT_FOUND = "CPS.0005"
INVALID_PARAMETER = "CPS.0004"
WRONG_TOKEN = "wrong-behaviour-token-7f3a"


def _sent_phones(api: FakeCphApi) -> set[str]:
    return set(api.stats()["submissions_per_phone"])


# -- waves and bake --------------------------------------------------------------------------------


async def test_waves_keep_their_sizes_and_order_and_bake_between() -> None:
    """[5, "10%", "100%"] over 200 phones gives waves of 5, 20 and 175, each sent only once every
    phone of the wave before is terminal (checked at each intent save, when the engine decides),
    and exactly ``bake_s`` after the last of them ended."""
    api = fake_cloud(phones=200)
    targets = make_targets(api.state.phone_ids())
    journal = IntentJournal(clock=fake_clock(api))
    bake_s = 60.0

    def attach(engine: RolloutEngine) -> None:
        journal.engine = engine

    with capture_logs() as logs:
        run = await rollout(
            api,
            targets,
            options(waves=[5, "10%", "100%"], batch_size=8, bake_s=bake_s),
            journal=journal,
            setup=attach,
        )

    assert_end_state(run, api, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED
    started = [e for e in logs if e["event"] == "wave.started"]
    assert [(e["wave"], e["phones"]) for e in started] == [(0, 5), (1, 20), (2, 175)]
    events = [e["event"] for e in logs if e["event"] in ("wave.started", "wave.completed")]
    assert events == ["wave.started", "wave.completed"] * 2 + ["wave.started"]
    assert all(e["bake_s"] == bake_s for e in logs if e["event"] == "wave.completed")
    assert journal.violations == []
    expected_waves = [0] * 5 + [1] * 20 + [2] * 175
    assert [r.wave for r in sorted(run.result.records, key=lambda r: r.index)] == expected_waves
    position = {pid: n for n, pid in enumerate(journal.sent_order)}
    first_of = [min(position[t.phone_id] for t in targets[a:b]) for a, b in ((5, 25), (25, 200))]
    last_of = [max(position[t.phone_id] for t in targets[a:b]) for a, b in ((0, 5), (5, 25))]
    assert last_of[0] < first_of[0]
    assert last_of[1] < first_of[1]
    sent_at = {pid: t for t, pid in reversed(journal.sends)}  # first send of each phone
    for earlier, later in (((0, 5), (5, 25)), ((5, 25), (25, 200))):
        wave_ended = max(journal.ended_at[t.phone_id] for t in targets[slice(*earlier)])
        next_sent = min(sent_at[t.phone_id] for t in targets[slice(*later)])
        assert next_sent == pytest.approx(wave_ended + bake_s), (wave_ended, next_sent)


async def test_a_stop_during_the_bake_sends_nothing_more() -> None:
    """A stop requested while a wave bakes ends the run at once: the next wave is never sent."""
    api = fake_cloud(phones=50)
    targets = make_targets(api.state.phone_ids())
    clock = fake_clock(api)

    async def stop_while_baking(engine: RolloutEngine) -> None:
        while engine.table.terminal_count < 10:
            await clock.sleep(1.0)
        await clock.sleep(30.0)  # halfway through the bake
        engine.request_stop("stopped while baking")

    run = await rollout(
        api, targets, options(waves=[10, "100%"], bake_s=60.0), during=stop_while_baking
    )

    result = run.result
    assert result.status is RolloutStatus.INTERRUPTED
    assert result.reason == "stopped while baking"
    assert result.counts == {
        "total": 50,
        "succeeded": 10,
        "failed": 0,
        "cancelled": 0,
        "pending": 40,
    }
    assert _sent_phones(api) == {t.phone_id for t in targets[:10]}


# -- the abort gate ----------------------------------------------------------------------------------


async def _abort_run(
    *,
    bad: int,
    good: int,
    waves: list[int | str],
    thresholds: AbortThresholds,
) -> tuple[Run, list[PhoneTarget], set[str], FakeCphApi]:
    """A fleet of ``good`` real phones after ``bad`` made-up ones (CPS.0005, never retried)."""
    api = fake_cloud(phones=good)
    bad_ids = made_up_phone_ids(bad)
    targets = make_targets([*bad_ids, *api.state.phone_ids()])
    opts = options(retry=retry(retry_codes=()), abort=thresholds, waves=waves, batch_size=20)
    run = await rollout(api, targets, opts)
    assert_end_state(run, api, targets)
    return run, targets, set(bad_ids), api


async def test_abort_gate_allows_reaching_max_failures() -> None:
    """k failures against max_failures=k: reaching the limit is allowed, the rollout completes."""
    k = 5
    run, _, bad, _ = await _abort_run(
        bad=k, good=100, waves=[k, "100%"], thresholds=AbortThresholds(max_failures=k)
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


async def test_abort_gate_aborts_past_max_failures_and_sends_nothing_more() -> None:
    """k failures against max_failures=k-1: aborted, the later wave cancelled and never sent."""
    k = 5
    run, targets, bad, api = await _abort_run(
        bad=k, good=100, waves=[k, "100%"], thresholds=AbortThresholds(max_failures=k - 1)
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
    assert _sent_phones(api) == bad, "a phone was sent after abort"
    assert api.stats()["jobs"]["created"] == 0
    assert len(targets) == 105


async def test_abort_percentage_waits_for_min_executed() -> None:
    """100 % failures among fewer than ``min_executed`` phones do not abort; the next failure does.

    Waves [3, 1, rest]: wave 0 holds three doomed phones (3 of 3 failed, but min_executed is 4, so
    wave 1 is sent); wave 1 holds a fourth doomed phone, which brings executed to 4 at 100 % > 50 %,
    so the rollout aborts before wave 2 and none of its phones is sent.
    """
    run, _, bad, api = await _abort_run(
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
    assert _sent_phones(api) == bad


async def test_abort_percentage_is_judged_when_min_executed_is_reached_by_a_success() -> None:
    """Three failures, then the first success brings executed to min_executed=4 at 75 % > 50 %.

    ``abort_reason`` says the percentage is judged "once min_executed phones have finished"; the
    phone that completes the quorum here is a success, and the rollout must abort then, not sail on
    at 75 % failures because no further phone happened to fail. Waves [3, 1, rest] with only good
    phones after wave 0 make the moment exact: wave 1's single success is the 4th executed phone.
    """
    run, _, bad, api = await _abort_run(
        bad=3,
        good=60,
        waves=[3, 1, "100%"],
        thresholds=AbortThresholds(max_failure_percent=50.0, min_executed=4),
    )
    result = run.result
    assert result.status is RolloutStatus.ABORTED, (result.status, result.counts)
    assert result.counts["succeeded"] == 1
    assert result.counts["cancelled"] == 59
    assert len(_sent_phones(api)) == 4
    assert bad <= _sent_phones(api)


# -- job deadline ----------------------------------------------------------------------------------


async def test_jobs_past_their_deadline_fail_with_job_timeout() -> None:
    """Jobs stuck for an hour against a 600 s deadline: each phone times out twice and fails
    JOB_TIMEOUT, each time within one poll interval of its deadline, never before it."""
    api = fake_cloud(phones=40, profile=profile(job_duration="fixed:3600"))
    targets = make_targets(api.state.phone_ids())
    job_timeout_s = 600.0
    opts = options(retry=retry(max_attempts=2), job_timeout_s=job_timeout_s, batch_size=20)

    run = await rollout(api, targets, opts)

    assert_end_state(run, api, targets)
    assert run.result.status is RolloutStatus.COMPLETED_WITH_FAILURES
    assert run.result.counts["failed"] == 40
    for record in run.result.records:
        assert record.error_code == JOB_TIMEOUT_CODE
        assert record.attempts == 2
    assert run.engine.progress.timeouts == 80
    assert all(n == 2 for n in api.stats()["submissions_per_phone"].values())
    assert all(api.state.properties(t.phone_id) == {} for t in targets), "no job ended yet"
    # two deadlines back to back, each noticed within a poll interval; the retry's backoff
    # (first attempt: at most 1 s) and the submit pacing add at most a few seconds
    elapsed = run.result.elapsed_s
    assert 2 * job_timeout_s <= elapsed <= 2 * (job_timeout_s + DEFAULT_MAX_POLL_INTERVAL_S) + 5


# -- stopping, cancelling, pausing -------------------------------------------------------------------


async def test_request_stop_tracks_running_jobs_to_their_end() -> None:
    """Stop once some phones succeeded: nothing more is sent, what was sent is tracked to its end."""
    api = fake_cloud(phones=1000)
    targets = make_targets(api.state.phone_ids())
    engines: list[RolloutEngine] = []
    stopped_at: list[dict[str, Any]] = []

    def on_progress(snapshot: dict[str, Any]) -> None:
        if not stopped_at and snapshot["succeeded"] > 0:
            stopped_at.append(snapshot)
            engines[0].request_stop("test stop")

    opts = options(batch_size=20, submit_rate_per_s=1.0)
    run = await rollout(api, targets, opts, on_progress=on_progress, setup=engines.append)

    result = run.result
    assert stopped_at, "the rollout ended before any progress report"
    assert result.status is RolloutStatus.INTERRUPTED, result.counts
    assert result.reason == "test stop"
    states = Counter(str(r.state) for r in result.records)
    assert set(states) <= {"succeeded", "pending"}, states
    assert result.counts["succeeded"] + result.counts["pending"] == 1000
    assert 0 < result.counts["succeeded"] < 1000
    sent = _sent_phones(api)
    succeeded = {r.phone_id for r in result.records if r.state is PhoneState.SUCCEEDED}
    assert sent == succeeded, "a phone that was sent was not tracked to its end"
    for record in result.records:
        if record.state is PhoneState.SUCCEEDED:
            assert api.state.properties(record.phone_id) == targets[record.index].properties
        else:
            assert record.attempts == 0
            assert record.job_id is None
    # the run ended when the last job in flight did, well within the grace period
    assert result.elapsed_s < stopped_at[0]["elapsed_s"] + opts.stop_grace_s


async def test_the_grace_period_ends_a_stopped_run_with_jobs_still_running() -> None:
    """Jobs of five minutes, 30 s of grace: the run ends exactly when the grace runs out, the
    phones in flight stay open (resumable, with their jobs), and nothing more was sent."""
    api = fake_cloud(phones=100, profile=profile(job_duration="fixed:300"))
    targets = make_targets(api.state.phone_ids())
    clock = fake_clock(api)
    stop_at_s = 10.0

    async def stop_soon(engine: RolloutEngine) -> None:
        await clock.sleep(stop_at_s)
        engine.request_stop("maintenance")

    opts = options(batch_size=10, submit_rate_per_s=1.0, stop_grace_s=30.0)
    run = await rollout(api, targets, opts, during=stop_soon)

    result = run.result
    assert result.status is RolloutStatus.INTERRUPTED
    assert result.reason == "maintenance"
    assert result.elapsed_s == pytest.approx(stop_at_s + opts.stop_grace_s)
    running = [r for r in result.records if r.state is PhoneState.RUNNING]
    assert running, "some jobs should have been in flight"
    assert all(r.job_id and r.request_id for r in running)
    assert {r.phone_id for r in running} == _sent_phones(api)
    assert result.counts["pending"] == 100
    assert all(r.attempts == 0 for r in result.records if r.state is PhoneState.PENDING)
    assert api.stats()["jobs"]["succeeded"] == 0


async def test_cancel_aborts_cleanly_and_tracks_what_was_sent() -> None:
    """``cancel()`` (the daemon's abort) cancels the unsent phones and lets running jobs end.

    The call is made from a task of the test's own (as a daemon request handler would make it),
    woken by the first progress report with a success, so an exception in ``cancel()`` reaches
    the test instead of dying inside the engine's progress loop.
    """
    api = fake_cloud(phones=1000)
    targets = make_targets(api.state.phone_ids())
    some_succeeded = asyncio.Event()

    def on_progress(snapshot: dict[str, Any]) -> None:
        if snapshot["succeeded"] > 0:
            some_succeeded.set()

    async def cancel_when_some_succeeded(engine: RolloutEngine) -> None:
        await some_succeeded.wait()
        engine.cancel("cancelled by test")

    opts = options(batch_size=20, submit_rate_per_s=1.0)
    with capture_logs() as logs:
        run = await rollout(
            api, targets, opts, on_progress=on_progress, during=cancel_when_some_succeeded
        )

    assert_end_state(run, api, targets)
    result = run.result
    assert result.status is RolloutStatus.ABORTED, result.reason
    assert not result.fatal, result.reason
    assert result.reason == "cancelled by test"
    assert result.counts["pending"] == 0
    assert result.counts["failed"] == 0
    assert 0 < result.counts["succeeded"] < 1000
    succeeded = {r.phone_id for r in result.records if r.state is PhoneState.SUCCEEDED}
    assert _sent_phones(api) == succeeded
    assert all(r.attempts == 0 for r in result.records if r.state is PhoneState.CANCELLED)
    aborted = [e for e in logs if e["event"] == "rollout.aborted"]
    assert len(aborted) == 1
    assert aborted[0]["reason"] == "cancelled by test"


async def test_nothing_is_sent_while_paused_and_unpausing_finishes() -> None:
    """Paused for ten minutes: jobs in flight end, no request is sent, then the rollout finishes."""
    api = fake_cloud(phones=300)
    targets = make_targets(api.state.phone_ids())
    clock = fake_clock(api)
    journal = IntentJournal(clock=clock)
    pause_at_s, paused_for_s = 5.0, 600.0
    seen: dict[str, Any] = {}

    async def pause_then_unpause(engine: RolloutEngine) -> None:
        await clock.sleep(pause_at_s)
        engine.pause()
        assert engine.paused
        await clock.sleep(60.0)  # the last batches sent before the pause have ended
        seen["drained"] = engine.snapshot()
        seen["requests"] = dict(api.stats()["requests"])
        await clock.sleep(paused_for_s - 60.0)
        seen["after"] = engine.snapshot()
        seen["requests_after"] = dict(api.stats()["requests"])
        unpause(engine)
        assert not engine.paused

    def attach(engine: RolloutEngine) -> None:
        journal.engine = engine

    opts = options(batch_size=10, submit_rate_per_s=1.0)
    run = await rollout(
        api, targets, opts, journal=journal, setup=attach, during=pause_then_unpause
    )

    assert_end_state(run, api, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED
    drained = seen["drained"]
    assert drained["running"] == drained["submitting"] == 0
    assert 0 < drained["succeeded"] < 300
    assert drained["pending"] == 300 - drained["succeeded"]
    send_times = sorted({t for t, _ in journal.sends})
    assert not [t for t in send_times if pause_at_s < t < pause_at_s + paused_for_s]
    assert max(send_times) >= pause_at_s + paused_for_s, "nothing was sent after the unpause"
    submits = seen["requests_after"].get("UpdateCloudPhoneProperty")
    assert submits == seen["requests"].get("UpdateCloudPhoneProperty")
    assert seen["after"]["succeeded"] == drained["succeeded"]
    assert run.result.elapsed_s > pause_at_s + paused_for_s


# -- throttling and polling ------------------------------------------------------------------------


async def test_submit_rate_adapts_to_a_server_limit_below_the_configured_rate() -> None:
    """Server 10 submits/s, engine configured for 40/s: the rollout completes and no phone fails,
    and the adaptive rate ends near the server's limit S.

    The server sends no ``Retry-After`` here, so the engine's own AIMD rule is what paces it. The
    band, with S = 10/s: a throttled batch is resent at once, so while the rate stays above S the
    resends keep drawing 429s and each one sent after the last cut cuts the rate by 0.7. The rate
    thus cannot stay above S/0.7 ≈ 1.43·S while batches remain, and regrowth (5 % a second of the
    level cut from) adds a little: below 1.6·S. Below S a request fits the server's bucket, so a
    cut starts from about S, plus one more for a request sent just after a cut into a bucket still
    drained by the older, faster rate: at least 0.7·0.7·S ≈ 0.49·S. Hence 0.4·S … 1.6·S.
    """
    server_rate = 10.0
    api = fake_cloud(
        phones=3000, profile=profile(retry_after_fraction=0.0), submit_rate_per_s=server_rate
    )
    targets = make_targets(api.state.phone_ids())
    opts = options(batch_size=10, submit_rate_per_s=40.0, max_submits_in_flight=8)

    run = await rollout(api, targets, opts)

    assert_end_state(run, api, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED, run.result.reason
    assert run.result.counts["failed"] == 0
    stats = api.stats()
    assert stats["throttled"].get("submit", 0) > 0
    assert run.result.api_calls["throttled"] > 0
    assert all(r.attempts == 1 for r in run.result.records), "a throttled send cost an attempt"
    final_rate = run.engine._submit.rate.rate_per_s
    assert 0.4 * server_rate <= final_rate <= 1.6 * server_rate, final_rate
    # the whole rollout went through at close to the server's limit, not far below it
    accepted_batches = stats["requests"]["UpdateCloudPhoneProperty"] - stats["throttled"]["submit"]
    assert accepted_batches == 300
    assert run.result.elapsed_s <= 1.5 * accepted_batches / server_rate
    assert stats["throttled"]["submit"] < accepted_batches
    assert_one_request_per_phone(api)


async def test_poll_timing_learns_job_durations_not_its_own_poll_delays() -> None:
    """Jobs last 50-200 ms; after 120 batches the engine's estimate of how long they take must
    still be far below its 0.5 s minimum poll interval.

    The engine learns ``now - submitted_at`` at the poll that first sees a job finished, which is
    at least the poll delay it chose, and then sets the next first-poll delay to that quantile
    + 0.25 s: a ratchet that grows without bound however short the jobs are. The first poll comes
    early here (50 ms), so that what the engine learns hangs on its own poll times: with the
    default 2 s the cloud's whole-second timestamps alone pin the estimate at 0.5 s.
    """
    api = fake_cloud(phones=1200, profile=profile(job_duration="uniform:0.05:0.2"))
    targets = make_targets(api.state.phone_ids())
    opts = options(batch_size=10, submit_rate_per_s=60.0, first_poll_s=0.05)

    run = await rollout(api, targets, opts)

    assert_end_state(run, api, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED
    longest_s = max(j.end_wall_s - j.begin_wall_s for j in api.state.jobs.values())
    assert longest_s <= 0.2 + 1e-9
    learnt_median_s = run.engine._timing.estimator.quantile(0.5)
    assert learnt_median_s is not None
    assert learnt_median_s <= 0.4, (
        f"jobs of at most {longest_s:.2f} s are believed to take {learnt_median_s:.2f} s; "
        f"first poll now {run.engine._timing.first_delay_s():.2f} s after submit"
    )


async def test_poll_timing_learns_production_job_durations() -> None:
    """Jobs of 1-3 s (median 2 s): the learnt median stays within half a second of the truth."""
    api = fake_cloud(phones=2000)
    targets = make_targets(api.state.phone_ids())

    run = await rollout(api, targets, options(batch_size=10, submit_rate_per_s=20.0))

    assert run.result.status is RolloutStatus.SUCCEEDED
    learnt_median_s = run.engine._timing.estimator.quantile(0.5)
    assert learnt_median_s is not None
    assert 1.5 <= learnt_median_s <= 2.5, learnt_median_s
    assert run.engine._timing.first_delay_s(10) <= 3.0 + 1.0 + 0.25


async def test_a_full_page_of_a_requests_jobs_needs_no_second_page() -> None:
    """ListJobs gives no ``count`` by default; a page of exactly 100 jobs may or may not have a
    next one. The engine knows how many jobs each request was given, so one call per poll does:
    jobs that end within the first-poll delay are all found by the first poll of each
    100-phone request."""
    api = fake_cloud(phones=500, profile=profile(job_duration="fixed:1"))
    targets = make_targets(api.state.phone_ids())

    run = await rollout(api, targets, options(batch_size=100, query_rate_per_s=1000.0))

    assert_end_state(run, api, targets)
    assert not api.config.list_jobs_count
    assert api.stats()["requests"]["ListJobs"] == 5
    assert api.calls == {"submit.ok": 5, "query.ok": 5}


# -- CPS.0005 -------------------------------------------------------------------------------------


async def test_late_phones_heal_and_missing_phones_fail_after_max_attempts() -> None:
    """Phones answering CPS.0005 for their first two submissions succeed on the third; phones that
    never exist (in the fleet, or made up) fail with CPS.0005 once their attempts are spent.
    """
    api = fake_cloud(
        phones=300,
        profile=profile(late_phone_rate=1.0, late_phone_submissions=2, missing_phone_rate=0.1),
    )
    missing = set(api.state.missing_phone_ids())
    made_up = set(made_up_phone_ids(5))
    assert missing
    targets = make_targets([*api.state.phone_ids(), *sorted(made_up)])
    max_attempts = 4

    run = await rollout(api, targets, options(retry=retry(max_attempts=max_attempts)))

    assert_end_state(run, api, targets)
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
    submissions = api.stats()["submissions_per_phone"]
    assert all(submissions[pid] == max_attempts for pid in doomed)
    assert all(submissions[pid] == 3 for pid in set(api.state.phone_ids()) - doomed)
    assert_one_request_per_phone(api)


# -- bisecting a whole-batch 400 ---------------------------------------------------------------------


async def test_whole_batch_400_is_bisected_down_to_the_bad_phone() -> None:
    """One oversized update in a batch of 16: the engine splits until that phone fails alone."""
    api = fake_cloud(phones=16)
    targets = make_targets(api.state.phone_ids())
    bad = oversize(targets, 11)

    run = await rollout(api, targets, options(batch_size=16))

    assert_end_state(run, api, targets)
    result = run.result
    assert result.status is RolloutStatus.COMPLETED_WITH_FAILURES, result.reason
    assert not result.fatal
    records = run.by_id()
    assert records[bad.phone_id].state is PhoneState.FAILED
    assert records[bad.phone_id].error_code == INVALID_PARAMETER
    assert records[bad.phone_id].attempts == 1
    assert result.counts["succeeded"] == 15
    assert run.engine.progress.splits == 4
    stats = api.stats()
    kinds = Counter(v["kind"] for v in stats["protocol_violations"])
    assert set(kinds) == {"invalid_property"}
    assert kinds["invalid_property"] == 5, "16 → 8 → 4 → 2 → 1 holds the bad phone five times"
    assert stats["submissions_per_phone"].get(bad.phone_id, 0) == 0, "400s create no submissions"
    assert stats["max_concurrent_requests_per_phone"] == 1


# -- restart stages --------------------------------------------------------------------------------


def _update_and_restart_jobs(api: FakeCphApi, phone_id: str) -> tuple[list[Job], list[Job]]:
    jobs = [j for j in api.state.jobs.values() if j.phone.phone_id == phone_id]
    return (
        [j for j in jobs if j.kind is JobKind.PROPERTY],
        [j for j in jobs if j.kind is JobKind.RESTART],
    )


async def test_restart_always_restarts_each_phone_once_after_its_update() -> None:
    """With ``restart_after: always`` every phone's restart job starts after its update job ended."""
    api = fake_cloud(phones=120, profile=profile(restart_duration="uniform:20:60"))
    targets = make_targets(api.state.phone_ids())

    run = await rollout(api, targets, options(restart=RestartMode.ALWAYS))

    assert_end_state(run, api, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED, run.result.reason
    assert api.stats()["restarts_per_phone"] == {t.phone_id: 1 for t in targets}
    for target in targets:
        updates, (restart,) = _update_and_restart_jobs(api, target.phone_id)
        (update,) = updates
        restart_began_mono = restart.end_mono_s - (restart.end_wall_s - restart.begin_wall_s)
        assert update.end_mono_s <= restart_began_mono + 1e-6, "restarted before the update ended"
    assert all(r.stage is Stage.RESTART for r in run.result.records)
    assert_one_request_per_phone(api)


async def test_restart_when_needed_restarts_only_phones_with_restart_properties() -> None:
    """``when_needed``: a phone whose update touches a restart property is restarted, others not."""
    api = fake_cloud(phones=80)

    def properties(index: int, phone_id: str) -> dict[str, Any]:
        if index % 2:
            return {"ro.product.name": f"p{index}"}
        return {"ro.product.name": f"p{index}", "com.cph.mainkeys": 0}

    targets = make_targets(api.state.phone_ids(), properties)

    run = await rollout(api, targets, options(restart=RestartMode.WHEN_NEEDED))

    assert_end_state(run, api, targets)
    assert run.result.status is RolloutStatus.SUCCEEDED
    restarts = api.stats()["restarts_per_phone"]
    assert restarts == {t.phone_id: 1 for t in targets if t.index % 2 == 0}


# -- fatal auth ------------------------------------------------------------------------------------


async def test_wrong_token_is_fatal_without_a_retry_storm() -> None:
    """A refused static token stops the rollout at once: nothing applied, a handful of requests."""
    api = fake_cloud(phones=200, token=SecretStr("right"), presented_token=WRONG_TOKEN)
    targets = make_targets(api.state.phone_ids())
    opts = options(batch_size=10, max_submits_in_flight=4)

    with capture_logs() as logs:
        run = await rollout(api, targets, opts)

    result = run.result
    assert result.fatal
    # Nothing was lost: the phones stay open, so the rollout can be resumed once fixed.
    assert result.status is RolloutStatus.INTERRUPTED
    assert result.counts["succeeded"] == 0
    assert result.counts["failed"] == 0
    assert result.counts["pending"] == len(targets)
    stats = api.stats()
    assert stats["jobs"]["created"] == 0
    assert stats["requests_total"] <= opts.max_submits_in_flight, stats["requests"]
    assert stats["auth_failures"] == stats["requests_total"]
    assert all(api.state.properties(t.phone_id) == {} for t in targets)
    assert any(e["event"] == "api.error" and e.get("fatal") for e in logs)
    assert WRONG_TOKEN not in repr(logs), "the token leaked into a log event"
    assert result.elapsed_s < 1.0, "a fatal answer must end the run at once"
