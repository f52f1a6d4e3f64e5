"""Fault profiles: how badly the simulated cloud behaves, as data.

A profile is a frozen bag of knobs (rates in [0, 1], durations as small distributions) so that a test can
make one fault certain (``rate=1.0``) and a benchmark can name a whole weather pattern (``"hostile"``).
Every draw is made by the simulator from seeded :class:`random.Random` instances; a profile holds no state.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.errors import ConfigError

__all__ = [
    "PROFILES",
    "DurationDist",
    "FaultProfile",
    "apply_overrides",
    "parse_overrides",
    "resolve_profile",
]

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
"""A probability; 0 disables a fault, 1 makes it certain."""

Seconds = Annotated[float, Field(ge=0.0)]


class DurationDist(BaseModel):
    """A distribution of durations in seconds, small enough to write on a command line.

    String forms (for ``--set``): ``fixed:0.5``, ``uniform:1:3``, ``lognormal:MEDIAN:SIGMA[:MAX]``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["fixed", "uniform", "lognormal"] = "uniform"
    value_s: Seconds = 0.0
    low_s: Seconds = 1.0
    high_s: Seconds = 3.0
    median_s: Seconds = 2.0
    sigma: Seconds = 0.5
    max_s: Seconds | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """Accept the compact string form as well as a mapping."""
        if isinstance(value, str):
            return _parse_duration_text(value)
        if isinstance(value, int | float):
            return {"kind": "fixed", "value_s": float(value)}
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> DurationDist:
        if self.kind == "uniform" and self.high_s < self.low_s:
            raise ValueError("uniform duration needs low_s <= high_s")
        return self

    def sample(self, rng: random.Random) -> float:
        """Draw one duration in seconds, capped at ``max_s`` when set."""
        if self.kind == "fixed":
            value = self.value_s
        elif self.kind == "uniform":
            value = rng.uniform(self.low_s, self.high_s)
        else:
            value = rng.lognormvariate(math.log(max(self.median_s, 1e-9)), self.sigma)
        return min(value, self.max_s) if self.max_s is not None else value


def _parse_duration_text(text: str) -> dict[str, Any]:
    kind, *params = text.strip().split(":")
    numbers = [float(p) for p in params]
    if kind == "fixed" and len(numbers) == 1:
        return {"kind": kind, "value_s": numbers[0]}
    if kind == "uniform" and len(numbers) == 2:
        return {"kind": kind, "low_s": numbers[0], "high_s": numbers[1]}
    if kind == "lognormal" and len(numbers) in (2, 3):
        cap = numbers[2] if len(numbers) == 3 else None
        return {"kind": kind, "median_s": numbers[0], "sigma": numbers[1], "max_s": cap}
    raise ValueError(
        f"cannot read duration {text!r}: use fixed:S, uniform:LO:HI or lognormal:MED:SIGMA"
    )


class FaultProfile(BaseModel):
    """Every way the simulated cloud may misbehave; all default to "never".

    Rates are per request (``transient_error_rate``, ``extra_throttle_rate``, ``latency_spike_rate``,
    ``drop_after_apply_rate``), per job (``job_fail_rate``), or per phone of the fleet, decided once
    when the fleet is generated (``late_phone_rate``, ``missing_phone_rate``,
    ``invalid_property_phone_rate``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    job_duration: DurationDist = DurationDist()
    restart_duration: DurationDist = DurationDist()
    retry_after_fraction: Rate = Field(
        default=0.5, description="share of 429 answers that carry a Retry-After header"
    )
    transient_error_rate: Rate = Field(
        default=0.0, description="502/503 with an HTML body, no effect"
    )
    drop_after_apply_rate: Rate = Field(
        default=0.0,
        description="submit POSTs whose connection is closed after the jobs were created",
    )
    late_phone_rate: Rate = Field(
        default=0.0, description="phones answering CPS.0005 for their first submissions"
    )
    late_phone_submissions: int = Field(default=2, ge=0)
    job_fail_rate: Rate = Field(default=0.0, description="jobs ending -1 with CPS.0003")
    extra_throttle_rate: Rate = Field(
        default=0.0, description="429 regardless of the token buckets"
    )
    latency_spike_rate: Rate = 0.0
    latency_spike: DurationDist = DurationDist(kind="fixed", value_s=3.0)
    missing_phone_rate: Rate = Field(
        default=0.0, description="fleet phones that never exist: always CPS.0005, never listed"
    )
    busy_rate: Rate = Field(
        default=0.0, description="chance a submission to a phone with a running job is refused busy"
    )
    invalid_property_phone_rate: Rate = Field(
        default=0.0, description="phones whose property jobs always end -1 with CPS.0004"
    )


PROFILES: dict[str, FaultProfile] = {
    "none": FaultProfile(name="none"),
    "flaky": FaultProfile(
        name="flaky",
        transient_error_rate=0.03,
        drop_after_apply_rate=0.02,
        late_phone_rate=0.02,
        late_phone_submissions=2,
        job_fail_rate=0.03,
    ),
    "hostile": FaultProfile(
        name="hostile",
        job_duration=DurationDist(kind="lognormal", median_s=3.0, sigma=0.8, max_s=60.0),
        transient_error_rate=0.08,
        drop_after_apply_rate=0.05,
        late_phone_rate=0.05,
        late_phone_submissions=3,
        job_fail_rate=0.08,
        extra_throttle_rate=0.15,
        latency_spike_rate=0.05,
        latency_spike=DurationDist(kind="uniform", low_s=2.0, high_s=5.0),
        missing_phone_rate=0.01,
        busy_rate=1.0,
        invalid_property_phone_rate=0.02,
    ),
}
"""The named profiles; ``none`` misbehaves only through configured rate limits."""


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["job_fail_rate=0.1", "job_duration=fixed:0"]`` into a dict for :func:`apply_overrides`.

    Values are read as JSON when they parse (numbers, booleans, objects) and kept as text otherwise, so
    that the profile's own validation decides what they mean. Unknown knob names are rejected here.
    """
    updates: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        if key not in FaultProfile.model_fields:
            raise ValueError(f"unknown fault knob {key!r}")
        updates[key] = _read_value(raw.strip())
    return updates


def _read_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def apply_overrides(
    profile: FaultProfile, updates: Mapping[str, Any] | Iterable[str]
) -> FaultProfile:
    """A validated copy of ``profile`` with knobs replaced (``model_copy`` alone would not validate)."""
    if not isinstance(updates, Mapping):
        updates = parse_overrides(updates)
    return FaultProfile.model_validate({**profile.model_dump(), **updates})


def resolve_profile(name: str, overrides: Iterable[str] = ()) -> FaultProfile:
    """A named profile with ``--set KNOB=VALUE`` overrides applied, for the command line.

    Raises :class:`~orchestrator.errors.ConfigError` (exit code 3) for an unknown name or a bad override,
    so the operator gets one line instead of a traceback.
    """
    if name not in PROFILES:
        raise ConfigError(f"unknown fault profile {name!r}; known: {', '.join(PROFILES)}")
    try:
        return apply_overrides(PROFILES[name], list(overrides))
    except ValueError as exc:
        raise ConfigError(f"invalid fault profile override: {exc}") from exc
