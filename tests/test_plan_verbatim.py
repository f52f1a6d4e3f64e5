"""What you typed is what is sent: property values reach the wire as written, in every format.

Each case asserts on the ``property`` JSON string of the wire item (or on the refusal, which must
name file, line and property and ask for quotes). The simulator's part: it accepts every value
the plan accepts, and a plan run against it leaves exactly the typed texts on the phones.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from orchestrator.engine.options import RestartMode
from orchestrator.plan import KNOWN_PROPERTIES, LoadedPlan, PlanError, load_plan, load_plan_text
from orchestrator.plan.locate import decode_json_plan
from orchestrator.simulator.validation import validate_batch
from tests.conftest import SimulatorFactory
from tests.e2e_support import fast_options, fast_profile, run_rollout, start_simulator

PHONE = "a7f3a1c5258347d6b6f1def79e11f2bc"
NAME = "persist.custom.x"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def yaml_plan(tmp_path: Path, properties: str) -> Path:
    """A plan whose ``properties`` block starts on line 4 (the first property is on line 5)."""
    body = textwrap.indent(textwrap.dedent(properties).lstrip("\n"), "  ")
    return write(tmp_path, "p.yaml", f"name: p\nfleet:\n  phones: [{PHONE}]\nproperties:\n{body}")


def wire(path: Path) -> str:
    """The one phone's ``property`` string, exactly as it goes on the wire."""
    (target,) = load_plan(path).targets()
    return target.update.property


def refusal(path: Path) -> str:
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    return str(caught.value)


def value_texts(property_json: str) -> dict[str, str]:
    """Each value's text inside the ``property`` JSON: a string's characters, a number's digits."""
    texts: dict[str, str] = {}
    for name, value in json.loads(property_json, parse_int=str, parse_float=str).items():
        texts[name] = {True: "true", False: "false"}.get(value, value)
    return texts


# -- YAML ----------------------------------------------------------------------------------------

YAML_AS_TEXT = [
    *("012", "0o12", "0x1F", "1:20", "1_000", "+1", "-0", ".5", "1.10", "1e3", "1.0e+3"),
    *(".inf", "-.inf", ".nan", ".NaN", "2024-05-01", "2001-12-14t21:59:43.10-05:00"),
    *("yes", "no", "on", "off", "y", "n", "Y", "N", "True", "False", "NO", "Yes", "ON"),
]


@pytest.mark.parametrize("text", YAML_AS_TEXT)
def test_yaml_plain_scalars_are_sent_as_the_text_typed(tmp_path: Path, text: str) -> None:
    path = yaml_plan(tmp_path, f"{NAME}: {text}\n")
    assert wire(path) == json.dumps({NAME: text}, separators=(",", ":"))


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("1", "1"),
        ("-7", "-7"),
        ("0", "0"),
        ("1.5", "1.5"),
        ("0.25", "0.25"),
        ("true", "true"),
        ("false", "false"),
        ("10000000000000000000001", "10000000000000000000001"),
    ],
)
def test_yaml_values_that_json_writes_alike_keep_their_type(
    tmp_path: Path, text: str, sent: str
) -> None:
    assert wire(yaml_plan(tmp_path, f"{NAME}: {text}\n")) == f'{{"{NAME}":{sent}}}'


def test_the_values_a_new_user_tried(tmp_path: Path) -> None:
    path = yaml_plan(
        tmp_path,
        """
        sys.prop.writewifissid: 012
        persist.custom.version: 1.10
        persist.custom.flag: no
        ro.install.auto: 1
        com.cph.mainkeys: "0"
        """,
    )
    loaded = load_plan(path)
    (target,) = loaded.targets()
    assert target.update.property == (
        '{"sys.prop.writewifissid":"012","persist.custom.version":"1.10",'
        '"persist.custom.flag":"no","ro.install.auto":1,"com.cph.mainkeys":0}'
    )
    warning = f"{path}:6: properties.persist.custom.version: not a documented CPH property"
    assert f"{warning}; sent as written" in loaded.warnings


