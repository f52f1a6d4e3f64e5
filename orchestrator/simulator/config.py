"""What a simulator instance looks like: fleet size, credentials, limits, wire-shape choices, faults.

Wire details that Huawei's documentation leaves open (cph-api.md, UNCONFIRMED) are knobs here, so that a
client can be tested against each plausible answer rather than against one guess.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from orchestrator.simulator.profiles import PROFILES, FaultProfile

__all__ = ["DEFAULT_TOKEN_TTL_S", "MAX_CLOCK_SKEW_S", "IamUser", "SimulatorConfig"]

DEFAULT_TOKEN_TTL_S = 86_400.0
"""IAM tokens are valid for 24 h (cph-api.md §7.1)."""

MAX_CLOCK_SKEW_S = 900.0
"""The gateway rejects an ``X-Sdk-Date`` more than 15 minutes from its own clock (cph-api.md §7.2)."""

DEFAULT_MAX_BATCH = 100
"""The real per-request cap is undocumented; 100 matches comparable CPH batch APIs."""


class IamUser(BaseModel):
    """A password an IAM user may exchange for a token; ``("pw", "domain")`` is accepted too."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    password: SecretStr
    domain: str

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: Any) -> Any:
        if isinstance(value, tuple | list) and len(value) == 2:
            return {"password": value[0], "domain": value[1]}
        return value


class SimulatorConfig(BaseModel):
    """Everything that shapes one simulated CPH account.

    When no credential at all is configured (no ``token``, no ``ak``/``sk``, no ``iam_users``) every
    request is accepted and IAM hands a token to anyone, which keeps demos free of secrets.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    phones: int = Field(default=1000, ge=0)
    seed: int = 0
    project_id: str = "proj123"
    profile: FaultProfile = PROFILES["none"]
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1)
    submit_rate_per_s: float | None = Field(default=None, ge=0.0)
    query_rate_per_s: float | None = Field(default=None, ge=0.0)
    token: SecretStr | None = None
    ak: str | None = None
    sk: SecretStr | None = None
    iam_users: dict[str, IamUser] = Field(default_factory=dict)
    token_ttl_s: float = Field(default=DEFAULT_TOKEN_TTL_S, gt=0.0)
    max_clock_skew_s: float = Field(default=MAX_CLOCK_SKEW_S, ge=0.0)
    list_jobs_count: bool = Field(
        default=False, description="ListJobs also sends `count` (UNCONFIRMED in cph-api.md)"
    )
    failed_item_job_id: Literal["omit", "null", "empty"] = Field(
        default="omit", description="how a failed PhoneJob item carries job_id (UNCONFIRMED)"
    )
    abnormal_phone_rate: float = Field(default=0.02, ge=0.0, le=1.0)
    stopped_phone_rate: float = Field(default=0.03, ge=0.0, le=1.0)
    trial_phone_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    phones_per_server_min: int = Field(default=30, ge=1)
    phones_per_server_max: int = Field(default=60, ge=1)
    violations_kept: int = Field(
        default=1000, ge=0, description="protocol violations listed in stats"
    )

    @field_validator("profile", mode="before")
    @classmethod
    def _profile_by_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in PROFILES:
                raise ValueError(f"unknown profile {value!r}; known: {', '.join(PROFILES)}")
            return PROFILES[value]
        return value

    @model_validator(mode="after")
    def _check_pairs(self) -> SimulatorConfig:
        if (self.ak is None) != (self.sk is None):
            raise ValueError("ak and sk must be given together")
        if self.phones_per_server_max < self.phones_per_server_min:
            raise ValueError("phones_per_server_max must be >= phones_per_server_min")
        return self

    @property
    def open_access(self) -> bool:
        """True when no credential is configured and every request is let in."""
        return self.token is None and self.ak is None and not self.iam_users
