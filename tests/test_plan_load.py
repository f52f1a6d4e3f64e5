"""Loading plan files: messages with file, line and field; fleet files; templates; size limit."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from orchestrator.cph.models import PROPERTY_LIMIT_BYTES, PropertyUpdate, encode_property
from orchestrator.plan import PlanError, load_plan, load_plan_text
from orchestrator.plan.fleet import read_fleet_text
from orchestrator.plan.model import PHONE_ID_RULE

DATA = Path(__file__).parent / "data" / "plans"
PHONE_A = "a7f3a1c5258347d6b6f1def79e11f2bc"
PHONE_B = "0c2b7e1f9d8a4b6c8e1d2f3a4b5c6d7e"
FILE_A = "5d41402abc4b2a76b9719d911017c592"
FILE_B = "7d793037a0760186574b0282f2f435e7"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(path: Path, *, strict: bool | None = None) -> str:
    with pytest.raises(PlanError) as caught:
        load_plan(path, strict=strict)
    return str(caught.value)


# -- the reference plan in three formats -------------------------------------------------------


@pytest.mark.parametrize("suffix", ["yaml", "json", "toml"])
def test_reference_plan_loads_in_every_format(suffix: str) -> None:
    loaded = load_plan(DATA / f"rollout.{suffix}")
    plan = loaded.plan
    assert plan.name == "wifi-ssid-rollout"
    assert plan.fleet.phones == (PHONE_A, PHONE_B)
    assert plan.policy.waves == (10, "10%", "100%")
    assert plan.policy.abort.max_failure_percent == 5
    assert loaded.needs_restart()
    targets = loaded.targets()
    assert [t.phone_id for t in targets] == [PHONE_A, PHONE_B, FILE_A, FILE_B]
    assert [t.index for t in targets] == [0, 1, 2, 3]
    assert targets[2].properties == {
        "com.cph.mainkeys": 1,
        "com.cph.bandwidth_limit": "2000",  # a documented String: normalized
        "persist.sys.locale": "en-US",
        "sys.prop.writewifissid": "shop_0002",
        "sys.prop.writephonenum": "4915100000001",  # from the file's dotted column
    }
    assert "sys.prop.writephonenum" not in targets[3].properties  # empty cell: not set
    assert json.loads(targets[2].update.property) == targets[2].properties
    assert any("column shop: not used" in w for w in loaded.warnings)


def test_json_and_toml_plans_equal_the_yaml_one() -> None:
    plans = [load_plan(DATA / f"rollout.{s}") for s in ("yaml", "json", "toml")]
    assert plans[0].plan == plans[1].plan == plans[2].plan
    assert [t.update for t in plans[0].targets()] == [t.update for t in plans[2].targets()]


def test_example_plans_in_config_are_valid() -> None:
    config = Path(__file__).parent.parent / "config" / "plans"
    for path in sorted(config.glob("*.yaml")):
        loaded = load_plan(path)
        queried = ["ffffffffffffffffffffffffffffffff"] if loaded.plan.fleet.query else []
        assert loaded.targets(queried), path


# -- messages name file, line and field --------------------------------------------------------


def test_yaml_errors_name_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.yaml",
        """
        name: x
        fleet:
          phones:
            - a7f3a1c5258347d6b6f1def79e11f2bc
            - zz-1
        properties:
          sys.prop.writeimsi: "12ab"
        policy:
          batch_size: 10
          waves:
            - 10
            - "10 %"
          bake: 3
        """,
    )
    message = load_error(path)
    assert f'{path}:5: fleet.phones[1]: "zz-1" is not a valid phone ID' in message
    assert (
        f'{path}:12: policy.waves[1]: "10 %" is not a count or a percentage like "10%"' in message
    )
    assert f"{path}:13: policy.bake: unknown key; did you mean 'bake_s'?" in message
    assert (
        f'{path}:7: properties.sys.prop.writeimsi: "12ab" must be at most 15 decimal digits'
        in message
    )


def test_json_errors_name_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.json",
        """
        {
          "name": "x",
          "fleet": {"phones": ["a7f3a1c5258347d6b6f1def79e11f2bc"]},
          "policy": {
            "waves": [
              1,
              "ten"
            ]
          }
        }
        """,
    )
    assert f'{path}:7: policy.waves[1]: "ten" is not a count' in load_error(path)


def test_toml_errors_name_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.toml",
        """
        name = "x"

        [fleet]
        phones = ["a7f3a1c5258347d6b6f1def79e11f2bc"]

        [properties]
        "persist.sys.locale" = "en_US"

        [policy]
        bake_s = -5

        [policy.abort]
        max_failure_percent = 500
        """,
    )
    message = load_error(path)
    assert f"{path}:10: policy.bake_s: -5: Input should be greater than or equal to 0" in message
    assert f"{path}:13: policy.abort.max_failure_percent: 500:" in message
    assert f'{path}:7: properties.persist.sys.locale: "en_US" must be 1 to 64 characters' in message


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("x.yaml", "name: x\nfleet: [\n  a\n", "x.yaml:4: not valid YAML (column 1)"),
        ("x.yaml", "name: x\n  bad: indent\n", "x.yaml:2: not valid YAML"),
        ("x.json", '{"name": "x",\n "fleet": }', "x.json:2: not valid JSON (column 11)"),
        ("x.toml", 'name = "x"\nfleet = \n', "x.toml:2: not valid TOML"),
        (
            "x.yaml",
            "name: x\nfleet: {}\nname: y\n",
            "x.yaml:3: name: given twice (first at line 1)",
        ),
        (
            "x.yaml",
            "",
            "a plan must be a mapping with name, fleet, properties and policy; this is empty",
        ),
        ("x.yaml", "- 1\n", "this is a list"),
        ("x.txt", "name: x", "a plan file must end in one of .yaml, .yml, .json, .toml"),
    ],
)
def test_syntax_errors(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert expected in load_error(path)


def test_missing_plan_file(tmp_path: Path) -> None:
    assert "cannot read the plan" in load_error(tmp_path / "nope.yaml")


# -- properties --------------------------------------------------------------------------------


def plan_with(tmp_path: Path, properties: str, *, policy: str = "") -> Path:
    return write(
        tmp_path,
        "p.yaml",
        f"name: p\nfleet:\n  phones: [{PHONE_A}]\nproperties:\n{textwrap.indent(properties, '  ')}{policy}",
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("com.cph.mainkeys: 2", "2 must be 0 or 1"),
        ("com.cph.mainkeys: true", "true must be 0 or 1"),
        ("ro.install.auto: 2", "2 must be 0 or 1"),
        ("ro.install.auto: 01", '"01" must be 0 or 1'),
        ("com.cph.mainkeys: 1.0", "1.0 must be 0 or 1"),
        ("com.cph.bandwidth_limit: 0", "0 must be an integer from 1 to 99999999, or -1"),
        ("com.cph.bandwidth_limit: 100000000", "must be an integer from 1 to 99999999, or -1"),
        ('sys.prop.writeimsi: "1234567890123456"', "must be at most 15 decimal digits"),
        ('sys.prop.writephonenum: "+4915100000001"', "must be at most 20 decimal digits"),
        ('persist.sys.locale: ""', "must be 1 to 64 characters of letters, digits and '-'"),
        (f'sys.prop.writewifissid: "{"x" * 65}"', "has 65 characters, more than 64"),
        ("com.cph.bandwidth_limit: 1_000", '"1_000" must be an integer from 1 to 99999999'),
        ('com.cph.cam_local_pic_path: ""', "must be 1 to 90 characters"),
        ("com.cph.cam_local_pic_path: a|b", '"a|b" must be 1 to 90 characters of letters'),
        (
            "sys.prop.writewifissid: [1]",
            "a property value must be a number, string or boolean, not list",
        ),
        ("made.up: null", 'no value (null): give one, or quote it ("null", "~", "")'),
        ('"bad name": 1', "is not a property name"),
    ],
)
def test_property_formats(tmp_path: Path, line: str, expected: str) -> None:
    message = load_error(plan_with(tmp_path, line + "\n"))
    assert "p.yaml:5: properties." in message
    assert expected in message


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ('com.cph.mainkeys: "1"', 1),
        ("com.cph.bandwidth_limit: -1", "-1"),
        ('com.cph.bandwidth_limit: "99999999"', "99999999"),
        ("com.cph.bandwidth_limit: 0100", "0100"),  # in range; the digits as written
        ("sys.prop.writeimsi: 460001234567890", "460001234567890"),
        ("sys.prop.writeimsi: 012", "012"),  # not octal 10
        ('sys.prop.writephonenum: "00491510000000000001"', "00491510000000000001"),
        ("persist.sys.locale: zh-Hans-CN", "zh-Hans-CN"),
        ("persist.sys.locale: no", "no"),  # Norwegian, not false
        ("sys.prop.writewifissid: cloudphone_wifi", "cloudphone_wifi"),
        ("sys.prop.writewifissid: 012", "012"),
        ("gsm.sim.operator.iso-country: cn", "cn"),
    ],
)
def test_loose_types_keep_their_text(tmp_path: Path, line: str, value: object) -> None:
    loaded = load_plan(plan_with(tmp_path, line + "\n"))
    (target,) = loaded.targets()
    assert list(target.properties.values()) == [value]
    assert not loaded.warnings


def test_literal_braces(tmp_path: Path) -> None:
    (target,) = load_plan(plan_with(tmp_path, 'made.up: "{{x}}-{index}"\n')).targets()
    assert target.properties == {"made.up": "{x}-0"}


def test_unknown_properties_warn_or_fail_when_strict(tmp_path: Path) -> None:
    path = plan_with(tmp_path, "ro.product.model: P40\nqemu.hw.mainkeys: 1\n")
    loaded = load_plan(path)
    assert (
        f"{path}:5: properties.ro.product.model: not a documented CPH property; sent as written"
        in loaded.warnings
    )
    assert (
        f"{path}:6: properties.qemu.hw.mainkeys: deprecated; use com.cph.mainkeys"
        in loaded.warnings
    )
    assert loaded.needs_restart()
    message = load_error(path, strict=True)
    assert (
        f"{path}:5: properties.ro.product.model: not a documented CPH property (strict_properties is on)"
        in message
    )
    strict_in_file = plan_with(
        tmp_path, "ro.product.model: P40\n", policy="policy:\n  strict_properties: true\n"
    )
    assert "strict_properties is on" in load_error(strict_in_file)
    assert load_plan(strict_in_file, strict=False).targets()


# -- templates and fleet files -----------------------------------------------------------------


def test_bad_templates_fail_at_their_line(tmp_path: Path) -> None:
    path = plan_with(
        tmp_path,
        'a.b: "{index"\nc.d: "{phone_id:04d}"\ne.f: "{}"\ng.h: "{msisdn}"\ni.j: "{index!z}"\n',
    )
    message = load_error(path)
    assert f"{path}:5: properties.a.b: '{{index' is not a valid template" in message
    assert (
        f"{path}:6: properties.c.d: placeholder {{phone_id}} cannot be formatted with '04d'"
        in message
    )
    assert f"{path}:7: properties.e.f: an empty placeholder {{}} has no name" in message
    assert (
        f"{path}:8: properties.g.h: placeholder {{msisdn}} is not index, phone_id or a fleet file column"
        in message
    )
    assert f"{path}:9: properties.i.j: placeholder {{index}}: unknown conversion !z" in message


def fleet_plan(tmp_path: Path, csv_text: str, properties: str, *, phones: str = "") -> Path:
    (tmp_path / "fleet.csv").write_text(textwrap.dedent(csv_text).lstrip("\n"))
    return write(
        tmp_path,
        "p.yaml",
        f"name: p\nfleet:\n  file: fleet.csv\n{phones}properties:\n{textwrap.indent(properties, '  ')}",
    )


def test_columns_are_placeholders_and_dotted_columns_override(tmp_path: Path) -> None:
    path = fleet_plan(
        tmp_path,
        f"""
        phone_id,shop,count,persist.sys.locale
        {FILE_A},berlin,7,de-DE
        {FILE_B},hamburg,8,
        """,
        'sys.prop.writewifissid: "{shop}-{index:03d}-{phone_id:.4}"\npersist.sys.locale: en-US\n',
    )
    first, second = load_plan(path).targets()
    assert first.properties == {
        "persist.sys.locale": "de-DE",
        "sys.prop.writewifissid": "berlin-000-5d41",
    }
    assert second.properties == {
        "persist.sys.locale": "en-US",
        "sys.prop.writewifissid": "hamburg-001-7d79",
    }


def test_json_fleet_keeps_json_types(tmp_path: Path) -> None:
    (tmp_path / "fleet.json").write_text(
        json.dumps(
            [{"phone_id": FILE_A, "n": 7, "com.cph.mainkeys": "1"}, {"phone_id": FILE_B, "n": 8}],
            indent=1,
        )
    )
    path = write(
        tmp_path,
        "p.yaml",
        'name: p\nfleet: {file: fleet.json}\nproperties:\n  made.up: "s{n:03d}"\n',
    )
    first, second = load_plan(path).targets()
    assert first.properties == {"made.up": "s007", "com.cph.mainkeys": 1}
    assert second.properties == {"made.up": "s008"}


@pytest.mark.parametrize(
    ("cell", "template", "expected"),
    [
        ("1" + "0" * 400, "{n:f}", "placeholder {n} cannot be formatted with 'f'"),
        ('"\\ud800"', "x{n}", "not valid Unicode text (surrogates not allowed)"),
    ],
    ids=["int too large for a float", "lone surrogate"],
)
def test_json_fleet_values_that_cannot_become_text_are_plan_errors(
    tmp_path: Path, cell: str, template: str, expected: str
) -> None:
    (tmp_path / "fleet.json").write_text(f'[{{"phone_id": "{FILE_A}", "n": {cell}}}]')
    path = write(
        tmp_path,
        "p.yaml",
        f'name: p\nfleet: {{file: fleet.json}}\nproperties:\n  made.up: "{template}"\n',
    )
    with pytest.raises(PlanError) as caught:
        load_plan(path).targets()
    assert expected in str(caught.value)
    assert FILE_A in str(caught.value)


def test_missing_placeholder_names_phone_property_and_row(tmp_path: Path) -> None:
    path = fleet_plan(
        tmp_path,
        f"""
        phone_id,msisdn
        {FILE_A},4915100000001
        {FILE_B},
        """,
        'sys.prop.writephonenum: "{msisdn}"\n',
        phones=f"  phones: [{PHONE_A}]\n",
    )
    message = load_error(path)
    assert (
        f"{path}:4 (fleet.phones[0]): properties.sys.prop.writephonenum: phone {PHONE_A}: "
        f"placeholder {{msisdn}} has no value for this phone (template at {path}:6)"
    ) in message
    assert (
        f"fleet.csv:row 2 (line 3): properties.sys.prop.writephonenum: phone {FILE_B}: placeholder {{msisdn}}"
        in message
    )


def test_rendered_values_are_checked_per_phone(tmp_path: Path) -> None:
    path = fleet_plan(
        tmp_path,
        f"""
        phone_id,imsi,sys.prop.writephonenum
        {FILE_A},12ab,123
        {FILE_B},123,12x
        """,
        'sys.prop.writeimsi: "{imsi}"\n',
    )
    message = load_error(path)
    assert (
        f'fleet.csv:row 1 (line 2): properties.sys.prop.writeimsi: phone {FILE_A}: "12ab" must be at most 15'
        in message
    )
    assert (
        f'fleet.csv:row 2 (line 3): column sys.prop.writephonenum: phone {FILE_B}: "12x" must be at most 20'
        in message
    )


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("shop\nberlin\n", "fleet.csv:1: header: no phone_id column (columns: shop)"),
        ("phone_id,a,a\nx,1,2\n", "fleet.csv:1: column a: appears twice in the header"),
        (
            "phone_id,index\nx,1\n",
            "fleet.csv:1: column index: the name is reserved for the {index} placeholder",
        ),
        (
            "phone_id,a\nzz-1,1\n",
            f'fleet.csv:row 1 (line 2): phone_id: "zz-1": not a valid phone ID ({PHONE_ID_RULE})',
        ),
        ("phone_id,a\n,1\n", "fleet.csv:row 1 (line 2): phone_id: missing"),
        ("phone_id,a\nabc,1,2\n", "fleet.csv:row 1 (line 2): 3 cells but the header has 2 columns"),
        ('phone_id,a\nabc,"x\ny"\n\nzz-2,1\n', "fleet.csv:row 2 (line 5): phone_id"),
        ("a,phone_id\n1\n", "fleet.csv:row 1 (line 2): phone_id: missing"),
        ('phone_id,a\nabc,"unterminated\n', "fleet.csv:2: not valid CSV: unexpected end of data"),
        ("", "fleet.csv:1: header: no phone_id column (columns: none)"),
    ],
)
def test_csv_fleet_errors(tmp_path: Path, csv_text: str, expected: str) -> None:
    path = fleet_plan(tmp_path, csv_text, "made.up: 1\n")
    assert expected in load_error(path)


@pytest.mark.parametrize(
    ("json_text", "expected"),
    [
        (
            '{"phone_id": "x"}',
            "fleet.json:1: not a JSON list of objects: the file must hold a JSON list",
        ),
        (
            '[\n{"phone_id": "abc"},\n{"phone_id": "zz-1"}\n]',
            'fleet.json:item 2 (line 3): phone_id: "zz-1"',
        ),
        (
            '[\n{"phone_id": "abc", "a": [1]}\n]',
            "fleet.json:item 1 (line 2): a: must be a string, number or boolean",
        ),
        (
            '[\n{"phone_id": "abc"}\n{"phone_id": "abd"}]',
            "fleet.json:3: not a JSON list of objects: expected ',' or ']'",
        ),
        ("[\n1\n]", "fleet.json:item 1 (line 2): each item must be an object with a phone_id"),
        (
            '[{"phone_id": "abc"}] x',
            "fleet.json:1: not a JSON list of objects: text after the list",
        ),
    ],
)
def test_json_fleet_errors(tmp_path: Path, json_text: str, expected: str) -> None:
    (tmp_path / "fleet.json").write_text(json_text)
    path = write(tmp_path, "p.yaml", "name: p\nfleet: {file: fleet.json}\n")
    assert expected in load_error(path)


def test_missing_fleet_file(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nfleet: {file: nope.csv}\n")
    message = load_error(path)
    assert "p.yaml:2: fleet.file: cannot read the fleet file" in message
    assert str(tmp_path / "nope.csv") in message


# -- duplicates and the query ------------------------------------------------------------------


def test_duplicates_name_both_places(tmp_path: Path) -> None:
    path = fleet_plan(
        tmp_path,
        f"""
        phone_id
        {FILE_A}
        {PHONE_A}
        {FILE_A}
        """,
        "made.up: 1\n",
        phones=f"  phones:\n    - {PHONE_A}\n    - {PHONE_B}\n    - {PHONE_B}\n",
    )
    message = load_error(path)
    assert (
        f'{path}:7 (fleet.phones[2]): phone_id: "{PHONE_B}" is listed twice; '
        f"first at {path}:6 (fleet.phones[1])" in message
    )
    assert (
        f'fleet.csv:row 2 (line 3): phone_id: "{PHONE_A}" is listed twice; '
        f"first at {path}:5 (fleet.phones[0])" in message
    )
    assert (
        f'fleet.csv:row 3 (line 4): phone_id: "{FILE_A}" is listed twice; '
        f"first at {tmp_path / 'fleet.csv'}:row 1 (line 2)" in message
    )


def test_queried_phones_follow_and_listed_ones_win(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        f"name: p\nfleet:\n  phones: [{PHONE_A}]\n  query: {{status: 2}}\n"
        'properties:\n  made.up: "{index}"\n',
    )
    loaded = load_plan(path)
    targets = loaded.targets([FILE_A, PHONE_A, FILE_B, FILE_A])
    assert [(t.index, t.phone_id, t.properties["made.up"]) for t in targets] == [
        (0, PHONE_A, "0"),
        (1, FILE_A, "1"),
        (2, FILE_B, "2"),
    ]
    assert any("1 phone(s) found by the query are also listed" in w for w in loaded.warnings)
    with pytest.raises(
        PlanError, match=r"p.yaml: fleet.query result: phone_id: \"bad-id\": not a valid phone ID"
    ):
        loaded.targets(["bad-id"])


# -- the 7800-byte limit -----------------------------------------------------------------------


def test_property_size_limit_is_exact(tmp_path: Path) -> None:
    overhead = len(encode_property({"made.up": ""}).encode())
    fits = "x" * (PROPERTY_LIMIT_BYTES - overhead)
    path = fleet_plan(
        tmp_path,
        f"""
        phone_id,made.up
        {FILE_A},{fits}
        {FILE_B},{fits}x
        """,
        "made.up: overridden\n",
    )
    message = load_error(path)
    assert (
        f"fleet.csv:row 2 (line 3): properties: phone {FILE_B}: property and custom_property take 7801 bytes"
        in message
    )
    assert FILE_A not in message
    (tmp_path / "fleet.csv").write_text(f"phone_id,made.up\n{FILE_A},{fits}\n")
    (target,) = load_plan(path).targets()
    assert target.update.payload_bytes() == PROPERTY_LIMIT_BYTES


def test_multibyte_characters_count_as_bytes(tmp_path: Path) -> None:
    overhead = len(encode_property({"made.up": ""}).encode())
    too_big = "\u00e9" * ((PROPERTY_LIMIT_BYTES - overhead) // 2 + 1)
    path = plan_with(tmp_path, f'made.up: "{too_big}"\n')
    assert (
        f"{path}:3 (fleet.phones[0]): properties: phone {PHONE_A}: "
        "property and custom_property take 7802 bytes" in load_error(path)
    )


# -- big fleets --------------------------------------------------------------------------------


def test_a_fleet_of_100000_phones_renders(tmp_path: Path) -> None:
    rows = "".join(f"{i:032x},{i:08d}\n" for i in range(100_000))
    (tmp_path / "fleet.csv").write_text("phone_id,n\n" + rows)
    path = write(
        tmp_path,
        "p.yaml",
        "name: big\nfleet: {file: fleet.csv}\n"
        'properties:\n  sys.prop.writewifissid: "shop_{index:06d}_{n}"\n',
    )
    targets = load_plan(path).targets()
    assert len(targets) == 100_000
    assert targets[-1].properties == {"sys.prop.writewifissid": "shop_099999_00099999"}
    assert targets[-1].update.phone_id == f"{99_999:032x}"


def test_plan_text_without_a_file() -> None:
    loaded = load_plan_text(f'{{"name": "t", "fleet": {{"phones": ["{PHONE_A}"]}}}}', fmt="json")
    assert loaded.source == Path("<request>")
    assert [t.phone_id for t in loaded.targets()] == [PHONE_A]


# -- the fast ways give what the reference ways give -------------------------------------------


def assert_reference_targets(path: Path, expected: list[list[tuple[str, object]]]) -> None:
    """Each phone's properties, in order, and its ``property`` text exactly as encode_property has it."""
    targets = load_plan(path).targets()
    assert [list(t.properties.items()) for t in targets] == expected
    for target, items in zip(targets, expected, strict=True):
        assert target.update.property == encode_property(dict(items))
        assert target.update == PropertyUpdate.build(target.phone_id, dict(items))