@pytest.mark.parametrize("text", ["~", "null", "Null", "NULL", ""])
def test_yaml_null_is_refused_asking_for_quotes(tmp_path: Path, text: str) -> None:
    path = yaml_plan(tmp_path, f"ro.product.model: P40\n{NAME}: {text}\n")
    message = refusal(path)
    assert f"{path}:6: properties.{NAME}: no value (null): give one, or quote it" in message


def test_quoted_yaml_values_are_strings_as_written(tmp_path: Path) -> None:
    path = yaml_plan(tmp_path, """a.b: '012'\nc.d: "no"\ne.f: "null"\ng.h: ''\n""")
    assert wire(path) == '{"a.b":"012","c.d":"no","e.f":"null","g.h":""}'


def test_anchors_aliases_and_merges_keep_the_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        f"""
        name: p
        fleet:
          phones: [{PHONE}]
        properties:
          <<: {{m.n: 0x1F, a.b: 5}}
          a.b: &v 012
          c.d: *v
        policy:
          max_attempts: 3
        """,
    )
    assert wire(path) == '{"m.n":"0x1F","a.b":"012","c.d":"012"}'


def test_values_outside_properties_keep_their_yaml_meaning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        f"name: p\nfleet: {{phones: [{PHONE}]}}\npolicy: {{bake_s: 1.50, max_attempts: 0x0A}}\n",
    )
    plan = load_plan(path).plan
    assert (plan.policy.bake_s, plan.policy.max_attempts) == (1.5, 10)


PLAIN_PIECES = st.sampled_from(
    [*"0123456789", *".:_+-eExXoObB ~", "inf", "nan", "true", "no", "Yes", "null", "a", "é"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.lists(PLAIN_PIECES, min_size=1, max_size=8).map("".join))
@example(text="012")
@example(text="1.10")
@example(text="~")
@example(text="1e+300")
def test_any_plain_yaml_scalar_is_sent_as_typed_or_refused_at_its_line(text: str) -> None:
    """For a plain scalar that YAML reads: the wire text is the source text, or a refusal."""
    line = f"{NAME}: {text}"
    try:
        root = yaml.compose(line)
    except yaml.YAMLError:
        assume(False)
    assume(isinstance(root, yaml.MappingNode))
    assert root is not None
    ((_, node),) = root.value
    assume(isinstance(node, yaml.ScalarNode) and node.style is None)
    plan = f"name: p\nfleet:\n  phones: [{PHONE}]\nproperties:\n  {line}\n"
    refused = ""
    try:
        (target,) = load_plan_text(plan, fmt="yaml", source="p.yaml").targets()
    except PlanError as exc:
        refused = str(exc)
    if refused:
        assert refused.startswith(f"p.yaml:5: properties.{NAME}: ")
        assert "quote it" in refused
    else:
        assert value_texts(target.update.property) == {NAME: node.value}


# -- JSON and TOML -------------------------------------------------------------------------------


def json_plan(tmp_path: Path, properties: str) -> Path:
    return write(
        tmp_path,
        "p.json",
        f'{{\n"name": "p",\n"fleet": {{"phones": ["{PHONE}"]}},\n"properties": {{\n{properties}\n}},\n'
        '"policy": {"bake_s": 1e1, "abort": {"max_failure_percent": 5.50}}\n}\n',
    )


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("1.10", '"1.10"'),
        ("1e3", '"1e3"'),
        ("1E3", '"1E3"'),
        ("-0", '"-0"'),
        ("-0.0", "-0.0"),
        ("1.5", "1.5"),
        ("7", "7"),
        ("10000000000000000000001", "10000000000000000000001"),
        ("true", "true"),  # JSON's own boolean: unambiguous, sent as one
        ('"012"', '"012"'),
    ],
)
def test_json_plan_values_are_sent_as_typed(tmp_path: Path, text: str, sent: str) -> None:
    path = json_plan(tmp_path, f'"{NAME}": {text}')
    assert wire(path) == f'{{"{NAME}":{sent}}}'
    policy = load_plan(path).plan.policy
    assert (policy.bake_s, policy.abort.max_failure_percent) == (10.0, 5.5)


