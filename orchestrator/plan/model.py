"""The plan file as frozen pydantic models: its structure, types and ranges.

These models check what can be checked without the fleet file or the property table: unknown keys,
types (strict: ``true`` is not a count, ``"60"`` is not a number of seconds), ranges, wave sizes and
error-code shapes. Property *formats*, placeholders and the fleet file are the loader's business
(:mod:`orchestrator.plan.loader`), so that ``Plan.model_validate(dict)`` also serves plans that
arrive as JSON objects with no file around them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import date, time
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from orchestrator.cph.models import PhoneStatus
from orchestrator.plan.properties import PropertyValue, show_value
from orchestrator.plan.verbatim import NO_VALUE_HINT

__all__ = [
    "BUSY_ERROR_CODE",
    "DEFAULT_JOB_TIMEOUT_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MIN_EXECUTED",
    "DEFAULT_RETRY_CODES",
    "DEFAULT_WAVES",
    "PHONE_ID_RULE",
    "AbortPolicy",
    "Fleet",
    "FleetQuery",
    "Plan",
    "Policy",
    "RestartAfter",
    "all_valid_phone_ids",
    "valid_phone_id",
    "valid_phone_id_lines",
    "wave_sizes",
]

BUSY_ERROR_CODE = "CPS.0032"
"""Per-phone "busy / operation in progress" code, as the simulator sends it.

The real code for a phone that is busy with another operation is UNCONFIRMED (``cph-api.md``
§4.2: the CPS table after CPS.0031 could not be retrieved); the simulator uses this placeholder and
the orchestrator treats it as retryable. Replace it once the real code is known.
"""

DEFAULT_RETRY_CODES: frozenset[str] = frozenset(
    {
        "CPS.0005",  # phone not found: can be transient right after the phone is created
        "CPS.0003",  # service internal error; the docs advise trying again later
        "CPS.0022",  # no available phone: probably transient (capacity)
        "CPS.1027",  # the server is being scaled up
        BUSY_ERROR_CODE,
    }
)
"""Per-phone error codes retried with backoff unless a plan's ``policy.retry_codes`` says otherwise."""

DEFAULT_WAVES: tuple[int | str, ...] = ("100%",)
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_JOB_TIMEOUT_S = 600.0
DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_SLOW_BACKOFF_BASE_S = 5.0
DEFAULT_BACKOFF_CAP_S = 60.0
DEFAULT_MIN_EXECUTED = 10
"""Finished phones needed before ``abort.max_failure_percent`` is judged (one early failure is 100%)."""

MAX_BATCH_SIZE = 1000
_PHONE_ID_CHARS = "[0-9A-Za-z]{1,32}"
_PHONE_ID = re.compile(_PHONE_ID_CHARS)
_PHONE_ID_LINES = re.compile(rf"(?:{_PHONE_ID_CHARS}\n)*+(?:{_PHONE_ID_CHARS})?")
PHONE_ID_RULE = "1–32 letters or digits"  # noqa: RUF001 -- the en dash is meant: it is prose
"""What a valid phone ID is, for messages."""
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_ERROR_CODE = re.compile(r"[A-Za-z]+\.[0-9A-Za-z]+")
_PROPERTY_NAME = re.compile(r"[^\s{}]+")


def valid_phone_id(phone_id: str) -> bool:
    """At most 32 letters or digits (``PropertyToUpdate.phone_id`` is at most 32 bytes)."""
    return _PHONE_ID.fullmatch(phone_id) is not None


def all_valid_phone_ids(phone_ids: Iterable[str]) -> bool:
    """:func:`valid_phone_id` for each, at C speed (a fleet file holds 100,000 of them)."""
    return all(map(_PHONE_ID.fullmatch, phone_ids))


def valid_phone_id_lines(text: str) -> bool:
    """True if each line of ``text`` is a valid phone ID; it may end with a newline, or be empty.

    One regex pass over a whole fleet file of bare IDs, several times faster than a match per ID.
    """
    return _PHONE_ID_LINES.fullmatch(text) is not None


def _phone_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{show_value(value)} is not a phone ID: write it as a quoted string")
    if not valid_phone_id(value):
        raise ValueError(f"{show_value(value)} is not a valid phone ID ({PHONE_ID_RULE})")
    return value


def _wave(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"{value} is not a wave size: a count must be at least 1")
        return value
    match = _PERCENT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'{show_value(value)} is not a count or a percentage like "10%"')
    if not 0 < Decimal(match.group(1)) <= 100:
        raise ValueError(f"{show_value(value)} is not a percentage in (0%, 100%]")
    return match.group(0)


def _error_code(value: Any) -> str:
    if not isinstance(value, str) or not _ERROR_CODE.fullmatch(value):
        raise ValueError(f'{show_value(value)} is not an error code like "CPS.0005"')
    return value


def _property_name(value: str) -> str:
    if not _PROPERTY_NAME.fullmatch(value):
        raise ValueError(f"{show_value(value)} is not a property name (no spaces or braces)")
    return value


def _property_value(value: Any) -> PropertyValue:
    if value is None:
        raise ValueError(f"no value (null): {NO_VALUE_HINT}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a number JSON can carry")
    if isinstance(value, date | time):  # YAML and TOML read 2024-05-01 as a date
        raise ValueError(
            f"{value.isoformat()} is read as a date or time: quote it to send it as text"
        )
    if not isinstance(value, int | float | str | bool):
        kind = type(value).__name__
        raise ValueError(f"a property value must be a number, string or boolean, not {kind}")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _known_status(value: int) -> int:
    if value not in PhoneStatus._value2member_map_:
        known = ", ".join(str(int(s)) for s in PhoneStatus)
        raise ValueError(f"{value} is not a phone status (one of {known})")
    return value