def test_property_text_with_format_specs_and_every_value_type(tmp_path: Path) -> None:
    (tmp_path / "fleet.csv").write_text(f"phone_id\n{FILE_A}\n{FILE_B}\n")
    path = write(
        tmp_path,
        "p.yaml",
        r"""
        name: p
        fleet: {file: fleet.csv}
        properties:
          com.cph.bandwidth_limit: 2000
          sys.prop.writewifissid: "bench_{index:07d}"
          made.up: 1.5
          a.flag: true
          x.y: "{phone_id:.4}|{index:>4}|{index!r}|{{lit}}|\"q\" \\ \t"
          com.cph.mainkeys: "{index}"
          u.v: "caf\u00e9 \u2028 \U0001F600 {index:x}"
        """,
    )
    common = [("com.cph.bandwidth_limit", "2000"), ("made.up", 1.5), ("a.flag", True)]
    assert_reference_targets(
        path,
        [
            [
                *common,
                ("sys.prop.writewifissid", "bench_0000000"),
                ("x.y", '5d41|   0|0|{lit}|"q" \\ \t'),
                ("com.cph.mainkeys", 0),
                ("u.v", "caf\u00e9 \u2028 \U0001f600 0"),
            ],
            [
                *common,
                ("sys.prop.writewifissid", "bench_0000001"),
                ("x.y", '7d79|   1|1|{lit}|"q" \\ \t'),
                ("com.cph.mainkeys", 1),
                ("u.v", "caf\u00e9 \u2028 \U0001f600 1"),
            ],
        ],
    )