def test_json_null_is_refused_at_its_line(tmp_path: Path) -> None:
    path = json_plan(tmp_path, f'"a.b": 1,\n"{NAME}": null')
    assert f"{path}:6: properties.{NAME}: no value (null)" in refusal(path)


def test_decode_json_plan_keeps_property_texts_for_data_plans() -> None:
    data = decode_json_plan('{"properties": {"a.b": 1.10, "c.d": 2}, "policy": {"bake_s": 1.10}}')
    assert data == {"properties": {"a.b": "1.10", "c.d": 2}, "policy": {"bake_s": 1.1}}
    assert type(data["policy"]["bake_s"]) is float


def toml_plan(tmp_path: Path, properties: str) -> Path:
    return write(
        tmp_path,
        "p.toml",
        f'name = "p"\n\n[fleet]\nphones = ["{PHONE}"]\n\n[properties]\n{properties}\n\n'
        "[policy]\nbake_s = 1_0.5\nmax_attempts = 0x0A\n",
    )


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("1.10", '"1.10"'),
        ("1e3", '"1e3"'),
        ("1_0.5", '"1_0.5"'),
        ("inf", '"inf"'),
        ("nan", '"nan"'),
        ("1.5", "1.5"),
        ("7", "7"),
        ("-7", "-7"),
        ("true", "true"),
        ('"0x1F"', '"0x1F"'),
    ],
)
def test_toml_plan_values_are_sent_as_typed(tmp_path: Path, text: str, sent: str) -> None:
    path = toml_plan(tmp_path, f'"{NAME}" = {text}')
    assert wire(path) == f'{{"{NAME}":{sent}}}'
    policy = load_plan(path).plan.policy
    assert (policy.bake_s, policy.max_attempts) == (10.5, 10)


@pytest.mark.parametrize("text", ["0x1F", "1_000", "+1", "-0", "0o17", "0b11"])
def test_toml_integers_not_in_plain_decimal_are_refused(tmp_path: Path, text: str) -> None:
    path = toml_plan(tmp_path, f'"a.b" = 1\n"{NAME}" = {text}')
    message = refusal(path)
    assert f"{path}:8: properties.{NAME}: {text} is read as " in message
    assert "quote it to send it as written" in message


def test_toml_inline_tables_are_checked_too(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.toml",
        f'name = "p"\nfleet = {{phones = ["{PHONE}"]}}\n'
        f'properties = {{"a.b" = 1, "{NAME}" = 1_000}}\n',
    )
    assert f"{path}:3: properties.{NAME}: 1_000 is read as 1000" in refusal(path)
    path.write_text(path.read_text().replace("1_000", '"1_000"'))
    assert wire(path) == f'{{"a.b":1,"{NAME}":"1_000"}}'


def test_toml_dates_are_refused_asking_for_quotes(tmp_path: Path) -> None:
    path = toml_plan(tmp_path, f'"{NAME}" = 2024-05-01')
    assert f"{path}:7: properties.{NAME}: 2024-05-01 is read as a date" in refusal(path)


# -- fleet files ---------------------------------------------------------------------------------


def test_json_fleet_cells_keep_their_text(tmp_path: Path) -> None:
    (tmp_path / "fleet.json").write_text(
        f'[{{"phone_id": "{PHONE}", "{NAME}": 1.10, "n": 1e3, "m": 10000000000000000000001,'
        ' "k": 7, "b.c": -0}]'
    )
    path = write(
        tmp_path,
        "p.yaml",
        'name: p\nfleet: {file: fleet.json}\nproperties:\n  a.b: "{n}|{m}|{k:03d}"\n',
    )
    assert wire(path) == (f'{{"a.b":"1e3|10000000000000000000001|007","{NAME}":"1.10","b.c":"-0"}}')


def test_csv_fleet_cells_are_text(tmp_path: Path) -> None:
    (tmp_path / "fleet.csv").write_text(
        f"phone_id,{NAME},sys.prop.writewifissid\n{PHONE},1.10,012\n"
    )
    path = write(tmp_path, "p.yaml", "name: p\nfleet: {file: fleet.csv}\n")
    assert wire(path) == f'{{"{NAME}":"1.10","sys.prop.writewifissid":"012"}}'


