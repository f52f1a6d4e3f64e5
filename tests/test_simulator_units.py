"""The simulator's pure parts: profiles and overrides, duration draws, token buckets, fleet, config."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pydantic import SecretStr, ValidationError

from orchestrator.clock import FakeClock
from orchestrator.errors import ConfigError
from orchestrator.simulator import (
    PROFILES,
    DurationDist,
    FaultProfile,
    SimulatorConfig,
    apply_overrides,
    parse_overrides,
)
from orchestrator.simulator.fleet import FleetShape, generate_fleet
from orchestrator.simulator.profiles import resolve_profile
from orchestrator.simulator.ratelimit import TokenBucket


def test_profiles_default_to_no_faults_and_grow_worse() -> None:
    assert FaultProfile().transient_error_rate == 0.0
    assert PROFILES["none"].model_dump(exclude={"name"}) == FaultProfile().model_dump(
        exclude={"name"}
    )
    flaky, hostile = PROFILES["flaky"], PROFILES["hostile"]
    for knob in (
        "transient_error_rate",
        "drop_after_apply_rate",
        "late_phone_rate",
        "job_fail_rate",
    ):
        assert 0 < getattr(flaky, knob) < getattr(hostile, knob)
    for knob in ("extra_throttle_rate", "latency_spike_rate", "missing_phone_rate", "busy_rate"):
        assert getattr(flaky, knob) == 0 < getattr(hostile, knob)
    assert hostile.invalid_property_phone_rate > 0


def test_overrides_from_strings_are_validated() -> None:
    updates = parse_overrides(["job_fail_rate=0.1", "job_duration=lognormal:2:0.5:30", "name=mine"])
    assert updates == {"job_fail_rate": 0.1, "job_duration": "lognormal:2:0.5:30", "name": "mine"}
    profile = apply_overrides(PROFILES["flaky"], updates)
    assert profile.job_fail_rate == 0.1
    assert profile.transient_error_rate == 0.03
    assert profile.job_duration == DurationDist(kind="lognormal", median_s=2, sigma=0.5, max_s=30)
    assert apply_overrides(PROFILES["none"], ["busy_rate=1"]).busy_rate == 1.0
    with pytest.raises(ValueError, match="unknown fault knob"):
        parse_overrides(["no_such_knob=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["job_fail_rate"])
    with pytest.raises(ValidationError):
        apply_overrides(PROFILES["none"], ["job_fail_rate=1.5"])
    with pytest.raises(ValidationError):
        apply_overrides(PROFILES["none"], ["job_duration=gamma:1"])


def test_resolve_profile_for_the_command_line() -> None:
    profile = resolve_profile("flaky", ["job_fail_rate=0.5"])
    assert profile.job_fail_rate == 0.5
    assert profile.name == "flaky"
    assert resolve_profile("none") == PROFILES["none"]
    for name, overrides in (("stormy", []), ("none", ["job_fail_rate=2"]), ("none", ["nope=1"])):
        with pytest.raises(ConfigError):
            resolve_profile(name, overrides)


def test_duration_distributions() -> None:
    rng = random.Random(0)
    assert DurationDist.model_validate("fixed:0.25").sample(rng) == 0.25
    assert DurationDist.model_validate(1.5).sample(rng) == 1.5
    uniform = DurationDist.model_validate("uniform:1:3")
    assert all(1.0 <= uniform.sample(rng) <= 3.0 for _ in range(100))
    capped = DurationDist.model_validate("lognormal:2:1:4")
    draws = [capped.sample(rng) for _ in range(500)]
    assert max(draws) == 4.0
    assert min(draws) > 0
    assert 1.0 < sorted(draws)[250] < 3.0
    with pytest.raises(ValidationError):
        DurationDist.model_validate("uniform:3:1")


def test_token_bucket_on_a_fake_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, clock)
    assert [bucket.try_acquire() for _ in range(2)] == [0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.try_acquire() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.try_acquire() == 0.0
    clock.advance(100.0)
    assert [bucket.try_acquire() for _ in range(3)][-1] > 0
    slow = TokenBucket(0.5, clock)
    assert slow.burst == 1.0
    assert slow.try_acquire() == 0.0
    assert slow.try_acquire() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0.0, clock)


def test_fleet_shape() -> None:
    fleet = generate_fleet(FleetShape(size=3000, seed=1), PROFILES["none"], now_wall_s=1.7e9)
    phones = list(fleet.by_id.values())
    statuses = Counter(p.status for p in phones)
    assert statuses[2] > 2700
    assert 0 < statuses[-7] < 150
    assert 0 < statuses[8] < 200
    server_sizes = Counter(p.server_id for p in phones).values()
    assert all(30 <= size <= 60 for size in list(server_sizes)[:-1])
    assert phones[123].phone_name == "phone-000123"
    assert [p.phone_id for p in fleet.listed] == [p.phone_id for p in reversed(phones)]
    assert all(
        a.create_wall_s > b.create_wall_s
        for a, b in zip(fleet.listed, fleet.listed[1:], strict=False)
    )


def test_fleet_faults_are_drawn_per_phone() -> None:
    hostile = generate_fleet(FleetShape(size=2000, seed=1), PROFILES["hostile"], now_wall_s=0.0)
    missing = [p for p in hostile.by_id.values() if not p.exists]
    assert 0 < len(missing) < 60
    assert len(hostile.listed) == 2000 - len(missing)
    assert any(p.late_submissions_left == 3 for p in hostile.by_id.values())
    assert any(p.rejects_properties for p in hostile.by_id.values())


def test_config_accepts_profile_names_and_credential_shapes() -> None:
    config = SimulatorConfig(profile="flaky", iam_users={"alice": ("pw", "acme")})
    assert config.profile is PROFILES["flaky"]
    assert config.iam_users["alice"].domain == "acme"
    assert "pw" not in repr(config)
    assert not config.open_access
    assert SimulatorConfig().open_access
    with pytest.raises(ValidationError, match="unknown profile"):
        SimulatorConfig(profile="stormy")
    with pytest.raises(ValidationError, match="together"):
        SimulatorConfig(ak="AK")
    assert "secret" not in repr(SimulatorConfig(ak="AK", sk=SecretStr("secret")))