def test_property_text_with_columns_and_overrides(tmp_path: Path) -> None:
    path = fleet_plan(
        tmp_path,
        f"""
        phone_id,shop,n,com.cph.mainkeys,x.y,made.up
        {FILE_A},berlin,7,1,,
        {FILE_B},m\u00fcnchen,8,,from file,caf\u00e9
        """,
        'made.up: common\nx.y: "{index}"\nw.x: "{shop}_{n:0>3}"\ncom.cph.mainkeys: 0\n',
    )
    assert_reference_targets(
        path,
        [
            [
                ("made.up", "common"),
                ("com.cph.mainkeys", 1),  # an override keeps the common value's place
                ("x.y", "0"),
                ("w.x", "berlin_007"),
            ],
            [
                ("made.up", "caf\u00e9"),
                ("com.cph.mainkeys", 0),
                ("w.x", "m\u00fcnchen_008"),
                ("x.y", "from file"),  # an overridden template's value comes last
            ],
        ],
    )


def test_property_text_with_json_typed_cells(tmp_path: Path) -> None:
    (tmp_path / "fleet.json").write_text(
        json.dumps(
            [
                {"phone_id": FILE_A, "n": 7, "f": 0.25, "b": True, "a.flag": False},
                {"phone_id": FILE_B, "n": 8, "f": 1e300, "b": False, "made.up": 3},
            ]
        )
    )
    path = write(
        tmp_path,
        "p.yaml",
        'name: p\nfleet: {file: fleet.json}\nproperties:\n  made.up: "s{n:03d}-{f}-{b!s}"\n',
    )
    assert_reference_targets(
        path,
        [
            [("made.up", "s007-0.25-True"), ("a.flag", False)],
            [("made.up", 3)],
        ],
    )


