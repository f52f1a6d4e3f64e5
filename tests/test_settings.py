"""Settings layer a TOML file under the environment, keep secrets secret and name bad fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orchestrator.toml"
    path.write_text(text)
    return path


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path, '[cph]\nendpoint = "http://file"\nregion = "cn-north-4"\ntimeout_s = 5\n'
    )
    env = {"CPH_ENDPOINT": "http://env", "CPH_ORCHESTRATOR__CPH__TIMEOUT_S": "7"}
    settings = load_settings(path, environ=env)
    assert settings.cph.resolved_endpoint() == "http://env"
    assert settings.cph.region == "cn-north-4"
    assert settings.cph.timeout_s == 7


def test_auth_mode_follows_the_credentials_present() -> None:
    aksk = {"HUAWEICLOUD_SDK_AK": "ak", "HUAWEICLOUD_SDK_SK": "sk", "CPH_AUTH_TOKEN": "t"}
    assert load_settings(None, environ=aksk).cph.resolved_auth() == "aksk"
    iam = {"CPH_IAM_USERNAME": "u", "CPH_IAM_PASSWORD": "p", "CPH_AUTH_TOKEN": "t"}
    assert load_settings(None, environ=iam).cph.resolved_auth() == "iam"
    assert load_settings(None, environ={"CPH_AUTH_TOKEN": "t"}).cph.resolved_auth() == "token"
    with pytest.raises(ConfigError, match="no CPH credentials"):
        load_settings(None, environ={}).cph.resolved_auth()


def test_secrets_never_print() -> None:
    env = {
        "HUAWEICLOUD_SDK_SK": "very-secret",
        "CPH_IAM_PASSWORD": "hunter2",
        "CPH_AUTH_TOKEN": "tok",
    }
    settings = load_settings(None, environ=env)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "very-secret" not in shown
    assert "hunter2" not in shown
    assert "tok'" not in shown


def test_bad_values_name_the_field_and_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[cph]\ntimeout_s = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"CPH_AUTH_TOKEN": "secret-token-value"})
    message = str(caught.value)
    assert "cph.timeout_s" in message
    assert str(path) in message
    assert "secret-token-value" not in message


def test_unknown_keys_and_broken_toml_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cph\.endpont"):
        load_settings(_write(tmp_path, '[cph]\nendpont = "x"\n'), environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "[cph\n"), environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_region_gives_default_endpoints() -> None:
    cph = load_settings(None, environ={"CPH_REGION": "ap-southeast-1"}).cph
    assert cph.resolved_endpoint() == "https://cph.ap-southeast-1.myhuaweicloud.com"
    assert cph.resolved_iam_endpoint() == "https://iam.ap-southeast-1.myhuaweicloud.com"
