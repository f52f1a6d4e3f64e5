"""Bad input never escapes as anything but PlanError: random texts, mutated plans, random fleet files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.plan import PlanError, load_plan_data, load_plan_text
from orchestrator.plan.locate import PlanFormat

DATA = Path(__file__).parent / "data" / "plans"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORMATS: list[PlanFormat] = ["yaml", "json", "toml"]

# Characters that matter to the three syntaxes, mixed with everything else.
SYNTAX = st.sampled_from(list("{}[]:,\"'#-=.%\n \t&*!|>@`\\0123456789"))
TEXT = st.lists(st.one_of(SYNTAX, st.characters()), max_size=200).map("".join)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        ["100%", "10 %", "{index}", "{index:04d}", "{nope}", "{", "}}", "CPS.0005", "x" * 8000]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


def reference_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "rollout.json").read_text())
    return data


def load_or_plan_error(text: str, fmt: PlanFormat, base_dir: Path | None) -> None:
    try:
        loaded = load_plan_text(text, fmt=fmt, source="fuzz", base_dir=base_dir)
        loaded.targets(["a7f3a1c5258347d6b6f1def79e11f2bc", "ffffffffffffffffffffffffffffffff"])
    except PlanError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("fuzz") or "fleet." in message


@FUZZ
@given(text=TEXT, fmt=st.sampled_from(FORMATS))
def test_arbitrary_text(text: str, fmt: PlanFormat) -> None:
    load_or_plan_error(text, fmt, None)


@FUZZ
@given(
    fmt=st.sampled_from(FORMATS),
    cuts=st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 30), TEXT.map(lambda t: t[:10])), max_size=4
    ),
)
def test_mutated_plan_texts(fmt: PlanFormat, cuts: list[tuple[int, int, str]]) -> None:
    text = (DATA / f"rollout.{fmt}").read_text()
    for start, length, insert in cuts:
        start %= len(text) + 1
        text = text[:start] + insert + text[start + length :]
    load_or_plan_error(text, fmt, DATA)


def paths_of(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths_of(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths_of(value, (*prefix, index))
    return found


@FUZZ
@given(data=st.data())
def test_mutated_plan_data(data: st.DataObject) -> None:
    plan = reference_data()
    plan["fleet"].pop("file")
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths_of(plan)[1:]))
        parent = plan
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(VALUES)
    try:
        load_plan_data(plan).targets(["a7f3a1c5258347d6b6f1def79e11f2bc"])
    except PlanError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("<request>")


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-fleet")


CSV_TEXT = st.lists(
    st.one_of(
        st.sampled_from(
            ["phone_id", ",", "\n", '"', "abc123", "sys.prop.writeimsi", "msisdn", "12"]
        ),
        st.characters(),
    ),
    max_size=60,
).map("".join)
PLAN = (
    'name: f\nfleet: {file: fleet.csv}\nproperties:\n  made.up: "{msisdn}-{index:03d}"\n'
    "  sys.prop.writeimsi: '460'\n"
)


@FUZZ
@given(csv_text=CSV_TEXT)
def test_arbitrary_csv_fleets(fleet_dir: Path, csv_text: str) -> None:
    (fleet_dir / "fleet.csv").write_text(csv_text, encoding="utf-8", errors="surrogatepass")
    load_or_plan_error(PLAN, "yaml", fleet_dir)


@FUZZ
@given(
    items=st.lists(
        st.dictionaries(st.sampled_from(["phone_id", "msisdn", "a.b", "index"]), VALUES), max_size=5
    )
)
def test_arbitrary_json_fleets(fleet_dir: Path, items: list[dict[str, Any]]) -> None:
    (fleet_dir / "fleet.json").write_text(json.dumps(items))
    load_or_plan_error(PLAN.replace("fleet.csv", "fleet.json"), "yaml", fleet_dir)