@pytest.mark.parametrize(
    ("csv_text", "phone_ids", "lines", "rows"),
    [
        ("phone_id\nabc\ndef\n", ["abc", "def"], [2, 3], [{}, {}]),
        ("phone_id\nabc\ndef", ["abc", "def"], [2, 3], [{}, {}]),
        ("phone_id\r\nabc\r\ndef\r\n", ["abc", "def"], [2, 3], [{}, {}]),
        ('phone_id\n"abc"\n def\n', ["abc", "def"], [2, 3], [{}, {}]),
        ("phone_id\nabc\n\ndef\n", ["abc", "def"], [2, 4], [{}, {}]),
        (" phone_id \nabc\n", ["abc"], [2], [{}]),
        ("phone_id\n", [], [], []),
        ("phone_id,shop\nabc,x\ndef,\n", ["abc", "def"], [2, 3], [{"shop": "x"}, {}]),
        ("shop,phone_id\nx,abc\n,def\n", ["abc", "def"], [2, 3], [{"shop": "x"}, {}]),
        ("phone_id,shop\nabc\ndef,y\n", ["abc", "def"], [2, 3], [{}, {"shop": "y"}]),
        (
            'phone_id,n\nabc,"two\nlines"\ndef,y\n',
            ["abc", "def"],
            [2, 4],
            [{"n": "two\nlines"}, {"n": "y"}],
        ),
    ],
)
def test_fleet_files_are_read_alike_whatever_their_layout(
    csv_text: str, phone_ids: list[str], lines: list[int], rows: list[dict[str, str]]
) -> None:
    table = read_fleet_text(csv_text, "fleet.csv", "csv")
    assert (table.phone_ids, table.lines, [dict(row) for row in table.rows]) == (
        phone_ids,
        lines,
        rows,
    )


# -- fleets that resolve to nothing, and bytes that are not text ---------------------------------


PHONE = "0123456789abcdef0123456789abcdef"


def _plan_with_fleet_file(tmp_path: Path, fleet_name: str) -> Path:
    return write(
        tmp_path,
        "plan.yaml",
        f"name: n\nfleet:\n  file: {fleet_name}\nproperties:\n  persist.sys.locale: en-US\n",
    )


@pytest.mark.parametrize("header_only", ["phone_id\n", "phone_id,persist.sys.timezone\n", "[]"])
def test_a_fleet_file_without_phones_is_refused(tmp_path: Path, header_only: str) -> None:
    name = "fleet.json" if header_only == "[]" else "fleet.csv"
    write(tmp_path, name, header_only)
    message = load_error(_plan_with_fleet_file(tmp_path, name))
    assert "fleet: the fleet has no phones" in message


def test_an_invalid_utf8_byte_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "fleet.csv").write_bytes(f"phone_id\n{PHONE}\nab\xffcd\n".encode("latin-1"))
    message = load_error(_plan_with_fleet_file(tmp_path, "fleet.csv"))
    assert "fleet.csv:3: the fleet file is not UTF-8 text: byte 0xff" in message