# -- property rules no stricter than the cloud ---------------------------------------------------

FLAGS = [
    "com.cph.mainkeys",
    "disable.status.bar",
    "ro.permission.changed",
    "ro.install.auto",
    "ro.com.cph.non_root",
    "ro.com.cph.notification_disable",
    "ro.com.cph.toast_enable",
    "com.cph.disable_fb_permission",
]


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("value", ["0", "1", '"0"', '"1"'])
def test_every_flag_accepts_0_and_1_as_numbers_or_strings(
    tmp_path: Path, flag: str, value: str
) -> None:
    assert wire(yaml_plan(tmp_path, f"{flag}: {value}\n")) == f'{{"{flag}":{value.strip(chr(34))}}}'


@pytest.mark.parametrize("flag", FLAGS)
def test_flags_refuse_other_values(tmp_path: Path, flag: str) -> None:
    assert f'properties.{flag}: "2" must be 0 or 1' in refusal(
        yaml_plan(tmp_path, f'{flag}: "2"\n')
    )


def test_restart_needs_follow_the_user_guide() -> None:
    restart = {name for name, spec in KNOWN_PROPERTIES.items() if spec.needs_restart}
    assert restart == {"com.cph.mainkeys", "qemu.hw.mainkeys", "disable.status.bar"}


@pytest.mark.parametrize(
    "ssid",
    ["a@b#c:d/e", "shop wifi 2", "咖啡店 WiFi", "x" * 64, "cloudphone_wifi", "a.b-c_d"],
)
def test_documented_ssids_are_accepted_without_a_warning(tmp_path: Path, ssid: str) -> None:
    loaded = load_plan(yaml_plan(tmp_path, f"sys.prop.writewifissid: {json.dumps(ssid)}\n"))
    (target,) = loaded.targets()
    assert target.properties == {"sys.prop.writewifissid": ssid}
    assert loaded.warnings == []


@pytest.mark.parametrize("ssid", ["café", "a!b", "lit{{eral}}", ""])
def test_other_ssids_are_sent_with_a_warning(tmp_path: Path, ssid: str) -> None:
    path = yaml_plan(tmp_path, f"sys.prop.writewifissid: {json.dumps(ssid)}\n")
    loaded = load_plan(path)
    (target,) = loaded.targets()
    sent = ssid.replace("{{", "{").replace("}}", "}")
    assert target.properties == {"sys.prop.writewifissid": sent}
    (warning,) = loaded.warnings
    shown = json.dumps(sent, ensure_ascii=False)
    assert warning.startswith(f"{path}:5: properties.sys.prop.writewifissid: {shown} ")
    assert "sent as written, the cloud may refuse it" in warning


def test_rendered_ssids_warn_once_naming_the_template_and_counting_phones(tmp_path: Path) -> None:
    ids = [f"{n:032x}" for n in range(4)]
    (tmp_path / "fleet.csv").write_text(
        f"phone_id,shop,sys.prop.writewifissid\n{ids[0]},café,\n{ids[1]},bar,\n"
        f"{ids[2]},thé,\n{ids[3]},x,naïve\n"
    )
    path = write(
        tmp_path,
        "p.yaml",
        'name: p\nfleet: {file: fleet.csv}\nproperties:\n  sys.prop.writewifissid: "{shop}"\n',
    )
    loaded = load_plan(path)
    assert [t.properties["sys.prop.writewifissid"] for t in loaded.targets()] == [
        "café",
        "bar",
        "thé",
        "naïve",
    ]
    column, template = sorted(w for w in loaded.warnings if "may refuse" in w)
    assert template.startswith(
        f"{path}:4: properties.sys.prop.writewifissid: phone {ids[0]}: " + '"café" is not'
    )
    assert template.endswith("(and 1 more phone(s))")
    assert column.startswith(
        f"{tmp_path / 'fleet.csv'}:1: column sys.prop.writewifissid: phone {ids[3]}: "
    )


def test_ssids_longer_than_64_characters_are_refused(tmp_path: Path) -> None:
    path = yaml_plan(tmp_path, f"sys.prop.writewifissid: {'咖' * 65}\n")
    assert "has 65 characters, more than 64" in refusal(path)


