"""Bad input never escapes as anything but PlanError: random texts, mutated plans, random fleet files."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.plan import PhoneTarget, PlanError, load_plan_data, load_plan_text
from orchestrator.plan.errors import Problems
from orchestrator.plan.fleet import FleetFile, _read_csv, _read_plain_csv
from orchestrator.plan.loader import _Renderer
from orchestrator.plan.locate import PlanFormat
from orchestrator.plan.properties import PropertyFormatError, PropertyValue, check_property
from orchestrator.plan.render import compile_template

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


# -- the fast ways against the reference ways ----------------------------------------------------
# Rendering, encoding and CSV reading each have a fast way for the common case and keep the
# reference way for the rest; these compare the two on random input (private seams on purpose).

COLUMN_NAMES = ["shop", "n", "x.y", "com.cph.mainkeys", "made.up"]
PIECES = st.sampled_from(
    [
        *("{index}", "{index:07d}", "{phone_id:.4}", "{shop}", "{n:>5}", "{n:03d}", "{x.y}"),
        *("{shop!r}", "{n!a:^9}", "{{", "}}", "\u00e9", '"', "\\", "\t", "\u2028", "\U0001f600"),
        *("_", "7", " "),
    ]
)
TEMPLATE_TEXT = st.lists(PIECES, min_size=1, max_size=5).map("".join)
CELL = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "0", "1", "7", "de-DE", "{0}", "x" * 7790, "\u00e9" * 3900]),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False),
    st.booleans(),
)
ROW = st.dictionaries(st.sampled_from(COLUMN_NAMES), CELL, max_size=4).map(
    lambda row: {name: value for name, value in row.items() if value != ""}
)
PHONE_ID = st.from_regex(r"[0-9a-f]{1,32}", fullmatch=True)


def outcome(produce: Callable[[], object]) -> object:
    try:
        return produce()
    except Exception as exc:  # the same error, word for word, is the same outcome
        return (type(exc), str(exc), getattr(exc, "field", None))


@FUZZ
@given(text=TEMPLATE_TEXT, index=st.integers(0, 10**7), phone_id=PHONE_ID, row=ROW)
@example(text="{{{index}}}", index=5, phone_id="ab", row={})  # literal braces around a field
@example(text="}}{shop}{{{n:>5}", index=0, phone_id="ab", row={"shop": "{0}", "n": 7})
def test_template_render_equals_the_reference(
    text: str, index: int, phone_id: str, row: dict[str, PropertyValue]
) -> None:
    template = compile_template(text)
    assert outcome(lambda: template.render(index, phone_id, row)) == outcome(
        lambda: template.render_by_parts(index, phone_id, row)
    )


def target_items(target: PhoneTarget) -> object:
    return (target.index, target.phone_id, list(target.properties.items()), target.update)


@FUZZ
@given(
    constants=st.dictionaries(
        st.sampled_from(["made.up", "persist.sys.locale", "com.cph.mainkeys", "a.b"]),
        st.one_of(
            st.integers(0, 1), st.floats(allow_nan=False), st.booleans(), st.text(max_size=8)
        ),
        max_size=3,
    ),
    templates=st.dictionaries(
        st.sampled_from(["x.y", "sys.prop.writewifissid", "com.cph.mainkeys", "shop", "t.u"]),
        TEMPLATE_TEXT,
        max_size=3,
    ),
    overrides=st.lists(st.sampled_from(["x.y", "com.cph.mainkeys", "made.up"]), unique=True),
    index=st.integers(0, 10**7),
    phone_id=PHONE_ID,
    row=ROW,
)
@example(  # fewer characters than the limit, more bytes: the fast way must not take it
    constants={},
    templates={"t.u": "{shop}"},
    overrides=[],
    index=0,
    phone_id="ab",
    row={"shop": "\u00e9" * 3900},
)
def test_phone_target_equals_the_reference(
    constants: dict[str, PropertyValue],
    templates: dict[str, str],
    overrides: list[str],
    index: int,
    phone_id: str,
    row: dict[str, PropertyValue],
) -> None:
    checked = {}
    for name, value in constants.items():
        if name not in templates:
            with contextlib.suppress(PropertyFormatError):
                checked[name] = check_property(name, value)
    compiled = [(name, compile_template(text), "p.yaml:1") for name, text in templates.items()]
    renderer = _Renderer(checked, compiled, overrides)
    assert outcome(lambda: target_items(renderer.target(index, phone_id, row))) == outcome(
        lambda: target_items(renderer.target_by_dict(index, phone_id, row))
    )


CSV_PIECES = st.sampled_from(
    ["phone_id", "shop", ",", "\n", "\r\n", "\r", '"', " ", "abc123", "x.y", "", "0" * 33]
)
CSV_LINES = st.lists(
    st.one_of(
        PHONE_ID.map(lambda phone_id: phone_id + "\n"),
        st.lists(st.one_of(CSV_PIECES, st.characters()), max_size=6).map("".join),
    ),
    max_size=8,
)


@FUZZ
@given(
    header=st.sampled_from(["phone_id\n", "phone_id,shop\n", "shop,phone_id,x.y\r\n", " phone_id"]),
    lines=CSV_LINES,
)
def test_plain_csv_reading_equals_the_reference(header: str, lines: list[str]) -> None:
    text = header + "".join(lines)
    reference, fast = FleetFile("f.csv", "csv"), FleetFile("f.csv", "csv")
    problems = Problems()
    _read_csv(text, reference, problems)
    if _read_plain_csv(text, fast):
        assert not problems
        assert (fast.columns, fast.phone_ids, fast.lines) == (
            reference.columns,
            reference.phone_ids,
            reference.lines,
        )
        assert [dict(row) for row in fast.rows] == [dict(row) for row in reference.rows]
    else:
        assert fast == FleetFile("f.csv", "csv")  # untouched


def test_plain_csv_reading_takes_the_common_files() -> None:
    ids = [f"{i:032x}" for i in range(3)]
    for text in (
        "phone_id\n" + "\n".join(ids) + "\n",
        "phone_id\r\n" + "\r\n".join(ids),
        "phone_id,shop\n" + "".join(f"{i},x\n" for i in ids),
    ):
        table = FleetFile("f.csv", "csv")
        assert _read_plain_csv(text, table)
        assert (table.phone_ids, table.lines) == (ids, [2, 3, 4])
