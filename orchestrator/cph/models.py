"""Wire models of the CPH API (see ``cph-api.md``), tolerant where the cloud is loose.

Answers are parsed with ``extra="ignore"`` (new fields must not break us), and empty error codes may
arrive as ``null``, ``""`` or not at all: all three become ``None``. Requests are built by small
functions so that the 7800-byte property limit is checked before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import IntEnum
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "PROPERTY_LIMIT_BYTES",
    "BatchJobsResponse",
    "Job",
    "JobStatus",
    "ListJobsResponse",
    "ListPhonesResponse",
    "Phone",
    "PhoneDetail",
    "PhoneJob",
    "PhoneStatus",
    "PropertyTooLargeError",
    "PropertyUpdate",
    "encode_property",
]

PROPERTY_LIMIT_BYTES = 7800
"""``property`` plus ``custom_property`` may not exceed this many bytes (SDK ``PropertyToUpdate``)."""


class JobStatus(IntEnum):
    """Job ``status`` values; nothing else is documented."""

    FAILED = -1
    RUNNING = 1
    SUCCEEDED = 2


class PhoneStatus(IntEnum):
    """Phone ``status`` values (``cph-api.md`` §3); 0 is the older docs' "creating"."""

    CREATING_OLD = 0
    CREATING = 1
    RUNNING = 2
    RESETTING = 3
    RESTARTING = 4
    FROZEN = 6
    STOPPING = 7
    STOPPED = 8
    RESET_FAILED = -5
    RESTART_FAILED = -6
    ABNORMAL = -7
    CREATION_FAILED = -8
    STOP_FAILED = -9


def _blank_to_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


OptionalCode = Annotated[str | None, BeforeValidator(_blank_to_none)]


class _Answer(BaseModel):
    """Base of every answer model: frozen, unknown keys ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class PhoneJob(_Answer):
    """One phone's outcome in a batch answer: a ``job_id`` or an ``error_code``."""

    phone_id: str
    job_id: OptionalCode = None
    error_code: OptionalCode = None
    error_msg: OptionalCode = None


class BatchJobsResponse(_Answer):
    """Answer of batch-update-property, batch-restart, batch-reset and the like."""

    request_id: str = ""
    jobs: list[PhoneJob] = Field(default_factory=list)


class Job(_Answer):
    """A job as ListJobs and ShowJob describe it."""

    job_id: str
    status: int
    phone_id: str | None = None
    server_id: str | None = None
    begin_time: str | None = None
    end_time: str | None = None
    error_code: OptionalCode = None
    error_msg: OptionalCode = None
    execute_msg: str | None = None

    @property
    def finished(self) -> bool:
        """True once the job succeeded or failed; anything but 1 is terminal (as Huawei's TF does)."""
        return self.status != JobStatus.RUNNING


class ShowJobResponse(Job):
    """ShowJob: a :class:`Job` plus the call's ``request_id``."""

    request_id: str = ""


class ListJobsResponse(_Answer):
    """ListJobs page. ``count`` is not in the SDK model, so it is optional."""

    request_id: str = ""
    jobs: list[Job] = Field(default_factory=list)
    count: int | None = None


class Phone(_Answer):
    """A phone as ListCloudPhones describes it."""

    phone_id: str
    phone_name: str = ""
    server_id: str = ""
    status: int
    type: int | None = None
    image_id: str | None = None
    phone_model_name: str | None = None
    availability_zone: str | None = None
    create_time: str | None = None
    update_time: str | None = None


class ListPhonesResponse(_Answer):
    """ListCloudPhones page; ``count`` is the total number of matching phones."""

    request_id: str = ""
    phones: list[Phone] = Field(default_factory=list)
    count: int | None = None


class PhoneDetail(Phone):
    """ShowCloudPhoneDetail: a :class:`Phone` plus its current properties."""

    request_id: str = ""
    property: str | None = None
    custom_property: dict[str, str] | None = None

    def properties(self) -> dict[str, Any]:
        """The ``property`` JSON string decoded; an absent or unreadable value gives ``{}``."""
        try:
            decoded = json.loads(self.property or "{}")
        except ValueError:
            return {}
        return decoded if isinstance(decoded, dict) else {}


class PropertyTooLargeError(ValueError):
    """A phone's rendered ``property`` (plus ``custom_property``) exceeds the API's byte limit."""


def encode_property(properties: Mapping[str, Any]) -> str:
    """Encode properties as the JSON *string* the API wants, compactly, keeping non-ASCII as is."""
    return json.dumps(dict(properties), separators=(",", ":"), ensure_ascii=False)


class PropertyUpdate(NamedTuple):
    """One element of a batch-update-property request (``PropertyToUpdate``).

    A named tuple rather than a pydantic model: one exists per phone of a rollout (100,000 and
    more), every field is built by :meth:`build` from typed input, and a tuple costs a tenth of
    the memory and time of a model.
    """

    phone_id: str
    property: str
    custom_property: dict[str, str] | None = None

    @classmethod
    def build(
        cls,
        phone_id: str,
        properties: Mapping[str, Any],
        custom_property: Mapping[str, str] | None = None,
    ) -> PropertyUpdate:
        """Build and size-check an update; raises :class:`PropertyTooLargeError` over the limit."""
        update = cls(
            phone_id,
            encode_property(properties),
            dict(custom_property) if custom_property else None,
        )
        size = update.payload_bytes()
        if size > PROPERTY_LIMIT_BYTES:
            raise PropertyTooLargeError(
                f"phone {phone_id}: property and custom_property take {size} bytes, "
                f"more than the API's limit of {PROPERTY_LIMIT_BYTES}"
            )
        return update

    def payload_bytes(self) -> int:
        """Bytes counted against the limit: the property string plus the custom pairs."""
        custom = self.custom_property or {}
        custom_size = sum(len(k.encode()) + len(v.encode()) for k, v in custom.items())
        return len(self.property.encode()) + custom_size

    def wire(self) -> dict[str, Any]:
        """The JSON object sent for this phone (absent fields omitted, as the SDK does)."""
        item: dict[str, Any] = {"phone_id": self.phone_id, "property": self.property}
        if self.custom_property is not None:
            item["custom_property"] = self.custom_property
        return item