PhoneId = Annotated[str, BeforeValidator(_phone_id)]
WaveSize = Annotated[int | str, BeforeValidator(_wave)]
ErrorCode = Annotated[str, BeforeValidator(_error_code)]
PropertyName = Annotated[str, AfterValidator(_property_name)]
Value = Annotated[PropertyValue, BeforeValidator(_property_value)]
Seconds = Annotated[StrictFloat, Field(allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class RestartAfter(StrEnum):
    """Whether each phone is restarted once its properties are written.

    The engine uses this same enum (as ``orchestrator.engine.options.RestartMode``): the plan is
    the lower layer, so the enum lives here.
    """

    NEVER = "never"
    WHEN_NEEDED = "when_needed"
    """Only if a property of the plan needs a restart (:func:`~orchestrator.plan.needs_restart`)."""
    ALWAYS = "always"


class FleetQuery(_Frozen):
    """Phones to look up through ListCloudPhones at run time; every filter is optional."""

    server_id: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    status: Annotated[StrictInt, AfterValidator(_known_status)] | None = None
    phone_name: Annotated[str, Field(min_length=1, max_length=65)] | None = None


class Fleet(_Frozen):
    """Which phones the plan targets: listed, read from a file, and/or queried (in that order)."""

    phones: tuple[PhoneId, ...] = ()
    file: Annotated[str, AfterValidator(_non_blank)] | None = None
    """CSV or JSON file, relative to the plan file; see :mod:`orchestrator.plan.fleet`."""
    query: FleetQuery | None = None

    @model_validator(mode="after")
    def _something_targeted(self) -> Fleet:
        if not self.phones and self.file is None and self.query is None:
            raise ValueError("name the phones: give at least one of phones, file or query")
        if self.file is not None and not self.file.lower().endswith((".csv", ".json")):
            raise ValueError(f"file {show_value(self.file)} must be a .csv or .json file")
        return self


class AbortPolicy(_Frozen):
    """When a rollout stops sending work because too many phones failed.

    It aborts once failures *exceed* ``max_failures`` (0: the first failure aborts), or once the
    failed share of finished phones exceeds ``max_failure_percent`` — judged only after at least
    ``min_executed`` phones have finished. A threshold left out never trips.
    """

    max_failure_percent: Annotated[float, Field(gt=0, le=100, strict=True)] | None = None
    max_failures: Annotated[StrictInt, Field(ge=0)] | None = None
    min_executed: Annotated[StrictInt, Field(ge=0)] = DEFAULT_MIN_EXECUTED


class Policy(_Frozen):
    """How the rollout proceeds: batches, waves, retries, abort thresholds, timeouts, restarts."""

    batch_size: Annotated[StrictInt, Field(ge=1, le=MAX_BATCH_SIZE)] | None = None
    """Phones per request; ``None`` uses the command line's or the settings' value."""
    waves: Annotated[tuple[WaveSize, ...], Field(min_length=1)] = DEFAULT_WAVES
    bake_s: Annotated[Seconds, Field(ge=0)] = 0.0
    max_attempts: Annotated[StrictInt, Field(ge=1)] = DEFAULT_MAX_ATTEMPTS
    retry_codes: frozenset[ErrorCode] = DEFAULT_RETRY_CODES
    abort: AbortPolicy = AbortPolicy()
    job_timeout_s: Annotated[Seconds, Field(gt=0)] = DEFAULT_JOB_TIMEOUT_S
    backoff_base_s: Annotated[Seconds, Field(gt=0)] = DEFAULT_BACKOFF_BASE_S
    """Retry n waits a random time up to ``base·2^(n-1)`` (full jitter), at most ``backoff_cap_s``."""
    backoff_slow_base_s: Annotated[Seconds, Field(gt=0)] = DEFAULT_SLOW_BACKOFF_BASE_S
    """The base for CPS.0005 (phone not found), which heals only once a new phone is created."""
    backoff_cap_s: Annotated[Seconds, Field(gt=0)] = DEFAULT_BACKOFF_CAP_S
    restart_after: RestartAfter = RestartAfter.NEVER
    strict_properties: StrictBool = False


def _one_wave(size: int | str, fleet_size: int) -> int:
    if isinstance(size, int):
        return max(1, size)
    percent = Decimal(size.removesuffix("%"))
    return max(1, math.ceil(Decimal(fleet_size) * percent / 100))


def wave_sizes(waves: Sequence[int | str], fleet_size: int) -> list[int]:
    """Split a fleet into waves with Ansible ``serial`` semantics.

    Each entry is one wave: a count, or a percentage of the whole fleet rounded up (at least 1).
    The last entry repeats until every phone is covered; the last wave may be smaller. The sizes
    add up to ``fleet_size``.
    """
    specs = list(waves) or list(DEFAULT_WAVES)
    sizes: list[int] = []
    remaining = fleet_size
    position = 0
    while remaining > 0:
        size = min(_one_wave(specs[min(position, len(specs) - 1)], fleet_size), remaining)
        sizes.append(size)
        remaining -= size
        position += 1
    return sizes


class Plan(_Frozen):
    """A rollout plan: which phones, which properties, and how to proceed."""

    name: Annotated[str, Field(max_length=200), AfterValidator(_non_blank)]
    fleet: Fleet
    properties: dict[PropertyName, Value] = Field(default_factory=dict)
    """Common properties; string values are templates rendered per phone."""
    policy: Policy = Policy()
