"""The plan models on their own: policy ranges, waves, abort thresholds, data-only plans."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.plan import (
    BUSY_ERROR_CODE,
    DEFAULT_RETRY_CODES,
    AbortPolicy,
    Plan,
    PlanError,
    RestartAfter,
    load_plan_data,
    needs_restart,
    wave_sizes,
)
from orchestrator.plan.model import PHONE_ID_RULE

PHONE = "a7f3a1c5258347d6b6f1def79e11f2bc"


def plan_data(**policy: Any) -> dict[str, Any]:
    return {"name": "p", "fleet": {"phones": [PHONE]}, "policy": policy}


def policy_error(**policy: Any) -> str:
    with pytest.raises(PlanError) as caught:
        load_plan_data(plan_data(**policy), source="<test>")
    return str(caught.value)


def test_defaults() -> None:
    policy = Plan.model_validate(plan_data()).policy
    assert policy.batch_size is None
    assert policy.waves == ("100%",)
    assert policy.bake_s == 0
    assert policy.max_attempts == 5
    assert policy.retry_codes == DEFAULT_RETRY_CODES
    assert policy.restart_after is RestartAfter.NEVER
    assert policy.abort == AbortPolicy()
    assert not policy.strict_properties


def test_default_retry_codes_include_the_busy_placeholder() -> None:
    assert {"CPS.0005", "CPS.0003", "CPS.0022", "CPS.1027", BUSY_ERROR_CODE} == DEFAULT_RETRY_CODES
    assert BUSY_ERROR_CODE == "CPS.0032"


def test_plan_is_frozen() -> None:
    plan = Plan.model_validate(plan_data())
    with pytest.raises(ValidationError):
        plan.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            {"waves": [10, "10 %"]},
            'policy.waves[1]: "10 %" is not a count or a percentage like "10%"',
        ),
        ({"waves": [0]}, "policy.waves[0]: 0 is not a wave size: a count must be at least 1"),
        ({"waves": ["0%"]}, 'policy.waves[0]: "0%" is not a percentage in (0%, 100%]'),
        ({"waves": ["101%"]}, 'policy.waves[0]: "101%" is not a percentage in (0%, 100%]'),
        ({"waves": [True]}, "policy.waves[0]: true is not a count"),
        ({"waves": []}, "policy.waves: []: "),
        ({"batch_size": 0}, "policy.batch_size: 0: Input should be greater than or equal to 1"),
        (
            {"batch_size": 1001},
            "policy.batch_size: 1001: Input should be less than or equal to 1000",
        ),
        ({"batch_size": True}, "policy.batch_size: true: Input should be a valid integer"),
        ({"bake_s": -1}, "policy.bake_s: -1: Input should be greater than or equal to 0"),
        ({"bake_s": "60"}, 'policy.bake_s: "60": Input should be a valid number'),
        ({"max_attempts": 0}, "policy.max_attempts: 0: Input should be greater than or equal to 1"),
        ({"job_timeout_s": 0}, "policy.job_timeout_s: 0: Input should be greater than 0"),
        ({"retry_codes": ["CPS0005"]}, 'policy.retry_codes[0]: "CPS0005" is not an error code'),
        (
            {"restart_after": "sometimes"},
            "policy.restart_after: \"sometimes\": Input should be 'never'",
        ),
        (
            {"abort": {"max_failure_percent": 0}},
            "policy.abort.max_failure_percent: 0: Input should be greater than 0",
        ),
        (
            {"abort": {"max_failure_percent": 101}},
            "policy.abort.max_failure_percent: 101: Input should be less",
        ),
        (
            {"abort": {"max_failures": -1}},
            "policy.abort.max_failures: -1: Input should be greater than or equal to 0",
        ),
        (
            {"abort": {"min_executed": -1}},
            "policy.abort.min_executed: -1: Input should be greater than or equal",
        ),
        (
            {"abort": {"max_percent": 5}},
            "policy.abort.max_percent: unknown key; did you mean 'max_failure_percent'?",
        ),
        ({"bake": 5}, "policy.bake: unknown key; did you mean 'bake_s'?"),
    ],
)
def test_policy_errors_name_the_field(policy: dict[str, Any], expected: str) -> None:
    assert f"<test>: {expected}" in policy_error(**policy)


def test_several_problems_are_reported_together() -> None:
    message = policy_error(batch_size=0, bake_s=-1, waves=["x"])
    assert "policy.batch_size" in message
    assert "policy.bake_s" in message
    assert "policy.waves[0]" in message


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    data = plan_data()
    data["polcy"] = data.pop("policy")
    with pytest.raises(PlanError, match=r"<request>: polcy: unknown key; did you mean 'policy'\?"):
        load_plan_data(data)


@pytest.mark.parametrize(
    ("fleet", "expected"),
    [
        ({}, "fleet: name the phones: give at least one of phones, file or query"),
        ({"phones": []}, "fleet: name the phones"),
        (
            {"phones": ["zz-1"]},
            f'fleet.phones[0]: "zz-1" is not a valid phone ID ({PHONE_ID_RULE})',
        ),
        ({"phones": [12]}, "fleet.phones[0]: 12 is not a phone ID: write it as a quoted string"),
        ({"phones": ["a" * 33]}, "fleet.phones[0]: "),
        ({"file": "fleet.xlsx"}, 'fleet: file "fleet.xlsx" must be a .csv or .json file'),
        ({"query": {"status": 5}}, "fleet.query.status: 5 is not a phone status"),
        ({"query": {"status": "2"}}, 'fleet.query.status: "2": Input should be a valid integer'),
        ({"query": {"server": "x"}}, "fleet.query.server: unknown key; did you mean 'server_id'?"),
    ],
)
def test_fleet_errors(fleet: dict[str, Any], expected: str) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan_data({"name": "p", "fleet": fleet})
    assert f"<request>: {expected}" in str(caught.value)


def test_query_alone_is_a_fleet() -> None:
    plan = Plan.model_validate(
        {"name": "p", "fleet": {"query": {"status": 2, "phone_name": "shop-"}}}
    )
    assert plan.fleet.query is not None
    assert plan.fleet.query.status == 2


def test_name_is_required_and_not_blank() -> None:
    with pytest.raises(PlanError, match="<request>: name: required"):
        load_plan_data({"fleet": {"phones": [PHONE]}})
    with pytest.raises(PlanError, match="<request>: name: must not be empty"):
        load_plan_data({"name": "  ", "fleet": {"phones": [PHONE]}})


def test_a_plan_must_be_a_mapping() -> None:
    with pytest.raises(PlanError, match="a plan must be a mapping"):
        load_plan_data([1, 2])


def test_data_plans_may_not_read_files_without_a_base_dir() -> None:
    data = {"name": "p", "fleet": {"file": "fleet.csv"}}
    with pytest.raises(
        PlanError, match=r"<request>: fleet\.file: not allowed in a plan that is not read"
    ):
        load_plan_data(data)


@pytest.mark.parametrize(
    ("waves", "fleet", "expected"),
    [
        (("100%",), 5, [5]),
        ((10, "10%", "100%"), 1000, [10, 100, 890]),
        ((10, "10%"), 1000, [10] + [100] * 9 + [90]),
        (("10%",), 5, [1, 1, 1, 1, 1]),  # rounded up, at least one
        (("34%",), 10, [4, 4, 2]),
        ((1, 2), 6, [1, 2, 2, 1]),
        ((10,), 3, [3]),
        (("2.5%",), 100, [3] * 33 + [1]),
        (("100%",), 0, []),
    ],
)
def test_wave_sizes(waves: tuple[int | str, ...], fleet: int, expected: list[int]) -> None:
    assert wave_sizes(waves, fleet) == expected
    assert sum(expected) == fleet


def test_needs_restart() -> None:
    assert needs_restart(["com.cph.mainkeys"])
    assert needs_restart(["persist.sys.locale", "qemu.hw.mainkeys"])
    assert not needs_restart(["persist.sys.locale", "made.up.key"])
    assert not needs_restart([])