@pytest.mark.parametrize(
    "path_value", ["/data/local/tmp/pic.jpeg", "/sdcard/图片/猫 1.png", "a@b#c:d/e.f_g-h i"]
)
def test_camera_picture_paths_of_the_documented_characters_are_accepted(
    tmp_path: Path, path_value: str
) -> None:
    loaded = load_plan(
        yaml_plan(tmp_path, f"com.cph.cam_local_pic_path: {json.dumps(path_value)}\n")
    )
    (target,) = loaded.targets()
    assert target.properties == {"com.cph.cam_local_pic_path": path_value}
    assert loaded.warnings == []


@pytest.mark.parametrize(("country", "warned"), [("cn", False), ("DE", False), ("c1", True)])
def test_country_codes_only_warn(tmp_path: Path, country: str, warned: bool) -> None:
    loaded = load_plan(yaml_plan(tmp_path, f"gsm.sim.operator.iso-country: {country}\n"))
    (target,) = loaded.targets()
    assert target.properties == {"gsm.sim.operator.iso-country": country}
    assert bool(loaded.warnings) == warned


ACCEPTED = """
com.cph.mainkeys: 0
disable.status.bar: "1"
ro.install.auto: 0
com.cph.bandwidth_limit: -1
com.cph.cam_local_pic_path: /sdcard/图片/a b@#:.png
persist.sys.locale: zh-Hans-CN
sys.prop.writeimsi: 012
sys.prop.writephonenum: "00491510000000000001"
sys.prop.writewifissid: "café #1"
gsm.sim.operator.iso-country: cn
persist.custom.version: 1.10
"""


def test_the_simulator_accepts_what_the_plan_accepts(tmp_path: Path) -> None:
    (target,) = load_plan(yaml_plan(tmp_path, ACCEPTED)).targets()
    body: dict[str, Any] = {
        "phones": [{"phone_id": target.phone_id, "property": target.update.property}]
    }
    (item,) = validate_batch(body, max_batch=10, property_required=True)  # type: ignore[misc]
    assert item.properties == target.properties


def loaded_for(phone_ids: list[str], tmp_path: Path) -> LoadedPlan:
    phones = "".join(f"    - {phone_id}\n" for phone_id in phone_ids)
    path = write(
        tmp_path,
        "p.yaml",
        "name: p\nfleet:\n  phones:\n"
        + phones
        + "properties:\n  disable.status.bar: 1\n  sys.prop.writewifissid: 012\n"
        + "  persist.custom.version: 1.10\n  persist.custom.flag: no\n"
        + "policy:\n  restart_after: when_needed\n",
    )
    return load_plan(path)


async def test_a_rollout_leaves_the_typed_texts_and_restarts_for_the_status_bar(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await start_simulator(simulator, phones=4, profile=fast_profile("none"))
    loaded = loaded_for(sim.state.phone_ids(), tmp_path)
    assert loaded.needs_restart()
    restart = RestartMode(str(loaded.plan.policy.restart_after))
    run = await run_rollout(sim, loaded.targets(), fast_options(restart=restart))
    assert run.result.counts["succeeded"] == 4
    for phone_id in sim.state.phone_ids():
        assert sim.state.properties(phone_id) == {
            "disable.status.bar": 1,
            "sys.prop.writewifissid": "012",
            "persist.custom.version": "1.10",
            "persist.custom.flag": "no",
        }
    assert sim.state.stats()["restarts_per_phone"] == dict.fromkeys(sim.state.phone_ids(), 1)


def test_queried_phones_count_once_in_a_warning_however_often_rendered(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        'name: p\nfleet: {query: {status: 2}}\nproperties:\n  sys.prop.writewifissid: "é{index}"\n',
    )
    loaded = load_plan(path)
    assert loaded.warnings == []
    queried = [f"{n:032x}" for n in range(3)]
    for _ in range(2):
        loaded.targets(queried)
        (warning,) = loaded.warnings
        assert warning.startswith(
            f"{path}:4: properties.sys.prop.writewifissid: phone {queried[0]}"
        )
        assert warning.endswith("(and 2 more phone(s))")
