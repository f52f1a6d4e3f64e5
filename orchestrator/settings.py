"""Settings: a TOML file, overridden by environment variables, validated into frozen models.

Layering, lowest to highest: built-in defaults, the TOML file (``--config``; else
``$CPH_ORCHESTRATOR_CONFIG``; else ``config/orchestrator.toml`` when it exists), then the environment.
The environment names of credentials and endpoints are fixed by contract (``CPH_ENDPOINT`` …
``HUAWEICLOUD_SDK_SK``); any other setting can be overridden as ``CPH_ORCHESTRATOR__<SECTION>__<FIELD>`` (e.g.
``CPH_ORCHESTRATOR__CPH__TIMEOUT_S=10``). Secrets are :class:`~pydantic.SecretStr`: they print as stars.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from orchestrator.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "FIXED_ENV_NAMES",
    "CphSettings",
    "DaemonSettings",
    "LoggingSettings",
    "RolloutSettings",
    "Settings",
    "load_settings",
]

DEFAULT_CONFIG_PATH = Path("config/orchestrator.toml")
CONFIG_PATH_ENV = "CPH_ORCHESTRATOR_CONFIG"
GENERIC_ENV_PREFIX = "CPH_ORCHESTRATOR__"

FIXED_ENV_NAMES: Mapping[str, tuple[str, str]] = {
    "CPH_ENDPOINT": ("cph", "endpoint"),
    "CPH_PROJECT_ID": ("cph", "project_id"),
    "CPH_REGION": ("cph", "region"),
    "CPH_AUTH_TOKEN": ("cph", "auth_token"),
    "CPH_IAM_ENDPOINT": ("cph", "iam_endpoint"),
    "CPH_IAM_USERNAME": ("cph", "iam_username"),
    "CPH_IAM_PASSWORD": ("cph", "iam_password"),
    "CPH_IAM_DOMAIN": ("cph", "iam_domain"),
    "HUAWEICLOUD_SDK_AK": ("cph", "ak"),
    "HUAWEICLOUD_SDK_SK": ("cph", "sk"),
    "CPH_DAEMON_TOKEN": ("daemon", "token"),
}
"""Environment variables whose names other tools rely on, and the setting each one sets."""

AuthMode = Literal["auto", "token", "iam", "aksk"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CphSettings(_Section):
    """Where the CPH API is and how to authenticate to it."""

    endpoint: str | None = None
    project_id: str | None = None
    region: str | None = None
    auth: AuthMode = "auto"
    auth_token: SecretStr | None = None
    iam_endpoint: str | None = None
    iam_username: str | None = None
    iam_password: SecretStr | None = None
    iam_domain: str | None = None
    ak: str | None = None
    sk: SecretStr | None = None
    timeout_s: float = Field(30.0, gt=0)
    max_connections: int = Field(64, ge=1, le=1024)

    def resolved_endpoint(self) -> str:
        """``endpoint``, else the region's public endpoint; raises :class:`ConfigError` if neither."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        if self.region:
            return f"https://cph.{self.region}.myhuaweicloud.com"
        raise ConfigError("set CPH_ENDPOINT or CPH_REGION to say which CPH endpoint to call")

    def resolved_iam_endpoint(self) -> str:
        """``iam_endpoint``, else the region's IAM endpoint, else the global one."""
        if self.iam_endpoint:
            return self.iam_endpoint.rstrip("/")
        if self.region:
            return f"https://iam.{self.region}.myhuaweicloud.com"
        return "https://iam.myhuaweicloud.com"

    def resolved_auth(self) -> Literal["token", "iam", "aksk"]:
        """The auth mode to use: the configured one, or the first whose credentials are all set."""
        if self.auth != "auto":
            return self.auth
        if self.ak and self.sk:
            return "aksk"
        if self.iam_username and self.iam_password:
            return "iam"
        if self.auth_token:
            return "token"
        raise ConfigError(
            "no CPH credentials: set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or CPH_IAM_USERNAME"
            " with CPH_IAM_PASSWORD and CPH_IAM_DOMAIN, or CPH_AUTH_TOKEN"
        )


class RolloutSettings(_Section):
    """Defaults for every rollout; a plan's policy and the command line override them."""

    batch_size: int = Field(100, ge=1, le=1000)
    submit_rate_per_s: float = Field(5.0, gt=0)
    query_rate_per_s: float = Field(10.0, gt=0)
    max_submits_in_flight: int = Field(16, ge=1)
    max_queries_in_flight: int = Field(8, ge=1)
    first_poll_s: float = Field(2.0, gt=0)
    expected_job_duration_s: float = Field(10.0, ge=0)
    """Used only to estimate durations in ``--dry-run`` before anything is learnt."""
    progress_interval_s: float = Field(10.0, gt=0)
    stop_grace_s: float = Field(30.0, ge=0)
    runs_dir: str = "cph-runs"
    """Where reports and log files go when no path is given."""
    state_path: str = "cph-runs/journal.sqlite"
    """The SQLite journal (``--state`` overrides it)."""


class LoggingSettings(_Section):
    """How log lines are written."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class DaemonSettings(_Section):
    """The long-running service."""

    listen: str = "127.0.0.1:8740"
    token: SecretStr | None = None


class Settings(_Section):
    """Everything configurable, validated. Sections are added by the parts that need them."""

    cph: CphSettings = CphSettings()
    rollout: RolloutSettings = RolloutSettings()
    logging: LoggingSettings = LoggingSettings()
    daemon: DaemonSettings = DaemonSettings()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from exc


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if name in FIXED_ENV_NAMES:
            section, key = FIXED_ENV_NAMES[name]
        elif name.startswith(GENERIC_ENV_PREFIX) and name.count("__") == 2:
            section, key = name.removeprefix(GENERIC_ENV_PREFIX).lower().split("__")
        else:
            continue
        if value != "":
            overrides.setdefault(section, {})[key] = value
    return overrides


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_PATH_ENV):
        return Path(environ[CONFIG_PATH_ENV])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid settings ({source}):"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def load_settings(
    config_file: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the settings file and the environment; raise :class:`ConfigError` naming bad fields."""
    env = os.environ if environ is None else environ
    path = _config_path(config_file, env)
    values = _read_toml(path) if path is not None else {}
    values = _merge(values, _env_overrides(env))
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        source = f"{path} and the environment" if path else "the environment"
        raise ConfigError(_describe(exc, source)) from exc
